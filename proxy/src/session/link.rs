//! The session's upstream side: the one owner of a client session's upstream session,
//! and the only code that opens, commands, fails, resets or releases it. Its state
//! says whether an upstream transaction is open and whether the upstream session
//! carries the client's own AUTH, so no flag elsewhere can disagree with the session
//! it describes.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::sync::oneshot;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

use super::SessionContext;
use metrics::counter;

use crate::{
    client::{Greeting, Peer},
    dns::ClientName,
    smtp::{Reply, capabilities::Capabilities},
    telemetry,
    upstream::{Step, UpstreamError, UpstreamSession},
};

/// An opened upstream session, and the client's host names the opening waited for
/// (they were needed for XCLIENT).
type Opened = Result<(UpstreamSession, Option<ClientName>), UpstreamError>;

/// An upstream session being opened while the client is served. It is a future the
/// session's own task polls whenever it waits for the client, not a task of its own:
/// a spawned task cost a wake-up on another thread and a join for every session
/// (bench/RESULTS.md).
struct Opening {
    future: Pin<Box<dyn Future<Output = Opened> + Send>>,
    /// Where the client's greeting goes, while an opening begun at connect waits for
    /// it. Dropped unused, it ends the opening with QUIT.
    greeting: Option<oneshot::Sender<Peer>>,
}

impl fmt::Debug for Opening {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Opening")
    }
}

/// A client session's link to the upstream.
#[derive(Debug, Default)]
pub(super) struct UpstreamLink {
    state: LinkState,
    /// The client's host names an opening looked up, until the session takes them.
    client_name: Option<ClientName>,
}

#[derive(Debug, Default)]
enum LinkState {
    /// No upstream session.
    #[default]
    Closed,
    /// One being opened ahead of MAIL (`upstream.open = "ehlo"` or `"connect"`).
    Opening(Opening),
    /// Opening one ahead of MAIL failed: the next command that needs it hears why.
    Failed(UpstreamError),
    /// An upstream session between transactions.
    Idle(Open),
    /// MAIL went upstream and that transaction is not finished.
    InTransaction(Open),
}

#[derive(Debug)]
struct Open {
    session: UpstreamSession,
    /// The session carries this client's AUTH (passthrough): it is never kept for
    /// another client.
    authenticated: bool,
}

impl UpstreamLink {
    /// The open upstream session, if there is one.
    pub(super) fn session(&mut self) -> Option<&mut UpstreamSession> {
        match &mut self.state {
            LinkState::Closed | LinkState::Opening(_) | LinkState::Failed(_) => None,
            LinkState::Idle(open) | LinkState::InTransaction(open) => Some(&mut open.session),
        }
    }

    /// The open upstream session's extensions, if there is one.
    pub(super) fn capabilities(&self) -> Option<&Capabilities> {
        match &self.state {
            LinkState::Closed | LinkState::Opening(_) | LinkState::Failed(_) => None,
            LinkState::Idle(open) | LinkState::InTransaction(open) => {
                Some(open.session.capabilities())
            }
        }
    }

    /// True if there is no upstream session and none is being opened.
    pub(super) fn is_closed(&self) -> bool {
        matches!(self.state, LinkState::Closed)
    }

    /// True while an upstream session is being opened ahead of MAIL.
    pub(super) fn is_opening(&self) -> bool {
        matches!(self.state, LinkState::Opening(_))
    }

    /// Starts opening the upstream session for `client`, to be driven by
    /// [`UpstreamLink::advance`] while the session waits for the client: the client's
    /// host names (`lookup`, if under way) are waited for first, as XCLIENT tells
    /// them; a kept session is taken if there is one.
    pub(super) fn start_opening(
        &mut self,
        context: Arc<SessionContext>,
        mut client: Peer,
        lookup: Option<AbortOnDropHandle<ClientName>>,
    ) {
        debug!("opening the upstream session ahead of MAIL");
        self.state = LinkState::Opening(Opening {
            future: Box::pin(async move {
                if let Some(lookup) = lookup {
                    client.name = Some(super::names::finished(lookup).await);
                }
                let session = open_session(&context, Some(&client)).await?;
                Ok((session, client.name))
            }),
            greeting: None,
        });
    }

    /// Starts opening the upstream session as soon as `client` is let in
    /// (`upstream.open = "connect"`): connect, PROXY header, TLS and the upstream's
    /// 220 go now; EHLO, XCLIENT and the client's own greeting once
    /// [`UpstreamLink::greeted`] gives the client's greeting.
    pub(super) fn start_opening_at_connect(
        &mut self,
        context: Arc<SessionContext>,
        client: Peer,
        lookup: Option<AbortOnDropHandle<ClientName>>,
    ) {
        debug!("opening the upstream session at connect");
        let (greeting, greeted) = oneshot::channel::<Peer>();
        self.state = LinkState::Opening(Opening {
            future: Box::pin(async move {
                let connected = UpstreamSession::connect_for(&context.upstream, &client).await;
                count_connect(connected.is_ok());
                let session = connected?;
                let Ok(mut client) = greeted.await else {
                    session.quit().await;
                    return Err(UpstreamError::Connect(std::io::Error::other(
                        "the client's session ended before it greeted",
                    )));
                };
                if let Some(lookup) = lookup {
                    client.name = Some(super::names::finished(lookup).await);
                }
                let hostname = &context.config.server.hostname;
                let session = match session.greet_for(hostname, &client).await {
                    Ok(session) => {
                        context.capabilities.update(session.capabilities());
                        session
                    }
                    // The upstream's verdict on the client's greeting: the client's to hear.
                    Err(error @ UpstreamError::GreetingRefused(_)) => return Err(error),
                    // The connection did not outlast the client's wait to greet (the
                    // upstream's idle timeout), or the server failed: open another, as
                    // at EHLO, with failover.
                    Err(error) => {
                        debug!(%error, "the upstream session opened at connect failed; opening another");
                        open_session(&context, Some(&client)).await?
                    }
                };
                Ok((session, client.name))
            }),
            greeting: Some(greeting),
        });
    }

    /// The client greeted (or needs the upstream before greeting): an opening begun
    /// at connect goes on with `client` as it is now.
    pub(super) fn greeted(&mut self, client: &Peer) {
        if let LinkState::Opening(Opening { greeting, .. }) = &mut self.state
            && let Some(greeting) = greeting.take()
        {
            let _ = greeting.send(client.clone());
        }
    }

    /// Drives an opening to its end (pending for ever if there is none). Cancel-safe:
    /// a session waiting for its client polls it beside the read and drops this when
    /// the client's line comes first; the opening goes on at the next wait.
    pub(super) async fn advance(&mut self) {
        let LinkState::Opening(Opening { future, .. }) = &mut self.state else {
            return std::future::pending().await;
        };
        let opened = future.await;
        self.settle(opened);
    }

    fn settle(&mut self, opened: Opened) {
        self.state = match opened {
            Ok((session, name)) => {
                self.client_name = name;
                LinkState::Idle(Open {
                    session,
                    authenticated: false,
                })
            }
            Err(error) => LinkState::Failed(error),
        };
    }

    /// Finishes an opening ahead of MAIL, if there was one: the client's host names if
    /// it looked them up, or why it failed (the link is then closed, and the failure is
    /// the next command's, as if it had been opened for it).
    pub(super) async fn opened(&mut self) -> Result<Option<ClientName>, UpstreamError> {
        if self.is_opening() {
            self.advance().await;
        }
        if let LinkState::Failed(_) = self.state {
            let LinkState::Failed(error) = std::mem::take(&mut self.state) else {
                unreachable!("matched above");
            };
            return Err(error);
        }
        Ok(self.client_name.take())
    }

    /// True if an upstream session must be opened before the next command: there is
    /// none, or the idle one went away (an upstream that timed us out sent 421 and
    /// closed).
    pub(super) fn needs_opening(&mut self) -> bool {
        match &self.state {
            LinkState::Closed => true,
            LinkState::Idle(open) if open.session.is_stale() => {
                debug!("idle upstream session went away; opening a new one");
                self.state = LinkState::Closed;
                true
            }
            _ => false,
        }
    }

    /// Opens an upstream session for `client` (or takes a kept one), unless one is
    /// open, and makes sure the upstream was greeted as the client greeted: `greeting`.
    pub(super) async fn open(
        &mut self,
        context: &SessionContext,
        client: Option<&Peer>,
        greeting: Option<&Greeting>,
    ) -> Result<&mut UpstreamSession, UpstreamError> {
        if let LinkState::Closed = self.state {
            let session = open_session(context, client).await?;
            self.state = LinkState::Idle(Open {
                session,
                authenticated: false,
            });
        }
        let session = self.session().expect("just opened");
        // A kept session last greeted for another client, or a client that greeted
        // again with another name: the upstream hears the client's greeting first.
        if let Some(greeting) = greeting {
            session.ensure_greeting(greeting).await?;
        }
        Ok(session)
    }

    /// MAIL went upstream: a transaction is open there until it ends or fails.
    pub(super) fn transaction_started(&mut self) {
        self.state = match std::mem::take(&mut self.state) {
            LinkState::Idle(open) => LinkState::InTransaction(open),
            other => other,
        };
    }

    /// The upstream answered the final dot: its transaction is over.
    pub(super) fn transaction_ended(&mut self) {
        self.state = match std::mem::take(&mut self.state) {
            LinkState::InTransaction(open) => LinkState::Idle(open),
            other => other,
        };
    }

    /// The upstream session carries the client's own AUTH (passthrough).
    pub(super) fn authenticated(&mut self) {
        if let LinkState::Idle(open) | LinkState::InTransaction(open) = &mut self.state {
            open.authenticated = true;
        }
    }

    /// True if the upstream session carries the client's AUTH.
    pub(super) fn is_authenticated(&self) -> bool {
        matches!(&self.state, LinkState::Idle(open) | LinkState::InTransaction(open) if open.authenticated)
    }

    /// Ends the upstream transaction (RSET), if one is open. An upstream that refuses
    /// RSET is closed with QUIT; one that fails is dropped.
    pub(super) async fn reset(&mut self, timeout: Duration) {
        if !matches!(self.state, LinkState::InTransaction(_)) {
            return;
        }
        let LinkState::InTransaction(mut open) = std::mem::take(&mut self.state) else {
            unreachable!("matched above");
        };
        match open.session.command(Step::Command, "RSET", timeout).await {
            Ok(reply) if reply.is_positive() => self.state = LinkState::Idle(open),
            Ok(reply) => {
                warn!(reply = %reply, "upstream refused RSET; closing that session");
                tokio::spawn(open.session.quit());
            }
            Err(error) => {
                self.state = LinkState::InTransaction(open);
                self.fail(error);
            }
        }
    }

    /// Closes a failed upstream session — with QUIT if the upstream is still in step —
    /// and returns what the client is told.
    pub(super) fn fail(&mut self, error: UpstreamError) -> Reply {
        warn!(%error, "upstream failure");
        if telemetry::on() {
            counter!(telemetry::UPSTREAM_ERRORS, "kind" => error.kind()).increment(1);
        }
        if let Some(open) = self.take()
            && error.leaves_session_usable()
        {
            // RFC 5321 §4.1.1.10: a session ends with QUIT; the client does not wait.
            tokio::spawn(open.session.quit());
        }
        error.reply()
    }

    /// Drops the upstream session without a word: mid-DATA (without the terminator the
    /// upstream discards what it received), or after it closed itself (421).
    pub(super) fn drop_session(&mut self) {
        self.take();
    }

    /// Ends the upstream session now, with QUIT (STARTTLS, a login the proxy verified:
    /// the upstream was told about a client that is no longer the one talking). One
    /// still opening is let finish and then quit, not cut off mid-handshake.
    pub(super) async fn quit(&mut self) {
        match std::mem::take(&mut self.state) {
            LinkState::Closed | LinkState::Failed(_) => {}
            LinkState::Opening(opening) => quit_when_open(opening),
            LinkState::Idle(open) | LinkState::InTransaction(open) => open.session.quit().await,
        }
    }

    /// The client has left: an idle upstream session that names no client goes back
    /// to the pool if reuse is on; any other is closed with QUIT.
    pub(super) async fn release(mut self, context: &SessionContext) {
        let (keep, open) = match std::mem::take(&mut self.state) {
            LinkState::Closed | LinkState::Failed(_) => return,
            LinkState::Opening(opening) => return quit_when_open(opening),
            LinkState::Idle(open) => (!open.authenticated, open),
            LinkState::InTransaction(open) => (false, open),
        };
        let keep = keep && !context.shutdown.stopping.is_cancelled();
        let leftover = if keep {
            context.pool.give_back(open.session)
        } else {
            Some(open.session)
        };
        if let Some(session) = leftover {
            session.quit().await;
        }
    }

    /// Takes the open session out, leaving the link closed (one still opening is
    /// dropped, which cuts its connection).
    fn take(&mut self) -> Option<Open> {
        match std::mem::take(&mut self.state) {
            LinkState::Closed | LinkState::Opening(_) | LinkState::Failed(_) => None,
            LinkState::Idle(open) | LinkState::InTransaction(open) => Some(open),
        }
    }
}

/// An upstream session for `client`: a kept one if reuse is on and one is idle, else
/// a new one. Either way its extensions refresh the cache.
async fn open_session(
    context: &SessionContext,
    client: Option<&Peer>,
) -> Result<UpstreamSession, UpstreamError> {
    let session = match context.pool.take() {
        Some(mut session) => {
            session.reuse();
            debug!(uses = session.uses(), "reusing an idle upstream session");
            session
        }
        None => {
            let hostname = &context.config.server.hostname;
            let opened = UpstreamSession::open(&context.upstream, hostname, client).await;
            count_connect(opened.is_ok());
            opened?
        }
    };
    context.capabilities.update(session.capabilities());
    Ok(session)
}

fn count_connect(ok: bool) {
    if telemetry::on() {
        let outcome = if ok { "ok" } else { "failed" };
        counter!(telemetry::UPSTREAM_CONNECTS, "outcome" => outcome).increment(1);
    }
}

/// A session opened for a client that no longer needs it: QUIT once it is open, in
/// the background (the upstream then logs a clean end, not a lost connection). One
/// begun at connect that still waits for the client's greeting hears it never will.
fn quit_when_open(opening: Opening) {
    let Opening { future, greeting } = opening;
    drop(greeting);
    tokio::spawn(async move {
        if let Ok((session, _)) = future.await {
            session.quit().await;
        }
    });
}
