//! The message at the DATA stage when a plugin wants it: spooled as it arrives
//! ([`SpoolWriter`]), shown to the chain, changed by the plugins' edits ([`Edit`], each
//! checked before it applies), and then written upstream. Header fields nobody touched
//! keep their exact bytes.

pub mod header;
pub mod spool;

pub use header::{FieldError, HeaderField};
pub use spool::{Body, SpoolWriter, Spooled};

use std::sync::Arc;

use crate::{
    config::QuarantineConfig,
    smtp::{Command, command},
};

/// Longest line of a replaced body, CRLF excluded (RFC 5321 §4.5.3.1.6).
const MAX_BODY_LINE: usize = 998;

/// A change a plugin asked for at the DATA stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Append a field at the end of the header block.
    AddHeader(String, String),
    /// Insert a field before the field at this 0-based index (at the end past it).
    InsertHeader(usize, String, String),
    /// Change the n-th (1-based) field of this name, or remove it with `None`. With a
    /// value and no such field, the field is added at the end.
    ChangeHeader(String, usize, Option<String>),
    /// Remove every field of this name.
    RemoveHeader(String),
    /// Replace the body.
    ReplaceBody(Vec<u8>),
    /// Add a recipient (a mailbox without angle brackets).
    AddRecipient(String),
    /// Remove a recipient.
    RemoveRecipient(String),
    /// Mark the message for quarantine, with a reason.
    Quarantine(String),
}

/// Why an edit was refused; the plugin that asked for it has failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// A header field that would break the header block.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// An address that is not a valid forward-path.
    #[error("invalid recipient {0:?}")]
    Recipient(String),
    /// A replacement body with a line longer than 998 octets.
    #[error("replacement body has a line longer than 998 octets")]
    BodyLine,
    /// Control characters in a quarantine reason.
    #[error("control characters in the quarantine reason")]
    Reason,
}

/// The message and its recipients as the chain has made them so far.
#[derive(Debug, Clone)]
pub struct Message {
    /// Header fields in order.
    pub headers: Vec<HeaderField>,
    /// Whether an empty line separates the header block from the body.
    pub separator: bool,
    /// The body (the spooled one, or a plugin's replacement).
    pub body: Body,
    /// The mailboxes (without angle brackets) the message goes to.
    pub recipients: Vec<String>,
    /// Set when a plugin marked the message for quarantine: the reason.
    pub quarantine: Option<String>,
}

impl Message {
    /// The spooled message for these recipients.
    pub fn new(spooled: Spooled, recipients: Vec<String>) -> Self {
        Self {
            headers: spooled.headers,
            separator: spooled.separator,
            body: spooled.body,
            recipients,
            quarantine: None,
        }
    }

    /// If a plugin marked the message for quarantine: adds the configured header with
    /// the reason and, if configured, sends it to the quarantine mailbox only.
    pub fn apply_quarantine(&mut self, config: &QuarantineConfig) -> Result<(), EditError> {
        let Some(reason) = self.quarantine.clone() else {
            return Ok(());
        };
        if let Some(mailbox) = &config.redirect {
            self.recipients = vec![mailbox.clone()];
        }
        self.apply(Edit::AddHeader(config.header.clone(), reason))
    }

    /// Header fields as plugins see them: name and unfolded value.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        self.headers.iter().map(|f| (f.name(), f.value())).collect()
    }

    /// The header block as it goes upstream, empty line included.
    pub fn header_block(&self) -> Vec<u8> {
        let size = self.headers.iter().map(|f| f.raw().len()).sum::<usize>() + 2;
        let mut block = Vec::with_capacity(size);
        for field in &self.headers {
            block.extend_from_slice(field.raw());
        }
        if self.separator || self.body.is_empty() && !self.headers.is_empty() {
            block.extend_from_slice(b"\r\n");
        }
        block
    }

    /// Applies one edit, or refuses it and leaves the message as it was.
    pub fn apply(&mut self, edit: Edit) -> Result<(), EditError> {
        let had_header = !self.headers.is_empty();
        self.apply_edit(edit)?;
        if !had_header && !self.headers.is_empty() {
            // A message that had no header block gets one: its body must not run on
            // from the new field as if it were more header.
            self.separator = true;
        }
        Ok(())
    }

    fn apply_edit(&mut self, edit: Edit) -> Result<(), EditError> {
        match edit {
            Edit::AddHeader(name, value) => self.headers.push(HeaderField::new(&name, &value)?),
            Edit::InsertHeader(index, name, value) => {
                let field = HeaderField::new(&name, &value)?;
                self.headers.insert(index.min(self.headers.len()), field);
            }
            Edit::ChangeHeader(name, nth, value) => self.change_header(&name, nth, value)?,
            Edit::RemoveHeader(name) => self.headers.retain(|f| !f.is(&name)),
            Edit::ReplaceBody(body) => {
                self.body = Body::Memory(Arc::new(normalize_body(&body)?));
                self.separator = true;
            }
            Edit::AddRecipient(address) => {
                let mailbox = valid_recipient(&address)?;
                if !self
                    .recipients
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(&mailbox))
                {
                    self.recipients.push(mailbox);
                }
            }
            Edit::RemoveRecipient(address) => self
                .recipients
                .retain(|r| !r.eq_ignore_ascii_case(&address)),
            Edit::Quarantine(reason) => {
                if reason.chars().any(char::is_control) {
                    return Err(EditError::Reason);
                }
                self.quarantine = Some(reason);
            }
        }
        Ok(())
    }

    fn change_header(
        &mut self,
        name: &str,
        nth: usize,
        value: Option<String>,
    ) -> Result<(), EditError> {
        let position = self
            .headers
            .iter()
            .enumerate()
            .filter(|(_, f)| f.is(name))
            .nth(nth.saturating_sub(1))
            .map(|(i, _)| i);
        match (position, value) {
            (Some(i), Some(value)) => self.headers[i] = HeaderField::new(name, &value)?,
            (Some(i), None) => {
                self.headers.remove(i);
            }
            (None, Some(value)) => self.headers.push(HeaderField::new(name, &value)?),
            (None, None) => {}
        }
        Ok(())
    }
}

/// The mailbox of a recipient a plugin added, checked like a client's RCPT TO.
fn valid_recipient(address: &str) -> Result<String, EditError> {
    match command::parse(format!("RCPT TO:<{address}>").as_bytes()) {
        Ok(Command::Rcpt(rcpt)) if rcpt.params.is_empty() && !rcpt.forward_path.is_null() => {
            Ok(rcpt.forward_path.mailbox().to_string())
        }
        _ => Err(EditError::Recipient(address.into())),
    }
}

/// A replacement body with every line ending made CRLF (a plugin's bare CR or LF is
/// never passed on) and every line checked against the RFC's length limit.
fn normalize_body(body: &[u8]) -> Result<Vec<u8>, EditError> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 32);
    let mut line_len = 0;
    let mut bytes = body.iter().copied().peekable();
    while let Some(byte) = bytes.next() {
        match byte {
            b'\r' | b'\n' => {
                if byte == b'\r' && bytes.peek() == Some(&b'\n') {
                    bytes.next();
                }
                out.extend_from_slice(b"\r\n");
                line_len = 0;
            }
            _ => {
                out.push(byte);
                line_len += 1;
                if line_len > MAX_BODY_LINE {
                    return Err(EditError::BodyLine);
                }
            }
        }
    }
    if line_len > 0 {
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(head: &[u8]) -> Message {
        let (headers, _, separator) = header::parse_block(head);
        Message {
            headers,
            separator,
            body: Body::Memory(Arc::new(b"body\r\n".to_vec())),
            recipients: vec!["a@example.com".into()],
            quarantine: None,
        }
    }

    fn block(message: &Message) -> String {
        String::from_utf8(message.header_block()).unwrap()
    }

    #[test]
    fn header_edits_apply_in_order() {
        let mut m = message(b"A: 1\r\nB: 2\r\nA: 3\r\n\r\n");
        let edits = [
            (
                Edit::AddHeader("C".into(), "4".into()),
                "A: 1\r\nB: 2\r\nA: 3\r\nC: 4\r\n\r\n",
            ),
            (
                Edit::InsertHeader(0, "Z".into(), "0".into()),
                "Z: 0\r\nA: 1\r\nB: 2\r\nA: 3\r\nC: 4\r\n\r\n",
            ),
            (
                Edit::ChangeHeader("a".into(), 2, Some("x".into())),
                "Z: 0\r\nA: 1\r\nB: 2\r\na: x\r\nC: 4\r\n\r\n",
            ),
            (
                Edit::ChangeHeader("B".into(), 1, None),
                "Z: 0\r\nA: 1\r\na: x\r\nC: 4\r\n\r\n",
            ),
            (Edit::RemoveHeader("A".into()), "Z: 0\r\nC: 4\r\n\r\n"),
            (
                Edit::ChangeHeader("New".into(), 1, Some("v".into())),
                "Z: 0\r\nC: 4\r\nNew: v\r\n\r\n",
            ),
            (
                Edit::InsertHeader(99, "End".into(), "e".into()),
                "Z: 0\r\nC: 4\r\nNew: v\r\nEnd: e\r\n\r\n",
            ),
        ];
        for (edit, expected) in edits {
            m.apply(edit.clone()).unwrap();
            assert_eq!(block(&m), expected, "{edit:?}");
        }
    }

    #[test]
    fn invalid_edits_are_refused_and_change_nothing() {
        let mut m = message(b"A: 1\r\n\r\n");
        let bad = [
            Edit::AddHeader("A".into(), "x\r\n.\r\nMAIL FROM:<evil@example.com>".into()),
            Edit::AddHeader("Bad:Name".into(), "x".into()),
            Edit::AddRecipient("evil@example.com>\r\nDATA".into()),
            Edit::AddRecipient("".into()),
            Edit::AddRecipient("x@y.z> NOTIFY=NEVER".into()),
            Edit::ReplaceBody(vec![b'x'; 1200]),
            Edit::Quarantine("reason\r\n".into()),
        ];
        for edit in bad {
            assert!(m.apply(edit.clone()).is_err(), "{edit:?}");
        }
        assert_eq!(block(&m), "A: 1\r\n\r\n");
        assert_eq!(m.recipients, ["a@example.com"]);
        assert!(m.quarantine.is_none());
    }

    #[test]
    fn a_field_added_to_a_message_without_header_gets_an_empty_line_after_it() {
        let mut m = message(b"");
        m.apply(Edit::AddHeader("X-Tag".into(), "v".into()))
            .unwrap();
        assert_eq!(block(&m), "X-Tag: v\r\n\r\n");
    }

    #[test]
    fn recipients_and_body_change() {
        let mut m = message(b"A: 1\r\n\r\n");
        m.apply(Edit::AddRecipient("b@example.com".into())).unwrap();
        m.apply(Edit::AddRecipient("B@example.com".into())).unwrap();
        m.apply(Edit::RemoveRecipient("A@EXAMPLE.COM".into()))
            .unwrap();
        assert_eq!(m.recipients, ["b@example.com"]);
        m.apply(Edit::ReplaceBody(b"one\ntwo\rthree\r\n.\r\nfour".to_vec()))
            .unwrap();
        let Body::Memory(body) = &m.body else {
            panic!("replaced bodies are in memory")
        };
        assert_eq!(&body[..], b"one\r\ntwo\r\nthree\r\n.\r\nfour\r\n");
    }
}
