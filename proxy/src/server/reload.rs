//! Reloading: SIGHUP and the control socket's `reload` read the configuration file
//! again, with everything it names (plugins, certificates, credentials, sender maps),
//! build the next [`Generation`] beside the running one, bind the listeners it adds,
//! and only then put it in place. Until that point nothing running has changed, so a
//! reload that fails anywhere — a key, a plugin that does not compile or whose `init`
//! refuses its configuration, a certificate, an address taken — changes nothing and
//! says why. Sessions already open finish in the generation they started in.
//!
//! Listeners are matched to the sockets already bound by name and address, then by
//! address alone (a renamed listener keeps its socket); only new addresses are bound
//! and only listeners that are gone stop accepting. Connections queued on a socket
//! that stays are never dropped.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

use metrics::counter;
use tokio::{
    net::TcpListener,
    signal::unix::Signal,
    sync::{Mutex, Semaphore, watch},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use super::{
    Current,
    generation::{Generation, Lasting},
};
use crate::{
    config::{Config, ConfigError},
    control::ReloadAnswer,
    listener, service,
    startup::StartError,
    telemetry,
};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReloadError {
    /// The configuration file is wrong.
    #[error("{path}: {source}")]
    Config {
        path: String,
        #[source]
        source: ConfigError,
    },
    /// Something it names cannot be loaded, or an address cannot be bound.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// One bound listening socket and its accept loop.
struct Socket {
    /// What the generations call it ([`Generation::serving`]).
    id: u64,
    /// The listener it was bound for (the last one it served).
    name: String,
    /// The address as configured (port 0 stays 0: the socket keeps its port).
    address: SocketAddr,
    stop: CancellationToken,
}

/// The sockets bound so far.
#[derive(Default)]
struct Sockets {
    bound: Vec<Socket>,
    last_id: u64,
}

/// Which socket each listener of a generation gets.
struct Assignment {
    /// The new sockets, bound, not yet accepting.
    bound: Vec<(Socket, TcpListener)>,
    /// Sockets kept for a listener of another name at the same address.
    renamed: Vec<(u64, String)>,
}

impl Sockets {
    /// Gives each listener of `generation` a socket: the one it had (same name and
    /// address), one another listener had at the same address, or a new one, bound
    /// here. Sets `generation.sockets`; changes nothing else until the assignment is
    /// [committed](Self::commit). Fails if an address cannot be bound.
    async fn assign(
        &mut self,
        generation: &mut Generation,
        stopping: &CancellationToken,
    ) -> Result<Assignment, StartError> {
        let mut taken = BTreeSet::new();
        let mut pairs = Vec::new();
        let mut unmatched = Vec::new();
        for (index, serving) in generation.listeners.iter().enumerate() {
            let config = &serving.listener.config;
            let same = self.bound.iter().find(|s| {
                !taken.contains(&s.id) && s.name == config.name && s.address == config.address
            });
            match same {
                Some(socket) => {
                    taken.insert(socket.id);
                    pairs.push((socket.id, index));
                }
                None => unmatched.push(index),
            }
        }
        let mut assignment = Assignment {
            bound: Vec::new(),
            renamed: Vec::new(),
        };
        for index in unmatched {
            let config = &generation.listeners[index].listener.config;
            let same_address = self.bound.iter().find(|s| {
                !taken.contains(&s.id) && config.address.port() != 0 && s.address == config.address
            });
            if let Some(socket) = same_address {
                taken.insert(socket.id);
                assignment.renamed.push((socket.id, config.name.clone()));
                pairs.push((socket.id, index));
                continue;
            }
            let bind_error = |source| StartError::Bind {
                listener: config.name.clone(),
                address: config.address,
                source,
            };
            let listening = TcpListener::bind(config.address)
                .await
                .map_err(bind_error)?;
            let local = listening.local_addr().map_err(bind_error)?;
            info!(listener = %config.name, address = %local, tls = ?config.tls, auth = ?config.auth.mode, "listening");
            self.last_id += 1;
            let socket = Socket {
                id: self.last_id,
                name: config.name.clone(),
                address: config.address,
                stop: stopping.child_token(),
            };
            pairs.push((socket.id, index));
            assignment.bound.push((socket, listening));
        }
        generation.sockets = pairs;
        Ok(assignment)
    }

    /// Stops accepting on the sockets `generation` does not use, and notes the
    /// renamed ones. Returns how many were closed.
    fn commit(&mut self, generation: &Generation, renamed: Vec<(u64, String)>) -> usize {
        for (id, name) in renamed {
            if let Some(socket) = self.bound.iter_mut().find(|s| s.id == id) {
                socket.name = name;
            }
        }
        let before = self.bound.len();
        self.bound.retain(|socket| {
            let kept = generation.sockets.iter().any(|(id, _)| *id == socket.id);
            if !kept {
                info!(listener = %socket.name, address = %socket.address, "listener removed: no new connections; its sessions run to their end");
                socket.stop.cancel();
            }
            kept
        });
        before - self.bound.len()
    }
}

/// The current generation, the sockets it accepts on, and how to replace both.
pub(super) struct Reloader {
    lasting: Lasting,
    current: watch::Sender<Arc<Generation>>,
    sockets: Sockets,
    tracker: TaskTracker,
}

impl Reloader {
    /// Binds the first generation's listeners and starts accepting on them.
    pub(super) async fn start(
        lasting: Lasting,
        mut first: Generation,
        tracker: TaskTracker,
    ) -> Result<Self, StartError> {
        let mut sockets = Sockets::default();
        let assignment = sockets
            .assign(&mut first, &lasting.signals.stopping)
            .await?;
        let mut reloader = Self {
            lasting,
            current: watch::Sender::new(Arc::new(first)),
            sockets,
            tracker,
        };
        for (socket, listening) in assignment.bound {
            reloader.accept_on(socket, listening);
        }
        Ok(reloader)
    }

    /// The generation new sessions start in, kept up to date.
    pub(super) fn current(&self) -> Current {
        self.current.subscribe()
    }

    /// Reads the configuration again and puts it in place, or changes nothing.
    async fn reload(&mut self) -> Result<String, ReloadError> {
        let previous = self.current.borrow().clone();
        let config = match &previous.config.source {
            Some(path) => Config::load(path).map_err(|source| ReloadError::Config {
                path: path.display().to_string(),
                source,
            })?,
            None => Config::clone(&previous.config),
        };
        let warnings = config.warnings.clone();
        let restart_only = restart_only(&previous.config, &config);
        let mut next = Generation::build(config, &self.lasting, Some(&previous)).await?;
        let assignment = self
            .sockets
            .assign(&mut next, &self.lasting.signals.stopping)
            .await?;
        // Nothing below fails: the new generation goes in whole.
        next.take_effect(&self.lasting);
        for warning in &warnings {
            warn!("configuration: {warning}");
        }
        for key in &restart_only {
            warn!(key = %key, "this setting changes only when the proxy restarts; the rest was reloaded");
        }
        resize_limit(
            &self.lasting.permits,
            previous.config.server.max_connections,
            next.config.server.max_connections,
        );
        // Pools the new generation does not keep take no more sessions.
        for old in previous.contexts() {
            if next
                .contexts()
                .all(|new| !Arc::ptr_eq(&old.pool, &new.pool))
            {
                let idle = old.pool.close();
                tokio::spawn(async move {
                    for session in idle {
                        session.quit().await;
                    }
                });
            }
        }
        let next = Arc::new(next);
        self.current.send_replace(next.clone());
        let added = assignment.bound.len();
        for (socket, listening) in assignment.bound {
            self.accept_on(socket, listening);
        }
        let closed = self.sockets.commit(&next, assignment.renamed);
        Ok(summary(&previous, &next, added, closed))
    }

    /// Starts accepting on a socket, for whichever listener the current generation
    /// serves on it.
    fn accept_on(&mut self, socket: Socket, listening: TcpListener) {
        let current = self.current.subscribe();
        let id = socket.id;
        self.tracker.spawn(listener::accept_loop(
            listening,
            move || current.borrow().serving(id),
            socket.stop.clone(),
            self.tracker.clone(),
        ));
        self.sockets.bound.push(socket);
    }
}

/// Makes `now` the limit of `permits`, which was `was`, over all holders, those from
/// before included: places are added at once, or taken away as holders give theirs
/// back (a place given back goes to the debt first).
fn resize_limit(permits: &Arc<Semaphore>, was: usize, now: usize) {
    if now > was {
        permits.add_permits(now - was);
    } else if now < was {
        let owed = (was - now) - permits.forget_permits(was - now);
        if owed > 0 {
            let permits = permits.clone();
            let owed = u32::try_from(owed).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(taken) = permits.acquire_many_owned(owed).await {
                    taken.forget();
                }
            });
        }
    }
}

/// The settings a reload cannot change, if `now` changes any of them.
fn restart_only(was: &Config, now: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if was.metrics.as_ref().map(|m| m.address) != now.metrics.as_ref().map(|m| m.address) {
        keys.push("metrics.address");
    }
    if was.server.worker_threads != now.server.worker_threads {
        keys.push("server.worker_threads");
    }
    if was.server.control_socket != now.server.control_socket {
        keys.push("server.control_socket");
    }
    // The store outlives generations: its keys must not vanish with a reload.
    if was.kv.backend != now.kv.backend {
        keys.push("kv.backend");
    }
    keys
}

/// What a reload changed, in a line for the log and the control socket.
fn summary(previous: &Generation, next: &Generation, bound: usize, closed: usize) -> String {
    let names = |generation: &Generation| -> BTreeSet<String> {
        generation
            .listeners
            .iter()
            .map(|serving| serving.listener.config.name.clone())
            .collect()
    };
    let (was, now) = (names(previous), names(next));
    let (loaded, kept) = next
        .plugins
        .iter()
        .fold((0, 0), |(loaded, kept), (name, plugin)| {
            match previous.plugins.get(name) {
                Some(old) if Arc::ptr_eq(old, plugin) => (loaded, kept + 1),
                _ => (loaded + 1, kept),
            }
        });
    format!(
        "generation {}: {} listener(s) ({} added, {} removed; {} address(es) bound, {} closed), {} plugin(s) loaded anew, {} kept",
        next.number,
        now.len(),
        now.difference(&was).count(),
        was.difference(&now).count(),
        bound,
        closed,
        loaded,
        kept,
    )
}

/// Reloads on each SIGHUP (`systemctl reload`), logging the outcome.
pub(super) async fn on_sighup(mut hangups: Signal, reloader: Arc<Mutex<Reloader>>) {
    while hangups.recv().await.is_some() {
        info!("SIGHUP: reloading");
        answer(&reloader).await;
    }
}

/// Reloads, logs and counts the outcome, and words it for the control socket.
pub(super) async fn answer(reloader: &Mutex<Reloader>) -> ReloadAnswer {
    let mut reloader = reloader.lock().await;
    service::reloading();
    let started = std::time::Instant::now();
    let outcome = reloader.reload().await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    service::ready();
    let label = if outcome.is_ok() { "ok" } else { "failed" };
    if telemetry::on() {
        counter!(telemetry::RELOADS, "outcome" => label).increment(1);
    }
    match outcome {
        Ok(summary) => {
            info!(%summary, elapsed_ms, "reloaded");
            ReloadAnswer::Done(summary)
        }
        Err(error) => {
            warn!(%error, elapsed_ms, "reload failed; nothing changed");
            ReloadAnswer::Refused(error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lower_connection_limit_counts_the_sessions_already_open() {
        let permits = Arc::new(Semaphore::new(10));
        let open: Vec<_> = (0..6)
            .map(|_| permits.clone().try_acquire_owned().unwrap())
            .collect();
        resize_limit(&permits, 10, 2);
        tokio::task::yield_now().await;
        assert_eq!(permits.available_permits(), 0);
        let mut open = open.into_iter();
        // Four sessions end: they pay the debt; the two left fill the new limit.
        open.by_ref().take(4).for_each(drop);
        tokio::task::yield_now().await;
        assert_eq!(permits.available_permits(), 0);
        open.for_each(drop);
        tokio::task::yield_now().await;
        assert_eq!(permits.available_permits(), 2);
        resize_limit(&permits, 2, 5);
        assert_eq!(permits.available_permits(), 5);
    }
}
