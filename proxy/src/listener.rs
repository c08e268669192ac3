//! Accepting connections: binds every `[[listener]]`, enforces the global connection
//! limit (421 4.7.0 past it), spawns one session task per connection, and runs the
//! graceful shutdown: stop accepting, let transactions finish within the drain time,
//! then 421 4.3.2 for whoever is left.

use std::{collections::BTreeMap, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    auth::{
        Reloadable, checks::PasswordChecks, credentials::CredentialsFile,
        sender_logins::SenderLogins, throttle::AuthThrottle,
    },
    client_limits::{ClientLimits, ClientSlot, Refusal},
    config::{Config, TlsMode, UpstreamTarget},
    devupstream,
    dns::Resolver,
    hooks::Chain,
    kv::KvStore,
    log_limit::{self, Event},
    plugin_host::{Capacity, LoadedPlugin, PluginError, PluginRuntime, abi},
    session::{ListenerContext, Peer, Session, SessionContext, Shutdown},
    smtp::replies,
    tls::server::ServerTls,
    upstream::{capability_cache::CapabilityCache, pool::SessionPool},
};

/// Runs the proxy until `shutdown` resolves, then drains. Returns once every session
/// has ended.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    for warning in &config.warnings {
        warn!("configuration: {warning}");
    }
    let config = Arc::new(config);
    let signals = Shutdown::default();
    let upstream_address = match &config.upstream.target {
        UpstreamTarget::Address(address) => address.clone(),
        UpstreamTarget::Development(folder) => devupstream::start(
            folder.clone(),
            &config.server.hostname,
            signals.abort.clone(),
        )
        .await?
        .to_string(),
    };
    let kv = Arc::new(KvStore::new(config.kv.max_entries));
    let dns = Arc::new(Resolver::new(&config.dns));
    let plugins = load_plugins(&config, dns.clone(), kv).await?;
    let server_tls = server_tls(&config)?;
    let prepared = prepare_listeners(&config, &plugins)?;
    let mut listeners = Vec::new();
    for listener in prepared {
        let address = listener.config.address;
        let socket = TcpListener::bind(address).await.with_context(|| {
            format!(
                "cannot listen on {address} (listener {})",
                listener.config.name
            )
        })?;
        info!(listener = %listener.config.name, address = %socket.local_addr()?, tls = ?listener.config.tls, auth = ?listener.config.auth.mode, "listening");
        listeners.push((listener, socket));
    }
    tokio::spawn(reload_on_sighup(
        server_tls.clone(),
        listeners.iter().map(|(l, _)| l.clone()).collect(),
    ));
    let context = Arc::new(SessionContext {
        config: config.clone(),
        upstream_address,
        capabilities: Arc::new(CapabilityCache::default()),
        pool: Arc::new(SessionPool::new(config.upstream.reuse.clone())),
        shutdown: signals.clone(),
        server_tls,
        throttle: AuthThrottle::new(config.auth_throttle.clone()),
        checks: Arc::new(PasswordChecks::new(
            config.auth_throttle.concurrent_checks,
            config.auth_throttle.check_timeout,
        )),
        dns,
    });
    let client_limits = ClientLimits::new(config.client_limits.clone());
    tokio::spawn(refresh_capabilities(context.clone()));
    tokio::spawn(housekeeping(
        client_limits.clone(),
        signals.stopping.clone(),
    ));
    let reaper = tokio::spawn(reap_idle_upstream_sessions(context.clone()));
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.server.max_connections));
    for (listener, socket) in listeners {
        tracker.spawn(accept_loop(
            listener,
            socket,
            context.clone(),
            Admission {
                permits: permits.clone(),
                clients: client_limits.clone(),
            },
            tracker.clone(),
        ));
    }
    shutdown.await;
    info!(drain_timeout = ?config.server.drain_timeout, "shutting down: no new connections, draining transactions");
    signals.stopping.cancel();
    tracker.close();
    if tokio::time::timeout(config.server.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        warn!("drain time over; closing remaining sessions");
        signals.abort.cancel();
        tracker.wait().await;
    }
    signals.abort.cancel();
    let _ = reaper.await;
    info!("stopped");
    Ok(())
}

/// What a connection needs to be let in: a place under `server.max_connections`,
/// and its address within `[client_limits]`.
struct Admission {
    permits: Arc<Semaphore>,
    clients: Arc<ClientLimits>,
}

impl Admission {
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

async fn accept_loop(
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

/// The certificates for client TLS, if any listener uses TLS.
pub fn server_tls(config: &Config) -> anyhow::Result<Option<ServerTls>> {
    if config.listeners.iter().all(|l| l.tls == TlsMode::None) {
        return Ok(None);
    }
    let tls = ServerTls::load(&config.tls.certificate).context("tls.certificate")?;
    Ok(Some(tls))
}

/// Each listener with its chain and the files its AUTH policy reads. A file that
/// cannot be used stops the start-up, naming the listener, the key and the file.
pub fn prepare_listeners(
    config: &Config,
    plugins: &BTreeMap<String, Arc<LoadedPlugin>>,
) -> anyhow::Result<Vec<Arc<ListenerContext>>> {
    let mut prepared = Vec::new();
    for (index, listener) in config.listeners.iter().enumerate() {
        let auth = &listener.auth;
        let key = |name: &str| format!("listener[{index}].auth.{name}");
        let credentials = auth
            .credentials
            .as_deref()
            .map(|path| Reloadable::load(path, CredentialsFile::parse))
            .transpose()
            .with_context(|| key("credentials"))?;
        let sender_logins = auth
            .sender_logins
            .as_deref()
            .map(|path| Reloadable::load(path, SenderLogins::parse))
            .transpose()
            .with_context(|| key("sender_logins"))?;
        let verifier = match &auth.verifier {
            Some(name) => {
                let plugin = plugins
                    .get(name)
                    .with_context(|| format!("{}: plugin {name} is not loaded", key("verifier")))?;
                if !plugin.hooks.contains(abi::Hooks::VERIFY_LOGIN) {
                    anyhow::bail!(
                        "{}: plugin {name} does not check logins (its init did not ask for verify-login)",
                        key("verifier")
                    );
                }
                Some(plugin.clone())
            }
            None => None,
        };
        prepared.push(Arc::new(ListenerContext {
            config: listener.clone(),
            chain: Arc::new(Chain {
                listener: listener.name.clone(),
                plugins: listener
                    .plugins
                    .iter()
                    .map(|name| plugins[name].clone())
                    .collect(),
            }),
            credentials,
            verifier,
            sender_logins,
        }));
    }
    Ok(prepared)
}

/// SIGHUP: certificates, credentials files and sender-login maps are read again. A
/// file that fails keeps its old contents (and says so); sessions carry on.
async fn reload_on_sighup(tls: Option<ServerTls>, listeners: Vec<Arc<ListenerContext>>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        warn!("cannot listen for SIGHUP; reloading is off");
        return;
    };
    while hangups.recv().await.is_some() {
        if let Some(tls) = &tls {
            match tls.reload() {
                Ok(count) => info!(certificates = count, "reloaded TLS certificates"),
                Err(error) => warn!(%error, "TLS reload failed; keeping the certificates in use"),
            }
        }
        for listener in &listeners {
            let name = &listener.config.name;
            if let Some(file) = &listener.credentials {
                match file.reload() {
                    Ok(()) => {
                        info!(listener = %name, logins = file.get().len(), "reloaded credentials")
                    }
                    Err(error) => {
                        warn!(listener = %name, %error, "credentials reload failed; keeping the old ones")
                    }
                }
            }
            if let Some(map) = &listener.sender_logins {
                match map.reload() {
                    Ok(()) => info!(listener = %name, "reloaded sender logins"),
                    Err(error) => {
                        warn!(listener = %name, %error, "sender-login reload failed; keeping the old map")
                    }
                }
            }
        }
    }
}

/// Compiles, pre-instantiates and initialises every configured plugin. Any failure
/// stops the start-up with the plugin's name and the reason. The plugins look names up
/// through `dns` ([`Resolver::offline`] to run them without network).
pub async fn load_plugins(
    config: &Config,
    dns: Arc<Resolver>,
    kv: Arc<KvStore>,
) -> anyhow::Result<BTreeMap<String, Arc<LoadedPlugin>>> {
    let mut loaded = BTreeMap::new();
    if config.plugins.is_empty() {
        return Ok(loaded);
    }
    let longest_chain = config.listeners.iter().map(|l| l.plugins.len()).max();
    let sessions = config.server.max_connections + 64;
    let needed = u32::try_from(sessions * longest_chain.unwrap_or(0) + config.plugins.len())
        .unwrap_or(u32::MAX);
    let capacity = Capacity {
        pooled: config.server.plugin_pool_size.min(needed),
        max_memory: config
            .plugins
            .values()
            .map(|p| p.memory_mb as usize * 1024 * 1024)
            .max()
            .unwrap_or(0),
    };
    let runtime = PluginRuntime::new(dns, capacity, kv)?;
    for (name, plugin) in &config.plugins {
        let line = plugin
            .line
            .map(|line| format!("line {line}: "))
            .unwrap_or_default();
        let plugin = match runtime.load(name, plugin).await {
            Ok(plugin) => plugin,
            Err(error @ PluginError::MemoryLimit(_)) => anyhow::bail!(
                "{line}plugins.{name}.memory_mb: too little for this plugin to start ({error})"
            ),
            Err(error) => return Err(error).with_context(|| format!("{line}plugins.{name}")),
        };
        info!(plugin = %name, hooks = ?plugin.hooks, shared = plugin.is_shared(), "plugin loaded");
        loaded.insert(name.clone(), plugin);
    }
    Ok(loaded)
}

/// Over a connection limit: 421 4.7.0 and close, without a session.
async fn refuse(mut stream: TcpStream, hostname: String) {
    let reply = replies::too_many_connections(&hostname).to_bytes();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&reply)).await;
    let _ = stream.shutdown().await;
}

/// Now and then: forgets ended rate windows of client addresses, and reports the
/// warnings a burst left out.
async fn housekeeping(clients: Arc<ClientLimits>, stopping: CancellationToken) {
    let mut sweep = tokio::time::interval(clients.sweep_interval());
    let mut flush = tokio::time::interval(log_limit::INTERVAL);
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = sweep.tick() => clients.sweep(),
            _ = flush.tick() => log_limit::flush(),
        }
    }
}

/// Keeps the capability cache fresh (see `upstream::capability_cache`).
async fn refresh_capabilities(context: Arc<SessionContext>) {
    let config = &context.config;
    let interval = config.upstream.capabilities_refresh;
    loop {
        if context.capabilities.is_stale(interval) {
            match context
                .capabilities
                .probe(
                    &config.upstream,
                    &context.upstream_address,
                    &config.server.hostname,
                )
                .await
            {
                Ok(capabilities) => {
                    info!(extensions = ?capabilities.ehlo_lines(), "learned the upstream's extensions")
                }
                Err(error) => warn!(%error, "upstream capability probe failed"),
            }
        }
        tokio::select! {
            _ = context.shutdown.stopping.cancelled() => return,
            _ = tokio::time::sleep(interval.min(Duration::from_secs(60))) => {}
        }
    }
}

/// QUITs kept upstream sessions once they idled past `upstream.reuse.idle_timeout`,
/// and all of them when the proxy stops.
async fn reap_idle_upstream_sessions(context: Arc<SessionContext>) {
    let pool = &context.pool;
    loop {
        let stopping = tokio::select! {
            _ = context.shutdown.stopping.cancelled() => true,
            _ = tokio::time::sleep(pool.reap_interval()) => false,
        };
        for session in pool.remove_expired(stopping) {
            session.quit().await;
        }
        if stopping {
            return;
        }
    }
}
