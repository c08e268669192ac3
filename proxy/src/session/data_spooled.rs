//! DATA when a plugin of the chain wants to see the message: the proxy answers 354
//! itself, spools the message (memory, then a temporary file), runs the DATA hook,
//! applies what the plugins decided — refuse, discard, quarantine, header and body
//! edits, recipients added or removed — and only then sends the message upstream:
//! recipients first, then DATA. The upstream's reply to the final dot is the reply.
//!
//! Nothing is lost: the client gets 2xx only for the upstream's 2xx, or for a message
//! a plugin explicitly discarded (which is logged).

use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};
use tracing::{info, warn};

use super::{
    Flow, Session,
    data_streamed::{UPSTREAM_WRITE_SIZE, violation_reply},
    replies,
};
use crate::{
    hooks::Decision,
    message::{Message, SpoolWriter, Spooled},
    smtp::{Path, RcptCommand, Reply, data::DataReader, data::DotStuffer},
    telemetry::MessageOutcome,
};

/// Body octets read from the spool per upstream write.
const SPOOL_READ_SIZE: usize = 64 * 1024;

/// Why spooling ended without a message.
enum SpoolEnd {
    /// The client left or was cut off; the session ends.
    Gone(Option<Reply>),
    /// The message is refused with this reply (a rule broken, or the spool failed).
    Refused(Reply),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// DATA with plugins: 354 from us, spool, DATA hook, then upstream.
    pub(super) async fn spooled_data(&mut self) -> Flow {
        self.reply(replies::start_input());
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        let mut size = 0;
        let spooled = match self.spool_message(&mut size).await {
            Ok(spooled) => spooled,
            Err(SpoolEnd::Gone(reply)) => return self.client_left(reply),
            Err(SpoolEnd::Refused(reply)) => return self.finish_spooled(size, reply, None).await,
        };
        let recipients = self
            .transaction
            .envelope()
            .iter()
            .flat_map(|e| &e.recipients)
            .map(|r| r.forward_path.mailbox().to_string())
            .collect();
        let mut message = Message::new(spooled, recipients);
        let (info, envelope) = (self.plugin_session(), self.plugin_envelope(None));
        let decision = self
            .hooks
            .data(&info, &envelope, &mut message, &self.offered)
            .await;
        let (reply, kept) = match decision {
            Decision::Continue | Decision::Accept => {
                let kept = if message.quarantine.is_some() {
                    Some(MessageOutcome::Quarantined)
                } else if message.recipients.is_empty() {
                    Some(MessageOutcome::Discarded)
                } else {
                    None
                };
                (self.deliver(message).await, kept)
            }
            Decision::Refuse(reply) => (reply, None),
            Decision::Discard => {
                info!("message discarded by a plugin");
                (replies::discarded(), Some(MessageOutcome::Discarded))
            }
            Decision::Disconnect(reply) => {
                self.finish_spooled(size, reply, None).await;
                return Flow::Close;
            }
        };
        self.finish_spooled(size, reply, kept).await
    }

    /// Reads the message from the client into the spool, checking it as it comes.
    async fn spool_message(&mut self, size: &mut u64) -> Result<Spooled, SpoolEnd> {
        let (smtp, spool) = (&self.context.config.smtp, &self.context.config.spool);
        let mut reader = DataReader::new(
            smtp.bare_line_endings,
            smtp.text_line_limit,
            smtp.max_message_size,
        );
        let mut writer = SpoolWriter::new(spool.memory_limit, spool.directory.clone());
        let phase_deadline = Instant::now() + smtp.data_timeout;
        let (mut content, mut spool_error) = (Vec::new(), None);
        loop {
            let feed = reader.feed(self.downstream.input.pending(), &mut content);
            self.downstream.input.consume(feed.consumed);
            if reader.violation().is_none()
                && spool_error.is_none()
                && let Err(error) = writer.write(&content).await
            {
                spool_error = Some(error);
            }
            content.clear();
            if feed.finished {
                break;
            }
            self.read_data_chunk(phase_deadline)
                .await
                .map_err(SpoolEnd::Gone)?;
        }
        *size = reader.size();
        if let Some(violation) = reader.violation() {
            return Err(SpoolEnd::Refused(violation_reply(violation)));
        }
        let spooled = match spool_error {
            None => writer.finish().await,
            Some(error) => Err(error),
        };
        spooled.map_err(|error| {
            warn!(%error, "cannot spool the message");
            SpoolEnd::Refused(replies::spool_failed())
        })
    }

    /// Logs the message, ends the transaction here and upstream, and replies.
    async fn finish_spooled(
        &mut self,
        size: u64,
        reply: Reply,
        kept: Option<MessageOutcome>,
    ) -> Flow {
        self.message_ended(size, &reply, kept);
        self.reset_transaction().await;
        self.relay(reply)
    }

    /// Sends the message as the plugins left it: the final reply for the client.
    async fn deliver(&mut self, mut message: Message) -> Reply {
        self.apply_quarantine(&mut message);
        if message.recipients.is_empty() {
            info!("plugins removed every recipient; message discarded");
            return replies::discarded();
        }
        if let Err(reply) = self.sync_recipients(&message).await {
            return reply;
        }
        if let Some(envelope) = self.transaction.envelope() {
            let mail = message.sender.as_ref().unwrap_or(&envelope.mail);
            let from = mail.reverse_path.mailbox().to_string();
            self.audit_sent(&from, &message.recipients);
        }
        let timeout = self.context.upstream.config.timeouts.data_init;
        let Some(upstream) = self.link.session() else {
            return replies::upstream_lost();
        };
        match upstream.start_data(timeout).await {
            Ok(reply) if reply.code() == 354 => {}
            Ok(reply) => return reply,
            Err(error) => return self.link.fail(error),
        }
        self.send_message(&message).await
    }

    /// A quarantined message gets the configured header with the plugin's reason, and
    /// goes to the quarantine mailbox instead of its recipients if one is configured.
    fn apply_quarantine(&self, message: &mut Message) {
        if let Some(reason) = &message.quarantine {
            info!(%reason, "message quarantined");
        }
        let quarantine = &self.context.config.quarantine;
        if let Err(error) =
            message.apply_quarantine(&quarantine.header, quarantine.redirect.as_deref())
        {
            warn!(%error, "quarantine header not added");
        }
    }

    /// Makes the upstream's envelope that of the message: added recipients get a
    /// RCPT; if any was removed, or a milter changed the sender, the upstream
    /// transaction starts over (RSET, MAIL, RCPTs), since SMTP cannot take back an
    /// accepted recipient or sender. `Err` is the final reply.
    async fn sync_recipients(&mut self, message: &Message) -> Result<(), Reply> {
        let Some(envelope) = self.transaction.envelope() else {
            return Err(replies::upstream_lost());
        };
        let original = &envelope.recipients;
        let listed =
            |mailbox: &str, list: &[String]| list.iter().any(|m| m.eq_ignore_ascii_case(mailbox));
        let kept: Vec<&RcptCommand> = original
            .iter()
            .filter(|r| listed(r.forward_path.mailbox(), &message.recipients))
            .collect();
        let original_mailboxes: Vec<String> = original
            .iter()
            .map(|r| r.forward_path.mailbox().to_string())
            .collect();
        let restart = kept.len() < original.len() || message.sender.is_some();
        let mut lines = Vec::new();
        if restart {
            lines.push("RSET".to_string());
            lines.push(
                message
                    .sender
                    .as_ref()
                    .unwrap_or(&envelope.mail)
                    .to_string(),
            );
            lines.extend(kept.iter().map(|r| r.to_string()));
        }
        let first_added = lines.len();
        let added: Vec<&String> = message
            .recipients
            .iter()
            .filter(|m| !listed(m, &original_mailboxes))
            .collect();
        lines.extend(added.iter().map(|m| {
            RcptCommand {
                forward_path: Path::bracketed(m),
                params: Vec::new(),
            }
            .to_string()
        }));
        if lines.is_empty() {
            return Ok(());
        }
        let timeout = self.context.upstream.config.timeouts.command;
        let Some(upstream) = self.link.session() else {
            return Err(replies::upstream_lost());
        };
        let replies = match upstream.envelope(&lines, timeout).await {
            Ok(replies) => replies,
            Err(error) => return Err(self.link.fail(error)),
        };
        let prefix = if restart { 2 } else { 0 };
        if let Some(refused) = replies[..prefix].iter().find(|r| !r.is_positive()) {
            warn!(reply = %refused, "upstream refused to restart the transaction");
            return Err(refused.clone());
        }
        let mut accepted = if restart { 0 } else { kept.len() };
        let mut last_refusal = None;
        for (index, reply) in replies.iter().enumerate().skip(prefix) {
            if reply.is_positive() {
                accepted += 1;
                continue;
            }
            let added_recipient = index.checked_sub(first_added).map(|i| added[i].as_str());
            warn!(command = %lines[index], reply = %reply, added = added_recipient.is_some(), "upstream refused a recipient");
            // A recipient a plugin added (an archive copy, say) is not dropped
            // silently: that plugin's on_error decides for the whole message.
            if let Some(recipient) = added_recipient
                && let Some((plugin, decision)) = self.hooks.refused_addition(recipient)
            {
                warn!(%plugin, %recipient, upstream_reply = %reply, "the upstream refused a recipient the plugin added; its on_error applies to the message");
                if let Decision::Refuse(reply) | Decision::Disconnect(reply) = decision {
                    return Err(reply);
                }
            }
            last_refusal = Some(reply.clone());
        }
        if accepted == 0 {
            return Err(last_refusal.unwrap_or_else(replies::no_valid_recipients));
        }
        Ok(())
    }

    /// Writes the message dot-stuffed after the upstream's 354 and returns its reply
    /// to the final dot. A spool read error drops the upstream connection without a
    /// terminator, so nothing partial is delivered.
    async fn send_message(&mut self, message: &Message) -> Reply {
        let mut stuffer = DotStuffer::default();
        let mut wire = Vec::with_capacity(UPSTREAM_WRITE_SIZE + SPOOL_READ_SIZE);
        let recipient = match message.recipients.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        };
        if let Some(field) = self.received_field(recipient) {
            wire.extend_from_slice(field.as_bytes());
        }
        stuffer.stuff(&message.header_block(), &mut wire);
        let mut offset = 0;
        let Some(upstream) = self.link.session() else {
            return replies::upstream_lost();
        };
        let result = loop {
            let chunk = match message.body.chunk_at(offset, SPOOL_READ_SIZE).await {
                Ok(chunk) => chunk,
                Err(error) => {
                    warn!(%error, "cannot read the spooled message");
                    self.link.drop_session();
                    return replies::spool_failed();
                }
            };
            offset += chunk.len() as u64;
            stuffer.stuff(&chunk, &mut wire);
            if chunk.is_empty() {
                stuffer.finish(&mut wire);
                break match upstream.write_data(&wire).await {
                    Ok(()) => upstream.read_data_reply().await,
                    Err(error) => Err(error),
                };
            }
            if wire.len() >= UPSTREAM_WRITE_SIZE {
                if let Err(error) = upstream.write_data(&wire).await {
                    break Err(error);
                }
                wire.clear();
            }
        };
        match result {
            Ok(reply) => {
                self.link.transaction_ended();
                reply
            }
            Err(error) => self.link.fail(error),
        }
    }
}
