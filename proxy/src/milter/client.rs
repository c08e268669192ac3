//! One session's conversation with one milter: connect and negotiate, then one step
//! per stage of the session — macros, the command, the answer — and at the end of
//! the message the headers, the body and the milter's modifications. Each wait is
//! bounded by the milter's timeouts; anything the protocol does not allow ends the
//! conversation with an error, and the chain applies the milter's `default_action`.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UnixStream},
    time::timeout,
};

use super::{
    Facts, Milter, MilterError, MilterVerdict,
    codec::{self, BODY_CHUNK, Family, MacroStage, Negotiated, Packet, Response, action, protocol},
};
use crate::{
    config::MilterAddress,
    message::{Body, Edit},
};

/// The connection to a milter.
enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Transport {
    async fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Transport::Tcp(stream) => {
                // libmilter writes a reply's packets one by one (the last edit, then
                // the verdict), and Nagle holds the verdict until the first is
                // acknowledged: with a delayed ACK here, 40 ms per message. Asking
                // the kernel to acknowledge at once (it forgets, so before each read)
                // avoids that wait.
                let _ = socket2::SockRef::from(&*stream).set_tcp_quickack(true);
                stream.read(buffer).await
            }
            Transport::Unix(stream) => stream.read(buffer).await,
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Transport::Tcp(stream) => stream.write_all(bytes).await,
            Transport::Unix(stream) => stream.write_all(bytes).await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Tcp(stream) => stream.shutdown().await,
            Transport::Unix(stream) => stream.shutdown().await,
        }
    }
}

/// How much of the session the milter still wants to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listening {
    /// Every step it negotiated.
    All,
    /// Nothing more of this message (it accepted or discarded it); again from the
    /// next MAIL.
    NextMessage,
    /// Nothing more in this session (it accepted the connection).
    Done,
}

/// Where the message is, as the milter knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageState {
    /// No MAIL sent since the last end of message (or abort).
    None,
    /// MAIL sent; an abort is owed if the message does not reach its end.
    Open,
    /// MAIL sent, and the milter asked for the message to be discarded.
    Discarding,
}

/// How sending a message to a milter ended.
enum Sent {
    /// It saw the end of the message: its verdict and modifications.
    Whole(MilterVerdict, Vec<Edit>),
    /// It decided before the end (the message is then aborted).
    Ended(MilterVerdict),
}

/// One session's connection to one milter.
pub(crate) struct Conversation {
    milter: Arc<Milter>,
    stream: Transport,
    input: Vec<u8>,
    output: Vec<u8>,
    negotiated: Negotiated,
    listening: Listening,
    message: MessageState,
    /// Messages begun in this session, for the `i` macro.
    messages: u32,
}

impl Conversation {
    /// Connects and negotiates, within the connect timeout.
    pub(crate) async fn open(milter: Arc<Milter>) -> Result<Self, MilterError> {
        let limit = milter.config.connect_timeout;
        let address = milter.config.address.clone();
        let opened = timeout(limit, async {
            let stream = match &address {
                MilterAddress::Inet { host, port } => {
                    let stream = TcpStream::connect((host.as_str(), *port)).await?;
                    stream.set_nodelay(true)?;
                    Transport::Tcp(stream)
                }
                MilterAddress::Unix(path) => Transport::Unix(UnixStream::connect(path).await?),
            };
            Ok::<_, std::io::Error>(stream)
        })
        .await
        .map_err(|_| MilterError::Timeout("connecting", limit))?
        .map_err(|error| MilterError::Connect(address.to_string(), error))?;
        let mut conversation = Self {
            milter,
            stream: opened,
            input: Vec::with_capacity(512),
            output: Vec::with_capacity(512),
            negotiated: Negotiated {
                version: codec::VERSION,
                actions: 0,
                protocol: 0,
                macros: Default::default(),
            },
            listening: Listening::All,
            message: MessageState::None,
            messages: 0,
        };
        conversation.negotiate(limit).await?;
        Ok(conversation)
    }

    async fn negotiate(&mut self, limit: Duration) -> Result<(), MilterError> {
        let offer = Packet::Negotiate {
            actions: action::OFFERED,
            protocol: protocol::OFFERED,
        };
        self.send(&[offer], limit).await?;
        let negotiated = match self.receive(limit, "the negotiation").await? {
            Response::Negotiated(negotiated) => negotiated,
            other => return Err(unexpected(&other, "the negotiation")),
        };
        if !(2..=codec::VERSION).contains(&negotiated.version) {
            return Err(MilterError::Protocol(format!(
                "it speaks version {}, the proxy 2 to {}",
                negotiated.version,
                codec::VERSION
            )));
        }
        let extra = negotiated.actions & !action::OFFERED;
        if extra != 0 {
            return Err(MilterError::Protocol(format!(
                "it asked for actions the proxy did not offer ({extra:#x})"
            )));
        }
        let extra = negotiated.protocol & !protocol::OFFERED;
        if extra != 0 {
            // Steps to leave out or not answer that the proxy does not know: it
            // sends what it offered and waits for the answers it knows of (a step the
            // milter does not answer ends in its timeout, and its default action).
            tracing::debug!(milter = %self.milter.name, flags = format!("{extra:#x}"), "milter asked for protocol flags the proxy did not offer; ignored");
        }
        self.negotiated = Negotiated {
            protocol: negotiated.protocol & protocol::OFFERED,
            ..negotiated
        };
        Ok(())
    }

    /// SMFIC_CONNECT, with the connect macros.
    pub(crate) async fn connect(&mut self, facts: &Facts) -> Result<MilterVerdict, MilterError> {
        let hostname = facts
            .client_name
            .clone()
            .unwrap_or_else(|| format!("[{}]", facts.client.ip()));
        let address = facts.client.ip().to_string();
        let family = if facts.client.is_ipv4() {
            Family::Inet
        } else {
            Family::Inet6
        };
        let packet = Packet::Connect {
            hostname: &hostname,
            family,
            port: facts.client.port(),
            address: &address,
        };
        let macros = facts.connect_macros();
        let answer = self
            .step(
                MacroStage::Connect,
                &macros,
                packet,
                protocol::NO_CONNECT,
                protocol::NO_REPLY_CONNECT,
                "connect",
            )
            .await?;
        self.session_verdict(answer)
    }

    /// SMFIC_HELO, with the HELO macros (TLS, once started).
    pub(crate) async fn helo(
        &mut self,
        name: &str,
        facts: &Facts,
    ) -> Result<MilterVerdict, MilterError> {
        if self.listening == Listening::Done {
            return Ok(MilterVerdict::Continue);
        }
        let macros = facts.helo_macros();
        let answer = self
            .step(
                MacroStage::Helo,
                &macros,
                Packet::Helo(name),
                protocol::NO_HELO,
                protocol::NO_REPLY_HELO,
                "HELO",
            )
            .await?;
        self.session_verdict(answer)
    }

    /// SMFIC_MAIL: `args` is the path in angle brackets, then the ESMTP parameters.
    /// A message the milter did not see to its end is aborted first.
    pub(crate) async fn mail(
        &mut self,
        args: &[String],
        facts: &Facts,
    ) -> Result<MilterVerdict, MilterError> {
        self.abort_message().await?;
        if self.listening == Listening::NextMessage {
            self.listening = Listening::All;
        }
        if self.listening == Listening::Done {
            return Ok(MilterVerdict::Continue);
        }
        self.messages += 1;
        self.message = MessageState::Open;
        let mut macros = facts.mail_macros(&args[0]);
        macros.push(("i", self.queue_id(facts)));
        let answer = self
            .step(
                MacroStage::Mail,
                &macros,
                Packet::Mail(args),
                protocol::NO_MAIL,
                protocol::NO_REPLY_MAIL,
                "MAIL",
            )
            .await?;
        self.message_verdict(answer)
    }

    /// SMFIC_RCPT for one recipient.
    pub(crate) async fn rcpt(&mut self, args: &[String]) -> Result<MilterVerdict, MilterError> {
        if self.listening != Listening::All {
            return Ok(MilterVerdict::Continue);
        }
        let macros = super::rcpt_macros(&args[0]);
        let answer = self
            .step(
                MacroStage::Rcpt,
                &macros,
                Packet::Rcpt(args),
                protocol::NO_RCPT,
                protocol::NO_REPLY_RCPT,
                "RCPT",
            )
            .await?;
        self.message_verdict(answer)
    }

    /// The message: DATA, each header field, the end of the headers, the body in
    /// chunks and the end of the message, after which the milter sends its
    /// modifications and its verdict. `headers` are names and the raw text after
    /// the colon.
    pub(crate) async fn message(
        &mut self,
        headers: &[(String, Vec<u8>)],
        body: &Body,
        facts: &Facts,
    ) -> Result<(MilterVerdict, Vec<Edit>), MilterError> {
        let skipped = match (self.message, self.listening) {
            // It asked at MAIL or RCPT; it does not hear the rest.
            (MessageState::Discarding, _) => Some(MilterVerdict::Discard),
            (_, Listening::All) => None,
            _ => Some(MilterVerdict::Continue),
        };
        let ended = match skipped {
            Some(verdict) => Some(verdict),
            None => match self.send_message(headers, body, facts).await? {
                Sent::Whole(verdict, edits) => {
                    self.message = MessageState::None;
                    return Ok((verdict, edits));
                }
                Sent::Ended(verdict) => Some(verdict),
            },
        };
        // A message the milter did not see to its end is aborted, so it is ready for
        // the next one.
        self.abort_message().await?;
        Ok((ended.unwrap_or(MilterVerdict::Continue), Vec::new()))
    }

    /// Sends the message step by step: `Ended` if the milter decided before its end.
    async fn send_message(
        &mut self,
        headers: &[(String, Vec<u8>)],
        body: &Body,
        facts: &Facts,
    ) -> Result<Sent, MilterError> {
        let id = vec![("i", self.queue_id(facts))];
        let content = "the message";
        let answer = self
            .step(
                MacroStage::Data,
                &id,
                Packet::Data,
                protocol::NO_DATA,
                protocol::NO_REPLY_DATA,
                "DATA",
            )
            .await?;
        if let Some(verdict) = self.early_verdict(answer)? {
            return Ok(Sent::Ended(verdict));
        }
        let leading_space = self.wants(protocol::HEADER_LEADING_SPACE);
        if !self.wants(protocol::NO_HEADERS) {
            for (name, raw) in headers {
                let value = header_value_for_milter(raw, leading_space);
                let packet = Packet::Header {
                    name,
                    value: &value,
                };
                let answer = self
                    .step_content(None, &[], packet, protocol::NO_REPLY_HEADER, content)
                    .await?;
                if let Some(verdict) = self.early_verdict(answer)? {
                    return Ok(Sent::Ended(verdict));
                }
            }
        }
        if !self.wants(protocol::NO_EOH) {
            let answer = self
                .step_content(
                    Some(MacroStage::EndOfHeaders),
                    &id,
                    Packet::EndOfHeaders,
                    protocol::NO_REPLY_EOH,
                    content,
                )
                .await?;
            if let Some(verdict) = self.early_verdict(answer)? {
                return Ok(Sent::Ended(verdict));
            }
        }
        if !self.wants(protocol::NO_BODY) {
            let mut offset = 0;
            while offset < body.len() {
                let chunk = body
                    .chunk_at(offset, BODY_CHUNK)
                    .await
                    .map_err(MilterError::Spool)?;
                offset += chunk.len() as u64;
                let answer = self
                    .step_content(
                        None,
                        &[],
                        Packet::Body(&chunk),
                        protocol::NO_REPLY_BODY,
                        content,
                    )
                    .await?;
                if answer == Some(Response::Skip) && self.wants(protocol::SKIP) {
                    break;
                }
                if let Some(verdict) = self.early_verdict(answer)? {
                    return Ok(Sent::Ended(verdict));
                }
            }
        }
        let limit = self.milter.config.content_timeout;
        self.send_with_macros(
            Some(MacroStage::EndOfMessage),
            &id,
            Packet::EndOfBody,
            limit,
        )
        .await?;
        let (verdict, edits) = self.end_of_message(leading_space).await?;
        Ok(Sent::Whole(verdict, edits))
    }

    /// Reads the modifications and the verdict that follow the end of the message.
    async fn end_of_message(
        &mut self,
        leading_space: bool,
    ) -> Result<(MilterVerdict, Vec<Edit>), MilterError> {
        let limit = self.milter.config.content_timeout;
        let step = "the end of the message";
        let mut changes = Vec::new();
        let mut new_body: Option<Vec<u8>> = None;
        loop {
            let response = self.receive(limit, step).await?;
            let needs = |flag: u32| {
                if self.negotiated.actions & flag == 0 {
                    Err(MilterError::Protocol(format!(
                        "it sent {response:?}, which it did not negotiate"
                    )))
                } else {
                    Ok(())
                }
            };
            let edit = match &response {
                Response::AddHeader { name, value } => {
                    needs(action::ADD_HEADERS)?;
                    Edit::AddHeader {
                        name: name.clone(),
                        value: header_value_from_milter(value, leading_space),
                    }
                }
                Response::InsertHeader { index, name, value } => {
                    needs(action::ADD_HEADERS)?;
                    Edit::InsertHeader {
                        index: *index as usize,
                        name: name.clone(),
                        value: header_value_from_milter(value, leading_space),
                    }
                }
                Response::ChangeHeader { index, name, value } => {
                    needs(action::CHANGE_HEADERS)?;
                    Edit::ChangeHeader {
                        name: name.clone(),
                        index: (*index as usize).saturating_sub(1),
                        value: (!value.is_empty())
                            .then(|| header_value_from_milter(value, leading_space)),
                    }
                }
                Response::ChangeFrom { address, args } => {
                    needs(action::CHANGE_FROM)?;
                    Edit::ChangeSender {
                        address: unbracketed(address),
                        params: esmtp_params(args.as_deref().unwrap_or_default()),
                    }
                }
                Response::AddRecipient(address) => {
                    needs(action::ADD_RCPT)?;
                    Edit::AddRecipient(unbracketed(address))
                }
                Response::DeleteRecipient(address) => {
                    needs(action::DELETE_RCPT)?;
                    Edit::RemoveRecipient(unbracketed(address))
                }
                Response::ReplaceBody(piece) => {
                    needs(action::CHANGE_BODY)?;
                    new_body
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(piece);
                    continue;
                }
                Response::Quarantine(reason) => {
                    needs(action::QUARANTINE)?;
                    Edit::Quarantine(reason.clone())
                }
                _ => {
                    let verdict = final_verdict(&response, step)?;
                    if let Some(body) = new_body {
                        changes.push(Edit::ReplaceBody(body));
                    }
                    return Ok((verdict, changes));
                }
            };
            changes.push(edit);
        }
    }

    /// Ends the conversation: an abort if a message is open, then QUIT; errors do
    /// not matter any more, and the wait is short.
    pub(crate) async fn close(mut self) {
        let _ = timeout(Duration::from_secs(1), async {
            let _ = self.abort_message().await;
            let _ = self.send(&[Packet::Quit], Duration::from_secs(1)).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    /// SMFIC_ABORT if the milter saw a MAIL and no end of that message.
    async fn abort_message(&mut self) -> Result<(), MilterError> {
        if self.message == MessageState::None {
            return Ok(());
        }
        self.message = MessageState::None;
        let limit = self.milter.config.command_timeout;
        self.send(&[Packet::Abort], limit).await
    }

    fn wants(&self, flag: u32) -> bool {
        self.negotiated.protocol & flag != 0
    }

    fn queue_id(&self, facts: &Facts) -> String {
        format!("{}.{}", facts.session_id, self.messages)
    }

    /// One command of the session (connect, HELO, MAIL, RCPT, DATA): skipped if the
    /// milter negotiated `skip`, not answered if it negotiated `silent`.
    async fn step(
        &mut self,
        stage: MacroStage,
        macros: &[(&str, String)],
        packet: Packet<'_>,
        skip: u32,
        silent: u32,
        name: &'static str,
    ) -> Result<Option<Response>, MilterError> {
        if self.wants(skip) {
            return Ok(None);
        }
        let limit = self.milter.config.command_timeout;
        self.send_with_macros(Some(stage), macros, packet, limit)
            .await?;
        if self.wants(silent) {
            return Ok(None);
        }
        self.receive(limit, name).await.map(Some)
    }

    /// One packet of the message, bounded by the content timeout.
    async fn step_content(
        &mut self,
        stage: Option<MacroStage>,
        macros: &[(&str, String)],
        packet: Packet<'_>,
        silent: u32,
        name: &'static str,
    ) -> Result<Option<Response>, MilterError> {
        let limit = self.milter.config.content_timeout;
        self.send_with_macros(stage, macros, packet, limit).await?;
        if self.wants(silent) {
            return Ok(None);
        }
        self.receive(limit, name).await.map(Some)
    }

    async fn send_with_macros(
        &mut self,
        stage: Option<MacroStage>,
        macros: &[(&str, String)],
        packet: Packet<'_>,
        limit: Duration,
    ) -> Result<(), MilterError> {
        let pairs: Vec<(&str, String)>;
        let mut packets = Vec::with_capacity(2);
        if let Some(stage) = stage {
            pairs = wanted(self.negotiated.macros[stage.index()].as_deref(), macros);
            if !pairs.is_empty() {
                packets.push(Packet::Macros {
                    stage,
                    pairs: &pairs,
                });
            }
        }
        packets.push(packet);
        self.send(&packets, limit).await
    }

    async fn send(&mut self, packets: &[Packet<'_>], limit: Duration) -> Result<(), MilterError> {
        self.output.clear();
        for packet in packets {
            packet
                .encode(&mut self.output)
                .map_err(MilterError::Encode)?;
        }
        timeout(limit, self.stream.write_all(&self.output))
            .await
            .map_err(|_| MilterError::Timeout("sending", limit))?
            .map_err(MilterError::Io)
    }

    /// The next answer that is not "progress" (which restarts the wait).
    async fn receive(
        &mut self,
        limit: Duration,
        step: &'static str,
    ) -> Result<Response, MilterError> {
        loop {
            if let Some((response, used)) =
                codec::decode(&self.input).map_err(|e| MilterError::Protocol(e.to_string()))?
            {
                self.input.drain(..used);
                if response == Response::Progress {
                    continue;
                }
                return Ok(response);
            }
            let mut chunk = [0u8; 8192];
            let read = timeout(limit, self.stream.read(&mut chunk))
                .await
                .map_err(|_| MilterError::Timeout(step, limit))?
                .map_err(MilterError::Io)?;
            if read == 0 {
                return Err(MilterError::Closed(step));
            }
            self.input.extend_from_slice(&chunk[..read]);
        }
    }

    /// The verdict on a session-level step (connect, HELO). An accept there means
    /// the milter wants nothing more of the session.
    fn session_verdict(&mut self, answer: Option<Response>) -> Result<MilterVerdict, MilterError> {
        match answer {
            Some(Response::Accept) => {
                self.listening = Listening::Done;
                Ok(MilterVerdict::Accept)
            }
            Some(response) => final_verdict(&response, "a session step"),
            None => Ok(MilterVerdict::Continue),
        }
    }

    /// The verdict on MAIL or RCPT: accept means nothing more of this message; a
    /// discard is kept for the end of the message, when it takes effect.
    fn message_verdict(&mut self, answer: Option<Response>) -> Result<MilterVerdict, MilterError> {
        match answer {
            Some(Response::Accept) => {
                self.listening = Listening::NextMessage;
                Ok(MilterVerdict::Accept)
            }
            Some(Response::Discard) => {
                self.message = MessageState::Discarding;
                self.listening = Listening::NextMessage;
                Ok(MilterVerdict::Continue)
            }
            Some(response) => final_verdict(&response, "an envelope step"),
            None => Ok(MilterVerdict::Continue),
        }
    }

    /// An answer during the message that ends it early (anything but continue).
    fn early_verdict(
        &mut self,
        answer: Option<Response>,
    ) -> Result<Option<MilterVerdict>, MilterError> {
        match answer {
            None | Some(Response::Continue) => Ok(None),
            Some(Response::Accept) => {
                self.listening = Listening::NextMessage;
                Ok(Some(MilterVerdict::Accept))
            }
            Some(response) => final_verdict(&response, "the message").map(Some),
        }
    }
}

/// Of `macros`, those a milter asked for (`names`, from its negotiation), or all of
/// them if it did not say.
fn wanted<'a>(names: Option<&[String]>, macros: &[(&'a str, String)]) -> Vec<(&'a str, String)> {
    let Some(names) = names else {
        return macros.to_vec();
    };
    // `{auth_type}` and `auth_type` name the same macro.
    fn bare(name: &str) -> &str {
        name.trim_start_matches('{').trim_end_matches('}')
    }
    macros
        .iter()
        .filter(|(name, _)| names.iter().any(|n| bare(n) == bare(name)))
        .cloned()
        .collect()
}

fn final_verdict(response: &Response, step: &'static str) -> Result<MilterVerdict, MilterError> {
    Ok(match response {
        Response::Continue => MilterVerdict::Continue,
        Response::Accept => MilterVerdict::Accept,
        Response::Reject => MilterVerdict::Reject(None),
        Response::Tempfail => MilterVerdict::Tempfail(None),
        Response::Discard => MilterVerdict::Discard,
        Response::Shutdown => MilterVerdict::Shutdown,
        Response::ReplyCode(text) => match text.as_bytes().first() {
            Some(b'4') => MilterVerdict::Tempfail(Some(text.clone())),
            Some(b'5') => MilterVerdict::Reject(Some(text.clone())),
            _ => {
                return Err(MilterError::Protocol(format!(
                    "reply code {text:?} in answer to {step} is neither 4xx nor 5xx"
                )));
            }
        },
        other => return Err(unexpected(other, step)),
    })
}

fn unexpected(response: &Response, step: &'static str) -> MilterError {
    MilterError::Protocol(format!("{response:?} is not an answer to {step}"))
}

/// What a milter is sent for a header field: the text after the colon, without the
/// one space MTAs take off unless the milter asked for it (`HDR_LEADSPC`), with line
/// breaks as LF, as Sendmail and Postfix send them.
fn header_value_for_milter(raw: &[u8], leading_space: bool) -> Vec<u8> {
    let raw = if leading_space {
        raw
    } else {
        raw.strip_prefix(b" ").unwrap_or(raw)
    };
    let mut value = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().copied().peekable();
    while let Some(byte) = bytes.next() {
        if byte == b'\r' && bytes.peek() == Some(&b'\n') {
            continue;
        }
        value.push(byte);
    }
    value
}

/// A header value a milter gave, for [`Edit`]: line breaks as CRLF (milters write
/// LF), and without the leading space a milter that asked for `HDR_LEADSPC` writes
/// (the field is written `Name: value`).
fn header_value_from_milter(value: &str, leading_space: bool) -> String {
    let value = if leading_space {
        value.strip_prefix(' ').unwrap_or(value)
    } else {
        value
    };
    let mut fixed = String::with_capacity(value.len() + 8);
    let mut previous = '\0';
    for c in value.chars() {
        if c == '\n' && previous != '\r' {
            fixed.push('\r');
        }
        fixed.push(c);
        previous = c;
    }
    fixed
}

/// `KEY=VALUE KEY` as keywords and values.
fn esmtp_params(args: &str) -> Vec<(String, Option<String>)> {
    args.split_whitespace()
        .map(|param| match param.split_once('=') {
            Some((keyword, value)) => (keyword.to_string(), Some(value.to_string())),
            None => (param.to_string(), None),
        })
        .collect()
}

/// A mailbox as milters write it, usually in angle brackets.
fn unbracketed(address: &str) -> String {
    let address = address.trim();
    address
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(address)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_travel_as_mtas_send_them() {
        let table: [(&[u8], bool, &[u8]); 5] = [
            (b" plain", false, b"plain"),
            (b" plain", true, b" plain"),
            (b"\tTAB kept", false, b"\tTAB kept"),
            (b" folded\r\n\tline", false, b"folded\n\tline"),
            (b"", false, b""),
        ];
        for (raw, leading, sent) in table {
            assert_eq!(header_value_for_milter(raw, leading), sent, "{raw:?}");
        }
    }

    #[test]
    fn header_values_from_milters_get_crlf() {
        let table = [
            (
                "v=1; a=rsa-sha256;\n\tb=xyz",
                false,
                "v=1; a=rsa-sha256;\r\n\tb=xyz",
            ),
            ("already\r\n crlf", false, "already\r\n crlf"),
            (" leading", true, "leading"),
            (" leading", false, " leading"),
        ];
        for (value, leading, fixed) in table {
            assert_eq!(header_value_from_milter(value, leading), fixed, "{value:?}");
        }
    }

    #[test]
    fn only_the_macros_a_milter_asked_for_are_sent() {
        let macros = [
            ("i", "q1".to_string()),
            ("{mail_addr}", "a@example.com".to_string()),
            ("{auth_type}", "PLAIN".to_string()),
        ];
        assert_eq!(wanted(None, &macros), macros.to_vec());
        let names = ["mail_addr".to_string(), "{i}".to_string()];
        let sent: Vec<&str> = wanted(Some(&names), &macros)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(sent, ["i", "{mail_addr}"]);
        assert!(wanted(Some(&[]), &macros).is_empty());
    }

    #[test]
    fn reply_codes_decide_the_kind() {
        let reply = |text: &str| Response::ReplyCode(text.into());
        assert_eq!(
            final_verdict(&reply("554 5.7.1 Gtube pattern"), "x").unwrap(),
            MilterVerdict::Reject(Some("554 5.7.1 Gtube pattern".into()))
        );
        assert_eq!(
            final_verdict(&reply("451 4.7.1 later"), "x").unwrap(),
            MilterVerdict::Tempfail(Some("451 4.7.1 later".into()))
        );
        assert!(final_verdict(&reply("250 fine"), "x").is_err());
        assert!(final_verdict(&Response::Skip, "x").is_err());
        assert!(final_verdict(&Response::AddRecipient("<a@b>".into()), "x").is_err());
        assert_eq!(unbracketed(" <a@example.com> "), "a@example.com");
        assert_eq!(unbracketed("a@example.com"), "a@example.com");
    }
}
