//! Plugin chain dispatch: runs a listener's plugins in order for one stage, checks
//! what each returns, applies its `on_error` policy when it fails, and accumulates
//! rewrites so plugin N sees what plugin N−1 changed. The first verdict that is not
//! `continue` decides the stage. The session asks; this module never talks SMTP.
//!
//! Each stage is one call of the runner in `stage.rs` with what to ask a plugin and
//! how to apply its changes; `verdict.rs` checks what plugins return, `trace.rs`
//! records it for `portcullis replay`.

mod member;
mod stage;
mod trace;
mod verdict;

use std::{net::SocketAddr, sync::Arc};

use crate::{
    message::{Edit, Message},
    milter::{Conversation, Facts},
    plugin_host::{MessageResource, SessionStore, view},
    smtp::{Command, MailCommand, RcptCommand, Reply, capabilities::Capabilities},
};
pub use member::Member;
use member::{CallError, Callee, Link, Slot, milter_verdict};
use portcullis_syntax::param::Verb;
use stage::{Apply, Call, Stage, policy_decision};
pub use trace::TraceEntry;
use verdict::{
    PathRules, checked_helo, checked_rewrite, describe_command, describe_edit, plugin_params,
};

/// The plugins and milters of one listener, in order.
#[derive(Default)]
pub struct Chain {
    /// The listener's name (plugins see it in their session info).
    pub listener: String,
    /// The members, in the order they are asked.
    pub members: Vec<Member>,
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

/// One session's plugin instances and milter connections, created at each member's
/// first stage; a shared plugin's instance is only here during a call.
pub struct SessionHooks {
    chain: Arc<Chain>,
    slots: Vec<Slot>,
    /// Which plugins this session has called (a shared plugin gets the session-end
    /// hook only if so).
    called: Vec<bool>,
    /// What each plugin keeps for this session (`session-store`), lent to the
    /// instance serving each call; dropped with the session.
    stores: Vec<SessionStore>,
    /// What milters are told in macros.
    facts: Facts,
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
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            slots: chain.members.iter().map(Slot::for_member).collect(),
            called: vec![false; chain.members.len()],
            stores: chain
                .members
                .iter()
                .map(|_| SessionStore::default())
                .collect(),
            facts: Facts {
                session_id: session_id.to_string(),
                hostname: String::new(),
                listener: String::new(),
                client: unspecified,
                local: unspecified,
                client_name: None,
                tls: None,
                auth: None,
            },
            chain,
            trace: None,
            added: Vec::new(),
        }
    }

    /// Tells the milters who connected where, and the proxy's host name (before the
    /// connect stage). Nothing to keep for a chain without milters.
    pub(crate) fn connection(&mut self, hostname: &str, client: SocketAddr, local: SocketAddr) {
        if !self
            .chain
            .members
            .iter()
            .any(|m| matches!(m, Member::Milter(_)))
        {
            return;
        }
        self.facts.hostname = hostname.to_string();
        self.facts.listener = self.chain.listener.clone();
        (self.facts.client, self.facts.local) = (client, local);
    }

    /// Tells the milters the TLS version and cipher once the session is encrypted.
    pub(crate) fn tls_started(&mut self, version: &str, cipher: &str) {
        self.facts.tls = Some((version.to_string(), cipher.to_string()));
    }

    /// True if the chain has no member (so callers can skip building inputs).
    pub fn is_empty(&self) -> bool {
        self.chain.members.is_empty()
    }

    /// True if a member of the chain wants the DATA stage (the message is then
    /// spooled).
    pub fn wants_data(&self) -> bool {
        !self.wanting(Stage::Data).is_empty()
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        &self.chain.listener
    }

    fn session_id(&self) -> &str {
        &self.facts.session_id
    }

    /// Who answers member `index`'s call at `stage`: a plugin's instance, holding
    /// this session's store of that plugin until [`Self::release`] (the session's
    /// own, created on first use, or for a shared plugin one lent until then); or
    /// the milter's connection, opened on first use. `None`: a milter that failed
    /// earlier in this session.
    async fn callee(
        &mut self,
        index: usize,
        stage: Stage,
    ) -> Result<Option<Callee<'_>>, CallError> {
        self.called[index] = true;
        match (&self.chain.members[index], &mut self.slots[index]) {
            (Member::Plugin(plugin), Slot::Plugin(slot)) => {
                if slot.is_none() {
                    *slot = Some(if plugin.is_shared() {
                        plugin.lend(&self.facts.session_id).await?
                    } else {
                        plugin.instantiate(&self.facts.session_id).await?
                    });
                }
                let instance = slot.as_mut().expect("just created");
                instance.lend_store(std::mem::take(&mut self.stores[index]));
                Ok(Some(Callee::Plugin(instance)))
            }
            (Member::Milter(milter), Slot::Milter(link)) => {
                if matches!(link, Link::Closed) {
                    let mut conversation = Conversation::open(milter.clone()).await?;
                    if !matches!(stage, Stage::Connect) {
                        // Opened after the connect stage (a replay starting later):
                        // it still hears of the connection first.
                        conversation.connect(&self.facts).await?;
                    }
                    *link = Link::Open(Box::new(conversation));
                }
                match link {
                    Link::Open(conversation) => Ok(Some(Callee::Milter(conversation, &self.facts))),
                    _ => Ok(None),
                }
            }
            _ => unreachable!("a slot is made for its member"),
        }
    }

    /// Takes this session's store of plugin `index` back from its instance, after a
    /// call (also one that failed, before the instance is dropped).
    fn take_store(&mut self, index: usize) {
        if let Slot::Plugin(Some(instance)) = &mut self.slots[index] {
            self.stores[index] = instance.take_store();
        }
    }

    /// After a call to member `index` has been dealt with: a lent instance goes back
    /// to its plugin for other sessions (one that failed was dropped already). If the
    /// session ends during a call, its lent instance is dropped with it instead.
    fn release(&mut self, index: usize) {
        if let (Member::Plugin(plugin), Slot::Plugin(slot)) =
            (&self.chain.members[index], &mut self.slots[index])
            && plugin.is_shared()
            && let Some(instance) = slot.take()
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
        self.facts.auth = Some((mechanism.to_string(), login.to_string()));
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

    /// The DATA hook over the chain. Each member sees the message and the recipients
    /// as the members before it left them; a member's edits apply all together, and
    /// if one of them is invalid none does and the member has failed. A new sender
    /// (a milter's) may only use the extensions in `offered`, as a MAIL rewrite.
    pub async fn data(
        &mut self,
        session: &view::SessionInfo,
        envelope: &view::Envelope,
        message: &mut Message,
        offered: &Capabilities,
    ) -> Decision {
        let mut added = Vec::new();
        let rules = PathRules {
            offered,
            smtputf8: false,
        };
        let apply = |index, (_, _, message): &mut DataState<'_>, edits: Vec<Edit>, how: Apply| {
            let described = (how.describes() && !edits.is_empty()).then(|| {
                let list: Vec<String> = edits.iter().map(describe_edit).collect();
                format!("edits: {}", list.join("; "))
            });
            let mut edited = (**message).clone();
            for edit in edits {
                if let Edit::ChangeSender { address, params } = &edit {
                    let params: Vec<view::Param> = params
                        .iter()
                        .map(|(keyword, value)| view::Param {
                            keyword: keyword.clone(),
                            value: value.clone(),
                        })
                        .collect();
                    checked_rewrite(Verb::Mail, address, &params, &rules)?;
                }
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
        let member = &self.chain.members[*index];
        let decision = policy_decision(member.on_error())?;
        Some((member.name().clone(), decision))
    }

    /// The session-end hook, for plugins whose instance this session still has, and
    /// shared plugins it has called; milters hear QUIT and are disconnected.
    pub async fn session_end(&mut self, session: &view::SessionInfo) {
        for index in self.wanting(Stage::SessionEnd) {
            let ends = match (&self.chain.members[index], &mut self.slots[index]) {
                (Member::Milter(_), Slot::Milter(link)) => {
                    if let Link::Open(conversation) = std::mem::replace(link, Link::Closed) {
                        conversation.close().await;
                    }
                    continue;
                }
                (Member::Plugin(plugin), _) if plugin.is_shared() => self.called[index],
                (_, slot) => matches!(slot, Slot::Plugin(Some(_))),
            };
            if !ends {
                continue;
            }
            let result = match self.callee(index, Stage::SessionEnd).await {
                Ok(Some(Callee::Plugin(instance))) => {
                    instance.session_end(session).await.map_err(CallError::from)
                }
                Ok(_) => Ok(()),
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

// One call per stage, for the runner: what a plugin or a milter is asked with, taken
// from the stage's state as the members before it left it.

fn ask_connect<'a>(callee: Callee<'a>, session: &'a &view::SessionInfo) -> Call<'a, ()> {
    Box::pin(async move {
        let verdict = match callee {
            Callee::Plugin(instance) => instance.connect(session).await?,
            Callee::Milter(milter, facts) => milter_verdict(milter.connect(facts).await?),
        };
        Ok((verdict, ()))
    })
}

fn ask_auth<'a>(callee: Callee<'a>, login: &'a Login<'_>) -> Call<'a, ()> {
    let Login(session, mechanism, login) = *login;
    Box::pin(async move {
        let verdict = match callee {
            Callee::Plugin(instance) => instance.auth(session, mechanism, login).await?,
            // Milters are not asked at AUTH; they see the login in MAIL's macros.
            Callee::Milter(..) => view::Verdict::Continue,
        };
        Ok((verdict, ()))
    })
}

fn ask_helo<'a>(
    callee: Callee<'a>,
    (session, current): &'a (&view::SessionInfo, String),
) -> Call<'a, Option<String>> {
    Box::pin(async move {
        match callee {
            Callee::Plugin(instance) => {
                let outcome = instance.helo(session, current).await?;
                Ok((outcome.verdict, outcome.rewrite_name))
            }
            Callee::Milter(milter, facts) => {
                Ok((milter_verdict(milter.helo(current, facts).await?), None))
            }
        }
    })
}

fn ask_path<'a>(
    callee: Callee<'a>,
    path: &'a PathState<'_>,
) -> Call<'a, Option<view::PathRewrite>> {
    Box::pin(async move {
        let instance = match callee {
            Callee::Plugin(instance) => instance,
            Callee::Milter(milter, facts) => {
                // The path in angle brackets, then each parameter, as Postfix sends them.
                let mut args = vec![format!("<{}>", path.address)];
                args.extend(path.params.iter().map(|p| match &p.value {
                    Some(value) => format!("{}={value}", p.keyword),
                    None => p.keyword.clone(),
                }));
                let verdict = match path.envelope {
                    None => milter.mail(&args, facts).await?,
                    Some(_) => milter.rcpt(&args).await?,
                };
                return Ok((milter_verdict(verdict), None));
            }
        };
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
    callee: Callee<'a>,
    (session, envelope, message): &'a DataState<'_>,
) -> Call<'a, Vec<Edit>> {
    match callee {
        Callee::Plugin(instance) => {
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
        Callee::Milter(milter, facts) => Box::pin(async move {
            let headers = message.header_values();
            let (verdict, edits) = milter.message(&headers, &message.body, facts).await?;
            Ok((milter_verdict(verdict), edits))
        }),
    }
}
