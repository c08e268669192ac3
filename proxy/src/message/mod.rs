//! The message at the DATA stage when a plugin wants it: spooled as it arrives
//! ([`SpoolWriter`]), shown to the chain, changed by the plugins' edits ([`Edit`], each
//! checked before it applies), and then written upstream. Header fields nobody touched
//! keep their exact bytes.

pub mod header;
pub mod spool;

pub use header::{FieldError, HeaderField};
pub use spool::{Body, SpoolWriter, Spooled};

use std::sync::Arc;

use portcullis_syntax::{Violation, body};

use crate::smtp::{Command, MailCommand, Param, Path, RcptCommand, command};

/// A change a plugin asked for at the DATA stage. Header positions count from 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Append a field at the end of the header block.
    AddHeader {
        /// The field name.
        name: String,
        /// The value (may be folded).
        value: String,
    },
    /// Insert a field before the field now at `index` (at the end past the last).
    InsertHeader {
        /// 0-based among all fields.
        index: usize,
        /// The field name.
        name: String,
        /// The value (may be folded).
        value: String,
    },
    /// Change the `index`-th field of `name`, or remove it with `None`. With a value
    /// and no such field, the field is added at the end.
    ChangeHeader {
        /// The field name.
        name: String,
        /// 0-based among the fields of this name.
        index: usize,
        /// The new value, or `None` to remove.
        value: Option<String>,
    },
    /// Remove every field of this name.
    RemoveHeader(String),
    /// Replace the body.
    ReplaceBody(Vec<u8>),
    /// Add text after the body.
    AppendBody(Vec<u8>),
    /// Add text before the body.
    PrependBody(Vec<u8>),
    /// Add a recipient (a mailbox without angle brackets).
    AddRecipient(String),
    /// Remove a recipient.
    RemoveRecipient(String),
    /// Mark the message for quarantine, with a reason.
    Quarantine(String),
    /// A new envelope sender and MAIL parameters (a milter's `SMFIR_CHGFROM`); the
    /// upstream transaction starts over with it. The chain checks the parameters
    /// against what the client was offered before this applies.
    ChangeSender {
        /// The mailbox without angle brackets; empty for the null path.
        address: String,
        /// ESMTP keywords and values.
        params: Vec<(String, Option<String>)>,
    },
}

/// Why an edit was refused (which rule it breaks); the plugin that asked for it has
/// failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// A header field that would break the header block.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// A recipient, body text or reason that breaks its rule.
    #[error(transparent)]
    Rule(#[from] Violation),
    /// A recipient or sender that does not render and parse back to itself.
    #[error("address {0:?} does not parse back to itself")]
    Recipient(String),
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
    /// A new MAIL for the upstream, if a milter changed the envelope sender.
    pub sender: Option<MailCommand>,
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
            sender: None,
        }
    }

    /// If a plugin marked the message for quarantine: adds the field `header` with the
    /// reason and, with a `redirect` mailbox, sends the message there only
    /// (`[quarantine]` in the configuration).
    pub fn apply_quarantine(
        &mut self,
        header: &str,
        redirect: Option<&str>,
    ) -> Result<(), EditError> {
        let Some(reason) = self.quarantine.clone() else {
            return Ok(());
        };
        if let Some(mailbox) = redirect {
            self.recipients = vec![mailbox.to_string()];
        }
        self.apply(Edit::AddHeader {
            name: header.to_string(),
            value: reason,
        })
    }

    /// Header fields as plugins see them: name and unfolded value.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        self.headers.iter().map(|f| (f.name(), f.value())).collect()
    }

    /// Header fields as milters are sent them: name and the exact text after the
    /// colon.
    pub fn header_values(&self) -> Vec<(String, Vec<u8>)> {
        self.headers
            .iter()
            .map(|f| (f.name(), f.raw_value().to_vec()))
            .collect()
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
            Edit::AddHeader { name, value } => self.headers.push(HeaderField::new(&name, &value)?),
            Edit::InsertHeader { index, name, value } => {
                let field = HeaderField::new(&name, &value)?;
                self.headers.insert(index.min(self.headers.len()), field);
            }
            Edit::ChangeHeader { name, index, value } => self.change_header(&name, index, value)?,
            Edit::RemoveHeader(name) => self.headers.retain(|f| !f.is(&name)),
            Edit::ReplaceBody(body) => {
                self.body = Body::Memory(Arc::new(body::normalize(&body)?));
                self.separator = true;
            }
            Edit::AppendBody(text) => {
                let text = Body::Memory(Arc::new(body::normalize(&text)?));
                self.body = Body::joined([self.body.clone(), text]);
                self.separator = true;
            }
            Edit::PrependBody(text) => {
                let text = Body::Memory(Arc::new(body::normalize(&text)?));
                self.body = Body::joined([text, self.body.clone()]);
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
                body::check_text("quarantine reason", &reason)?;
                self.quarantine = Some(reason);
            }
            Edit::ChangeSender { address, params } => {
                self.sender = Some(valid_sender(&address, params)?);
            }
        }
        Ok(())
    }

    fn change_header(
        &mut self,
        name: &str,
        index: usize,
        value: Option<String>,
    ) -> Result<(), EditError> {
        let position = self
            .headers
            .iter()
            .enumerate()
            .filter(|(_, f)| f.is(name))
            .nth(index)
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

/// The mailbox of a recipient a plugin added, checked by the rules of a client's RCPT
/// TO and by rendering and parsing back.
fn valid_recipient(address: &str) -> Result<String, EditError> {
    portcullis_syntax::address::check_forward_path(address)?;
    let rcpt = RcptCommand {
        forward_path: Path::bracketed(address),
        params: Vec::new(),
    };
    match command::parse(rcpt.to_string().as_bytes()) {
        Ok(Command::Rcpt(parsed)) if parsed == rcpt => Ok(address.to_string()),
        _ => Err(EditError::Recipient(address.into())),
    }
}

/// A new sender's MAIL command, checked by the rules of a client's MAIL FROM and by
/// rendering and parsing back.
fn valid_sender(
    address: &str,
    params: Vec<(String, Option<String>)>,
) -> Result<MailCommand, EditError> {
    portcullis_syntax::address::check_reverse_path(address)?;
    portcullis_syntax::param::check_params(
        portcullis_syntax::param::Verb::Mail,
        params.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
    )?;
    let mail = MailCommand {
        reverse_path: Path::bracketed(address),
        params: params
            .into_iter()
            .map(|(keyword, value)| Param { keyword, value })
            .collect(),
    };
    match command::parse(mail.to_string().as_bytes()) {
        Ok(Command::Mail(parsed)) if parsed == mail => Ok(mail),
        _ => Err(EditError::Recipient(address.into())),
    }
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
            sender: None,
        }
    }

    fn add(name: &str, value: &str) -> Edit {
        Edit::AddHeader {
            name: name.into(),
            value: value.into(),
        }
    }

    fn insert(index: usize, name: &str, value: &str) -> Edit {
        Edit::InsertHeader {
            index,
            name: name.into(),
            value: value.into(),
        }
    }

    fn change(name: &str, index: usize, value: Option<&str>) -> Edit {
        Edit::ChangeHeader {
            name: name.into(),
            index,
            value: value.map(Into::into),
        }
    }

    fn block(message: &Message) -> String {
        String::from_utf8(message.header_block()).unwrap()
    }

    #[test]
    fn header_edits_apply_in_order() {
        let mut m = message(b"A: 1\r\nB: 2\r\nA: 3\r\n\r\n");
        let edits = [
            (add("C", "4"), "A: 1\r\nB: 2\r\nA: 3\r\nC: 4\r\n\r\n"),
            (
                insert(0, "Z", "0"),
                "Z: 0\r\nA: 1\r\nB: 2\r\nA: 3\r\nC: 4\r\n\r\n",
            ),
            (
                change("a", 1, Some("x")),
                "Z: 0\r\nA: 1\r\nB: 2\r\na: x\r\nC: 4\r\n\r\n",
            ),
            (change("B", 0, None), "Z: 0\r\nA: 1\r\na: x\r\nC: 4\r\n\r\n"),
            (Edit::RemoveHeader("A".into()), "Z: 0\r\nC: 4\r\n\r\n"),
            (
                change("New", 0, Some("v")),
                "Z: 0\r\nC: 4\r\nNew: v\r\n\r\n",
            ),
            (
                insert(99, "End", "e"),
                "Z: 0\r\nC: 4\r\nNew: v\r\nEnd: e\r\n\r\n",
            ),
            (
                add("Folded", "one\r\n two"),
                "Z: 0\r\nC: 4\r\nNew: v\r\nEnd: e\r\nFolded: one\r\n two\r\n\r\n",
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
            add("A", "x\r\n.\r\nMAIL FROM:<evil@example.com>"),
            add("Bad:Name", "x"),
            add("A", "nul\0"),
            Edit::AddRecipient("evil@example.com>\r\nDATA".into()),
            Edit::AddRecipient("".into()),
            Edit::AddRecipient("x@y.z> NOTIFY=NEVER".into()),
            Edit::ReplaceBody(vec![b'x'; 1200]),
            Edit::AppendBody(vec![b'x'; 1200]),
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
        m.apply(add("X-Tag", "v")).unwrap();
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

    #[tokio::test]
    async fn text_goes_before_and_after_the_body_without_reading_it() {
        let mut m = message(b"A: 1\r\n\r\n");
        m.apply(Edit::AppendBody(b"-- \nfooter".to_vec())).unwrap();
        m.apply(Edit::PrependBody(b"notice\n".to_vec())).unwrap();
        m.apply(Edit::AppendBody(b"second footer\r\n".to_vec()))
            .unwrap();
        assert_eq!(m.body.len(), 42);
        let whole = m.body.read_at(0, usize::MAX).await.unwrap();
        assert_eq!(
            whole,
            b"notice\r\nbody\r\n-- \r\nfooter\r\nsecond footer\r\n"
        );
        let middle = m.body.read_at(10, 12).await.unwrap();
        assert_eq!(middle, b"dy\r\n-- \r\nfoo");
    }
}
