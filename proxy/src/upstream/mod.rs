//! The client side of the relay: one SMTP session to the upstream MTA.
//!
//! [`UpstreamSession::open`] connects, sends a PROXY header if configured, reads the
//! greeting, sends EHLO (HELO if EHLO is refused) and XCLIENT if configured. After
//! that the session forwards commands and message data and returns the upstream's
//! replies untouched. Every wait has its RFC 5321 §4.5.3.2 timeout, and every failure
//! is an [`UpstreamError`] that knows its SMTP consequence for the client. This module
//! never decides policy; the session does.

pub(crate) mod capability_cache;
pub(crate) mod client_address;
mod error;
pub(crate) mod pool;
mod target;

use std::{io, ops::ControlFlow, sync::Arc, time::Duration};

use tokio::{net::TcpStream, time::Instant};

use crate::{
    client::{Greeting, Peer},
    config::{ClientAddressMode, TlsMode},
    connection::Connection,
    smtp::{
        Reply,
        capabilities::{Capabilities, Extension},
        line::NextLine,
        reply::{ReplyError, ReplyParser},
    },
    telemetry,
    tls::MaybeTls,
};
pub(crate) use error::{Step, UpstreamError};
use error::{on_client, read_error, write_error};
pub(crate) use target::Upstream;

/// The longest reply line we read from an upstream (RFC 5321 says 512; be generous).
const REPLY_LINE_LIMIT: usize = 4096;

/// An open SMTP session with the upstream, past greeting, EHLO and XCLIENT.
#[derive(Debug)]
pub(crate) struct UpstreamSession {
    connection: Connection<MaybeTls<TcpStream>>,
    capabilities: Capabilities,
    upstream: Arc<Upstream>,
    /// Client sessions served so far (more than one with `[upstream.reuse]`).
    uses: usize,
    /// The upstream was told who the client is (XCLIENT, PROXY): never reused.
    identified: bool,
    /// The greeting the upstream last got; `None` right after XCLIENT, which wants a
    /// new one.
    greeted: Option<Greeting>,
}

impl UpstreamSession {
    /// Connects to the upstream and runs the handshake for `client`, greeting the
    /// upstream as the client greeted the proxy (see [`UpstreamSession::handshake_for`]).
    /// A session the upstream refuses is ended with QUIT.
    pub(crate) async fn open(
        upstream: &Arc<Upstream>,
        hostname: &str,
        client: Option<&Peer>,
    ) -> Result<Self, UpstreamError> {
        let mut failure = None;
        for server in upstream.candidates() {
            let attempt = Self::open_on(upstream, &server.address, hostname, client).await;
            match upstream.judge(server, attempt) {
                ControlFlow::Break(outcome) => return outcome,
                ControlFlow::Continue(error) => failure = Some(error),
            }
        }
        Err(failure.expect("an upstream has at least one server"))
    }

    /// The first part of [`Self::open`], for a client whose HELO name is not known
    /// yet (`upstream.open = "connect"`): connected, with its PROXY header, implicit
    /// TLS and 220 behind it, trying the servers in turn as `open` does. Then
    /// [`Self::greet_for`].
    pub(crate) async fn connect_for(
        upstream: &Arc<Upstream>,
        client: &Peer,
    ) -> Result<Self, UpstreamError> {
        let mut failure = None;
        for server in upstream.candidates() {
            let attempt = Self::connect_to(upstream, &server.address, Some(client)).await;
            match upstream.judge(server, attempt) {
                ControlFlow::Break(outcome) => return outcome,
                ControlFlow::Continue(error) => failure = Some(error),
            }
        }
        Err(failure.expect("an upstream has at least one server"))
    }

    /// The rest of the handshake of a session from [`Self::connect_for`], once the
    /// client greeted: EHLO, STARTTLS, XCLIENT and the client's own greeting.
    pub(crate) async fn greet_for(
        self,
        hostname: &str,
        client: &Peer,
    ) -> Result<Self, UpstreamError> {
        self.finish(hostname, Some(client)).await
    }

    /// [`Self::handshake_for`], closing the session with QUIT if that fails while the
    /// upstream is still in step.
    async fn finish(
        mut self,
        hostname: &str,
        client: Option<&Peer>,
    ) -> Result<Self, UpstreamError> {
        match self.handshake_for(hostname, client).await {
            Ok(()) => Ok(self),
            Err(error) => {
                if error.leaves_session_usable() {
                    self.quit().await;
                }
                Err(error)
            }
        }
    }

    /// [`Self::open`] on one server at `address`.
    async fn open_on(
        upstream: &Arc<Upstream>,
        address: &str,
        hostname: &str,
        client: Option<&Peer>,
    ) -> Result<Self, UpstreamError> {
        let session = Self::connect_to(upstream, address, client).await?;
        session.finish(hostname, client).await
    }

    /// Connects to the server at `address` and reads its 220, after the PROXY header
    /// and implicit TLS if configured.
    async fn connect_to(
        upstream: &Arc<Upstream>,
        address: &str,
        client: Option<&Peer>,
    ) -> Result<Self, UpstreamError> {
        let config = &upstream.config;
        let timeouts = &config.timeouts;
        let connect = TcpStream::connect(address);
        let stream = tokio::time::timeout(timeouts.connect, connect)
            .await
            .map_err(|_| UpstreamError::Timeout(Step::Connect))?
            .map_err(UpstreamError::Connect)?;
        stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
        // Only a PROXY v1 header for no client names the connection's own ends: two
        // system calls no other session needs.
        let endpoints = match (config.client_address, client) {
            (ClientAddressMode::ProxyV1, None) => Some((
                stream.local_addr().map_err(UpstreamError::Connect)?,
                stream.peer_addr().map_err(UpstreamError::Connect)?,
            )),
            _ => None,
        };
        let mut session = UpstreamSession {
            connection: Connection::new(MaybeTls::Plain(stream)),
            capabilities: Capabilities::default(),
            upstream: upstream.clone(),
            uses: 1,
            identified: client.is_some() && config.client_address != ClientAddressMode::None,
            greeted: None,
        };
        if let Some(header) = session.proxy_header(client, endpoints) {
            let deadline = Instant::now() + timeouts.connect;
            session
                .connection
                .write_all(&header, deadline)
                .await
                .map_err(|error| write_error(Step::Connect, error))?;
        }
        if config.tls.mode == TlsMode::Implicit {
            session.handshake().await?;
        }
        session
            .expect(Step::Greeting, timeouts.greeting, 220)
            .await?;
        Ok(session)
    }

    /// After the 220: EHLO (to learn the extensions, STARTTLS and XCLIENT among
    /// them), STARTTLS if configured, XCLIENT if configured, and the client's own
    /// greeting. The upstream hears the client's HELO or EHLO name exactly as the client
    /// sent it (or as a plugin rewrote it), with the verb the client used, so its HELO
    /// checks and its Received field judge the client; before XCLIENT the proxy greets
    /// as itself, since that is the host XCLIENT is authorised for.
    async fn handshake_for(
        &mut self,
        hostname: &str,
        client: Option<&Peer>,
    ) -> Result<(), UpstreamError> {
        let xclient = self.upstream.config.client_address == ClientAddressMode::Xclient;
        let starttls = self.upstream.config.tls.mode == TlsMode::Starttls;
        let client_greeting = client.and_then(Peer::greeting);
        // Greeting as the client did from the start, HELO included (a later HELO would
        // not undo an EHLO's ESMTP in Postfix's records), unless the proxy needs EHLO's
        // answer first: for STARTTLS, or for XCLIENT.
        let (first, clients) = match (&client_greeting, xclient) {
            (Some(greeting), false) => (
                Greeting {
                    name: greeting.name.clone(),
                    esmtp: greeting.esmtp || starttls,
                },
                true,
            ),
            _ => (
                Greeting {
                    name: hostname.to_string(),
                    esmtp: true,
                },
                false,
            ),
        };
        let verdict = |error| if clients { on_client(error) } else { error };
        self.greet(&first).await.map_err(verdict)?;
        if starttls {
            self.starttls().await?;
            self.greet(&first).await.map_err(verdict)?;
        }
        if let (true, Some(client)) = (xclient, client) {
            self.xclient(client).await?;
        }
        let last = client_greeting.unwrap_or(first);
        self.ensure_greeting(&last).await
    }

    /// Greets the upstream with `greeting` unless that is how it was last greeted:
    /// after the client greeted again with another name, or on a kept session serving
    /// another client.
    pub(crate) async fn ensure_greeting(
        &mut self,
        greeting: &Greeting,
    ) -> Result<(), UpstreamError> {
        if self.greeted.as_ref() == Some(greeting) {
            return Ok(());
        }
        self.greet(greeting).await.map_err(on_client)
    }

    /// True if the upstream closed the connection or sent something unasked (such as
    /// a 421 timeout notice) while the session was idle: it must not be reused.
    pub(crate) fn is_stale(&self) -> bool {
        if !self.connection.input.pending().is_empty() {
            return true;
        }
        let Some(socket) = self.connection.stream().transport() else {
            return true;
        };
        let mut probe = [0u8; 64];
        !matches!(socket.try_read(&mut probe), Err(error) if error.kind() == io::ErrorKind::WouldBlock)
    }

    /// STARTTLS and the handshake (the caller greets again, RFC 3207). Anything the
    /// upstream sent after its 220 came in plaintext and is refused, as the downstream
    /// side does.
    async fn starttls(&mut self) -> Result<(), UpstreamError> {
        if !self.capabilities.starttls {
            return Err(UpstreamError::StarttlsNotOffered);
        }
        let reply = self
            .command(Step::Tls, "STARTTLS", self.upstream.config.timeouts.command)
            .await?;
        if reply.code() != 220 {
            return Err(UpstreamError::Refused(Step::Tls, reply));
        }
        if !self.connection.input.pending().is_empty() {
            return Err(UpstreamError::TlsInjection);
        }
        self.handshake().await
    }

    /// The client handshake on the plaintext connection.
    async fn handshake(&mut self) -> Result<(), UpstreamError> {
        let upstream = self.upstream.clone();
        let connector = upstream
            .tls
            .as_ref()
            .ok_or_else(|| UpstreamError::Tls(io::Error::other("no TLS connector configured")))?;
        let stream = self
            .connection
            .stream_mut()
            .take_plain()
            .ok_or_else(|| UpstreamError::Tls(io::Error::other("already encrypted")))?;
        let encrypted = tokio::time::timeout(
            self.upstream.config.timeouts.connect,
            connector.connect(stream),
        )
        .await
        .map_err(|_| UpstreamError::Timeout(Step::Tls))?
        .map_err(UpstreamError::Tls)?;
        *self.connection.stream_mut() = MaybeTls::Tls(Box::new(encrypted));
        Ok(())
    }

    /// True if the upstream was told about one particular client (XCLIENT or PROXY
    /// header): such a session must not serve another client.
    pub(crate) fn is_identified(&self) -> bool {
        self.identified
    }

    /// Client sessions this upstream session has served.
    pub(crate) fn uses(&self) -> usize {
        self.uses
    }

    /// Counts one more client session served by this (kept) upstream session.
    pub(crate) fn reuse(&mut self) {
        self.uses += 1;
    }

    /// The extensions this upstream session announced.
    pub(crate) fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// The PROXY header, if configured. A session without a client (the capability
    /// probe) describes its own connection, `endpoints` (local, peer), in v1 (every receiver
    /// accepts TCP4/TCP6; Postfix refuses UNKNOWN) and sends LOCAL in v2.
    fn proxy_header(
        &self,
        client: Option<&Peer>,
        endpoints: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    ) -> Option<Vec<u8>> {
        Some(match (self.upstream.config.client_address, client) {
            (ClientAddressMode::ProxyV1, Some(client)) => client_address::proxy_v1_header(client),
            (ClientAddressMode::ProxyV1, None) => {
                let (local, peer) = endpoints.expect("read for a PROXY v1 line");
                client_address::proxy_v1_line(local, peer)
            }
            (ClientAddressMode::ProxyV2, Some(client)) => client_address::proxy_v2_header(client),
            (ClientAddressMode::ProxyV2, None) => client_address::proxy_v2_local(),
            (ClientAddressMode::None | ClientAddressMode::Xclient, _) => return None,
        })
    }

    /// EHLO (falling back to HELO for a server that does not know EHLO) or HELO, as
    /// `greeting` says. A refusal of a name that is not the proxy's own is the
    /// upstream's verdict on the client.
    async fn greet(&mut self, greeting: &Greeting) -> Result<(), UpstreamError> {
        let timeout = self.upstream.config.timeouts.command;
        let name = &greeting.name;
        if greeting.esmtp {
            let reply = self
                .command(Step::Ehlo, &format!("EHLO {name}"), timeout)
                .await?;
            if reply.is_positive() {
                self.capabilities = Capabilities::from_ehlo(&reply);
                self.greeted = Some(greeting.clone());
                return Ok(());
            }
            // 500/502: EHLO unknown there (RFC 5321 §4.1.1.1); anything else is a
            // refusal of the name, which HELO would only repeat.
            if !matches!(reply.code(), 500 | 502) {
                return Err(UpstreamError::Refused(Step::Ehlo, reply));
            }
        }
        let reply = self
            .command(Step::Ehlo, &format!("HELO {name}"), timeout)
            .await?;
        if !reply.is_positive() {
            return Err(UpstreamError::Refused(Step::Ehlo, reply));
        }
        self.capabilities = Capabilities::default();
        self.greeted = Some(greeting.clone());
        Ok(())
    }

    /// XCLIENT (one command, or more for long values), each answered by a new
    /// greeting; the caller then greets again, as XCLIENT_README requires, with the
    /// client's own name, since Postfix takes the name from that greeting (for its
    /// HELO restrictions and its Received header) over the XCLIENT HELO attribute.
    async fn xclient(&mut self, client: &Peer) -> Result<(), UpstreamError> {
        let commands = client_address::xclient_commands(client, &self.capabilities);
        if commands.is_empty() {
            return Err(UpstreamError::XclientNotOffered);
        }
        for command in commands {
            let reply = self
                .command(
                    Step::Xclient,
                    &command,
                    self.upstream.config.timeouts.command,
                )
                .await?;
            if reply.code() != 220 {
                return Err(UpstreamError::Refused(Step::Xclient, reply));
            }
        }
        self.greeted = None;
        Ok(())
    }

    async fn expect(
        &mut self,
        stage: Step,
        timeout: Duration,
        code: u16,
    ) -> Result<Reply, UpstreamError> {
        let reply = self.read_reply(stage, timeout).await?;
        if reply.code() != code {
            return Err(UpstreamError::Refused(stage, reply));
        }
        Ok(reply)
    }

    /// Sends one command line and returns the upstream's reply.
    pub(crate) async fn command(
        &mut self,
        stage: Step,
        line: &str,
        timeout: Duration,
    ) -> Result<Reply, UpstreamError> {
        let mut replies = self.pipeline(stage, &[line.to_string()], timeout).await?;
        Ok(replies.remove(0))
    }

    /// Sends DATA. The reply is 354 (send the message) or a refusal (4xx, 5xx); any
    /// other is an error, so no caller can mistake it for the message's fate.
    pub(crate) async fn start_data(&mut self, timeout: Duration) -> Result<Reply, UpstreamError> {
        let reply = self.command(Step::Command, "DATA", timeout).await?;
        match reply.code() {
            354 | 400..=599 => Ok(reply),
            _ => Err(UpstreamError::Unexpected(Step::Command, reply)),
        }
    }

    /// Sends command lines and reads one reply for each, in order: all in one write
    /// when the upstream offers PIPELINING (RFC 2920), the group within `timeout`;
    /// else one command at a time, each after the reply to the one before and each
    /// within `timeout`.
    pub(crate) async fn pipeline(
        &mut self,
        stage: Step,
        lines: &[String],
        timeout: Duration,
    ) -> Result<Vec<Reply>, UpstreamError> {
        let mut replies = Vec::with_capacity(lines.len());
        if self.capabilities.has(Extension::Pipelining) {
            self.send_group(stage, lines, &mut replies, timeout).await?;
        } else {
            for line in lines {
                self.send_group(stage, std::slice::from_ref(line), &mut replies, timeout)
                    .await?;
            }
        }
        Ok(replies)
    }

    /// Sends envelope commands (RSET, MAIL, RCPT) as [`UpstreamSession::pipeline`]
    /// does. Their replies are 2xx, 4xx or 5xx (RFC 5321 §4.3.2); any other, such as
    /// a 354, comes from an upstream in a state nobody knows and is an
    /// [`UpstreamError::Unexpected`], never a reply a client could take for leave to go
    /// on.
    pub(crate) async fn envelope(
        &mut self,
        lines: &[String],
        timeout: Duration,
    ) -> Result<Vec<Reply>, UpstreamError> {
        let replies = self.pipeline(Step::Command, lines, timeout).await?;
        match replies
            .iter()
            .find(|reply| !matches!(reply.code() / 100, 2 | 4 | 5))
        {
            Some(reply) => Err(UpstreamError::Unexpected(Step::Command, reply.clone())),
            None => Ok(replies),
        }
    }

    /// Writes `lines` at once, then reads one reply for each into `replies`.
    async fn send_group(
        &mut self,
        stage: Step,
        lines: &[String],
        replies: &mut Vec<Reply>,
        timeout: Duration,
    ) -> Result<(), UpstreamError> {
        for line in lines {
            debug_assert!(!line.contains('\r') && !line.contains('\n'));
            self.connection.queue(line.as_bytes());
            self.connection.queue(b"\r\n");
        }
        let deadline = Instant::now() + timeout;
        self.connection
            .flush(deadline)
            .await
            .map_err(|error| write_error(stage, error))?;
        for _ in lines {
            replies.push(self.read_reply_until(stage, deadline).await?);
        }
        Ok(())
    }

    /// Writes already dot-stuffed message data.
    pub(crate) async fn write_data(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        let deadline = Instant::now() + self.upstream.config.timeouts.data_block;
        self.connection
            .write_all(bytes, deadline)
            .await
            .map_err(|error| write_error(Step::Data, error))
    }

    /// Reads the reply to the final dot: 2xx, 4xx or 5xx. Any other is an error (the
    /// upstream's state is unknown, so its session must not carry another message).
    pub(crate) async fn read_data_reply(&mut self) -> Result<Reply, UpstreamError> {
        let reply = self
            .read_reply(
                Step::DataEnd,
                self.upstream.config.timeouts.data_termination,
            )
            .await?;
        match reply.code() {
            200..=299 | 400..=599 => Ok(reply),
            _ => Err(UpstreamError::Unexpected(Step::DataEnd, reply)),
        }
    }

    async fn read_reply(&mut self, stage: Step, timeout: Duration) -> Result<Reply, UpstreamError> {
        self.read_reply_until(stage, Instant::now() + timeout).await
    }

    /// The next reply, timed for `portcullis_upstream_reply_seconds`: from when the
    /// proxy starts waiting (after its command went out, or after the previous reply
    /// of a pipelined group) to the reply's last line.
    async fn read_reply_until(
        &mut self,
        stage: Step,
        deadline: Instant,
    ) -> Result<Reply, UpstreamError> {
        let started = Instant::now();
        let reply = self.read_reply_lines(stage, deadline).await;
        if telemetry::on() && reply.is_ok() {
            telemetry::upstream_reply(stage.label(), started.elapsed().as_secs_f64());
        }
        reply
    }

    async fn read_reply_lines(
        &mut self,
        stage: Step,
        deadline: Instant,
    ) -> Result<Reply, UpstreamError> {
        let mut parser = ReplyParser::default();
        loop {
            let line = match self.connection.read_line(REPLY_LINE_LIMIT, deadline).await {
                Ok(NextLine::Line(line) | NextLine::BareLf(line)) => line,
                Ok(NextLine::TooLong) => {
                    return Err(UpstreamError::Protocol(stage, ReplyError::Malformed));
                }
                Err(error) => return Err(read_error(stage, error)),
            };
            match parser.push_line(&line) {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(error) => return Err(UpstreamError::Protocol(stage, error)),
            }
        }
    }

    /// Ends the session politely: QUIT, TLS's close_notify, close. The 221 is not
    /// waited for, as Postfix's own client does not (`smtp_skip_quit_response`): no
    /// one would act on it, and reading it cost every session a wake-up and a read.
    pub(crate) async fn quit(mut self) {
        let timeout = self
            .upstream
            .config
            .timeouts
            .command
            .min(Duration::from_secs(10));
        let deadline = Instant::now() + timeout;
        self.connection.queue(b"QUIT\r\n");
        if self.connection.flush(deadline).await.is_ok() && self.connection.stream().is_tls() {
            let _ = tokio::time::timeout_at(deadline, self.connection.shutdown()).await;
        }
    }
}
