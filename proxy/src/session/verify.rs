//! VRFY and EXPN: refused locally (252, 502) without revealing anything, or relayed to
//! the upstream, as `smtp.vrfy` and `smtp.expn` say.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Flow, Session, replies};
use crate::config::VerifyPolicy;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// VRFY/EXPN: answered locally or relayed, as configured.
    pub(super) async fn verify(
        &mut self,
        verb: &str,
        argument: &str,
        policy: VerifyPolicy,
    ) -> Flow {
        if policy == VerifyPolicy::Refuse {
            return match verb {
                "VRFY" => self.reply(replies::cannot_verify()),
                _ => self.error(replies::expn_disabled()),
            };
        }
        let timeout = self.context.upstream.config.timeouts.command;
        let line = format!("{verb} {argument}");
        match self.upstream_command(&line, timeout).await {
            Ok(reply) => self.relay(reply),
            Err(reply) => self.reply(reply),
        }
    }
}
