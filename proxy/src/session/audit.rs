//! The session's part of the audit trail: what a record needs that the session does
//! not otherwise keep (the envelope as the client gave it, and as the upstream got
//! it after the DATA stage's edits), and the record itself when a message ends.

use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;
use crate::{
    audit::{self, ClientRecord, EnvelopeRecord, Record, VerdictRecord},
    smtp::Reply,
    telemetry::MessageOutcome,
};

/// The current transaction, as the audit record will tell it.
#[derive(Debug, Default)]
pub(super) struct Draft {
    /// The client's MAIL and RCPT addresses, before any rewrite.
    received: EnvelopeRecord,
    /// The envelope the message went upstream with, once known.
    sent: Option<EnvelopeRecord>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// A new transaction begins with the client's MAIL: what the chain said about an
    /// earlier one that never reached DATA is dropped from the trail.
    pub(super) fn audit_mail(&mut self, from: &str) {
        if self.context.audit.is_some() {
            self.hooks.forget_transaction_trace();
            self.audit = Some(Draft {
                received: EnvelopeRecord {
                    from: from.to_string(),
                    to: Vec::new(),
                },
                sent: None,
            });
        }
    }

    /// A RCPT the client gave, before the chain saw it.
    pub(super) fn audit_rcpt(&mut self, to: &str) {
        if let Some(draft) = &mut self.audit {
            draft.received.to.push(to.to_string());
        }
    }

    /// The envelope the message goes upstream with.
    pub(super) fn audit_sent(&mut self, from: &str, to: &[String]) {
        if let Some(draft) = &mut self.audit {
            draft.sent = Some(EnvelopeRecord {
                from: from.to_string(),
                to: to.to_vec(),
            });
        }
    }

    /// Writes the record of the message that ended with `reply`.
    pub(super) fn audit_message(&mut self, size: u64, reply: &Reply, outcome: MessageOutcome) {
        let Some(auditor) = self.context.audit.clone() else {
            return;
        };
        let draft = self.audit.take().unwrap_or_default();
        let envelope = self.transaction.envelope();
        // Without a DATA stage the message streamed with the envelope the upstream
        // accepted; with one, the stage said what it sent (nothing, if it refused).
        let sent = draft.sent.or_else(|| {
            (!self.hooks.wants_data())
                .then_some(envelope)
                .flatten()
                .map(|e| EnvelopeRecord {
                    from: e.mail.reverse_path.mailbox().to_string(),
                    to: e
                        .recipients
                        .iter()
                        .map(|r| r.forward_path.mailbox().to_string())
                        .collect(),
                })
        });
        let chain = self
            .hooks
            .take_trace()
            .into_iter()
            .map(|entry| VerdictRecord {
                stage: entry.stage.to_string(),
                member: entry.plugin.to_string(),
                outcome: entry.outcome,
            })
            .collect();
        let text = reply.to_string();
        let record = Record {
            version: audit::RECORD_VERSION,
            time: humantime_serde::re::humantime::format_rfc3339_millis(SystemTime::now())
                .to_string(),
            session: self.id.clone(),
            listener: self.listener.config.name.clone(),
            client: ClientRecord {
                ip: self.peer.address.ip().to_string(),
                port: self.peer.address.port(),
                helo: self.peer.helo.clone(),
                login: self.login_name().map(str::to_string),
                tls: self.peer.tls.as_ref().map(|tls| tls.version.clone()),
            },
            received: draft.received,
            sent,
            chain,
            queue_id: reply
                .is_positive()
                .then(|| audit::queue_id(&text))
                .flatten(),
            reply: text,
            outcome: match outcome {
                MessageOutcome::Accepted => "delivered",
                other => other.label(),
            }
            .to_string(),
            size,
            duration_ms: envelope.map_or(0, |e| e.started.elapsed().as_millis() as u64),
        };
        auditor.record(&record);
    }
}
