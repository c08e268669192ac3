//! The session's side of the plugin chain: the connect hook, what a refusing decision
//! does to the session, and what plugins are told about the session and its envelope.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Flow, Session};
use crate::{hooks::Decision, plugin_host::view, smtp::MailCommand};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// The connect hook: `Flow::Close` (after the plugin's reply) if it refused.
    pub(super) async fn connect_hook(&mut self) -> Flow {
        if self.hooks.is_empty() {
            return Flow::Continue;
        }
        let info = self.plugin_session();
        match self.hooks.connect(&info).await {
            Decision::Continue | Decision::Accept | Decision::Discard => Flow::Continue,
            // A refusal at connect answers instead of the greeting; the session ends.
            Decision::Refuse(reply) | Decision::Disconnect(reply) => {
                self.reply(reply);
                Flow::Close
            }
        }
    }

    /// Applies a refusing decision: `Some(flow)` when the stage must not go on.
    pub(super) fn refused(&mut self, decision: Decision) -> Option<Flow> {
        match decision {
            Decision::Continue | Decision::Accept | Decision::Discard => None,
            Decision::Refuse(reply) => Some(self.reply(reply)),
            Decision::Disconnect(reply) => {
                self.reply(reply);
                Some(Flow::Close)
            }
        }
    }

    /// What plugins are told about this session.
    pub(super) fn plugin_session(&self) -> view::SessionInfo {
        view::SessionInfo {
            id: self.id.clone(),
            listener: self.hooks.listener().to_string(),
            client_ip: self.peer.address.ip().to_string(),
            client_port: self.peer.address.port(),
            helo: self.peer.helo.clone(),
            tls: self.peer.tls.is_some(),
            login: self.peer.login.as_ref().map(|login| login.name.clone()),
        }
    }

    /// What plugins are told about the envelope: `mail` if it is not accepted yet.
    pub(super) fn plugin_envelope(&self, mail: Option<&MailCommand>) -> view::Envelope {
        let envelope = self.transaction.envelope();
        let sender = mail.or(envelope.map(|e| &e.mail));
        view::Envelope {
            sender: sender
                .map(|m| m.reverse_path.mailbox().to_string())
                .unwrap_or_default(),
            mail_params: sender
                .map(|m| {
                    m.params
                        .iter()
                        .map(|p| view::Param {
                            keyword: p.keyword.clone(),
                            value: p.value.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            recipients: envelope
                .iter()
                .flat_map(|e| &e.recipients)
                .map(|r| r.forward_path.mailbox().to_string())
                .collect(),
        }
    }
}
