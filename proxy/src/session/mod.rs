//! One downstream SMTP session: the only place that decides what to answer.
//!
//! The session reads commands, checks them against its state and limits, relays MAIL,
//! RCPT and DATA to the upstream in lock step, and relays the upstream's replies. It
//! is generic over its stream (wrapped in [`MaybeTls`] so STARTTLS can encrypt it in
//! place), so unit tests drive it over `tokio::io::duplex`. STARTTLS and implicit TLS
//! are in `tls.rs`, AUTH in `auth.rs`. Plugins are asked through `hooks` at connect
//! ([`Session::run`]), HELO (`helo`), AUTH (`auth.rs`), MAIL and RCPT
//! (`transaction.rs`) and DATA (`data.rs` streams when no plugin wants the message,
//! `spooled.rs` spools it for them).

mod auth;
mod data;
pub mod replies;
mod spooled;
pub mod state;
mod tls;
mod transaction;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    auth::{
        Reloadable, checks::PasswordChecks, credentials::CredentialsFile,
        sender_logins::SenderLogins, throttle::AuthThrottle,
    },
    config::{Config, ListenerConfig, TlsMode, VerifyPolicy},
    connection::{Connection, LARGE_READ, ReadError},
    dns::{ClientName, HostName, Resolver},
    hooks::{Chain, Decision, SessionHooks},
    plugin_host::LoadedPlugin,
    plugin_host::abi,
    smtp::{
        Command, CommandError, MailCommand, Reply,
        capabilities::{Capabilities, Extension},
        command,
        line::NextLine,
    },
    tls::{MaybeTls, server::ServerTls},
    upstream::{
        ClientInfo, Stage, UpstreamError, UpstreamSession, capability_cache::CapabilityCache,
        pool::SessionPool,
    },
};
pub use state::{Envelope, Peer};

/// The longest a session's close (TLS close_notify, FIN) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The two phases of a graceful shutdown.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop accepting; idle sessions close with 421, transactions may finish.
    pub stopping: CancellationToken,
    /// The drain time is over: every session closes with 421 now.
    pub abort: CancellationToken,
}

/// What all sessions share.
#[derive(Debug)]
pub struct SessionContext {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// `host:port` of the upstream (the development upstream's address if that is used).
    pub upstream_address: String,
    /// The upstream's last known extensions.
    pub capabilities: Arc<CapabilityCache>,
    /// Idle upstream sessions kept for reuse (empty unless `[upstream.reuse]` is on).
    pub pool: Arc<SessionPool>,
    /// Shutdown signals.
    pub shutdown: Shutdown,
    /// The certificates for client TLS (`None` when no listener uses TLS).
    pub server_tls: Option<ServerTls>,
    /// Failed-AUTH counting, shared by all sessions.
    pub throttle: AuthThrottle,
    /// The threads that check passwords, and the turns to use them.
    pub checks: Arc<PasswordChecks>,
    /// The resolver for the client's host names (shared with the plugins).
    pub dns: Arc<Resolver>,
}

/// What a session knows about the listener it came in on.
pub struct ListenerContext {
    /// The listener's configuration.
    pub config: ListenerConfig,
    /// Its plugin chain.
    pub chain: Arc<Chain>,
    /// Edge AUTH: logins and password hashes.
    pub credentials: Option<Reloadable<CredentialsFile>>,
    /// Edge AUTH: the plugin that checks passwords instead.
    pub verifier: Option<Arc<LoadedPlugin>>,
    /// Which logins may use which senders.
    pub sender_logins: Option<Reloadable<SenderLogins>>,
}

impl ListenerContext {
    /// A listener without TLS, AUTH or plugins (for tests and tools).
    pub fn plain(config: ListenerConfig) -> Self {
        Self {
            chain: Arc::new(Chain {
                listener: config.name.clone(),
                plugins: Vec::new(),
            }),
            config,
            credentials: None,
            verifier: None,
            sender_logins: None,
        }
    }
}

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// A short unique id per session, for logs: process start time and a counter.
fn next_session_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32)
    });
    format!(
        "{prefix:08x}{:06x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One client connection.
pub struct Session<S> {
    context: Arc<SessionContext>,
    listener: Arc<ListenerContext>,
    id: String,
    downstream: Connection<MaybeTls<S>>,
    peer: Peer,
    envelope: Envelope,
    upstream: Option<UpstreamSession>,
    /// A MAIL was sent upstream and the transaction there is not finished.
    upstream_in_transaction: bool,
    /// The upstream session carries this client's AUTH (passthrough): never reused.
    upstream_authenticated: bool,
    /// What the last EHLO offered (nothing after HELO).
    offered: Capabilities,
    /// This session's plugin instances.
    hooks: SessionHooks,
    /// The lookup of the client's host names, while it runs.
    name_lookup: Option<AbortOnDropHandle<ClientName>>,
    errors: usize,
    /// Commands that moved no mail since the last message accepted.
    junk_commands: usize,
    /// Set when the session must end without reading another command.
    closing: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// A session for a freshly accepted stream.
    pub fn new(
        context: Arc<SessionContext>,
        stream: S,
        peer: Peer,
        listener: Arc<ListenerContext>,
    ) -> Self {
        let id = next_session_id();
        Self {
            context,
            hooks: SessionHooks::new(listener.chain.clone(), &id),
            listener,
            id,
            downstream: Connection::new(MaybeTls::Plain(stream)),
            peer,
            envelope: Envelope::default(),
            upstream: None,
            upstream_in_transaction: false,
            upstream_authenticated: false,
            offered: Capabilities::default(),
            name_lookup: None,
            errors: 0,
            junk_commands: 0,
            closing: false,
        }
    }

    /// Runs the session to its end, inside a tracing span naming it.
    pub async fn run(self) {
        let span = info_span!("session", id = %self.id, client = %self.peer.address);
        self.serve().instrument(span).await
    }

    async fn serve(mut self) {
        debug!("connected");
        if self.listener.config.tls == TlsMode::Implicit && !self.handshake().await {
            return;
        }
        let hostname = self.context.config.server.hostname.clone();
        if self.connect_hook().await == Flow::Continue {
            self.start_name_lookup();
            self.reply(replies::greeting(&hostname));
        }
        while !self.closing {
            let line = match self.next_line().await {
                Ok(line) => line,
                Err(reply) => {
                    if let Some(reply) = reply {
                        self.reply(reply);
                    }
                    break;
                }
            };
            if self.handle_line(line).await == Flow::Close {
                break;
            }
        }
        let _ = self.flush().await;
        // TLS ends with close_notify (RFC 8446 §6.1), plaintext with FIN; a client
        // that does not read gets no longer than this.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.downstream.shutdown()).await;
        if !self.hooks.is_empty() {
            let info = self.plugin_session();
            self.hooks.session_end(&info).await;
        }
        let (context, upstream) = (self.context.clone(), self.upstream.take());
        let in_transaction = self.upstream_in_transaction || self.upstream_authenticated;
        // Close the downstream socket first: the client sees the end at once, not after
        // the upstream's QUIT round trip.
        drop(self);
        if let Some(upstream) = upstream {
            release_upstream(&context, upstream, in_transaction).await;
        }
        debug!("disconnected");
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
        let stop = if self.envelope.in_transaction() {
            &shutdown.abort
        } else {
            &shutdown.stopping
        };
        let deadline = Instant::now() + self.context.config.smtp.command_timeout;
        tokio::select! {
            biased;
            _ = stop.cancelled() => Err(Some(replies::shutting_down(hostname))),
            result = self.downstream.read_line(limit, deadline) => match result {
                Ok(line) => Ok(line),
                Err(ReadError::Timeout) => {
                    info!("command timeout");
                    Err(Some(replies::timeout(hostname)))
                }
                Err(ReadError::Closed | ReadError::Io(_)) => Err(None),
            },
        }
    }

    async fn handle_line(&mut self, line: NextLine) -> Flow {
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

    /// HELO/EHLO: resets any transaction and answers with what can be relayed.
    async fn helo(&mut self, name: String, esmtp: bool) -> Flow {
        self.reset_transaction().await;
        let hostname = self.context.config.server.hostname.clone();
        self.peer.helo = Some(name.clone());
        self.peer.esmtp = esmtp;
        self.peer.helo_rewrite = None;
        if !self.hooks.is_empty() {
            let info = self.plugin_session();
            let (decision, rewrite) = self.hooks.helo(&info, &name).await;
            if let Some(flow) = self.refused(decision) {
                self.peer.helo = None;
                return flow;
            }
            self.peer.helo_rewrite = rewrite;
        }
        if !esmtp {
            self.offered = Capabilities::default();
            return self.reply(Reply::plain(250, format!("{hostname} Hello {name}")));
        }
        let upstream = self.upstream_capabilities().await;
        self.offered = upstream.offer(self.context.config.smtp.max_message_size);
        if let Some(mechanisms) = self.auth_offer(&upstream) {
            self.offered.insert(Extension::Auth);
            self.offered.auth_mechanisms = mechanisms;
        }
        let mut lines = vec![format!("{hostname} Hello {name}")];
        lines.extend(self.offered.ehlo_lines());
        if self.listener.config.tls == TlsMode::Starttls && self.peer.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        self.reply(Reply::multiline(250, lines))
    }

    /// The upstream's extensions: from the open session, the cache, or a probe waited
    /// for at most `upstream.capabilities_wait` (and not at all once the client left).
    async fn upstream_capabilities(&mut self) -> Capabilities {
        if let Some(upstream) = &self.upstream {
            return upstream.capabilities().clone();
        }
        let context = self.context.clone();
        if let Some(capabilities) = context.capabilities.get() {
            return capabilities;
        }
        let config = &context.config;
        let probe = context.capabilities.wait_for(
            &config.upstream,
            &context.upstream_address,
            &config.server.hostname,
            config.upstream.capabilities_wait,
        );
        // Reading on meanwhile only buffers what the client pipelined; it ends the
        // wait when the client has gone.
        let deadline = Instant::now() + config.smtp.command_timeout;
        let downstream = &mut self.downstream;
        let client_gone = async { while downstream.fill(LARGE_READ, deadline).await.is_ok() {} };
        let known = tokio::select! {
            known = probe => known,
            () = client_gone => None,
        };
        known.unwrap_or_else(|| {
            warn!("the upstream's extensions are not known yet; offering none");
            Capabilities::default()
        })
    }

    /// VRFY/EXPN: answered locally or relayed, as configured.
    async fn verify(&mut self, verb: &str, argument: &str, policy: VerifyPolicy) -> Flow {
        if policy == VerifyPolicy::Refuse {
            return match verb {
                "VRFY" => self.reply(replies::cannot_verify()),
                _ => self.error(replies::expn_disabled()),
            };
        }
        let timeout = self.context.config.upstream.timeouts.command;
        let line = format!("{verb} {argument}");
        match self.upstream_command(&line, timeout).await {
            Ok(reply) => self.relay(reply),
            Err(reply) => self.reply(reply),
        }
    }

    /// Starts looking up the client's host names in the background, if they are to be
    /// used (XCLIENT, the Received field); [`Session::client_info`] waits for the
    /// answer. Done once the connect hook let the client in, so a refused connection
    /// costs no DNS.
    fn start_name_lookup(&mut self) {
        if self.context.config.upstream.client_name_lookup {
            let (dns, ip) = (self.context.dns.clone(), self.peer.address.ip());
            let lookup = tokio::spawn(async move { dns.client_name(ip).await });
            self.name_lookup = Some(AbortOnDropHandle::new(lookup));
        }
    }

    /// What the upstream is told about the client, with its host names once their
    /// lookup is done (bounded by twice `dns.timeout`).
    async fn client_info(&mut self) -> ClientInfo {
        if let Some(lookup) = self.name_lookup.take() {
            let name = lookup
                .await
                .unwrap_or_else(|_| ClientName::neither(HostName::TemporarilyUnavailable));
            debug!(?name, "client host name");
            self.peer.name = Some(name);
        }
        self.peer.client_info()
    }

    /// Opens the upstream session if there is none yet, or if the idle one went away
    /// (an upstream that timed us out has sent 421 and closed).
    async fn upstream_session(&mut self) -> Result<&mut UpstreamSession, UpstreamError> {
        if !self.upstream_in_transaction
            && self
                .upstream
                .as_ref()
                .is_some_and(UpstreamSession::is_stale)
        {
            debug!("idle upstream session went away; opening a new one");
            self.upstream = None;
        }
        if self.upstream.is_none() {
            let client = self.client_info().await;
            let config = &self.context.config;
            let session = match self.context.pool.take() {
                Some(mut session) => {
                    session.reuse();
                    debug!(uses = session.uses(), "reusing an idle upstream session");
                    session
                }
                None => {
                    UpstreamSession::open(
                        &config.upstream,
                        &self.context.upstream_address,
                        &config.server.hostname,
                        Some(&client),
                    )
                    .await?
                }
            };
            self.context.capabilities.update(session.capabilities());
            self.upstream = Some(session);
        }
        let upstream = self.upstream.as_mut().expect("just opened");
        // A kept session last greeted for another client, or this client greeted
        // again with another name: the upstream hears the client's greeting first.
        if let Some(greeting) = self.peer.greeting() {
            upstream.ensure_greeting(&greeting).await?;
        }
        Ok(upstream)
    }

    /// Sends one command upstream (opening the session if needed). On failure the
    /// upstream session is dropped and the reply for the client is returned.
    async fn upstream_command(&mut self, line: &str, timeout: Duration) -> Result<Reply, Reply> {
        let result = match self.upstream_session().await {
            Ok(upstream) => upstream.command(Stage::Command, line, timeout).await,
            Err(error) => Err(error),
        };
        result.map_err(|error| self.upstream_failed(error))
    }

    /// Ends a failed upstream session (with QUIT if the upstream is still in step) and
    /// returns what the client is told.
    fn upstream_failed(&mut self, error: UpstreamError) -> Reply {
        warn!(%error, "upstream failure");
        let upstream = self.upstream.take();
        if error.leaves_session_usable() {
            quit_soon(upstream);
        }
        self.upstream_in_transaction = false;
        error.reply()
    }

    /// Ends the current transaction here and upstream (RSET, EHLO, after DATA).
    async fn reset_transaction(&mut self) {
        self.envelope = Envelope::default();
        if !self.upstream_in_transaction {
            return;
        }
        self.upstream_in_transaction = false;
        let timeout = self.context.config.upstream.timeouts.command;
        if let Some(upstream) = self.upstream.as_mut() {
            match upstream.command(Stage::Command, "RSET", timeout).await {
                Ok(reply) if reply.is_positive() => {}
                Ok(reply) => {
                    warn!(reply = %reply, "upstream refused RSET; closing that session");
                    quit_soon(self.upstream.take());
                }
                Err(error) => {
                    self.upstream_failed(error);
                }
            }
        }
    }

    /// The connect hook: `Flow::Close` (after the plugin's reply) if it refused.
    async fn connect_hook(&mut self) -> Flow {
        if self.hooks.is_empty() {
            return Flow::Continue;
        }
        let info = self.plugin_session();
        match self.hooks.connect(&info).await {
            Decision::Continue | Decision::Accept | Decision::Discard => Flow::Continue,
            // A refusal at connect answers instead of the greeting; the session ends.
            Decision::Refuse(reply) | Decision::Disconnect(reply) => {
                self.reply(reply);
                self.closing = true;
                Flow::Close
            }
        }
    }

    /// Applies a refusing decision: `Some(flow)` when the stage must not go on.
    fn refused(&mut self, decision: Decision) -> Option<Flow> {
        match decision {
            Decision::Continue | Decision::Accept | Decision::Discard => None,
            Decision::Refuse(reply) => Some(self.reply(reply)),
            Decision::Disconnect(reply) => {
                self.reply(reply);
                Some(Flow::Close)
            }
        }
    }

    /// What plugins are told about this session.
    fn plugin_session(&self) -> abi::Session {
        abi::Session {
            id: self.id.clone(),
            listener: self.hooks.listener().to_string(),
            client_ip: self.peer.address.ip().to_string(),
            client_port: self.peer.address.port(),
            helo: self.peer.helo.clone(),
            tls: self.peer.tls.is_some(),
            login: self.peer.login.as_ref().map(|login| login.name.clone()),
        }
    }

    /// What plugins are told about the envelope: `mail` if it is not accepted yet.
    fn plugin_envelope(&self, mail: Option<&MailCommand>) -> abi::Envelope {
        let sender = mail.or(self.envelope.mail.as_ref());
        abi::Envelope {
            sender: sender
                .map(|m| m.reverse_path.mailbox().to_string())
                .unwrap_or_default(),
            mail_params: sender
                .map(|m| {
                    m.params
                        .iter()
                        .map(|p| abi::Param {
                            keyword: p.keyword.clone(),
                            value: p.value.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            recipients: self
                .envelope
                .recipients
                .iter()
                .map(|r| r.forward_path.mailbox().to_string())
                .collect(),
        }
    }

    /// Relays a reply that came from the upstream. A 421 means the upstream is closing
    /// the session: the client gets that same reply and its session ends too.
    fn relay(&mut self, reply: Reply) -> Flow {
        let closing = reply.code() == 421;
        self.reply(reply);
        if closing {
            warn!("upstream closed the session with 421; closing the client session too");
            self.upstream = None;
            self.upstream_in_transaction = false;
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Queues a reply.
    fn reply(&mut self, reply: Reply) -> Flow {
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
        if self.envelope.mail_refused && self.envelope.excused < group {
            self.envelope.excused += 1;
            self.reply(reply)
        } else {
            self.error(reply)
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + self.context.config.smtp.command_timeout;
        self.downstream.flush(deadline).await
    }
}

/// Ends an upstream session that is still in step with QUIT, without making the client
/// wait for it (RFC 5321 §4.1.1.10: a session ends with QUIT).
fn quit_soon(upstream: Option<UpstreamSession>) {
    if let Some(upstream) = upstream {
        tokio::spawn(upstream.quit());
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

/// The client has left: its upstream session goes back to the pool if it is idle and
/// reuse is on, otherwise it is closed with QUIT.
async fn release_upstream(
    context: &SessionContext,
    upstream: UpstreamSession,
    in_transaction: bool,
) {
    let keep = !in_transaction && !context.shutdown.stopping.is_cancelled();
    let leftover = if keep {
        context.pool.give_back(upstream)
    } else {
        Some(upstream)
    };
    if let Some(upstream) = leftover {
        upstream.quit().await;
    }
}

#[cfg(test)]
mod tests;
