//! The running proxy: start-up ([`crate::startup`]), the listeners bound, the background
//! tasks (capability refresh, reaping kept upstream sessions, rate-window sweeps and
//! suppressed-warning reports, SIGHUP reloads), and the graceful shutdown: stop
//! accepting, let transactions finish within the drain time, then 421 4.3.2 for whoever
//! is left.

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    task::Poll,
    time::Duration,
};

use metrics::{counter, gauge};

use tokio::{
    net::TcpListener,
    signal::unix::{Signal, SignalKind, signal},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    auth::{checks::PasswordChecks, throttle::AuthThrottle},
    client_limits::ClientLimits,
    config::{Config, UpstreamTarget},
    devupstream,
    dns::Resolver,
    exporter::{self, Readiness},
    kv::KvStore,
    listener::{self, Admission},
    log_limit, service,
    session::{ListenerContext, SessionContext, Shutdown},
    startup::{self, Prepared, StartError},
    telemetry,
    tls::server::ServerTls,
    upstream::{Upstream, capability_cache::CapabilityCache, pool::SessionPool},
};

/// Runs the proxy until `shutdown` resolves, then drains. Returns once every session
/// has ended.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    // The signal handlers go in first (SIGTERM and SIGINT inside `shutdown`, which
    // installs them when first polled, and SIGHUP): systemd may signal as soon as it
    // hears READY, and a signal that comes before its handler ends the process.
    let mut shutdown = std::pin::pin!(shutdown);
    let stop_requested =
        std::future::poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await;
    let hangups = signal(SignalKind::hangup());
    // The recorder goes in before anything makes a metric handle.
    let metrics = match &config.metrics {
        Some(metrics) => Some((
            telemetry::install().map_err(StartError::Metrics)?,
            metrics.address,
        )),
        None => None,
    };
    let readiness = Arc::new(Readiness::default());
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
        .await
        .map_err(StartError::DevelopmentUpstream)?
        .to_string(),
    };
    let kv = Arc::new(KvStore::new(config.kv.max_entries));
    if let Some((handle, address)) = metrics {
        let bind_error = |source| StartError::Bind {
            listener: "metrics".into(),
            address,
            source,
        };
        let socket = TcpListener::bind(address).await.map_err(bind_error)?;
        let bound = socket.local_addr().map_err(bind_error)?;
        info!(address = %bound, "metrics listening");
        tokio::spawn(exporter::serve(
            socket,
            handle,
            readiness.clone(),
            signals.abort.clone(),
        ));
    }
    let dns = Arc::new(Resolver::new(&config.dns));
    let kv_for_metrics = kv.clone();
    let Prepared {
        server_tls,
        upstream_tls,
        listeners: prepared,
        ..
    } = startup::prepare(&config, dns.clone(), kv).await?;
    let mut listeners = Vec::new();
    for listener in prepared {
        let address = listener.config.address;
        let bind_error = |source| StartError::Bind {
            listener: listener.config.name.clone(),
            address,
            source,
        };
        let socket = TcpListener::bind(address).await.map_err(bind_error)?;
        let bound = socket.local_addr().map_err(bind_error)?;
        info!(listener = %listener.config.name, address = %bound, tls = ?listener.config.tls, auth = ?listener.config.auth.mode, "listening");
        listeners.push((listener, socket));
    }
    tokio::spawn(reload_on_sighup(
        hangups,
        server_tls.clone(),
        listeners.iter().map(|(l, _)| l.clone()).collect(),
    ));
    let context = Arc::new(SessionContext {
        config: config.clone(),
        upstream: Arc::new(Upstream::new(
            upstream_address,
            config.upstream.clone(),
            upstream_tls,
        )),
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
    // Listeners without [listener.client_limits] share the global counts; each with
    // its own has counts of its own.
    let shared_limits = ClientLimits::new(config.client_limits.clone());
    let mut all_limits = vec![shared_limits.clone()];
    readiness.listening.store(true, Ordering::Relaxed);
    tokio::spawn(refresh_capabilities(context.clone(), readiness));
    let reaper = tokio::spawn(reap_idle_upstream_sessions(context.clone()));
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.server.max_connections));
    for (listener, socket) in listeners {
        let limits = match &listener.config.client_limits {
            Some(own) => {
                let limits = ClientLimits::new(own.clone());
                all_limits.push(limits.clone());
                limits
            }
            None => shared_limits.clone(),
        };
        tracker.spawn(listener::accept_loop(
            listener,
            socket,
            context.clone(),
            Admission::new(permits.clone(), limits),
            tracker.clone(),
        ));
    }
    tokio::spawn(housekeeping(
        all_limits,
        kv_for_metrics,
        signals.stopping.clone(),
    ));
    service::ready();
    if !stop_requested {
        shutdown.await;
    }
    service::stopping();
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

/// SIGHUP: certificates, credentials files and sender-login maps are read again. A
/// file that fails keeps its old contents (and says so); sessions carry on.
async fn reload_on_sighup(
    hangups: std::io::Result<Signal>,
    tls: Option<ServerTls>,
    listeners: Vec<Arc<ListenerContext>>,
) {
    let Ok(mut hangups) = hangups else {
        warn!("cannot listen for SIGHUP; reloading is off");
        return;
    };
    while hangups.recv().await.is_some() {
        service::reloading();
        let mut failed = false;
        if let Some(tls) = &tls {
            match tls.reload() {
                Ok(count) => info!(certificates = count, "reloaded TLS certificates"),
                Err(error) => {
                    failed = true;
                    warn!(%error, "TLS reload failed; keeping the certificates in use")
                }
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
                        failed = true;
                        warn!(listener = %name, %error, "credentials reload failed; keeping the old ones")
                    }
                }
            }
            if let Some(map) = &listener.sender_logins {
                match map.reload() {
                    Ok(()) => info!(listener = %name, "reloaded sender logins"),
                    Err(error) => {
                        failed = true;
                        warn!(listener = %name, %error, "sender-login reload failed; keeping the old map")
                    }
                }
            }
        }
        if telemetry::on() {
            let outcome = if failed { "failed" } else { "ok" };
            counter!(telemetry::RELOADS, "outcome" => outcome).increment(1);
        }
        service::ready();
    }
}

/// Now and then: forgets ended rate windows of client addresses, and reports the
/// warnings a burst left out.
async fn housekeeping(
    clients: Vec<Arc<ClientLimits>>,
    kv: Arc<KvStore>,
    stopping: CancellationToken,
) {
    let kv_entries = gauge!(telemetry::KV_ENTRIES);
    let interval = clients
        .iter()
        .map(|limits| limits.sweep_interval())
        .min()
        .unwrap_or(log_limit::INTERVAL);
    let mut sweep = tokio::time::interval(interval);
    let mut flush = tokio::time::interval(log_limit::INTERVAL);
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = sweep.tick() => {
                clients.iter().for_each(|limits| limits.sweep());
                if telemetry::on() {
                    kv_entries.set(kv.len() as f64);
                }
            }
            _ = flush.tick() => log_limit::flush(),
        }
    }
}

/// Keeps the capability cache fresh (see `upstream::capability_cache`).
async fn refresh_capabilities(context: Arc<SessionContext>, readiness: Arc<Readiness>) {
    let config = &context.config;
    let interval = config.upstream.capabilities_refresh;
    loop {
        if context.capabilities.is_stale(interval) {
            match context
                .capabilities
                .probe(&context.upstream, &config.server.hostname)
                .await
            {
                Ok(capabilities) => {
                    readiness.upstream.store(true, Ordering::Relaxed);
                    info!(extensions = ?capabilities.ehlo_lines(), "learned the upstream's extensions")
                }
                Err(error) => {
                    readiness.upstream.store(false, Ordering::Relaxed);
                    warn!(%error, "upstream capability probe failed")
                }
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
