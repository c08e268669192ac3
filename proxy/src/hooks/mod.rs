//! Plugin chain dispatch: runs a listener's plugins in order for one stage, checks
//! what each returns, applies its `on_error` policy when it fails, and accumulates
//! rewrites so plugin N sees what plugin N−1 changed. The first verdict that is not
//! `continue` decides the stage. The session asks; this module never talks SMTP.

mod verdict;

use std::sync::Arc;

use tracing::{debug, info, warn};

use crate::{
    auth::{Check, Credentials},
    config::OnError,
    message::Message,
    plugin_host::{LoadedPlugin, MessageResource, PluginError, PluginInstance, abi},
    smtp::{Command, MailCommand, RcptCommand, Reply, capabilities::Capabilities, replies},
};
use portcullis_syntax::param::Verb;
use verdict::{
    PathRules, abi_params, checked_helo, checked_rewrite, describe, describe_command,
    describe_edit, to_edit, to_reply, validate,
};

/// The plugins of one listener, in order.
#[derive(Default)]
pub struct Chain {
    /// The listener's name (plugins see it in their session info).
    pub listener: String,
    /// The loaded plugins.
    pub plugins: Vec<Arc<LoadedPlugin>>,
}

/// What the chain decided for a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on as without plugins.
    Continue,
    /// A plugin accepted the stage (later plugins were not asked).
    Accept,
    /// Refuse with this 4xx/5xx reply; the session goes on.
    Refuse(Reply),
    /// DATA stage only: tell the client 250 and send nothing upstream.
    Discard,
    /// Send this 421 reply and close.
    Disconnect(Reply),
}

/// The stage being dispatched, for logs and for which hook flag applies.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Connect,
    Helo,
    Auth,
    Mail,
    Rcpt,
    Data,
    SessionEnd,
}

impl Stage {
    fn flag(self) -> abi::Hooks {
        match self {
            Stage::Connect => abi::Hooks::CONNECT,
            Stage::Helo => abi::Hooks::HELO,
            Stage::Auth => abi::Hooks::AUTH,
            Stage::Mail => abi::Hooks::MAIL,
            Stage::Rcpt => abi::Hooks::RCPT,
            Stage::Data => abi::Hooks::DATA,
            Stage::SessionEnd => abi::Hooks::SESSION_END,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Auth => "auth",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::SessionEnd => "session-end",
        }
    }
}

/// One session's plugin instances, created at each plugin's first wanted hook; a
/// shared plugin's instance is only here during a call.
pub struct SessionHooks {
    chain: Arc<Chain>,
    instances: Vec<Option<PluginInstance>>,
    /// Which plugins this session has called (a shared plugin gets the session-end
    /// hook only if so).
    called: Vec<bool>,
    session_id: String,
    trace: Option<Vec<TraceEntry>>,
    /// The recipients plugins added at the current DATA stage, with the plugin that
    /// added each: if the upstream refuses one, that plugin's `on_error` applies.
    added: Vec<(String, usize)>,
}

/// What one plugin said at one stage (recorded for `portcullis replay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// The stage: connect, helo, mail, rcpt, data.
    pub stage: &'static str,
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// Its verdict (and edits), or how it failed.
    pub outcome: String,
}

/// Which path hook `path_stage` runs.
#[derive(Clone, Copy)]
enum PathHook<'a> {
    Mail,
    Rcpt(&'a abi::Envelope),
}

/// What one plugin call produced, before the chain interprets it.
enum Outcome<T> {
    Verdict(abi::Verdict, T),
    Failed(OnError),
}

impl SessionHooks {
    /// The hooks of `chain` for session `session_id`.
    pub fn new(chain: Arc<Chain>, session_id: &str) -> Self {
        let instances = chain.plugins.iter().map(|_| None).collect();
        Self {
            called: vec![false; chain.plugins.len()],
            chain,
            instances,
            session_id: session_id.to_string(),
            trace: None,
            added: Vec::new(),
        }
    }

    /// Starts recording each plugin's verdict per stage.
    pub fn record_trace(&mut self) {
        self.trace.get_or_insert_with(Vec::new);
    }

    /// The verdicts recorded since the last call.
    pub fn take_trace(&mut self) -> Vec<TraceEntry> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn note(&mut self, index: usize, stage: Stage, outcome: String) {
        if let Some(trace) = self.trace.as_mut() {
            trace.push(TraceEntry {
                stage: stage.name(),
                plugin: self.chain.plugins[index].name.clone(),
                outcome,
            });
        }
    }

    /// True if any plugin of the chain exists (so callers can skip building inputs).
    pub fn is_empty(&self) -> bool {
        self.chain.plugins.is_empty()
    }

    /// True if a plugin of the chain wants the DATA hook (the message is then spooled).
    pub fn wants_data(&self) -> bool {
        !self.wanting(Stage::Data).is_empty()
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        &self.chain.listener
    }

    /// The instance of plugin `index` for a call: the session's own, created on first
    /// use, or for a shared plugin one lent until [`Self::release`].
    async fn instance(&mut self, index: usize) -> Result<&mut PluginInstance, PluginError> {
        if self.instances[index].is_none() {
            let plugin = &self.chain.plugins[index];
            let instance = if plugin.is_shared() {
                plugin.lend(&self.session_id).await?
            } else {
                plugin.instantiate(&self.session_id).await?
            };
            self.instances[index] = Some(instance);
        }
        self.called[index] = true;
        Ok(self.instances[index].as_mut().expect("just created"))
    }

    /// After a call to plugin `index` has been dealt with: a lent instance goes back
    /// to its plugin for other sessions (one that failed was dropped already). If the
    /// session ends during a call, its lent instance is dropped with it instead.
    fn release(&mut self, index: usize) {
        let plugin = &self.chain.plugins[index];
        if plugin.is_shared()
            && let Some(instance) = self.instances[index].take()
        {
            plugin.give_back(instance);
        }
    }

    /// Logs a failed call, drops that instance, and returns the plugin's policy.
    fn failed(&mut self, index: usize, stage: Stage, error: PluginError) -> OnError {
        let plugin = &self.chain.plugins[index];
        warn!(plugin = %plugin.name, hook = stage.name(), session = %self.session_id, %error, on_error = ?plugin.on_error, "plugin failed");
        if let Some(backtrace) = error.backtrace() {
            debug!(plugin = %plugin.name, hook = stage.name(), session = %self.session_id, "wasm backtrace:\n{backtrace}");
        }
        let policy = plugin.on_error;
        self.instances[index] = None;
        self.note(
            index,
            stage,
            format!("failed ({error}); on_error = {policy:?}"),
        );
        policy
    }

    /// The connect hook over the chain.
    pub async fn connect(&mut self, session: &abi::Session) -> Decision {
        self.verdict_stage(Stage::Connect, session, None).await
    }

    /// The AUTH hook, after a login was verified: `mechanism` and `login`, never a
    /// password.
    pub async fn auth(&mut self, session: &abi::Session, mechanism: &str, login: &str) -> Decision {
        self.verdict_stage(Stage::Auth, session, Some((mechanism, login)))
            .await
    }

    /// A stage whose hooks return a bare verdict (connect, or AUTH with its login).
    async fn verdict_stage(
        &mut self,
        stage: Stage,
        session: &abi::Session,
        login: Option<(&str, &str)>,
    ) -> Decision {
        let mut decision = Decision::Continue;
        for index in self.wanting(stage) {
            let outcome = match (self.instance(index).await, login) {
                (Ok(instance), None) => instance.connect(session).await,
                (Ok(instance), Some((mechanism, login))) => {
                    instance.auth(session, mechanism, login).await
                }
                (Err(error), _) => Err(error),
            };
            let outcome = self.settle(index, stage, outcome.map(|v| (v, ())));
            let done = self.interpret(index, stage, outcome, &mut decision, |_, _| Ok(None));
            self.release(index);
            if let Some(done) = done {
                return done;
            }
        }
        decision
    }

    /// The HELO hook; returns the decision and the name for the upstream if rewritten.
    pub async fn helo(&mut self, session: &abi::Session, name: &str) -> (Decision, Option<String>) {
        let mut current = name.to_string();
        let mut decision = Decision::Continue;
        for index in self.wanting(Stage::Helo) {
            let outcome = match self.instance(index).await {
                Ok(instance) => instance
                    .helo(session, &current)
                    .await
                    .map(|o| (o.verdict, o.rewrite_name)),
                Err(error) => Err(error),
            };
            let outcome = self.settle(index, Stage::Helo, outcome);
            let done = self.interpret(
                index,
                Stage::Helo,
                outcome,
                &mut decision,
                |rewrite: Option<String>, tracing| {
                    let Some(new) = rewrite else {
                        return Ok(None);
                    };
                    current = checked_helo(&new)?;
                    Ok(tracing.then(|| format!("HELO name for the upstream: {current}")))
                },
            );
            self.release(index);
            if let Some(done) = done {
                return (done, changed(name, current));
            }
        }
        (decision, changed(name, current))
    }

    /// The MAIL hook; returns the decision and the (possibly rewritten) command. A
    /// rewrite may only use the extensions in `offered` (what the client was offered).
    pub async fn mail(
        &mut self,
        session: &abi::Session,
        mail: MailCommand,
        offered: &Capabilities,
    ) -> (Decision, MailCommand) {
        let (address, params) = (
            mail.reverse_path.mailbox().to_string(),
            abi_params(&mail.params),
        );
        let rules = PathRules {
            offered,
            smtputf8: false,
        };
        match self
            .path_stage(session, PathHook::Mail, address, params, &rules)
            .await
        {
            (decision, Some(Command::Mail(rewritten))) => (decision, rewritten),
            (decision, _) => (decision, mail),
        }
    }

    /// The RCPT hook for one recipient; returns the decision and the (possibly
    /// rewritten) command.
    pub async fn rcpt(
        &mut self,
        session: &abi::Session,
        envelope: &abi::Envelope,
        rcpt: RcptCommand,
        offered: &Capabilities,
    ) -> (Decision, RcptCommand) {
        let (address, params) = (
            rcpt.forward_path.mailbox().to_string(),
            abi_params(&rcpt.params),
        );
        let rules = PathRules {
            offered,
            smtputf8: envelope
                .mail_params
                .iter()
                .any(|p| p.keyword.eq_ignore_ascii_case("SMTPUTF8")),
        };
        match self
            .path_stage(session, PathHook::Rcpt(envelope), address, params, &rules)
            .await
        {
            (decision, Some(Command::Rcpt(rewritten))) => (decision, rewritten),
            (decision, _) => (decision, rcpt),
        }
    }

    /// MAIL or RCPT over the chain. Each rewrite must follow the rules a client's
    /// command follows and survive rendering and parsing back (`checked_rewrite`), so
    /// a plugin can never put on the wire what a client could not; the last valid
    /// rewrite is returned as a command.
    async fn path_stage(
        &mut self,
        session: &abi::Session,
        hook: PathHook<'_>,
        mut address: String,
        mut params: Vec<abi::Param>,
        rules: &PathRules<'_>,
    ) -> (Decision, Option<Command>) {
        let (stage, verb) = match hook {
            PathHook::Mail => (Stage::Mail, Verb::Mail),
            PathHook::Rcpt(_) => (Stage::Rcpt, Verb::Rcpt),
        };
        let mut rewritten = None;
        let mut decision = Decision::Continue;
        for index in self.wanting(stage) {
            let outcome = match self.instance(index).await {
                Ok(instance) => match hook {
                    PathHook::Mail => instance.mail(session, &address, &params).await,
                    PathHook::Rcpt(envelope) => {
                        instance.rcpt(session, envelope, &address, &params).await
                    }
                }
                .map(|o| (o.verdict, o.rewrite)),
                Err(error) => Err(error),
            };
            let outcome = self.settle(index, stage, outcome);
            let done = self.interpret(
                index,
                stage,
                outcome,
                &mut decision,
                |rewrite: Option<abi::PathRewrite>, tracing| {
                    let Some(rewrite) = rewrite else {
                        return Ok(None);
                    };
                    let new_address = rewrite.address.unwrap_or_else(|| address.clone());
                    let new_params = rewrite.params.unwrap_or_else(|| params.clone());
                    let command = checked_rewrite(verb, &new_address, &new_params, rules)?;
                    let described =
                        tracing.then(|| format!("rewrote it to {}", describe_command(&command)));
                    (address, params) = (new_address, new_params);
                    rewritten = Some(command);
                    Ok(described)
                },
            );
            self.release(index);
            if let Some(done) = done {
                return (done, rewritten);
            }
        }
        (decision, rewritten)
    }

    /// The DATA hook over the chain. Each plugin sees the message and the recipients as
    /// the plugins before it left them; a plugin's edits apply all together, and if one
    /// of them is invalid none does and the plugin has failed.
    pub async fn data(
        &mut self,
        session: &abi::Session,
        envelope: &abi::Envelope,
        message: &mut Message,
    ) -> Decision {
        let mut decision = Decision::Continue;
        let mut added = Vec::new();
        for index in self.wanting(Stage::Data) {
            let envelope = abi::Envelope {
                recipients: message.recipients.clone(),
                ..envelope.clone()
            };
            let resource = MessageResource {
                headers: message
                    .header_pairs()
                    .into_iter()
                    .map(|(name, value)| abi::Header { name, value })
                    .collect(),
                body: message.body.clone(),
            };
            let outcome = match self.instance(index).await {
                Ok(instance) => instance
                    .data(session, &envelope, resource)
                    .await
                    .map(|o| (o.verdict, o.edits)),
                Err(error) => Err(error),
            };
            let outcome = self.settle(index, Stage::Data, outcome);
            let done = self.interpret(
                index,
                Stage::Data,
                outcome,
                &mut decision,
                |edits: Vec<abi::MessageEdit>, tracing| {
                    let described = (tracing && !edits.is_empty()).then(|| {
                        let list: Vec<String> = edits.iter().map(describe_edit).collect();
                        format!("edits: {}", list.join("; "))
                    });
                    let mut edited = message.clone();
                    for edit in edits {
                        edited.apply(to_edit(edit)).map_err(|e| e.to_string())?;
                    }
                    for recipient in &edited.recipients {
                        let known = |r: &String| r.eq_ignore_ascii_case(recipient);
                        if !message.recipients.iter().any(known) {
                            added.push((recipient.clone(), index));
                        }
                    }
                    *message = edited;
                    Ok(described)
                },
            );
            self.release(index);
            if let Some(done) = done {
                self.added = added;
                return done;
            }
        }
        self.added = added;
        decision
    }

    /// The plugin that added `recipient` at this message's DATA stage, and what its
    /// `on_error` makes of the message now that the upstream refused that recipient:
    /// `None` for a recipient no plugin added, or a plugin whose policy is `continue`.
    pub fn refused_addition(&self, recipient: &str) -> Option<(Arc<str>, Decision)> {
        let (_, index) = self
            .added
            .iter()
            .find(|(added, _)| added.eq_ignore_ascii_case(recipient))?;
        let plugin = &self.chain.plugins[*index];
        let decision = policy_decision(plugin.on_error)?;
        Some((plugin.name.clone(), decision))
    }

    /// The session-end hook, for plugins whose instance this session still has, and
    /// shared plugins it has called.
    pub async fn session_end(&mut self, session: &abi::Session) {
        for index in self.wanting(Stage::SessionEnd) {
            let shared = self.chain.plugins[index].is_shared();
            let ends = if shared {
                self.called[index]
            } else {
                self.instances[index].is_some()
            };
            if !ends {
                continue;
            }
            let result = match self.instance(index).await {
                Ok(instance) => instance.session_end(session).await,
                Err(error) => Err(error),
            };
            if let Err(error) = result {
                self.failed(index, Stage::SessionEnd, error);
            }
            self.release(index);
        }
    }

    /// Applies one plugin's outcome to the stage. Returns the final decision when this
    /// plugin ends the chain. `rewrite` applies the plugin's changes, or refuses them
    /// as invalid, which counts as a failure of the plugin.
    fn interpret<T>(
        &mut self,
        index: usize,
        stage: Stage,
        outcome: Outcome<T>,
        decision: &mut Decision,
        rewrite: impl FnOnce(T, bool) -> Result<Option<String>, String>,
    ) -> Option<Decision> {
        let (verdict, extra) = match outcome {
            Outcome::Failed(policy) => return policy_decision(policy),
            Outcome::Verdict(verdict, extra) => (verdict, extra),
        };
        let changes = match verdict {
            abi::Verdict::Continue | abi::Verdict::Accept => rewrite(extra, self.trace.is_some()),
            _ => Ok(None),
        };
        match changes {
            Ok(Some(changes)) => {
                self.note(index, stage, format!("{}; {changes}", describe(&verdict)))
            }
            Ok(None) => self.note(index, stage, describe(&verdict)),
            Err(reason) => {
                self.note(index, stage, describe(&verdict));
                let policy = self.failed(index, stage, PluginError::Invalid(reason));
                return policy_decision(policy);
            }
        }
        let plugin = &self.chain.plugins[index].name;
        let decided = match verdict {
            abi::Verdict::Continue => None,
            abi::Verdict::Discard if matches!(stage, Stage::Data) => Some(Decision::Discard),
            abi::Verdict::Discard => {
                debug!(%plugin, hook = stage.name(), "discard outside DATA counts as continue");
                None
            }
            abi::Verdict::Accept => {
                *decision = Decision::Accept;
                Some(Decision::Accept)
            }
            abi::Verdict::Reject(reply) | abi::Verdict::Tempfail(reply) => {
                Some(Decision::Refuse(to_reply(reply)))
            }
            abi::Verdict::Disconnect(text) => Some(Decision::Disconnect(
                replies::plugin_disconnect(text.as_deref()),
            )),
        };
        if let Some(decided) = &decided {
            info!(%plugin, hook = stage.name(), session = %self.session_id, decision = ?decided, "plugin decided");
        }
        decided
    }

    /// Indexes of the plugins that asked for this stage.
    fn wanting(&self, stage: Stage) -> Vec<usize> {
        (0..self.chain.plugins.len())
            .filter(|&i| self.chain.plugins[i].hooks.contains(stage.flag()))
            .collect()
    }

    /// Turns a call result into an outcome, applying the failure path.
    fn settle<T>(
        &mut self,
        index: usize,
        stage: Stage,
        result: Result<(abi::Verdict, T), PluginError>,
    ) -> Outcome<T> {
        match result.and_then(|(verdict, extra)| validate(&verdict).map(|()| (verdict, extra))) {
            Ok((verdict, extra)) => Outcome::Verdict(verdict, extra),
            Err(error) => Outcome::Failed(self.failed(index, stage, error)),
        }
    }
}

/// Asks a listener's verifier plugin whether a login and password match, in an
/// instance that lives for this call only (or, for a shared verifier, one lent for
/// it). A failed call (trap, timeout) means the verifier is unavailable: 454, never a
/// login.
pub async fn verify_login(
    verifier: &LoadedPlugin,
    session_id: &str,
    session: &abi::Session,
    credentials: &Credentials,
) -> Check {
    let result = match verifier.lend(session_id).await {
        Ok(mut instance) => {
            let result = instance
                .verify_login(
                    session,
                    credentials.mechanism.name(),
                    &credentials.login,
                    credentials.password.expose(),
                )
                .await;
            if result.is_ok() {
                verifier.give_back(instance);
            }
            result
        }
        Err(error) => Err(error),
    };
    match result {
        Ok(abi::LoginCheck::Valid) => Check::Valid,
        Ok(abi::LoginCheck::Invalid) => Check::Invalid,
        Ok(abi::LoginCheck::Unavailable) => Check::Unavailable,
        Err(error) => {
            warn!(plugin = %verifier.name, session = %session_id, %error, "verifier plugin failed");
            Check::Unavailable
        }
    }
}

/// The stage's decision when a plugin failed, by its `on_error` policy (`None`:
/// carry on with the next plugin).
fn policy_decision(policy: OnError) -> Option<Decision> {
    match policy {
        OnError::Continue => None,
        OnError::Tempfail => Some(Decision::Refuse(replies::plugin_tempfail())),
        OnError::Reject => Some(Decision::Refuse(replies::plugin_reject())),
    }
}

fn changed(original: &str, current: String) -> Option<String> {
    (current != original).then_some(current)
}
