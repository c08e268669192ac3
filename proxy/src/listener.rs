//! Accepting connections: each one is admitted under the global connection limit and
//! the per-client limits (421 4.7.0 past either, before any plugin runs) and gets a
//! session task of its own.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::{
    client::Peer,
    client_limits::{ClientLimits, ClientSlot, Refusal},
    log_limit::{self, Event},
    session::{ListenerContext, Session, SessionContext},
    smtp::replies,
};

/// What a connection needs to be let in: a place under `server.max_connections`,
/// and its address within `[client_limits]`.
pub(crate) struct Admission {
    permits: Arc<Semaphore>,
    clients: Arc<ClientLimits>,
}

impl Admission {
    pub(crate) fn new(permits: Arc<Semaphore>, clients: Arc<ClientLimits>) -> Self {
        Self { permits, clients }
    }

    /// The slots a session holds until it ends, or the warning to give (at most
    /// once per interval for each kind, see `log_limit`) before refusing it.
    fn admit(&self, address: SocketAddr) -> Result<(OwnedSemaphorePermit, ClientSlot), Event> {
        let client = self
            .clients
            .admit(address.ip())
            .map_err(|refusal| match refusal {
                Refusal::Sessions => Event::ClientSessionLimit,
                Refusal::Rate => Event::ClientRateLimit,
            })?;
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Event::ConnectionLimit)?;
        Ok((permit, client))
    }
}

/// Accepts connections on `socket` until the proxy stops accepting.
pub(crate) async fn accept_loop(
    listener: Arc<ListenerContext>,
    socket: TcpListener,
    context: Arc<SessionContext>,
    admission: Admission,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = context.shutdown.stopping.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        let (stream, address) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(listener = %listener.config.name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (permit, client_slot) = match admission.admit(address) {
            Ok(slots) => slots,
            Err(event) => {
                if let Some(suppressed) = log_limit::admit(event) {
                    warn!(client = %address, suppressed, limit = ?event, "connection refused");
                }
                tracker.spawn(refuse(stream, context.config.server.hostname.clone()));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(local_address) = stream.local_addr() else {
            continue;
        };
        let peer = Peer::new(address, local_address);
        let session = Session::new(context.clone(), stream, peer, listener.clone());
        tracker.spawn(async move {
            session.run().await;
            drop((permit, client_slot));
        });
    }
}

/// Over a connection limit: 421 4.7.0 and close, without a session.
async fn refuse(mut stream: TcpStream, hostname: String) {
    let reply = replies::too_many_connections(&hostname).to_bytes();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&reply)).await;
    let _ = stream.shutdown().await;
}
