//! Accepting connections: binds every `[[listener]]`, enforces the global connection
//! limit (421 4.7.0 past it), spawns one session task per connection, and runs the
//! graceful shutdown: stop accepting, let transactions finish within the drain time,
//! then 421 4.3.2 for whoever is left.

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::{
    config::{Config, PluginAllocator, UpstreamTarget},
    devupstream,
    hooks::Chain,
    plugin_host::{Capacity, LoadedPlugin, PluginRuntime},
    session::{Peer, Session, SessionContext, Shutdown, replies},
    upstream::{capability_cache::CapabilityCache, pool::SessionPool},
};

/// Runs the proxy until `shutdown` resolves, then drains. Returns once every session
/// has ended.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
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
    let plugins = load_plugins(&config, true).await?;
    let mut listeners = Vec::new();
    for listener in &config.listeners {
        let socket = TcpListener::bind(listener.address).await.with_context(|| {
            format!(
                "cannot listen on {} (listener {})",
                listener.address, listener.name
            )
        })?;
        info!(listener = %listener.name, address = %socket.local_addr()?, "listening");
        let chain = Arc::new(Chain {
            listener: listener.name.clone(),
            plugins: listener
                .plugins
                .iter()
                .map(|name| plugins[name].clone())
                .collect(),
        });
        listeners.push((chain, socket));
    }
    let context = Arc::new(SessionContext {
        config: config.clone(),
        upstream_address,
        capabilities: Arc::new(CapabilityCache::default()),
        pool: Arc::new(SessionPool::new(config.upstream.reuse.clone())),
        shutdown: signals.clone(),
    });
    tokio::spawn(refresh_capabilities(context.clone()));
    let reaper = tokio::spawn(reap_idle_upstream_sessions(context.clone()));
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.server.max_connections));
    for (chain, socket) in listeners {
        tracker.spawn(accept_loop(
            chain,
            socket,
            context.clone(),
            permits.clone(),
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

async fn accept_loop(
    chain: Arc<Chain>,
    socket: TcpListener,
    context: Arc<SessionContext>,
    permits: Arc<Semaphore>,
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
                warn!(listener = %chain.listener, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracker.spawn(refuse(stream, context.config.server.hostname.clone()));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok(local_address) = stream.local_addr() else {
            continue;
        };
        let peer = Peer::new(address, local_address);
        let session = Session::new(context.clone(), stream, peer, chain.clone());
        tracker.spawn(async move {
            session.run().await;
            drop(permit);
        });
    }
}

/// Compiles, pre-instantiates and initialises every configured plugin. Any failure
/// stops the start-up with the plugin's name and the reason. Without `network`, the
/// plugins' DNS lookups fail instead of going out.
pub async fn load_plugins(
    config: &Config,
    network: bool,
) -> anyhow::Result<BTreeMap<String, Arc<LoadedPlugin>>> {
    let mut loaded = BTreeMap::new();
    if config.plugins.is_empty() {
        return Ok(loaded);
    }
    let longest_chain = config.listeners.iter().map(|l| l.plugins.len()).max();
    let sessions = config.server.max_connections + 64;
    let capacity = Capacity {
        pooling: config.server.plugin_allocator == PluginAllocator::Pooling,
        instances: u32::try_from(sessions * longest_chain.unwrap_or(0) + config.plugins.len())
            .unwrap_or(u32::MAX),
        max_memory: config
            .plugins
            .values()
            .map(|p| p.memory_mb as usize * 1024 * 1024)
            .max()
            .unwrap_or(0),
    };
    let runtime = PluginRuntime::new(network.then_some(&config.dns), capacity)?;
    for (name, plugin) in &config.plugins {
        let plugin = runtime
            .load(name, plugin)
            .await
            .with_context(|| format!("plugin {name}"))?;
        info!(plugin = %name, hooks = ?plugin.hooks, "plugin loaded");
        loaded.insert(name.clone(), plugin);
    }
    Ok(loaded)
}

/// Over the connection limit: 421 4.7.0 and close, without a session.
async fn refuse(mut stream: TcpStream, hostname: String) {
    warn!(client = ?stream.peer_addr().ok(), "connection limit reached");
    let reply = replies::too_many_connections(&hostname).to_bytes();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&reply)).await;
    let _ = stream.shutdown().await;
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
