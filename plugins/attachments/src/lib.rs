//! `attachments`: at DATA, parses the message's MIME structure with `mail-parser` and
//! refuses it with `554 5.7.1` when any attachment — in nested multiparts and attached
//! messages too — has a blocked file-name extension.
//!
//! - `blocked_extensions`: extensions without the dot, case ignored (default: common
//!   executable and script types, see [`DEFAULT_BLOCKED`]);
//! - `max_size`: messages larger than this many octets are let through unscanned,
//!   with a warning in the log (default 10 MiB; the plugin's `memory_mb` must allow
//!   about three times this).
//!
//! Names are judged as Windows would open them: trailing dots and spaces are ignored,
//! and only the last extension counts (`invoice.pdf.exe` is an `exe`).

use std::num::NonZeroU64;

use mail_parser::{MessageParser, MimeHeaders, PartType};
use portcullis_sdk::{
    Config, DataOutcome, Envelope, Hooks, Message, Plugin, Session, Verdict, log,
};
use serde::Deserialize;

/// Blocked when `blocked_extensions` is not configured.
pub const DEFAULT_BLOCKED: &[&str] = &[
    "ade", "adp", "app", "bat", "chm", "cmd", "com", "cpl", "exe", "hta", "ins", "isp", "jar",
    "js", "jse", "lib", "lnk", "mde", "msc", "msi", "msp", "mst", "pif", "ps1", "scr", "sct",
    "shb", "sys", "vb", "vbe", "vbs", "vxd", "wsc", "wsf", "wsh",
];

/// The `config` table, as the operator writes it (an unknown key is an error).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    blocked_extensions: Option<Vec<String>>,
    max_size: Option<NonZeroU64>,
}

/// How deep attached messages are followed.
const MAX_DEPTH: usize = 10;

/// The plugin's configuration.
pub struct Attachments {
    blocked: Vec<String>,
    max_size: u64,
}

/// The extension a file name really has, lower-cased.
fn extension(name: &str) -> Option<String> {
    let name = name.trim_end_matches(['.', ' ']);
    let (_, extension) = name.rsplit_once('.')?;
    Some(extension.to_ascii_lowercase())
}

impl Attachments {
    /// The first attachment name with a blocked extension, looking into nested
    /// multiparts and attached messages.
    fn blocked_name(&self, message: &mail_parser::Message<'_>, depth: usize) -> Option<String> {
        for part in &message.parts {
            if let Some(name) = part.attachment_name()
                && extension(name).is_some_and(|e| self.blocked.contains(&e))
            {
                return Some(name.to_string());
            }
            if let PartType::Message(inner) = &part.body
                && depth < MAX_DEPTH
                && let Some(name) = self.blocked_name(inner, depth + 1)
            {
                return Some(name);
            }
        }
        None
    }
}

/// The message as it would be on the wire: header fields, empty line, body.
fn raw_message(message: &Message) -> Vec<u8> {
    let mut raw = Vec::new();
    for header in message.header_fields() {
        raw.extend_from_slice(header.name.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(header.value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(&message.body());
    raw
}

impl Plugin for Attachments {
    fn init(config: &Config) -> Result<(Self, Hooks), String> {
        let settings: Settings = config.parse()?;
        let blocked = match settings.blocked_extensions {
            Some(list) => list
                .iter()
                .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
                .collect(),
            None => DEFAULT_BLOCKED.iter().map(|e| e.to_string()).collect(),
        };
        let max_size = settings.max_size.map_or(10 * 1024 * 1024, NonZeroU64::get);
        Ok((
            Attachments { blocked, max_size },
            Hooks::DATA | Hooks::SHAREABLE,
        ))
    }

    fn data(&mut self, _session: &Session, _envelope: &Envelope, message: &Message) -> DataOutcome {
        if message.body_size() > self.max_size {
            log::warn(&format!(
                "message of {} octets is larger than max_size; not scanned",
                message.body_size()
            ));
            return DataOutcome::default();
        }
        let raw = raw_message(message);
        let Some(parsed) = MessageParser::new().parse(&raw) else {
            return DataOutcome::default();
        };
        match self.blocked_name(&parsed, 0) {
            Some(name) => {
                log::info(&format!("refused an attachment named {name:?}"));
                let shown: String = name.chars().filter(|c| !c.is_control()).take(100).collect();
                Verdict::reject(
                    554,
                    "5.7.1",
                    format!("Attachment {shown:?} is of a blocked type; message refused"),
                )
                .into()
            }
            None => DataOutcome::default(),
        }
    }
}

portcullis_sdk::export!(Attachments);

#[cfg(test)]
mod tests {
    use portcullis_sdk::{Verdict, testing::Harness};

    use super::{Attachments, extension};

    fn verdict(config: &str, message: &str) -> Verdict {
        let mut harness = Harness::<Attachments>::new(config).unwrap();
        harness.mail("a@example.org");
        harness.rcpt("b@example.com");
        harness.data(message.as_bytes()).verdict
    }

    fn multipart(filename: &str) -> String {
        format!(
            "From: a@example.org\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
             --outer\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n\
             --outer\r\nContent-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"{filename}\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--outer--\r\n"
        )
    }

    #[test]
    fn extensions_are_read_as_windows_would() {
        let cases = [
            ("a.EXE", Some("exe")),
            ("invoice.pdf.exe", Some("exe")),
            ("x.exe. . ", Some("exe")),
            ("README", None),
        ];
        for (name, expected) in cases {
            assert_eq!(extension(name).as_deref(), expected, "{name}");
        }
    }

    #[test]
    fn blocked_attachments_are_refused_and_others_pass() {
        assert!(
            matches!(verdict("", &multipart("invoice.pdf.exe")), Verdict::Reject(r) if r.code == 554)
        );
        assert_eq!(verdict("", &multipart("report.pdf")), Verdict::Continue);
        assert_eq!(
            verdict("", "Subject: plain\r\n\r\nno attachments\r\n"),
            Verdict::Continue
        );
        let custom = "blocked_extensions = [\".PDF\"]";
        assert!(matches!(
            verdict(custom, &multipart("report.pdf")),
            Verdict::Reject(_)
        ));
        assert_eq!(verdict(custom, &multipart("tool.exe")), Verdict::Continue);
    }

    #[test]
    fn nested_multiparts_and_attached_messages_are_searched() {
        let nested = "Subject: nested\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"a\"\r\n\r\n\
            --a\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
            --a\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
            --b\r\nContent-Type: text/plain\r\n\r\ninner\r\n\
            --b\r\nContent-Type: application/x-msdownload; name=\"setup.scr\"\r\n\r\nMZ\r\n--b--\r\n--a--\r\n";
        assert!(matches!(verdict("", nested), Verdict::Reject(_)));
        let forwarded = format!(
            "Subject: fwd\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"f\"\r\n\r\n\
             --f\r\nContent-Type: text/plain\r\n\r\nforwarding\r\n\
             --f\r\nContent-Type: message/rfc822\r\n\r\n{}--f--\r\n",
            multipart("payload.js")
        );
        assert!(matches!(verdict("", &forwarded), Verdict::Reject(_)));
    }

    #[test]
    fn bad_configuration_is_refused() {
        for config in ["blocked_extensions = \"exe\"", "max_size = 0"] {
            assert!(Harness::<Attachments>::new(config).is_err(), "{config}");
        }
    }
}
