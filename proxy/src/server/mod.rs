//! The running proxy: start-up ([`crate::startup`], then [`generation`]), the
//! listeners bound, the background tasks (capability refresh, reaping kept upstream
//! sessions, rate-window sweeps and suppressed-warning reports), reloads on SIGHUP or
//! through the control socket ([`reload`]), and the graceful shutdown: stop accepting,
//! let transactions finish within the drain time, then 421 4.3.2 for whoever is left.

mod generation;
mod reload;

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    task::Poll,
    time::Duration,
};

use metrics::gauge;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::{Semaphore, watch},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    config::Config,
    control,
    exporter::{self, Readiness},
    kv::KvStore,
    log_limit, service,
    session::Shutdown,
    startup::StartError,
    telemetry,
};
use generation::{Generation, Lasting};
use reload::Reloader;

/// The generation new sessions start in; a reload replaces it.
type Current = watch::Receiver<Arc<Generation>>;

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
    let lasting = Lasting {
        signals: Shutdown::default(),
        permits: Arc::new(Semaphore::new(config.server.max_connections)),
        kv: Arc::new(KvStore::new(&config.kv).map_err(StartError::Kv)?),
    };
    let signals = lasting.signals.clone();
    let kv = lasting.kv.clone();
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
    let control_path = config.server.control_socket.clone();
    let control_socket = match &control_path {
        Some(path) => Some(
            control::bind(path)
                .await
                .map_err(StartError::ControlSocket)?,
        ),
        None => None,
    };
    let generation = Generation::build(config, &lasting, None).await?;
    let tracker = TaskTracker::new();
    let reloader = Reloader::start(lasting, generation, tracker.clone()).await?;
    let current = reloader.current();
    readiness.listening.store(true, Ordering::Relaxed);
    tokio::spawn(refresh_capabilities(current.clone(), readiness));
    let reaper = tokio::spawn(reap_idle_upstream_sessions(current.clone()));
    tokio::spawn(housekeeping(current.clone(), kv, signals.stopping.clone()));
    let reloader = Arc::new(tokio::sync::Mutex::new(reloader));
    match hangups {
        Ok(hangups) => {
            tokio::spawn(reload::on_sighup(hangups, reloader.clone()));
        }
        Err(error) => warn!(%error, "cannot listen for SIGHUP; reload through the control socket"),
    }
    if let Some(socket) = control_socket {
        tokio::spawn(control::serve(
            socket,
            signals.stopping.clone(),
            move || {
                let reloader = reloader.clone();
                async move { reload::answer(&reloader).await }
            },
        ));
    }
    service::ready();
    if !stop_requested {
        shutdown.await;
    }
    service::stopping();
    let drain_timeout = current.borrow().config.server.drain_timeout;
    info!(
        ?drain_timeout,
        "shutting down: no new connections, draining transactions"
    );
    signals.stopping.cancel();
    tracker.close();
    if tokio::time::timeout(drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        warn!("drain time over; closing remaining sessions");
        signals.abort.cancel();
        tracker.wait().await;
    }
    signals.abort.cancel();
    let _ = reaper.await;
    if let Some(path) = control_path {
        let _ = std::fs::remove_file(path);
    }
    info!("stopped");
    Ok(())
}

/// Now and then: forgets ended rate windows of client addresses, and reports the
/// warnings a burst left out.
async fn housekeeping(current: Current, kv: Arc<KvStore>, stopping: CancellationToken) {
    let kv_entries = gauge!(telemetry::KV_ENTRIES);
    let sweep_interval = |generation: &Generation| {
        generation
            .client_limits()
            .map(|limits| limits.sweep_interval())
            .min()
            .unwrap_or(log_limit::INTERVAL)
    };
    let mut next_sweep = tokio::time::Instant::now() + sweep_interval(&current.borrow());
    let mut flush = tokio::time::interval(log_limit::INTERVAL);
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tokio::time::sleep_until(next_sweep) => {
                let generation = current.borrow().clone();
                generation.client_limits().for_each(|limits| limits.sweep());
                if let Some(memory) = kv.in_memory().filter(|_| telemetry::on()) {
                    kv_entries.set(memory.len() as f64);
                }
                next_sweep = tokio::time::Instant::now() + sweep_interval(&generation);
            }
            _ = flush.tick() => log_limit::flush(),
        }
    }
}

/// Keeps the capability caches of the current upstreams fresh (see
/// `upstream::capability_cache`); ready while every upstream answered its last probe.
async fn refresh_capabilities(mut current: Current, readiness: Arc<Readiness>) {
    loop {
        let generation = current.borrow_and_update().clone();
        let mut interval = Duration::from_secs(60);
        let mut all_answered = true;
        for context in generation.contexts() {
            let config = &context.upstream.config;
            interval = interval.min(config.capabilities_refresh);
            if !context.capabilities.is_stale(config.capabilities_refresh) {
                continue;
            }
            match context
                .capabilities
                .probe(&context.upstream, &context.config.server.hostname)
                .await
            {
                Ok(capabilities) => {
                    info!(extensions = ?capabilities.ehlo_lines(), "learned the upstream's extensions")
                }
                Err(error) => {
                    all_answered = false;
                    warn!(%error, "upstream capability probe failed")
                }
            }
        }
        readiness.upstream.store(all_answered, Ordering::Relaxed);
        let stopping = generation.context().shutdown.stopping.clone();
        drop(generation);
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            // A reload may have put other upstreams in place: probe them now.
            Ok(()) = current.changed() => {}
        }
    }
}

/// QUITs kept upstream sessions once they idled past `upstream.reuse.idle_timeout`,
/// and all of them when the proxy stops. (A reload that replaces a pool QUITs the
/// old one's sessions itself.)
async fn reap_idle_upstream_sessions(current: Current) {
    loop {
        let generation = current.borrow().clone();
        let context = generation.context().clone();
        let interval = generation
            .contexts()
            .map(|context| context.pool.reap_interval())
            .min()
            .unwrap_or(Duration::from_secs(5));
        let stopping = tokio::select! {
            _ = context.shutdown.stopping.cancelled() => true,
            _ = tokio::time::sleep(interval) => false,
        };
        // The pools in use now (a reload closed the ones it replaced).
        let generation = current.borrow().clone();
        for context in generation.contexts() {
            for session in context.pool.remove_expired(stopping) {
                session.quit().await;
            }
        }
        if stopping {
            return;
        }
    }
}
