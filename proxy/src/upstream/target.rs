//! The upstream as sessions reach it: its servers, which of them are up, and the
//! order a session tries them in.

use std::{
    ops::ControlFlow,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use metrics::{counter, gauge};
use tracing::{info, warn};

use super::UpstreamError;
use crate::{
    config::{Balance, UpstreamConfig},
    telemetry,
    tls::client::UpstreamTls,
};

/// The upstream as every session reaches it: where, how (its configuration), and the
/// TLS connector start-up built for it.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// Its name in metrics: `default` for `[upstream]`, NAME for `[upstreams.NAME]`.
    name: String,
    /// The servers, in the order configured.
    servers: Vec<Server>,
    /// Where round robin starts next.
    turn: AtomicUsize,
    /// `[upstream]`.
    pub config: UpstreamConfig,
    /// `None` unless `upstream.tls` asks for TLS.
    pub(super) tls: Option<UpstreamTls>,
}

/// One server of the upstream.
#[derive(Debug)]
pub(crate) struct Server {
    /// `host:port`.
    pub(crate) address: String,
    /// Its place in the list, 1 first: its label in metrics (an address never is).
    position: String,
    /// Set when it failed: passed over until then.
    down_until: Mutex<Option<Instant>>,
}

impl Server {
    fn is_down(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .expect("lock poisoned")
            .is_some_and(|until| until > now)
    }
}

impl Upstream {
    /// The upstream `name` of `servers` (`host:port` each); `tls` is the connector
    /// `config.tls` asks for.
    pub(crate) fn new(
        name: &str,
        servers: Vec<String>,
        config: UpstreamConfig,
        tls: Option<UpstreamTls>,
    ) -> Self {
        let upstream = Self {
            name: name.into(),
            servers: servers
                .into_iter()
                .enumerate()
                .map(|(index, address)| Server {
                    address,
                    position: (index + 1).to_string(),
                    down_until: Mutex::new(None),
                })
                .collect(),
            turn: AtomicUsize::new(0),
            config,
            tls,
        };
        // Up until one fails.
        for server in &upstream.servers {
            upstream.show_up(server, true);
        }
        upstream
    }

    /// The servers in the order one session tries them: those up, starting where
    /// `balance` says, then those marked down (as a last resort, soonest back
    /// first): a session never fails while any server might take it.
    pub(super) fn candidates(&self) -> Vec<&Server> {
        let now = Instant::now();
        let count = self.servers.len();
        let start = match self.config.balance {
            Balance::Primary => 0,
            Balance::RoundRobin => self.turn.fetch_add(1, Ordering::Relaxed) % count.max(1),
        };
        let in_turn = (0..count).map(|n| &self.servers[(start + n) % count]);
        let (up, mut down): (Vec<&Server>, Vec<&Server>) =
            in_turn.partition(|server| !server.is_down(now));
        down.sort_by_key(|server| *server.down_until.lock().expect("lock poisoned"));
        up.into_iter().chain(down).collect()
    }

    /// Records how a session attempt on `server` fared, for the next attempt's choice:
    /// `Break` with what the session gets (a session, or the upstream's refusal of the
    /// client's own greeting — its policy, which the client hears, not a failure of
    /// this server), `Continue` with the failure, to try the next server.
    pub(super) fn judge<T>(
        &self,
        server: &Server,
        attempt: Result<T, UpstreamError>,
    ) -> ControlFlow<Result<T, UpstreamError>, UpstreamError> {
        match attempt {
            Ok(session) => {
                self.succeeded(server);
                ControlFlow::Break(Ok(session))
            }
            Err(error @ UpstreamError::GreetingRefused(_)) => ControlFlow::Break(Err(error)),
            Err(error) => {
                self.failed(server, &error);
                ControlFlow::Continue(error)
            }
        }
    }

    /// `server` failed before the client heard anything: passed over for
    /// `down_for`, and the session tries the next. (A lone server is not marked:
    /// there is no other to prefer, and the session's own error says enough.)
    fn failed(&self, server: &Server, error: &UpstreamError) {
        if telemetry::on() {
            counter!(telemetry::UPSTREAM_SERVER_FAILURES, "upstream" => self.name.clone(), "server" => server.position.clone())
                .increment(1);
        }
        if self.servers.len() < 2 {
            return;
        }
        let until = Instant::now() + self.config.down_for;
        let was_down = server
            .down_until
            .lock()
            .expect("lock poisoned")
            .replace(until)
            .is_some();
        if !was_down {
            warn!(server = %server.address, %error, down_for = ?self.config.down_for, "upstream server down; sessions go to the others");
            self.show_up(server, false);
        }
    }

    /// `server` took a session: up again if it was down.
    fn succeeded(&self, server: &Server) {
        let was_down = server.down_until.lock().expect("lock poisoned").take();
        if was_down.is_some() {
            info!(server = %server.address, "upstream server up again");
            self.show_up(server, true);
        }
    }

    /// Sets `portcullis_upstream_server_up` for `server` (when it changes, not per
    /// session).
    fn show_up(&self, server: &Server, up: bool) {
        if telemetry::on() {
            gauge!(telemetry::UPSTREAM_SERVER_UP, "upstream" => self.name.clone(), "server" => server.position.clone())
                .set(if up { 1.0 } else { 0.0 });
        }
    }
}
