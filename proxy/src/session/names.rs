//! The client's host names (PTR, then forward-confirmed), looked up in the background
//! from connect on, for XCLIENT and the Received field; and what the upstream is told
//! about the client.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::Session;
use crate::{
    dns::{ClientName, HostName},
    upstream::ClientInfo,
};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Starts looking up the client's host names in the background, if they are to be
    /// used (XCLIENT, the Received field); [`Session::client_info`] waits for the
    /// answer. Done once the connect hook let the client in, so a refused connection
    /// costs no DNS.
    pub(super) fn start_name_lookup(&mut self) {
        if self.context.config.upstream.client_name_lookup {
            let (dns, ip) = (self.context.dns.clone(), self.peer.address.ip());
            let lookup = tokio::spawn(async move { dns.client_name(ip).await });
            self.name_lookup = Some(AbortOnDropHandle::new(lookup));
        }
    }

    /// What the upstream is told about the client, with its host names once their
    /// lookup is done (bounded by twice `dns.timeout`).
    pub(super) async fn client_info(&mut self) -> ClientInfo {
        if let Some(lookup) = self.name_lookup.take() {
            let name = lookup
                .await
                .unwrap_or_else(|_| ClientName::neither(HostName::TemporarilyUnavailable));
            debug!(?name, "client host name");
            self.peer.name = Some(name);
        }
        self.peer.client_info()
    }
}
