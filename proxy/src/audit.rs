//! The audit trail: one record per message — who sent it, the envelope as the client
//! gave it and as the upstream got it, what each chain member said at each stage
//! (shadow verdicts and edits included), the final reply and the upstream's queue id,
//! and how long it took — as a JSON log event and, with `[audit] path`, a line of an
//! append-only file rotated by size. `portcullis replay --record` runs records
//! through a chain again and shows where the verdicts differ.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
};

use file_rotate::{ContentLimit, FileRotate, compression::Compression, suffix::AppendCount};
use serde::{Deserialize, Serialize};

use tracing::{info, warn};

use crate::{
    config::AuditConfig,
    log_limit::{self, Event},
};

/// The format of [`Record`]; a record of another version is refused by replay.
pub const RECORD_VERSION: u32 = 1;

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// When the message ended, RFC 3339 in UTC.
    pub time: String,
    /// The session id of the proxy's logs.
    pub session: String,
    /// The listener it came in on.
    pub listener: String,
    /// Who sent it.
    pub client: ClientRecord,
    /// The envelope as the client gave it: recipients the chain or the upstream
    /// refused included, ones the proxy refused for their syntax or past the
    /// recipient limit not.
    pub received: EnvelopeRecord,
    /// The envelope as the upstream got it, after every rewrite and edit; absent if
    /// nothing went upstream.
    pub sent: Option<EnvelopeRecord>,
    /// What each chain member said, in order, since the last message of the session
    /// (the first message of a session carries connect and HELO too).
    pub chain: Vec<VerdictRecord>,
    /// The final reply the client heard.
    pub reply: String,
    /// The upstream's queue id, when its reply names one.
    pub queue_id: Option<String>,
    /// `delivered`, `discarded`, `quarantined`, `refused` or `tempfailed`.
    pub outcome: String,
    /// The message's size as received, in octets.
    pub size: u64,
    /// From MAIL to the final reply, in milliseconds.
    pub duration_ms: u64,
}

/// The client of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Its IP address.
    pub ip: String,
    /// Its port.
    pub port: u16,
    /// Its HELO/EHLO name.
    pub helo: Option<String>,
    /// The login it authenticated as.
    pub login: Option<String>,
    /// The TLS version, if encrypted.
    pub tls: Option<String>,
}

/// An envelope of a record.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EnvelopeRecord {
    /// The reverse-path without brackets (empty for the null path).
    pub from: String,
    /// The forward-paths without brackets.
    pub to: Vec<String>,
}

/// What one chain member said at one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictRecord {
    /// connect, helo, auth, mail, rcpt or data.
    pub stage: String,
    /// The plugin's or milter's name.
    pub member: String,
    /// Its verdict and edits ("shadow, would have: …" for one in shadow), or how it
    /// failed.
    pub outcome: String,
}

impl Record {
    /// The record as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record always serializes")
    }
}

/// The queue id in an upstream's reply to the final dot, as Postfix ("queued as
/// 4XyZ"), Exim ("id=1abc-…"), Sendmail ("… Message accepted for delivery") and
/// others write it.
pub fn queue_id(reply: &str) -> Option<String> {
    let word_after = |marker: &str| {
        let at = reply.find(marker)? + marker.len();
        let word: String = reply[at..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        let word = word.trim_end_matches('.').to_string();
        (!word.is_empty()).then_some(word)
    };
    word_after("queued as").or_else(|| word_after("id="))
}

/// Where records go: always a log event (target `portcullis::audit`), and the file
/// if `[audit] path` is set.
#[derive(Debug)]
pub(crate) struct Auditor {
    file: Option<AuditFile>,
}

impl Auditor {
    /// The auditor `[audit]` asks for; the error names the file.
    pub(crate) fn open(config: &AuditConfig) -> Result<Self, String> {
        let file = match &config.path {
            Some(path) => Some(
                AuditFile::open(config, path)
                    .map_err(|error| format!("audit.path {}: {error}", path.display()))?,
            ),
            None => None,
        };
        Ok(Self { file })
    }

    /// Writes one record. A file that cannot be written is warned about (at most
    /// once per interval) and the message goes on: the trail never holds mail up.
    pub(crate) fn record(&self, record: &Record) {
        let line = record.to_json();
        info!(target: "portcullis::audit", record = %line, "audit");
        if let Some(file) = &self.file
            && let Err(error) = file.append(&line)
            && log_limit::admit(Event::AuditWrite).is_some()
        {
            warn!(path = %file.path().display(), %error, "audit record not written");
        }
    }
}

/// The rotated file records are appended to.
pub(crate) struct AuditFile {
    path: PathBuf,
    writer: Mutex<FileRotate<AppendCount>>,
}

impl std::fmt::Debug for AuditFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditFile")
            .field("path", &self.path)
            .finish()
    }
}

impl AuditFile {
    /// Opens (creating) `config.path` for appending; the error names the path.
    pub(crate) fn open(config: &AuditConfig, path: &Path) -> std::io::Result<Self> {
        // Opened here first, so a path that cannot be written is a start-up error
        // with the reason, not a failure at the first message.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let writer = FileRotate::new(
            path,
            AppendCount::new(config.keep),
            ContentLimit::BytesSurpassed(config.max_size_mb as usize * 1024 * 1024),
            Compression::None,
            None,
        );
        Ok(Self {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
        })
    }

    /// Appends one record as a line; the file is rotated once it passes its size.
    pub(crate) fn append(&self, line: &str) -> std::io::Result<()> {
        let mut buffer = Vec::with_capacity(line.len() + 1);
        buffer.extend_from_slice(line.as_bytes());
        buffer.push(b'\n');
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        writer.write_all(&buffer)?;
        writer.flush()
    }

    /// Where it writes.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_in_upstream_replies() {
        let table = [
            ("2.0.0 Ok: queued as 4XyZ12AbC", Some("4XyZ12AbC")),
            ("OK id=1vXyZa-000123-AB", Some("1vXyZa-000123-AB")),
            ("2.0.0 Stored as 1796-8544-0.eml", None),
            ("2.0.0 Ok", None),
            ("queued as ", None),
        ];
        for (reply, id) in table {
            assert_eq!(queue_id(reply).as_deref(), id, "{reply}");
        }
    }

    #[test]
    fn records_rotate_by_size_and_stay_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let config = AuditConfig {
            path: Some(path.clone()),
            max_size_mb: 1,
            keep: 2,
        };
        let file = AuditFile::open(&config, &path).unwrap();
        let line = "x".repeat(300 * 1024);
        for _ in 0..10 {
            file.append(&line).unwrap();
        }
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 3, "{files:?}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(text.lines().all(|l| l.len() == line.len()), "{file:?}");
        }
    }

    #[test]
    fn records_read_back() {
        let record = Record {
            version: RECORD_VERSION,
            time: "2026-12-05T03:00:00Z".into(),
            session: "s1".into(),
            listener: "mx".into(),
            client: ClientRecord {
                ip: "192.0.2.1".into(),
                port: 4000,
                helo: Some("client.example".into()),
                login: None,
                tls: None,
            },
            received: EnvelopeRecord {
                from: "a@example.com".into(),
                to: vec!["b@example.org".into()],
            },
            sent: None,
            chain: vec![VerdictRecord {
                stage: "rcpt".into(),
                member: "recipients".into(),
                outcome: "reject 550 5.1.1 no".into(),
            }],
            reply: "550 5.1.1 no".into(),
            queue_id: None,
            outcome: "refused".into(),
            size: 0,
            duration_ms: 3,
        };
        let line = record.to_json();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), record);
    }
}
