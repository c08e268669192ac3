//! `portcullis replay`: runs one listener's plugin chain over a message from a file,
//! offline — no client, no upstream, and DNS lookups fail instead of going out — and
//! reports what each plugin said at each stage and what would go upstream: the
//! envelope and the message after every rewrite and edit.

use std::{fmt::Write, net::IpAddr, sync::Arc};

use crate::{
    Config,
    dns::Resolver,
    hooks::{Chain, Decision, SessionHooks},
    message::{EditError, Message, SpoolWriter},
    plugin_host::view,
    smtp::{Command, MailCommand, capabilities::Capabilities, command},
    startup::{StartError, chain_members, load_plugins},
};

/// Why a replay cannot run. A plugin refusing a stage is not an error: it is the
/// report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// `--listener` names no configured listener.
    #[error("no listener named {0:?}")]
    NoListener(String),
    /// A plugin of the chain cannot load.
    #[error(transparent)]
    Start(#[from] StartError),
    /// `--from` is not a reverse-path.
    #[error("--from {0:?} is not a valid reverse-path")]
    From(String),
    /// A `--to` is not a forward-path.
    #[error("--to {0:?} is not a valid forward-path")]
    To(String),
    /// The quarantine a plugin asked for cannot be applied.
    #[error("quarantine: {0}")]
    Quarantine(#[from] EditError),
    /// The message cannot be spooled or read back.
    #[error("spooling the message: {0}")]
    Spool(#[from] std::io::Error),
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayInput {
    /// The listener whose chain runs.
    pub listener: String,
    /// The client address plugins see.
    pub client_ip: IpAddr,
    /// The HELO name plugins see.
    pub helo: String,
    /// A login, as if the client had authenticated (runs the AUTH hook).
    pub login: Option<String>,
    /// The envelope sender (empty for the null reverse-path).
    pub from: String,
    /// The envelope recipients.
    pub to: Vec<String>,
    /// The message as stored in a file (LF or CRLF line ends).
    pub message: Vec<u8>,
}

/// Runs the chain and returns the report. `Err` only for bad input or a plugin that
/// cannot load; refusals are part of the report.
pub async fn replay(config: &Config, input: ReplayInput) -> Result<String, ReplayError> {
    let mut run = Replay::start(config, &input).await?;
    run.stages(config, &input).await?;
    Ok(run.report.finish())
}

/// One offline session through a listener's chain, and the report on it.
struct Replay {
    hooks: SessionHooks,
    session: view::SessionInfo,
    /// What the client is taken to have been offered: everything the proxy relays.
    offered: Capabilities,
    report: Report,
}

/// The envelope the MAIL and RCPT stages accepted: as sent upstream, and as plugins
/// see it.
struct AcceptedEnvelope {
    mail: MailCommand,
    abi: view::Envelope,
}

impl Replay {
    /// Loads the listener's plugins and no others (no pool: one session only needs
    /// one instance).
    async fn start(config: &Config, input: &ReplayInput) -> Result<Replay, ReplayError> {
        let listener = config
            .listeners
            .iter()
            .find(|l| l.name == input.listener)
            .ok_or_else(|| ReplayError::NoListener(input.listener.clone()))?;
        let mut config = config.clone();
        config.server.plugin_pool_size = 0;
        config
            .plugins
            .retain(|name, _| listener.plugins.contains(name));
        let plugins =
            load_plugins(&config, Arc::new(Resolver::offline()), Default::default()).await?;
        let chain = Chain {
            listener: listener.name.clone(),
            members: chain_members(&listener.plugins, &plugins, &config.milters),
        };
        let mut hooks = SessionHooks::new(Arc::new(chain), "replay");
        hooks.record_trace();
        let session = view::SessionInfo {
            id: "replay".into(),
            listener: listener.name.clone(),
            client_ip: input.client_ip.to_string(),
            client_port: 0,
            helo: None,
            tls: false,
            login: None,
        };
        Ok(Replay {
            hooks,
            session,
            offered: Capabilities::relayable(),
            report: Report::default(),
        })
    }

    /// Runs every stage until the chain refuses one, writing the report.
    async fn stages(&mut self, config: &Config, input: &ReplayInput) -> Result<(), ReplayError> {
        let Some(helo_rewrite) = self.greet(input).await else {
            return Ok(());
        };
        let Some(envelope) = self.envelope(input).await? else {
            return Ok(());
        };
        let mut message = spool(&input.message).await?;
        message.recipients = envelope.abi.recipients.clone();
        if self.hooks.wants_data() {
            let decision = self
                .hooks
                .data(&self.session, &envelope.abi, &mut message, &self.offered)
                .await;
            if self.report.stage(&mut self.hooks, "data", &decision) {
                return Ok(());
            }
            let quarantine = &config.quarantine;
            message.apply_quarantine(&quarantine.header, quarantine.redirect.as_deref())?;
        }
        if let Some(name) = helo_rewrite {
            self.report
                .line(&format!("HELO name for the upstream: {name}"));
        }
        self.report.result(&envelope.mail, &message).await
    }

    /// Connect, HELO and (with a login) AUTH; `None` if the chain ended the session,
    /// else the HELO name a plugin gave the upstream, if one did.
    async fn greet(&mut self, input: &ReplayInput) -> Option<Option<String>> {
        let decision = self.hooks.connect(&self.session).await;
        if self.report.stage(&mut self.hooks, "connect", &decision) {
            return None;
        }
        let (decision, helo_rewrite) = self.hooks.helo(&self.session, &input.helo).await;
        self.session.helo = Some(input.helo.clone());
        if self.report.stage(&mut self.hooks, "helo", &decision) {
            return None;
        }
        if let Some(login) = &input.login {
            let decision = self.hooks.auth(&self.session, "PLAIN", login).await;
            if self.report.stage(&mut self.hooks, "auth", &decision) {
                return None;
            }
            self.session.login = Some(login.clone());
        }
        Some(helo_rewrite)
    }

    /// MAIL and each RCPT; `None` if MAIL was refused or no recipient was accepted.
    async fn envelope(
        &mut self,
        input: &ReplayInput,
    ) -> Result<Option<AcceptedEnvelope>, ReplayError> {
        let parsed = command::parse(format!("MAIL FROM:<{}>", input.from).as_bytes());
        let Ok(Command::Mail(mail)) = parsed else {
            return Err(ReplayError::From(input.from.clone()));
        };
        let (decision, mail) = self.hooks.mail(&self.session, mail, &self.offered).await;
        if mail.reverse_path.mailbox() != input.from {
            self.report.line(&format!(
                "{:<24} rewritten to {}",
                "mail", mail.reverse_path
            ));
        }
        if self.report.stage(&mut self.hooks, "mail", &decision) {
            return Ok(None);
        }
        let mut envelope = view::Envelope {
            sender: mail.reverse_path.mailbox().to_string(),
            mail_params: Vec::new(),
            recipients: Vec::new(),
        };
        for to in &input.to {
            let Ok(Command::Rcpt(rcpt)) = command::parse(format!("RCPT TO:<{to}>").as_bytes())
            else {
                return Err(ReplayError::To(to.clone()));
            };
            let (decision, rcpt) = self
                .hooks
                .rcpt(&self.session, &envelope, rcpt, &self.offered)
                .await;
            let stage = format!("rcpt <{to}>");
            if rcpt.forward_path.mailbox() != to {
                self.report
                    .line(&format!("{stage:<24} rewritten to {}", rcpt.forward_path));
            }
            if !self.report.stage(&mut self.hooks, &stage, &decision) {
                envelope
                    .recipients
                    .push(rcpt.forward_path.mailbox().to_string());
            }
        }
        if envelope.recipients.is_empty() {
            self.report
                .line("no recipient accepted; the message would not be sent");
            return Ok(None);
        }
        Ok(Some(AcceptedEnvelope {
            mail,
            abi: envelope,
        }))
    }
}

/// The message as the proxy would spool it: line ends made CRLF first, as files on
/// disk usually have bare LF.
async fn spool(raw: &[u8]) -> Result<Message, ReplayError> {
    let mut crlf = Vec::with_capacity(raw.len() + raw.len() / 32);
    for (i, &byte) in raw.iter().enumerate() {
        if byte == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            crlf.push(b'\r');
        }
        crlf.push(byte);
    }
    let mut writer = SpoolWriter::new(usize::MAX, None);
    writer.write(&crlf).await?;
    Ok(Message::new(writer.finish().await?, Vec::new()))
}

/// The report being written.
#[derive(Default)]
struct Report {
    text: String,
}

impl Report {
    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }

    /// Writes each plugin's verdict and the chain's decision for a stage; true if the
    /// decision ends the transaction (or the session).
    fn stage(&mut self, hooks: &mut SessionHooks, stage: &str, decision: &Decision) -> bool {
        for entry in hooks.take_trace() {
            let _ = writeln!(
                self.text,
                "{stage:<24} {:<16} {}",
                entry.plugin, entry.outcome
            );
        }
        let (ends, summary) = match decision {
            Decision::Continue => (false, "continue".to_string()),
            Decision::Accept => (false, "accepted".to_string()),
            Decision::Refuse(reply) => (true, format!("refused: {reply}")),
            Decision::Discard => (
                true,
                "discarded: the client gets 250, nothing goes upstream".into(),
            ),
            Decision::Disconnect(reply) => (true, format!("disconnected: {reply}")),
        };
        let _ = writeln!(self.text, "{stage:<24} => {summary}");
        ends
    }

    /// Writes the envelope and message as they would go upstream.
    async fn result(&mut self, mail: &MailCommand, message: &Message) -> Result<(), ReplayError> {
        self.line("\nenvelope:");
        self.line(&format!("  {mail}"));
        for recipient in &message.recipients {
            self.line(&format!("  RCPT TO:<{recipient}>"));
        }
        self.line("\nmessage:");
        let mut bytes = message.header_block();
        bytes.extend(message.body.read_at(0, usize::MAX).await?);
        self.text.push_str(&String::from_utf8_lossy(&bytes));
        Ok(())
    }

    fn finish(self) -> String {
        self.text
    }
}
