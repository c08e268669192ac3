//! The stage runner: one loop for every stage, the check of each plugin's verdict, and
//! the failure path (`on_error`).

use std::{future::Future, pin::Pin, time::Instant};

use metrics::counter;

use tracing::{debug, info, warn};

use super::{
    Decision, SessionHooks,
    member::{CallError, Callee},
    verdict::{InvalidResult, describe, to_reply, validate},
};
use crate::{
    config::OnError,
    plugin_host::{PluginError, view},
    smtp::replies,
    telemetry,
};

/// The stage being dispatched, for logs and for which hook flag applies. In the
/// order of [`telemetry::HOOKS`], which `stage as usize` indexes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Stage {
    Connect,
    Helo,
    Auth,
    Mail,
    Rcpt,
    Data,
    SessionEnd,
}

impl Stage {
    pub(super) fn flag(self) -> view::Hooks {
        match self {
            Stage::Connect => view::Hooks::CONNECT,
            Stage::Helo => view::Hooks::HELO,
            Stage::Auth => view::Hooks::AUTH,
            Stage::Mail => view::Hooks::MAIL,
            Stage::Rcpt => view::Hooks::RCPT,
            Stage::Data => view::Hooks::DATA,
            Stage::SessionEnd => view::Hooks::SESSION_END,
        }
    }

    pub(super) fn name(self) -> &'static str {
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

/// What a stage's `apply` does with one plugin's changes (a rewrite, edits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Apply {
    /// Check and apply them; describe them too when the chain is traced.
    Commit { describe: bool },
    /// Check and describe them, change nothing: a plugin in shadow.
    Preview,
}

impl Apply {
    pub(super) fn describes(self) -> bool {
        matches!(self, Apply::Preview | Apply::Commit { describe: true })
    }

    pub(super) fn commits(self) -> bool {
        matches!(self, Apply::Commit { .. })
    }
}

/// One call of a stage to a plugin or a milter: its verdict and what else it returns
/// (a rewrite, edits). Boxed, as the calls of all stages go through one runner.
pub(super) type Call<'a, T> =
    Pin<Box<dyn Future<Output = Result<(view::Verdict, T), CallError>> + Send + 'a>>;

/// What one plugin call produced, before the chain interprets it.
pub(super) enum Outcome<T> {
    Verdict(view::Verdict, T),
    Failed(OnError),
}

impl SessionHooks {
    /// Runs `stage` over the members that want it, in order: `call` asks one plugin
    /// or milter, given the stage's state as the members before it left it; `apply`
    /// checks and applies what it changed (after `continue` or `accept` only); the
    /// first verdict that is not `continue` decides. A failed call, or an invalid
    /// result, applies the member's `on_error` (a milter's `default_action`), and a
    /// milter that failed is not asked again in the session: each later stage gets
    /// its default action. A member in shadow is called the same way, but what it
    /// would have done is only logged and counted ([`Self::shadow`]).
    pub(super) async fn run<S, T>(
        &mut self,
        stage: Stage,
        state: &mut S,
        mut call: impl for<'a> FnMut(Callee<'a>, &'a S) -> Call<'a, T>,
        mut apply: impl FnMut(usize, &mut S, T, Apply) -> Result<Option<String>, InvalidResult>,
    ) -> Decision {
        let mut decision = Decision::Continue;
        for index in self.wanting(stage) {
            let started = Instant::now();
            let outcome = match self.callee(index, stage).await {
                Ok(Some(callee)) => call(callee, state).await,
                Ok(None) => {
                    self.note(index, stage, "failed earlier in this session".into());
                    let member = &self.chain.members[index];
                    match policy_decision(member.on_error()) {
                        Some(done) if !member.shadow() => return done,
                        _ => continue,
                    }
                }
                Err(error) => Err(error),
            };
            if telemetry::on() {
                self.count_call(index, stage, &outcome, started.elapsed());
            }
            self.take_store(index);
            if self.chain.members[index].shadow() {
                self.shadow(index, stage, outcome, |extra| {
                    apply(index, state, extra, Apply::Preview)
                });
                self.release(index);
                continue;
            }
            let outcome = self.settle(index, stage, outcome);
            let describe = self.trace.is_some();
            let done = self.interpret(index, stage, outcome, &mut decision, |extra| {
                apply(index, state, extra, Apply::Commit { describe })
            });
            self.release(index);
            if let Some(done) = done {
                return done;
            }
        }
        decision
    }

    /// Counts one call for `portcullis_plugin_calls_total` and its time.
    fn count_call<T>(
        &self,
        index: usize,
        stage: Stage,
        outcome: &Result<(view::Verdict, T), CallError>,
        took: std::time::Duration,
    ) {
        let verdict = match outcome {
            Ok((verdict, _)) => verdict_index(verdict),
            Err(_) => telemetry::VERDICTS.len() - 1,
        };
        self.chain.members[index]
            .meters()
            .call(stage as usize, verdict, took.as_secs_f64());
    }

    /// Logs a failed call, drops that instance (or milter connection), and returns
    /// the member's policy.
    pub(super) fn failed(&mut self, index: usize, stage: Stage, error: CallError) -> OnError {
        let member = &self.chain.members[index];
        let (name, policy) = (member.name(), member.on_error());
        if telemetry::on() {
            counter!(telemetry::PLUGIN_FAULTS, "plugin" => name.to_string(), "kind" => error.kind())
                .increment(1);
        }
        warn!(plugin = %name, hook = stage.name(), session = %self.session_id(), %error, on_error = ?policy, "plugin failed");
        if let Some(backtrace) = error.backtrace() {
            debug!(plugin = %name, hook = stage.name(), session = %self.session_id(), "wasm backtrace:\n{backtrace}");
        }
        self.slots[index].drop_failed();
        self.note(
            index,
            stage,
            format!("failed ({error}); on_error = {policy:?}"),
        );
        policy
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
        rewrite: impl FnOnce(T) -> Result<Option<String>, InvalidResult>,
    ) -> Option<Decision> {
        let (verdict, extra) = match outcome {
            Outcome::Failed(policy) => return policy_decision(policy),
            Outcome::Verdict(verdict, extra) => (verdict, extra),
        };
        let changes = match verdict {
            view::Verdict::Continue | view::Verdict::Accept => rewrite(extra),
            _ => Ok(None),
        };
        match changes {
            Ok(Some(changes)) => {
                self.note(index, stage, format!("{}; {changes}", describe(&verdict)))
            }
            Ok(None) => self.note(index, stage, describe(&verdict)),
            Err(reason) => {
                self.note(index, stage, describe(&verdict));
                let invalid = CallError::Plugin(PluginError::Invalid(reason.to_string()));
                let policy = self.failed(index, stage, invalid);
                return policy_decision(policy);
            }
        }
        let plugin = self.chain.members[index].name();
        let decided = match verdict {
            view::Verdict::Continue => None,
            view::Verdict::Discard if matches!(stage, Stage::Data) => Some(Decision::Discard),
            view::Verdict::Discard => {
                debug!(%plugin, hook = stage.name(), "discard outside DATA counts as continue");
                None
            }
            view::Verdict::Accept => {
                *decision = Decision::Accept;
                Some(Decision::Accept)
            }
            view::Verdict::Reject(reply) | view::Verdict::Tempfail(reply) => {
                Some(Decision::Refuse(to_reply(reply)))
            }
            view::Verdict::Disconnect(text) => Some(Decision::Disconnect(
                replies::plugin_disconnect(text.as_deref()),
            )),
        };
        if let Some(decided) = &decided {
            info!(%plugin, hook = stage.name(), session = %self.session_id(), decision = ?decided, "plugin decided");
        }
        decided
    }

    /// What a plugin in shadow would have done: its verdict and its changes (checked
    /// and described by `preview`, never applied), logged, counted in
    /// `portcullis_plugin_shadow_verdicts_total` and traced. A failure drops the
    /// instance, as for any plugin, but its `on_error` does not apply.
    fn shadow<T>(
        &mut self,
        index: usize,
        stage: Stage,
        result: Result<(view::Verdict, T), CallError>,
        preview: impl FnOnce(T) -> Result<Option<String>, InvalidResult>,
    ) {
        let checked = result.and_then(|(verdict, extra)| {
            validate(&verdict)
                .map(|()| (verdict, extra))
                .map_err(CallError::from)
        });
        let (label, would) = match checked {
            Ok((verdict, extra)) => {
                let changes = match verdict {
                    view::Verdict::Continue | view::Verdict::Accept => preview(extra),
                    _ => Ok(None),
                };
                let would = match changes {
                    Ok(Some(changes)) => format!("{}; {changes}", describe(&verdict)),
                    Ok(None) => describe(&verdict),
                    Err(reason) => {
                        format!(
                            "{}; changes refused as invalid: {reason}",
                            describe(&verdict)
                        )
                    }
                };
                (telemetry::VERDICTS[verdict_index(&verdict)], would)
            }
            Err(error) => {
                self.slots[index].drop_failed();
                ("failed", format!("failed ({error})"))
            }
        };
        let name = self.chain.members[index].name();
        info!(plugin = %name, hook = stage.name(), session = %self.session_id(), would_have = %would, "shadow plugin");
        if telemetry::on() {
            counter!(telemetry::PLUGIN_SHADOW, "plugin" => name.to_string(), "hook" => stage.name(), "verdict" => label)
                .increment(1);
        }
        self.note(index, stage, format!("shadow, would have: {would}"));
    }

    /// Indexes of the members called at this stage.
    pub(super) fn wanting(&self, stage: Stage) -> Vec<usize> {
        (0..self.chain.members.len())
            .filter(|&i| self.chain.members[i].wants(stage))
            .collect()
    }

    /// Turns a call result into an outcome, applying the failure path.
    fn settle<T>(
        &mut self,
        index: usize,
        stage: Stage,
        result: Result<(view::Verdict, T), CallError>,
    ) -> Outcome<T> {
        let checked = result.and_then(|(verdict, extra)| {
            validate(&verdict)
                .map(|()| (verdict, extra))
                .map_err(CallError::from)
        });
        match checked {
            Ok((verdict, extra)) => Outcome::Verdict(verdict, extra),
            Err(error) => Outcome::Failed(self.failed(index, stage, error)),
        }
    }
}

/// Where `verdict` is in [`telemetry::VERDICTS`].
fn verdict_index(verdict: &view::Verdict) -> usize {
    match verdict {
        view::Verdict::Continue => 0,
        view::Verdict::Accept => 1,
        view::Verdict::Reject(_) => 2,
        view::Verdict::Tempfail(_) => 3,
        view::Verdict::Discard => 4,
        view::Verdict::Disconnect(_) => 5,
    }
}

/// The stage's decision when a plugin failed, by its `on_error` policy (`None`:
/// carry on with the next plugin).
pub(super) fn policy_decision(policy: OnError) -> Option<Decision> {
    match policy {
        OnError::Continue => None,
        OnError::Tempfail => Some(Decision::Refuse(replies::plugin_tempfail())),
        OnError::Reject => Some(Decision::Refuse(replies::plugin_reject())),
    }
}
