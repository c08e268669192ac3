//! `headers`: header hygiene at DATA.
//!
//! - `remove`: names of fields to remove (e.g. a client-supplied
//!   `Authentication-Results`, which only the receiving host may add);
//! - `add`: fields to add at the end of the header block, a list of
//!   `{ name = "...", value = "..." }`; in the value `{client_ip}`, `{helo}`,
//!   `{session}` and `{listener}` are replaced by the session's values;
//! - `subject_tags`: rules that prefix the subject with a tag, each
//!   `{ tag = "[EXTERNAL]", sender_domain_not_in = ["example.com"] }` (tag mail from
//!   other domains) or `{ tag = "[SPAM]", header = "X-Spam-Flag", contains = "yes" }`
//!   (tag when a field contains a text, ignoring case). A subject that already starts
//!   with the tag is left alone; a message without a subject gets one.
//!
//! Removals happen before additions, so a removed field can be replaced by our own.

use portcullis_sdk::{
    Config, DataOutcome, Envelope, Header, Hooks, Message, MessageEdit, Plugin, Session,
};
use serde::Deserialize;

/// The `config` table, as the operator writes it (an unknown key is an error).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    add: Vec<AddField>,
    #[serde(default)]
    subject_tags: Vec<TagRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddField {
    name: String,
    value: String,
}

/// One `subject_tags` entry: a tag and either `sender_domain_not_in` or `header` with
/// `contains`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagRule {
    tag: String,
    sender_domain_not_in: Option<Vec<String>>,
    header: Option<String>,
    contains: Option<String>,
}

/// When a subject tag applies.
#[derive(Debug)]
enum Condition {
    SenderDomainNotIn(Vec<String>),
    HeaderContains { name: String, text: String },
}

#[derive(Debug)]
struct SubjectTag {
    tag: String,
    condition: Condition,
}

/// The plugin's configuration.
pub struct Headers {
    remove: Vec<String>,
    add: Vec<(String, String)>,
    subject_tags: Vec<SubjectTag>,
}

impl TryFrom<TagRule> for SubjectTag {
    type Error = String;

    fn try_from(rule: TagRule) -> Result<Self, String> {
        let TagRule {
            tag,
            sender_domain_not_in,
            header,
            contains,
        } = rule;
        let condition = match (sender_domain_not_in, header, contains) {
            (Some(domains), None, None) => Condition::SenderDomainNotIn(
                domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            ),
            (None, Some(name), Some(text)) => Condition::HeaderContains {
                name,
                text: text.to_lowercase(),
            },
            _ => {
                return Err(format!(
                    "subject tag {tag:?} needs either sender_domain_not_in, or header and contains"
                ));
            }
        };
        Ok(SubjectTag { tag, condition })
    }
}

impl SubjectTag {
    fn applies(&self, envelope: &Envelope, headers: &[Header]) -> bool {
        match &self.condition {
            Condition::SenderDomainNotIn(domains) => {
                let domain = envelope
                    .sender()
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_ascii_lowercase());
                !domain.is_some_and(|d| domains.contains(&d))
            }
            Condition::HeaderContains { name, text } => headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case(name) && h.value.to_lowercase().contains(text)
            }),
        }
    }
}

fn expand(template: &str, session: &Session) -> String {
    template
        .replace("{client_ip}", &session.client_ip)
        .replace("{helo}", session.helo.as_deref().unwrap_or("unknown"))
        .replace("{session}", &session.id)
        .replace("{listener}", &session.listener)
}

impl Plugin for Headers {
    fn init(config: &Config) -> Result<(Self, Hooks), String> {
        let settings: Settings = config.parse()?;
        let subject_tags = settings
            .subject_tags
            .into_iter()
            .map(SubjectTag::try_from)
            .collect::<Result<_, String>>()?;
        let plugin = Headers {
            remove: settings.remove,
            add: settings
                .add
                .into_iter()
                .map(|f| (f.name, f.value))
                .collect(),
            subject_tags,
        };
        Ok((plugin, Hooks::DATA | Hooks::SHAREABLE))
    }

    fn data(&mut self, session: &Session, envelope: &Envelope, message: &Message) -> DataOutcome {
        let headers = message.header_fields();
        let mut edits: Vec<MessageEdit> =
            self.remove.iter().map(MessageEdit::remove_header).collect();
        edits.extend(
            self.add
                .iter()
                .map(|(name, value)| MessageEdit::add_header(name, expand(value, session))),
        );
        let subject = message.header("Subject");
        let mut tagged = subject.clone().unwrap_or_default();
        for rule in &self.subject_tags {
            if rule.applies(envelope, headers) && !tagged.starts_with(&rule.tag) {
                tagged = if tagged.is_empty() {
                    rule.tag.clone()
                } else {
                    format!("{} {tagged}", rule.tag)
                };
            }
        }
        if subject.as_deref() != Some(tagged.as_str()) && !tagged.is_empty() {
            edits.push(MessageEdit::change_header("Subject", 0, tagged));
        }
        DataOutcome::with_edits(edits)
    }
}

portcullis_sdk::export!(Headers);

#[cfg(test)]
mod tests {
    use portcullis_sdk::{MessageEdit, testing::Harness};

    use super::Headers;

    const CONFIG: &str = r#"
        remove = ["Authentication-Results"]
        add = [{ name = "X-Received-Via", value = "{listener} from {client_ip}" }]
        subject_tags = [
            { tag = "[EXTERNAL]", sender_domain_not_in = ["example.com"] },
            { tag = "[SPAM]", header = "X-Spam-Flag", contains = "yes" },
        ]
    "#;

    fn harness(sender: &str) -> Harness<Headers> {
        let mut harness = Harness::<Headers>::new(CONFIG).unwrap();
        harness.mail(sender);
        harness.rcpt("someone@example.com");
        harness
    }

    #[test]
    fn removes_adds_and_tags_mail_from_outside() {
        let edits = harness("eve@outside.test")
            .data(b"Subject: hello\r\nAuthentication-Results: forged\r\n\r\nbody\r\n")
            .edits;
        assert_eq!(
            edits,
            [
                MessageEdit::remove_header("Authentication-Results"),
                MessageEdit::add_header("X-Received-Via", "test from 192.0.2.1"),
                MessageEdit::change_header("Subject", 0, "[EXTERNAL] hello"),
            ]
        );
    }

    #[test]
    fn internal_mail_keeps_its_subject_unless_flagged() {
        let edits = harness("alice@EXAMPLE.com")
            .data(b"Subject: hello\r\n\r\nbody\r\n")
            .edits;
        assert!(
            !edits
                .iter()
                .any(|e| matches!(e, MessageEdit::ChangeHeader { .. }))
        );
        let edits = harness("alice@example.com")
            .data(b"Subject: hello\r\nX-Spam-Flag: YES\r\n\r\nbody\r\n")
            .edits;
        assert!(edits.contains(&MessageEdit::change_header("Subject", 0, "[SPAM] hello")));
    }

    #[test]
    fn tags_once_and_adds_a_missing_subject() {
        let edits = harness("eve@outside.test")
            .data(b"Subject: [EXTERNAL] hello\r\n\r\nbody\r\n")
            .edits;
        assert!(
            !edits
                .iter()
                .any(|e| matches!(e, MessageEdit::ChangeHeader { .. }))
        );
        let edits = harness("eve@outside.test")
            .data(b"From: eve@outside.test\r\n\r\nbody\r\n")
            .edits;
        assert!(edits.contains(&MessageEdit::change_header("Subject", 0, "[EXTERNAL]")));
    }

    #[test]
    fn bad_configuration_is_refused() {
        for config in [
            "remove = \"X\"",
            "add = [{ name = \"X\" }]",
            "subject_tags = [{ tag = \"[T]\" }]",
            "subject_tags = [{ tag = \"[T]\", header = \"X\" }]",
            "remoev = [\"X\"]",
        ] {
            assert!(Harness::<Headers>::new(config).is_err(), "{config}");
        }
    }
}
