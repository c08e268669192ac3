//! `portcullis replay`: runs one listener's plugin chain over a message from a file,
//! offline — no client, no upstream, and DNS lookups fail instead of going out — and
//! reports what each plugin said at each stage and what would go upstream: the
//! envelope and the message after every rewrite and edit. Given audit records
//! instead ([`replay_records`]), it runs each record's envelope through the chains
//! configured now and reports where the verdicts differ from the recorded ones.

use std::{fmt::Write, net::IpAddr, sync::Arc};

use crate::{
    Config,
    audit::{RECORD_VERSION, Record, VerdictRecord},
    dns::Resolver,
    hooks::{Chain, Decision, SessionHooks, TraceEntry},
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
    /// An audit record of a format this version does not read.
    #[error("an audit record of version {0}; this proxy reads version {RECORD_VERSION}")]
    RecordVersion(u32),
    /// An audit record whose client address is not an IP address.
    #[error("an audit record's client address {0:?} is not an IP address")]
    RecordClient(String),
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
    run.stages(config, &input, true).await?;
    Ok(run.report.finish())
}

/// What [`replay_records`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsReport {
    /// The report, one paragraph per record.
    pub text: String,
    /// How many records had a verdict that differs now.
    pub differing: usize,
}

/// Runs audit records through the chains configured now and reports, per record,
/// where a member's verdict differs from the recorded one. Each record replays its
/// client's envelope as received (the listener given, or the record's); the DATA
/// stage runs only with `message` (records do not keep messages).
pub async fn replay_records(
    config: &Config,
    records: &[Record],
    listener: Option<&str>,
    message: Option<&[u8]>,
) -> Result<RecordsReport, ReplayError> {
    let mut chains = std::collections::BTreeMap::new();
    let mut report = RecordsReport {
        text: String::new(),
        differing: 0,
    };
    for record in records {
        if record.version != RECORD_VERSION {
            return Err(ReplayError::RecordVersion(record.version));
        }
        let name = listener.unwrap_or(&record.listener).to_string();
        if !chains.contains_key(&name) {
            chains.insert(name.clone(), load_chain(config, &name).await?);
        }
        let input = ReplayInput {
            listener: name.clone(),
            client_ip: record
                .client
                .ip
                .parse()
                .map_err(|_| ReplayError::RecordClient(record.client.ip.clone()))?,
            helo: record
                .client
                .helo
                .clone()
                .unwrap_or_else(|| "replay.invalid".into()),
            login: record.client.login.clone(),
            from: record.received.from.clone(),
            to: record.received.to.clone(),
            message: message.map(<[u8]>::to_vec).unwrap_or_default(),
        };
        let mut run = Replay::new(chains[&name].clone(), &input);
        run.stages(config, &input, message.is_some()).await?;
        let now: Vec<VerdictRecord> = run
            .report
            .entries
            .iter()
            .map(|entry| VerdictRecord {
                stage: entry.stage.to_string(),
                member: entry.plugin.to_string(),
                outcome: entry.outcome.clone(),
            })
            .collect();
        let found = differences(&record.chain, &now, message.is_some());
        let to = record.received.to.join(">, <");
        let _ = write!(
            report.text,
            "record {} ({}, <{}> to <{to}>, {}): ",
            record.session, name, record.received.from, record.reply
        );
        if found.is_empty() {
            report.text.push_str("same verdicts\n");
        } else {
            report.differing += 1;
            let _ = writeln!(report.text, "{} difference(s)", found.len());
            for line in found {
                let _ = writeln!(report.text, "  {line}");
            }
        }
    }
    let _ = writeln!(
        report.text,
        "{} record(s) replayed, {} with verdicts that differ now{}",
        records.len(),
        report.differing,
        if message.is_none() {
            " (DATA not replayed: no message given)"
        } else {
            ""
        }
    );
    Ok(report)
}

/// Where the verdicts `now` differ from the `recorded` ones, pairing entries by
/// stage and member in order. Stages a record does not cover (connect and HELO are
/// in a session's first record only; DATA without a message) are not differences.
fn differences(recorded: &[VerdictRecord], now: &[VerdictRecord], data: bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut paired = vec![false; now.len()];
    for old in recorded {
        if old.stage == "data" && !data {
            continue;
        }
        let partner = (0..now.len())
            .find(|&i| !paired[i] && now[i].stage == old.stage && now[i].member == old.member);
        match partner {
            Some(i) => {
                paired[i] = true;
                if now[i].outcome != old.outcome {
                    found.push(format!(
                        "{:<8} {:<16} was: {}\n  {:<8} {:<16} now: {}",
                        old.stage, old.member, old.outcome, "", "", now[i].outcome
                    ));
                }
            }
            None => found.push(format!(
                "{:<8} {:<16} was: {}; not asked now",
                old.stage, old.member, old.outcome
            )),
        }
    }
    let covered = |stage: &str| recorded.iter().any(|r| r.stage == stage);
    for (entry, _) in now.iter().zip(&paired).filter(|(_, paired)| !**paired) {
        let session_stage = matches!(entry.stage.as_str(), "connect" | "helo" | "auth");
        if session_stage && !covered(&entry.stage) {
            continue;
        }
        found.push(format!(
            "{:<8} {:<16} not recorded; now: {}",
            entry.stage, entry.member, entry.outcome
        ));
    }
    found
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

/// Loads a listener's plugins and no others (no pool: one session only needs one
/// instance), as its chain.
async fn load_chain(config: &Config, name: &str) -> Result<Arc<Chain>, ReplayError> {
    let listener = config
        .listeners
        .iter()
        .find(|l| l.name == name)
        .ok_or_else(|| ReplayError::NoListener(name.to_string()))?;
    let mut config = config.clone();
    config.server.plugin_pool_size = 0;
    config
        .plugins
        .retain(|name, _| listener.plugins.contains(name));
    let plugins = load_plugins(&config, Arc::new(Resolver::offline()), Default::default()).await?;
    Ok(Arc::new(Chain {
        listener: listener.name.clone(),
        members: chain_members(&listener.plugins, &plugins, &config.milters),
    }))
}

impl Replay {
    async fn start(config: &Config, input: &ReplayInput) -> Result<Replay, ReplayError> {
        Ok(Replay::new(
            load_chain(config, &input.listener).await?,
            input,
        ))
    }

    /// One offline session of `chain` for `input`.
    fn new(chain: Arc<Chain>, input: &ReplayInput) -> Replay {
        let listener = chain.listener.clone();
        let mut hooks = SessionHooks::new(chain, "replay");
        hooks.record_trace();
        let client = std::net::SocketAddr::new(input.client_ip, 0);
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 25));
        hooks.connection("replay.invalid", client, local);
        let session = view::SessionInfo {
            id: "replay".into(),
            listener,
            client_ip: input.client_ip.to_string(),
            client_port: 0,
            helo: None,
            tls: false,
            login: None,
        };
        Replay {
            hooks,
            session,
            offered: Capabilities::relayable(),
            report: Report::default(),
        }
    }

    /// Runs every stage until the chain refuses one, writing the report; DATA only
    /// if `data`.
    async fn stages(
        &mut self,
        config: &Config,
        input: &ReplayInput,
        data: bool,
    ) -> Result<(), ReplayError> {
        let Some(helo_rewrite) = self.greet(input).await else {
            return Ok(());
        };
        let Some(envelope) = self.envelope(input).await? else {
            return Ok(());
        };
        if !data {
            return Ok(());
        }
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

/// The report being written, and the verdicts it shows.
#[derive(Default)]
struct Report {
    text: String,
    entries: Vec<TraceEntry>,
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
            self.entries.push(entry);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(stage: &str, member: &str, outcome: &str) -> VerdictRecord {
        VerdictRecord {
            stage: stage.into(),
            member: member.into(),
            outcome: outcome.into(),
        }
    }

    #[test]
    fn differences_pair_verdicts_by_stage_and_member() {
        let recorded = vec![
            verdict("mail", "rate", "continue"),
            verdict("rcpt", "recipients", "continue"),
            verdict("rcpt", "recipients", "continue"),
            verdict("data", "headers", "continue; edits: add header X: y"),
        ];
        let now = vec![
            verdict("connect", "dnsbl", "continue"),
            verdict("helo", "dnsbl", "continue"),
            verdict("mail", "rate", "continue"),
            verdict("rcpt", "recipients", "continue"),
            verdict("rcpt", "recipients", "reject 550 5.1.1 no such user"),
            verdict("rcpt", "next", "continue"),
        ];
        // Connect and HELO are not in this record (not its session's first message),
        // DATA was not replayed: neither is a difference.
        let found = differences(&recorded, &now, false);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].contains("was: continue") && found[0].contains("now: reject 550"));
        assert!(found[1].contains("next") && found[1].contains("not recorded"));
        // With DATA replayed, a DATA verdict that is missing now is one.
        let found = differences(&recorded, &now, true);
        assert!(
            found
                .iter()
                .any(|f| f.contains("headers") && f.contains("not asked now"))
        );
        // Nothing changed: nothing found.
        assert!(differences(&recorded, &recorded, true).is_empty());
    }
}
