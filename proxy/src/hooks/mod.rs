//! Plugin chain dispatch: runs a listener's plugins in order for one stage, checks
//! what each returns, applies its `on_error` policy when it fails, and accumulates
//! rewrites so plugin N sees what plugin N−1 changed. The first verdict that is not
//! `continue` decides the stage. The session asks; this module never talks SMTP.
//!
//! Each stage is one call of the runner in `stage.rs` with what to ask a plugin and
//! how to apply its changes; `verdict.rs` checks what plugins return, `trace.rs`
//! records it for `portcullis replay`.

mod stage;
mod trace;
mod verdict;

use std::sync::Arc;

use crate::{
    message::{Edit, Message},
    plugin_host::{LoadedPlugin, MessageResource, PluginError, PluginInstance, SessionStore, view},
    smtp::{Command, MailCommand, RcptCommand, Reply, capabilities::Capabilities},
};
use portcullis_syntax::param::Verb;
use stage::{Apply, Call, Stage, policy_decision};
pub use trace::TraceEntry;
use verdict::{
    PathRules, checked_helo, checked_rewrite, describe_command, describe_edit, plugin_params,
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

/// One session's plugin instances, created at each plugin's first wanted hook; a
/// shared plugin's instance is only here during a call.
pub struct SessionHooks {
    chain: Arc<Chain>,
    instances: Vec<Option<PluginInstance>>,
    /// Which plugins this session has called (a shared plugin gets the session-end
    /// hook only if so).
    called: Vec<bool>,
    /// What each plugin keeps for this session (`session-store`), lent to the
    /// instance serving each call; dropped with the session.
    stores: Vec<SessionStore>,
    session_id: String,
    trace: Option<Vec<TraceEntry>>,
    /// The recipients plugins added at the current DATA stage, with the plugin that
    /// added each: if the upstream refuses one, that plugin's `on_error` applies.
    added: Vec<(String, usize)>,
}

/// A MAIL or RCPT as the chain has left it so far.
struct PathState<'s> {
    session: &'s view::SessionInfo,
    /// RCPT only: the transaction so far.
    envelope: Option<&'s view::Envelope>,
    address: String,
    params: Vec<view::Param>,
    /// The last valid rewrite, as the command for the upstream.
    rewritten: Option<Command>,
}

/// What the AUTH hook is asked with: the session, the mechanism and the login.
#[derive(Clone, Copy)]
struct Login<'s>(&'s view::SessionInfo, &'s str, &'s str);

impl SessionHooks {
    /// The hooks of `chain` for session `session_id`.
    pub fn new(chain: Arc<Chain>, session_id: &str) -> Self {
        let instances = chain.plugins.iter().map(|_| None).collect();
        Self {
            called: vec![false; chain.plugins.len()],
            stores: chain
                .plugins
                .iter()
                .map(|_| SessionStore::default())
                .collect(),
            chain,
            instances,
            session_id: session_id.to_string(),
            trace: None,
            added: Vec::new(),
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

    /// The instance of plugin `index` for a call, holding this session's store of
    /// that plugin until [`Self::release`]: the session's own instance, created on
    /// first use, or for a shared plugin one lent until then.
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
        let instance = self.instances[index].as_mut().expect("just created");
        instance.lend_store(std::mem::take(&mut self.stores[index]));
        Ok(instance)
    }

    /// Takes this session's store of plugin `index` back from its instance, after a
    /// call (also one that failed, before the instance is dropped).
    fn take_store(&mut self, index: usize) {
        if let Some(instance) = self.instances[index].as_mut() {
            self.stores[index] = instance.take_store();
        }
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

    /// The connect hook over the chain.
    pub async fn connect(&mut self, session: &view::SessionInfo) -> Decision {
        let no_changes = |_, _: &mut _, (), _| Ok(None);
        self.run(Stage::Connect, &mut &*session, ask_connect, no_changes)
            .await
    }

    /// The AUTH hook, after a login was verified: `mechanism` and `login`, never a
    /// password.
    pub async fn auth(
        &mut self,
        session: &view::SessionInfo,
        mechanism: &str,
        login: &str,
    ) -> Decision {
        let mut state = Login(session, mechanism, login);
        let no_changes = |_, _: &mut _, (), _| Ok(None);
        self.run(Stage::Auth, &mut state, ask_auth, no_changes)
            .await
    }

    /// The HELO hook; returns the decision and the name for the upstream if rewritten.
    pub async fn helo(
        &mut self,
        session: &view::SessionInfo,
        name: &str,
    ) -> (Decision, Option<String>) {
        let mut state = (session, name.to_string());
        let apply = |_,
                     (_, current): &mut (&view::SessionInfo, String),
                     rewrite: Option<String>,
                     how: Apply| {
            let Some(new) = rewrite else {
                return Ok(None);
            };
            let checked = checked_helo(&new)?;
            let described = how
                .describes()
                .then(|| format!("HELO name for the upstream: {checked}"));
            if how.commits() {
                *current = checked;
            }
            Ok(described)
        };
        let decision = self.run(Stage::Helo, &mut state, ask_helo, apply).await;
        let current = state.1;
        (decision, (current != name).then_some(current))
    }

    /// The MAIL hook; returns the decision and the (possibly rewritten) command. A
    /// rewrite may only use the extensions in `offered` (what the client was offered).
    pub async fn mail(
        &mut self,
        session: &view::SessionInfo,
        mail: MailCommand,
        offered: &Capabilities,
    ) -> (Decision, MailCommand) {
        let rules = PathRules {
            offered,
            smtputf8: false,
        };
        let path = PathState {
            session,
            envelope: None,
            address: mail.reverse_path.mailbox().to_string(),
            params: plugin_params(&mail.params),
            rewritten: None,
        };
        match self.path_stage(Stage::Mail, path, &rules).await {
            (decision, Some(Command::Mail(rewritten))) => (decision, rewritten),
            (decision, _) => (decision, mail),
        }
    }

    /// The RCPT hook for one recipient; returns the decision and the (possibly
    /// rewritten) command.
    pub async fn rcpt(
        &mut self,
        session: &view::SessionInfo,
        envelope: &view::Envelope,
        rcpt: RcptCommand,
        offered: &Capabilities,
    ) -> (Decision, RcptCommand) {
        let rules = PathRules {
            offered,
            smtputf8: envelope
                .mail_params
                .iter()
                .any(|p| p.keyword.eq_ignore_ascii_case("SMTPUTF8")),
        };
        let path = PathState {
            session,
            envelope: Some(envelope),
            address: rcpt.forward_path.mailbox().to_string(),
            params: plugin_params(&rcpt.params),
            rewritten: None,
        };
        match self.path_stage(Stage::Rcpt, path, &rules).await {
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
        stage: Stage,
        mut path: PathState<'_>,
        rules: &PathRules<'_>,
    ) -> (Decision, Option<Command>) {
        let verb = match stage {
            Stage::Mail => Verb::Mail,
            _ => Verb::Rcpt,
        };
        let apply =
            |_, path: &mut PathState<'_>, rewrite: Option<view::PathRewrite>, how: Apply| {
                let Some(rewrite) = rewrite else {
                    return Ok(None);
                };
                let address = rewrite.address.unwrap_or_else(|| path.address.clone());
                let params = rewrite.params.unwrap_or_else(|| path.params.clone());
                let command = checked_rewrite(verb, &address, &params, rules)?;
                let described = how
                    .describes()
                    .then(|| format!("rewrote it to {}", describe_command(&command)));
                if how.commits() {
                    (path.address, path.params) = (address, params);
                    path.rewritten = Some(command);
                }
                Ok(described)
            };
        let decision = self.run(stage, &mut path, ask_path, apply).await;
        (decision, path.rewritten)
    }

    /// The DATA hook over the chain. Each plugin sees the message and the recipients as
    /// the plugins before it left them; a plugin's edits apply all together, and if one
    /// of them is invalid none does and the plugin has failed.
    pub async fn data(
        &mut self,
        session: &view::SessionInfo,
        envelope: &view::Envelope,
        message: &mut Message,
    ) -> Decision {
        let mut added = Vec::new();
        let apply = |index, (_, _, message): &mut DataState<'_>, edits: Vec<Edit>, how: Apply| {
            let described = (how.describes() && !edits.is_empty()).then(|| {
                let list: Vec<String> = edits.iter().map(describe_edit).collect();
                format!("edits: {}", list.join("; "))
            });
            let mut edited = (**message).clone();
            for edit in edits {
                edited.apply(edit)?;
            }
            if !how.commits() {
                return Ok(described);
            }
            for recipient in &edited.recipients {
                let known = |r: &String| r.eq_ignore_ascii_case(recipient);
                if !message.recipients.iter().any(known) {
                    added.push((recipient.clone(), index));
                }
            }
            **message = edited;
            Ok(described)
        };
        let mut state = (session, envelope, message);
        let decision = self.run(Stage::Data, &mut state, ask_data, apply).await;
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
    pub async fn session_end(&mut self, session: &view::SessionInfo) {
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
            self.take_store(index);
            if let Err(error) = result {
                self.failed(index, Stage::SessionEnd, error);
            }
            self.release(index);
        }
    }
}

// One plugin call per stage, for the runner: what the plugin is asked with, taken from
// the stage's state as the plugins before it left it.

fn ask_connect<'a>(
    instance: &'a mut PluginInstance,
    session: &'a &view::SessionInfo,
) -> Call<'a, ()> {
    Box::pin(async move { Ok((instance.connect(session).await?, ())) })
}

fn ask_auth<'a>(instance: &'a mut PluginInstance, login: &'a Login<'_>) -> Call<'a, ()> {
    let Login(session, mechanism, login) = *login;
    Box::pin(async move { Ok((instance.auth(session, mechanism, login).await?, ())) })
}

fn ask_helo<'a>(
    instance: &'a mut PluginInstance,
    (session, current): &'a (&view::SessionInfo, String),
) -> Call<'a, Option<String>> {
    Box::pin(async move {
        let outcome = instance.helo(session, current).await?;
        Ok((outcome.verdict, outcome.rewrite_name))
    })
}

fn ask_path<'a>(
    instance: &'a mut PluginInstance,
    path: &'a PathState<'_>,
) -> Call<'a, Option<view::PathRewrite>> {
    Box::pin(async move {
        let outcome = match path.envelope {
            None => {
                instance
                    .mail(path.session, &path.address, &path.params)
                    .await?
            }
            Some(envelope) => {
                let (address, params) = (&path.address, &path.params);
                instance
                    .rcpt(path.session, envelope, address, params)
                    .await?
            }
        };
        Ok((outcome.verdict, outcome.rewrite))
    })
}

/// The DATA stage's state: the session, the envelope, and the message as edited so far.
type DataState<'s> = (&'s view::SessionInfo, &'s view::Envelope, &'s mut Message);

fn ask_data<'a>(
    instance: &'a mut PluginInstance,
    (session, envelope, message): &'a DataState<'_>,
) -> Call<'a, Vec<Edit>> {
    let envelope = view::Envelope {
        recipients: message.recipients.clone(),
        ..(*envelope).clone()
    };
    let resource = MessageResource::new(message.header_pairs(), message.body.clone());
    Box::pin(async move {
        let outcome = instance.data(session, &envelope, resource).await?;
        Ok((outcome.verdict, outcome.edits))
    })
}
