//! Accepting connections: each one is admitted under the global connection limit and
//! the per-client limits (421 4.7.0 past either, before any plugin runs) and gets a
//! session task of its own. Behind load balancers (`proxy_protocol`), a connection
//! from a balancer not trusted is closed unread, and the others are admitted by the
//! client address their PROXY header names, read in the connection's own task.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

use crate::{
    client::Peer,
    client_limits::{ClientLimits, ClientSlot, Refusal},
    config::{ProxyProtocolConfig, ProxyVersions},
    log_limit::{self, Event},
    proxy_protocol::{self, HeaderError, Progress, Version},
    session::{ListenerContext, Session, SessionContext},
    smtp::replies,
    telemetry,
};

/// What a connection needs to be let in: a place under `server.max_connections`,
/// and its address within `[client_limits]`.
#[derive(Clone)]
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
        let client = self.client(address)?;
        let permit = self.permit()?;
        Ok((permit, client))
    }

    fn client(&self, address: SocketAddr) -> Result<ClientSlot, Event> {
        self.clients
            .admit(address.ip())
            .map_err(|refusal| match refusal {
                Refusal::Sessions => Event::ClientSessionLimit,
                Refusal::Rate => Event::ClientRateLimit,
            })
    }

    fn permit(&self) -> Result<OwnedSemaphorePermit, Event> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Event::ConnectionLimit)
    }
}

/// What a listener's connections are served with. A reload replaces it whole, and
/// each connection takes the one that is current when it is accepted.
#[derive(Clone)]
pub(crate) struct Serving {
    pub(crate) listener: Arc<ListenerContext>,
    pub(crate) context: Arc<SessionContext>,
    pub(crate) admission: Admission,
}

/// Accepts connections on `socket` until `stop` (the proxy stops accepting, or a
/// reload removed the listener), serving each with what `serving` gives then.
pub(crate) async fn accept_loop(
    socket: TcpListener,
    serving: impl Fn() -> Option<Serving>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    // Replies go out as whole writes and are waited on, so Nagle's algorithm would
    // only add delay. Set once here: on Linux accepted sockets inherit it.
    let _ = socket2::SockRef::from(&socket).set_tcp_nodelay(true);
    // A listener bound to one address is every connection's local address; only a
    // wildcard one needs asking for each connection.
    let bound = socket
        .local_addr()
        .ok()
        .filter(|bound| !bound.ip().is_unspecified());
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        let Some(Serving {
            listener,
            context,
            admission,
        }) = serving()
        else {
            return;
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
        if let Some(proxy) = &listener.config.proxy_protocol {
            behind_balancer(
                proxy, stream, address, &listener, &context, &admission, &tracker,
            );
            continue;
        }
        let (permit, client_slot) = match admission.admit(address) {
            Ok(slots) => slots,
            Err(event) => {
                telemetry::refused(&listener.config.name, event.label());
                if let Some(suppressed) = log_limit::admit(event) {
                    warn!(client = %address, suppressed, limit = ?event, "connection refused");
                }
                tracker.spawn(refuse(stream, context.config.server.hostname.clone()));
                continue;
            }
        };
        inherit_nodelay(&stream);
        let Some(local_address) = bound.or_else(|| stream.local_addr().ok()) else {
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

/// A connection from a load balancer: closed unread unless the balancer is trusted;
/// then, in its own task, its PROXY header names the client, by whose address it is
/// admitted (the connection limit is taken first, so headers that are slow to come
/// cannot pile up).
fn behind_balancer(
    proxy: &ProxyProtocolConfig,
    stream: TcpStream,
    balancer: SocketAddr,
    listener: &Arc<ListenerContext>,
    context: &Arc<SessionContext>,
    admission: &Admission,
    tracker: &TaskTracker,
) {
    if !proxy.trusts(balancer.ip()) {
        telemetry::refused(&listener.config.name, Event::ProxyUntrusted.label());
        if let Some(suppressed) = log_limit::admit(Event::ProxyUntrusted) {
            warn!(listener = %listener.config.name, client = %balancer, suppressed, "connection closed: not a trusted load balancer (proxy_trusted)");
        }
        return;
    }
    let hostname = context.config.server.hostname.clone();
    let permit = match admission.permit() {
        Ok(permit) => permit,
        Err(event) => {
            telemetry::refused(&listener.config.name, event.label());
            if let Some(suppressed) = log_limit::admit(event) {
                warn!(client = %balancer, suppressed, limit = ?event, "connection refused");
            }
            tracker.spawn(refuse(stream, hostname));
            return;
        }
    };
    let (timeout, versions) = (proxy.timeout, proxy.versions);
    let (listener, context, admission) = (listener.clone(), context.clone(), admission.clone());
    tracker.spawn(async move {
        let mut stream = stream;
        let Ok(local_address) = stream.local_addr() else {
            return;
        };
        let header = tokio::time::timeout(timeout, read_header(&mut stream)).await;
        let header = match header {
            Ok(Ok(header)) if accepts(versions, header.version) => header,
            outcome => {
                let reason = match outcome {
                    Ok(Ok(header)) => format!("a version {:?} header, not allowed here", header.version),
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no PROXY protocol header within {timeout:?}"),
                };
                telemetry::refused(&listener.config.name, Event::ProxyHeader.label());
                if let Some(suppressed) = log_limit::admit(Event::ProxyHeader) {
                    warn!(listener = %listener.config.name, balancer = %balancer, suppressed, %reason, "connection closed");
                }
                return;
            }
        };
        let (client, local) = header.addresses.unwrap_or((balancer, local_address));
        debug!(%balancer, %client, "PROXY protocol header");
        let client_slot = match admission.client(client) {
            Ok(slot) => slot,
            Err(event) => {
                telemetry::refused(&listener.config.name, event.label());
                if let Some(suppressed) = log_limit::admit(event) {
                    warn!(%client, suppressed, limit = ?event, "connection refused");
                }
                refuse(stream, hostname).await;
                return;
            }
        };
        inherit_nodelay(&stream);
        let peer = Peer::new(client, local);
        Session::new(context, stream, peer, listener).run().await;
        drop((permit, client_slot));
    });
}

/// Where accepted sockets do not inherit TCP_NODELAY from the listener (Linux's do),
/// sets it on each.
fn inherit_nodelay(stream: &TcpStream) {
    if cfg!(not(target_os = "linux")) {
        let _ = stream.set_nodelay(true);
    }
}

fn accepts(versions: ProxyVersions, version: Version) -> bool {
    matches!(
        (versions, version),
        (ProxyVersions::Any, _)
            | (ProxyVersions::V1, Version::V1)
            | (ProxyVersions::V2, Version::V2)
    )
}

/// Reads a PROXY header off `stream`, exactly, as [`proxy_protocol::parse`] asks.
async fn read_header(stream: &mut TcpStream) -> Result<proxy_protocol::Header, HeaderError> {
    let mut bytes = Vec::with_capacity(64);
    loop {
        match proxy_protocol::parse(&bytes)? {
            Progress::Done(header) => return Ok(header),
            Progress::Need(more) => {
                let start = bytes.len();
                bytes.resize(start + more, 0);
                stream
                    .read_exact(&mut bytes[start..])
                    .await
                    .map_err(|_| HeaderError::Malformed("the connection ended in the header"))?;
            }
        }
    }
}

/// Over a connection limit: 421 4.7.0 and close, without a session.
async fn refuse(mut stream: TcpStream, hostname: String) {
    let reply = replies::too_many_connections(&hostname).to_bytes();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&reply)).await;
    let _ = stream.shutdown().await;
}
