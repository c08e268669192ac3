//! One downstream SMTP session: the only place that decides what to answer.
//!
//! The session reads commands, checks them against its state and limits, relays MAIL,
//! RCPT and DATA to the upstream in lock step, and relays the upstream's replies. It
//! is generic over its stream (wrapped in [`MaybeTls`] so STARTTLS can encrypt it in
//! place), so unit tests drive it over `tokio::io::duplex`. STARTTLS and implicit TLS
//! are in `tls.rs`, AUTH in `auth.rs`. Plugins are asked through `hooks` at connect
//! ([`Session::run`]), HELO (`greeting.rs`), AUTH (`auth.rs`), MAIL and RCPT
//! (`transaction.rs`) and DATA (`data_streamed.rs` streams the message when no plugin
//! wants it, `data_spooled.rs` spools it for them).

mod audit;
mod auth;
mod context;
mod data_spooled;
mod data_streamed;
mod greeting;
mod link;
mod names;
mod plugins;
pub(crate) mod state;
mod tls;
mod transaction;
mod verify;

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::smtp::replies;
use crate::{
    config::TlsMode,
    connection::{Connection, ReadError},
    dns::ClientName,
    hooks::SessionHooks,
    smtp::{Command, CommandError, Reply, capabilities::Capabilities, command, line::NextLine},
    telemetry,
    tls::MaybeTls,
    upstream::{Step, UpstreamError, UpstreamSession},
};
use context::next_session_id;
pub(crate) use context::{ListenerContext, SessionContext, Shutdown};
use link::UpstreamLink;
pub(crate) use state::{Envelope, Peer, Transaction};

/// The longest a session's close (TLS close_notify, FIN) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// One client connection.
pub(crate) struct Session<S> {
    context: Arc<SessionContext>,
    listener: Arc<ListenerContext>,
    id: String,
    downstream: Connection<MaybeTls<S>>,
    peer: Peer,
    transaction: Transaction,
    /// The upstream session, and whether a transaction is open there.
    link: UpstreamLink,
    /// What the last EHLO offered (nothing after HELO).
    offered: Capabilities,
    /// This session's plugin instances.
    hooks: SessionHooks,
    /// The lookup of the client's host names, while it runs.
    name_lookup: Option<tokio_util::task::AbortOnDropHandle<ClientName>>,
    errors: usize,
    /// Commands that moved no mail since the last message accepted.
    junk_commands: usize,
    /// The stage the replies being sent answer, for the metrics.
    stage: usize,
    /// The current transaction as its audit record will tell it (`[audit]` on).
    audit: Option<audit::Draft>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// A session for a freshly accepted stream.
    pub(crate) fn new(
        context: Arc<SessionContext>,
        stream: S,
        peer: Peer,
        listener: Arc<ListenerContext>,
    ) -> Self {
        let id = next_session_id();
        let mut hooks = SessionHooks::new(listener.chain.clone(), &id);
        if context.audit.is_some() {
            hooks.record_trace();
        }
        Self {
            context,
            hooks,
            listener,
            id,
            downstream: Connection::new(MaybeTls::Plain(stream)),
            peer,
            transaction: Transaction::Idle,
            link: UpstreamLink::default(),
            offered: Capabilities::default(),
            name_lookup: None,
            errors: 0,
            junk_commands: 0,
            stage: telemetry::CONNECT,
            audit: None,
        }
    }

    /// Runs the session to its end, inside a tracing span naming it.
    pub(crate) async fn run(self) {
        let span = info_span!("session", id = %self.id, client = %self.peer.address);
        self.serve().instrument(span).await
    }

    async fn serve(mut self) {
        debug!("connected");
        let listener = self.listener.clone();
        listener.meters.sessions.increment(1);
        listener.meters.open.increment(1.0);
        if self.listener.config.tls == TlsMode::Implicit && !self.handshake().await {
            return;
        }
        let hostname = self.context.config.server.hostname.clone();
        self.hooks
            .connection(&hostname, self.peer.address, self.peer.local_address);
        let mut flow = self.connect_hook().await;
        if flow == Flow::Continue {
            self.start_name_lookup();
            self.open_upstream_at_connect();
            self.reply(replies::greeting(&hostname));
        }
        while flow == Flow::Continue {
            flow = match self.next_line().await {
                Ok(line) => self.handle_line(line).await,
                Err(reply) => {
                    if let Some(reply) = reply {
                        self.reply(reply);
                    }
                    Flow::Close
                }
            };
        }
        let _ = self.flush().await;
        self.close_downstream().await;
        if !self.hooks.is_empty() {
            let info = self.plugin_session();
            self.hooks.session_end(&info).await;
        }
        let (context, link) = (self.context.clone(), std::mem::take(&mut self.link));
        drop(self);
        listener.meters.open.decrement(1.0);
        link.release(&context).await;
        debug!("disconnected");
    }

    /// Closes the client's connection, before the session-end hook and the upstream's
    /// QUIT so that the client sees the end at once. TLS ends with close_notify (RFC
    /// 8446 §6.1; a client that does not read gets no longer than `CLOSE_TIMEOUT`),
    /// plaintext with the FIN the close sends.
    async fn close_downstream(&mut self) {
        if self.downstream.stream().is_tls() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.downstream.shutdown()).await;
        }
        drop(std::mem::replace(
            self.downstream.stream_mut(),
            MaybeTls::Upgrading,
        ));
    }

    /// The next command line. Queued replies are flushed first if no further command
    /// is already waiting (so pipelined replies go out together). `Err` ends the
    /// session, with a final reply if there is one to give.
    async fn next_line(&mut self) -> Result<NextLine, Option<Reply>> {
        self.next_line_within(self.context.config.smtp.command_line_limit)
            .await
    }

    /// [`Session::next_line`] with another line length limit (AUTH responses).
    async fn next_line_within(&mut self, limit: usize) -> Result<NextLine, Option<Reply>> {
        if !self.downstream.input.has_line(limit) && self.flush().await.is_err() {
            return Err(None);
        }
        let hostname = &self.context.config.server.hostname;
        let shutdown = &self.context.shutdown;
        // Idle sessions close at the start of a shutdown; transactions may finish.
        let stop = if self.transaction.in_transaction() {
            &shutdown.abort
        } else {
            &shutdown.stopping
        };
        let deadline = Instant::now() + self.context.config.smtp.command_timeout;
        // An upstream session opening ahead of MAIL goes on while the client is
        // awaited (the read is cancel-safe: what arrived stays in the buffer).
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(Some(replies::shutting_down(hostname))),
                result = self.downstream.read_line(limit, deadline) => return match result {
                    Ok(line) => Ok(line),
                    Err(ReadError::Timeout) => {
                        info!("command timeout");
                        Err(Some(replies::timeout(hostname)))
                    }
                    Err(ReadError::Closed | ReadError::Io(_)) => Err(None),
                },
                () = self.link.advance(), if self.link.is_opening() => {}
            }
        }
    }

    async fn handle_line(&mut self, line: NextLine) -> Flow {
        self.stage = telemetry::OTHER;
        let line = match line {
            NextLine::Line(line) => line,
            NextLine::BareLf(_) => return self.error(replies::bare_lf_command()),
            NextLine::TooLong => return self.error(replies::line_too_long()),
        };
        match command::parse(&line) {
            Ok(command) => self.handle_command(command).await,
            Err(CommandError::Unrecognized | CommandError::NotUtf8) => {
                self.error(replies::unrecognized())
            }
            Err(CommandError::Syntax(detail)) => self.error(replies::syntax(detail)),
        }
    }

    async fn handle_command(&mut self, command: Command) -> Flow {
        self.stage = telemetry::stage_of(&command);
        if moves_no_mail(&command) {
            self.junk_commands += 1;
            if self.junk_commands > self.context.config.smtp.max_junk_commands {
                info!(
                    commands = self.junk_commands - 1,
                    "too many commands that move no mail"
                );
                self.reply(replies::too_many_junk_commands(
                    &self.context.config.server.hostname,
                ));
                return Flow::Close;
            }
        }
        match command {
            Command::Helo(name) => self.helo(name, false).await,
            Command::Ehlo(name) => self.helo(name, true).await,
            Command::Mail(mail) => self.mail(mail).await,
            Command::Rcpt(rcpt) => self.rcpt(rcpt).await,
            Command::Data => self.data().await,
            Command::Rset => {
                self.reset_transaction().await;
                self.reply(replies::ok())
            }
            Command::Noop => self.reply(replies::ok()),
            Command::Help => self.reply(replies::help()),
            Command::Quit => {
                self.reply(replies::bye());
                Flow::Close
            }
            Command::Vrfy(argument) => {
                self.verify("VRFY", &argument, self.context.config.smtp.vrfy)
                    .await
            }
            Command::Expn(argument) => {
                self.verify("EXPN", &argument, self.context.config.smtp.expn)
                    .await
            }
            Command::StartTls => self.starttls().await,
            Command::Auth(argument) => self.auth(argument).await,
            Command::NotImplemented(verb) => self.error(replies::not_implemented(verb)),
        }
    }

    /// The upstream session, opened (or taken from the pool) if there is none yet, and
    /// greeted as the client greeted.
    async fn upstream_session(&mut self) -> Result<&mut UpstreamSession, UpstreamError> {
        self.link.greeted(&self.peer);
        if let Some(name) = self.link.opened().await? {
            self.peer.name = Some(name);
        }
        let opening = self.link.needs_opening();
        if opening {
            self.await_client_name().await;
        }
        let greeting = self.peer.greeting();
        let client = opening.then_some(&self.peer);
        self.link
            .open(&self.context, client, greeting.as_ref())
            .await
    }

    /// Sends one command upstream (opening the session if needed). On failure the
    /// upstream session is closed and the reply for the client is returned.
    async fn upstream_command(&mut self, line: &str, timeout: Duration) -> Result<Reply, Reply> {
        let result = match self.upstream_session().await {
            Ok(upstream) => upstream.command(Step::Command, line, timeout).await,
            Err(error) => Err(error),
        };
        result.map_err(|error| self.link.fail(error))
    }

    /// Ends the current transaction here and upstream (RSET, EHLO, after DATA).
    async fn reset_transaction(&mut self) {
        self.transaction = Transaction::Idle;
        let timeout = self.context.upstream.config.timeouts.command;
        self.link.reset(timeout).await;
    }

    /// Relays a reply that came from the upstream. A 421 means the upstream is closing
    /// the session: the client gets that same reply and its session ends too.
    fn relay(&mut self, reply: Reply) -> Flow {
        let closing = reply.code() == 421;
        self.reply(reply);
        if closing {
            warn!("upstream closed the session with 421; closing the client session too");
            self.link.drop_session();
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Queues a reply.
    fn reply(&mut self, reply: Reply) -> Flow {
        telemetry::reply_sent(self.stage, reply.code());
        self.downstream.queue_reply(&reply);
        Flow::Continue
    }

    /// Queues an error reply caused by the client, and disconnects past the limit.
    fn error(&mut self, reply: Reply) -> Flow {
        self.reply(reply);
        self.errors += 1;
        if self.errors >= self.context.config.smtp.max_errors {
            info!(errors = self.errors, "too many errors");
            self.reply(replies::too_many_errors(
                &self.context.config.server.hostname,
            ));
            return Flow::Close;
        }
        Flow::Continue
    }

    /// 503 for a RCPT or DATA without an accepted MAIL: a client error, unless it came
    /// behind a MAIL that was refused (pipelined, or sent before the refusal arrived)
    /// and is within one pipelined group's worth of them.
    fn out_of_sequence(&mut self, detail: &str) -> Flow {
        let reply = replies::bad_sequence(detail);
        let group = self.context.config.smtp.max_recipients + 1;
        match &mut self.transaction {
            Transaction::MailRefused { excused } if *excused < group => {
                *excused += 1;
                self.reply(reply)
            }
            _ => self.error(reply),
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + self.context.config.smtp.command_timeout;
        self.downstream.flush(deadline).await
    }
}

/// NOOP, RSET, HELP, VRFY and EXPN: what a client holding a connection open without
/// sending mail repeats (`smtp.max_junk_commands`).
fn moves_no_mail(command: &Command) -> bool {
    matches!(
        command,
        Command::Noop | Command::Rset | Command::Help | Command::Vrfy(_) | Command::Expn(_)
    )
}

#[cfg(test)]
mod tests;
