//! The client's host names (PTR, then forward-confirmed), looked up in the background
//! from connect on, for XCLIENT and the Received field.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::Session;
use crate::dns::{ClientName, HostName};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Starts looking up the client's host names in the background, if they are to be
    /// used (XCLIENT, the Received field); [`Session::await_client_name`] waits for
    /// the answer. Done once the connect hook let the client in, so a refused connection
    /// costs no DNS.
    pub(super) fn start_name_lookup(&mut self) {
        if self.context.upstream.config.client_name_lookup {
            let (dns, ip) = (self.context.dns.clone(), self.peer.address.ip());
            let lookup = tokio::spawn(async move { dns.client_name(ip).await });
            self.name_lookup = Some(AbortOnDropHandle::new(lookup));
        }
    }

    /// Waits for the client's host names if their lookup is under way (bounded by
    /// twice `dns.timeout`), so the upstream is told them.
    pub(super) async fn await_client_name(&mut self) {
        if let Some(lookup) = self.name_lookup.take() {
            self.peer.name = Some(finished(lookup).await);
        }
    }
}

/// The client's host names once `lookup` is done (a lookup that died counts as a
/// temporary failure).
pub(super) async fn finished(lookup: AbortOnDropHandle<ClientName>) -> ClientName {
    let name = lookup
        .await
        .unwrap_or_else(|_| ClientName::neither(HostName::TemporarilyUnavailable));
    debug!(?name, "client host name");
    name
}
