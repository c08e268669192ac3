//! DATA: 354 only after the upstream's 354, then the message streams through — read
//! from the client, un-stuffed and checked by the DATA reader, re-stuffed and written
//! upstream in large buffers — and the upstream's reply to the final dot is the reply.
//!
//! Nothing is lost: if the message breaks a rule, or the upstream fails while data is
//! flowing, the upstream connection is dropped without a terminator (so the upstream
//! discards the partial message) and the client gets a 4xx or 5xx, never 2xx.

use time::OffsetDateTime;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};
use tracing::{info, warn};

use super::{Flow, Session, Transaction, replies};
use crate::{
    connection::{LARGE_READ, ReadError},
    dns::HostName,
    smtp::{
        Reply,
        data::{DataReader, DataViolation, DotStuffer},
        trace::Received,
    },
    telemetry::MessageOutcome,
    upstream::UpstreamError,
};

/// Data is written upstream once this much is buffered (and at the end).
pub(super) const UPSTREAM_WRITE_SIZE: usize = 64 * 1024;

/// How the client's side of the DATA phase ended.
enum ClientEnd {
    /// The terminator arrived.
    Finished,
    /// The client went away, was too slow, or the proxy is shutting down.
    Gone(Option<Reply>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn data(&mut self) -> Flow {
        match &self.transaction {
            Transaction::UpstreamLost => return self.reply(replies::upstream_lost()),
            Transaction::Idle | Transaction::MailRefused { .. } => {
                return self.out_of_sequence("need MAIL and RCPT before DATA");
            }
            Transaction::Open(envelope) if envelope.recipients.is_empty() => {
                return self.reply(replies::no_valid_recipients());
            }
            Transaction::Open(_) => {}
        }
        if self.hooks.wants_data() {
            return self.spooled_data().await;
        }
        let timeout = self.context.upstream.config.timeouts.data_init;
        let Some(upstream) = self.link.session() else {
            return self.reply(replies::upstream_lost());
        };
        let reply = match upstream.start_data(timeout).await {
            Ok(reply) => reply,
            Err(error) => {
                let reply = self.link.fail(error);
                self.transaction = Transaction::Idle;
                return self.reply(reply);
            }
        };
        if reply.code() != 354 {
            return self.relay(reply);
        }
        self.reply(reply);
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        self.relay_message().await
    }

    /// Streams the message and answers the final dot.
    async fn relay_message(&mut self) -> Flow {
        let smtp = &self.context.config.smtp;
        let mut reader = DataReader::new(
            smtp.bare_line_endings,
            smtp.text_line_limit,
            smtp.max_message_size,
        );
        let mut stuffer = DotStuffer::default();
        let (mut content, mut wire) = (
            Vec::new(),
            Vec::with_capacity(UPSTREAM_WRITE_SIZE + LARGE_READ),
        );
        let recipients = self.transaction.envelope().map(|e| e.recipients.as_slice());
        let recipient = match recipients {
            Some([only]) => Some(only.forward_path.mailbox()),
            _ => None,
        };
        if let Some(field) = self.received_field(recipient) {
            wire.extend_from_slice(field.as_bytes());
        }
        let mut upstream_error: Option<UpstreamError> = None;
        let phase_deadline = Instant::now() + smtp.data_timeout;
        let end = loop {
            let feed = reader.feed(self.downstream.input.pending(), &mut content);
            self.downstream.input.consume(feed.consumed);
            stuffer.stuff(&content, &mut wire);
            content.clear();
            if reader.violation().is_some() || upstream_error.is_some() {
                // Keep reading to the end, but send nothing more upstream.
                self.abandon_upstream(&mut upstream_error);
                wire.clear();
            }
            if feed.finished {
                break ClientEnd::Finished;
            }
            if wire.len() >= UPSTREAM_WRITE_SIZE {
                self.write_upstream(&mut wire, &mut upstream_error).await;
            }
            if let Err(reply) = self.read_data_chunk(phase_deadline).await {
                break ClientEnd::Gone(reply);
            }
        };
        let reply = match end {
            ClientEnd::Gone(reply) => return self.client_left(reply),
            ClientEnd::Finished => {
                self.finish_message(reader.violation(), stuffer, wire, upstream_error)
                    .await
            }
        };
        self.message_ended(reader.size(), &reply, None);
        self.transaction = Transaction::Idle;
        self.relay(reply)
    }

    /// The client went away during DATA (or was cut off): the upstream connection is
    /// dropped without a terminator, so nothing of the message is delivered.
    pub(super) fn client_left(&mut self, reply: Option<Reply>) -> Flow {
        warn!("client left during DATA; message not accepted");
        self.link.drop_session();
        if let Some(reply) = reply {
            self.reply(reply);
        }
        Flow::Close
    }

    /// Reads the next chunk of message data, bounded by the data block timeout and the
    /// whole-phase deadline. `Err` ends the session.
    pub(super) async fn read_data_chunk(
        &mut self,
        phase_deadline: Instant,
    ) -> Result<(), Option<Reply>> {
        let smtp = &self.context.config.smtp;
        let hostname = &self.context.config.server.hostname;
        let deadline = phase_deadline.min(Instant::now() + smtp.data_block_timeout);
        let abort = self.context.shutdown.abort.clone();
        tokio::select! {
            biased;
            _ = abort.cancelled() => Err(Some(replies::shutting_down(hostname))),
            result = self.downstream.fill(LARGE_READ, deadline) => match result {
                Ok(_) => Ok(()),
                Err(ReadError::Timeout) => Err(Some(replies::timeout(hostname))),
                Err(_) => Err(None),
            },
        }
    }

    async fn write_upstream(
        &mut self,
        wire: &mut Vec<u8>,
        upstream_error: &mut Option<UpstreamError>,
    ) {
        if let Some(upstream) = self.link.session()
            && let Err(error) = upstream.write_data(wire).await
        {
            *upstream_error = Some(error);
            self.abandon_upstream(upstream_error);
        }
        wire.clear();
    }

    /// Drops the upstream connection mid-DATA: without a terminator the upstream
    /// discards what it received.
    fn abandon_upstream(&mut self, upstream_error: &mut Option<UpstreamError>) {
        if self.link.session().is_some() {
            self.link.drop_session();
            if let Some(error) = upstream_error {
                warn!(%error, "upstream failed during DATA");
            }
        }
    }

    /// The reply to the final dot: a violation's 5xx, the upstream's reply, or 451.
    async fn finish_message(
        &mut self,
        violation: Option<DataViolation>,
        mut stuffer: DotStuffer,
        mut wire: Vec<u8>,
        upstream_error: Option<UpstreamError>,
    ) -> Reply {
        if let Some(violation) = violation {
            return violation_reply(violation);
        }
        if let Some(error) = upstream_error {
            return error.reply();
        }
        let Some(upstream) = self.link.session() else {
            return replies::upstream_lost();
        };
        stuffer.finish(&mut wire);
        let result = match upstream.write_data(&wire).await {
            Ok(()) => upstream.read_data_reply().await,
            Err(error) => Err(error),
        };
        match result {
            Ok(reply) => {
                self.link.transaction_ended();
                reply
            }
            Err(error) => self.link.fail(error),
        }
    }

    /// The Received field for the message being relayed, if `upstream.received_header`
    /// asks for one; `recipient` is its only recipient, if it has exactly one.
    pub(super) fn received_field(&self, recipient: Option<&str>) -> Option<String> {
        if !self.context.upstream.config.received_header {
            return None;
        }
        let client_name = self
            .peer
            .name
            .as_ref()
            .and_then(|name| match &name.verified {
                HostName::Known(name) => Some(name.as_str()),
                _ => None,
            });
        let field = Received {
            helo: self.peer.helo.as_deref(),
            client_name,
            client_ip: self.peer.address.ip(),
            by: &self.context.config.server.hostname,
            esmtp: self.peer.esmtp,
            tls: self.peer.tls.is_some(),
            authenticated: self.peer.login.is_some(),
            smtputf8: self.transaction.envelope().is_some_and(|e| e.smtputf8()),
            id: &self.id,
            recipient,
            date: OffsetDateTime::now_utc(),
        };
        Some(field.render())
    }

    /// A message got its final reply: its summary line, and a message accepted
    /// starts the count of commands that move no mail again.
    /// Logs and counts a message that ended with `reply`; `kept` says a positive
    /// reply was a discard or a quarantine.
    pub(super) fn message_ended(&mut self, size: u64, reply: &Reply, kept: Option<MessageOutcome>) {
        self.log_message(size, reply);
        let meters = &self.listener.meters;
        meters.bytes.increment(size);
        let outcome = match (reply.code() / 100, kept) {
            (2, Some(kept)) => kept,
            (2, None) => MessageOutcome::Accepted,
            (4, _) => MessageOutcome::Tempfailed,
            _ => MessageOutcome::Refused,
        };
        meters.message(outcome);
        self.audit_message(size, reply, outcome);
        if reply.is_positive() {
            self.junk_commands = 0;
        }
    }

    /// The one summary line per message.
    fn log_message(&self, size: u64, reply: &Reply) {
        let envelope = self.transaction.envelope();
        let from = envelope
            .map(|e| e.mail.reverse_path.raw().to_string())
            .unwrap_or_default();
        let duration_ms = envelope.map_or(0, |e| e.started.elapsed().as_millis() as u64);
        let tls = self.peer.tls.as_ref().map(|tls| tls.version.as_str());
        info!(
            from = %from,
            recipients = envelope.map_or(0, |e| e.recipients.len()),
            size,
            upstream_reply = %reply,
            duration_ms,
            login = self.login_name(),
            tls,
            "message"
        );
    }
}

/// The reply to a message that broke a rule.
pub(super) fn violation_reply(violation: DataViolation) -> Reply {
    match violation {
        DataViolation::BareLineEnding => replies::bare_line_ending(),
        DataViolation::LineTooLong => replies::message_line_too_long(),
        DataViolation::TooBig => replies::message_too_big(),
    }
}
