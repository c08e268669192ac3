//! The envelope as a plugin instance may have fetched it: calls refer to the envelope
//! by a version, so a plugin reads only what changed (`context.recipients-from`).

use super::{abi, view};

/// The envelope as the plugin may have fetched it, and its version.
pub(super) struct KnownEnvelope {
    pub(super) envelope: view::Envelope,
    version: u32,
}

impl KnownEnvelope {
    pub(super) fn new() -> Self {
        KnownEnvelope {
            envelope: view::Envelope::default(),
            version: 0,
        }
    }

    /// Takes in `envelope` and says how a call refers to it. The version stays while
    /// recipients are only added at the end, so what the plugin fetched before is
    /// still a prefix of what it may fetch now.
    pub(super) fn refer(&mut self, envelope: &view::Envelope) -> abi::EnvelopeRef {
        let known = &mut self.envelope;
        let extends_known = known.sender == envelope.sender
            && known.mail_params == envelope.mail_params
            && envelope.recipients.starts_with(&known.recipients);
        if extends_known {
            let new = &envelope.recipients[known.recipients.len()..];
            known.recipients.extend_from_slice(new);
        } else {
            *known = envelope.clone();
            self.version = self.version.wrapping_add(1);
        }
        abi::EnvelopeRef {
            version: self.version,
            recipients: u32::try_from(envelope.recipients.len()).unwrap_or(u32::MAX),
        }
    }

    /// The recipients from `index` on.
    pub(super) fn recipients_from(&self, index: u32) -> Vec<String> {
        let recipients = &self.envelope.recipients;
        let start = (index as usize).min(recipients.len());
        recipients[start..].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(sender: &str, recipients: &[&str]) -> view::Envelope {
        view::Envelope {
            sender: sender.into(),
            mail_params: Vec::new(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn the_envelope_version_changes_unless_recipients_are_only_added() {
        let mut known = KnownEnvelope::new();
        let first = known.refer(&envelope("a@x.test", &[]));
        let grown = known.refer(&envelope("a@x.test", &["b@y.test", "c@y.test"]));
        assert_eq!(grown.version, first.version, "recipients added at the end");
        assert_eq!(grown.recipients, 2);
        assert_eq!(known.recipients_from(1), ["c@y.test"]);
        assert!(known.recipients_from(7).is_empty());
        let changes = [
            envelope("a@x.test", &["c@y.test"]), // a recipient removed
            envelope("a@x.test", &["b@y.test", "c@y.test"]), // one added before
            envelope("other@x.test", &["b@y.test", "c@y.test"]), // new sender
            envelope("other@x.test", &[]),       // a new transaction
        ];
        let mut version = grown.version;
        for changed in changes {
            let now = known.refer(&changed);
            assert_ne!(now.version, version, "{changed:?}");
            assert_eq!(known.recipients_from(0), changed.recipients);
            version = now.version;
        }
        let mut with_params = envelope("other@x.test", &[]);
        with_params.mail_params.push(view::Param {
            keyword: "BODY".into(),
            value: Some("8BITMIME".into()),
        });
        assert_ne!(
            known.refer(&with_params).version,
            version,
            "new MAIL parameters"
        );
    }
}
