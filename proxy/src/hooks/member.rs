//! A chain's members — plugins and milters in one order — and what a session holds
//! for each: a plugin's instance, or its connection to a milter. A milter's answers
//! become the verdicts and edits a plugin gives here, so the rest of the chain treats
//! both alike.

use std::sync::Arc;

use crate::{
    config::{OnError, PluginMode},
    milter::{Conversation, Milter, MilterError, MilterVerdict},
    plugin_host::{LoadedPlugin, PluginError, PluginInstance, view},
    telemetry,
};

use super::stage::Stage;

/// One member of a listener's chain.
#[derive(Clone)]
pub enum Member {
    /// A WebAssembly plugin.
    Plugin(Arc<LoadedPlugin>),
    /// A milter, reached over its socket.
    Milter(Arc<Milter>),
}

impl Member {
    /// Its name in the configuration.
    pub fn name(&self) -> &Arc<str> {
        match self {
            Member::Plugin(plugin) => &plugin.name,
            Member::Milter(milter) => &milter.name,
        }
    }

    /// In shadow: called, what it would have done logged and counted, never applied.
    pub(super) fn shadow(&self) -> bool {
        match self {
            Member::Plugin(plugin) => plugin.shadow,
            Member::Milter(milter) => milter.config.mode == PluginMode::Shadow,
        }
    }

    /// What the session gets when it fails (a milter's `default_action`).
    pub(super) fn on_error(&self) -> OnError {
        match self {
            Member::Plugin(plugin) => plugin.on_error,
            Member::Milter(milter) => milter.config.default_action,
        }
    }

    /// True if it is called at `stage`: a plugin if it asked for the hook; a milter
    /// at every stage but AUTH (milters learn of AUTH through the MAIL macros), and
    /// it negotiates which steps it is really sent.
    pub(super) fn wants(&self, stage: Stage) -> bool {
        match self {
            Member::Plugin(plugin) => plugin.hooks.contains(stage.flag()),
            Member::Milter(_) => !matches!(stage, Stage::Auth),
        }
    }

    pub(super) fn meters(&self) -> &telemetry::PluginMeters {
        match self {
            Member::Plugin(plugin) => &plugin.meters,
            Member::Milter(milter) => &milter.meters,
        }
    }
}

/// What a session holds for one member. Kept inline in the session's list of slots:
/// boxing the plugin's instance would cost an allocation per instance.
#[allow(clippy::large_enum_variant)]
pub(super) enum Slot {
    /// A plugin's instance, once created (a shared plugin's only during a call).
    Plugin(Option<PluginInstance>),
    /// A milter's connection.
    Milter(Link),
}

/// A session's connection to a milter.
pub(super) enum Link {
    /// Not connected yet.
    Closed,
    Open(Box<Conversation>),
    /// It failed earlier in this session: it is not asked again, and each later
    /// stage gets its default action, as Postfix does.
    Failed,
}

impl Slot {
    pub(super) fn for_member(member: &Member) -> Self {
        match member {
            Member::Plugin(_) => Slot::Plugin(None),
            Member::Milter(_) => Slot::Milter(Link::Closed),
        }
    }

    /// Drops what failed: the plugin's instance, or the milter's connection for
    /// the rest of the session.
    pub(super) fn drop_failed(&mut self) {
        *self = match self {
            Slot::Plugin(_) => Slot::Plugin(None),
            Slot::Milter(_) => Slot::Milter(Link::Failed),
        };
    }
}

/// Who is asked for one call.
pub(super) enum Callee<'a> {
    Plugin(&'a mut PluginInstance),
    Milter(&'a mut Conversation, &'a crate::milter::Facts),
}

/// Why a call to a member failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("milter {0}")]
    Milter(#[from] MilterError),
}

impl CallError {
    /// Its kind, as `portcullis_plugin_faults_total` counts it.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            CallError::Plugin(error) => error.kind(),
            CallError::Milter(error) => error.kind(),
        }
    }

    pub(super) fn backtrace(&self) -> Option<&str> {
        match self {
            CallError::Plugin(error) => error.backtrace(),
            CallError::Milter(_) => None,
        }
    }
}

/// A milter's answer as a plugin's verdict. A milter's accept only means it wants
/// nothing more of the message (OpenDKIM answers it for mail it neither signs nor
/// verifies), so the chain goes on: it does not skip the members after it. Its
/// replies are Postfix's defaults when it gave none.
pub(super) fn milter_verdict(verdict: MilterVerdict) -> view::Verdict {
    match verdict {
        MilterVerdict::Continue | MilterVerdict::Accept => view::Verdict::Continue,
        MilterVerdict::Reject(text) => view::Verdict::Reject(
            text.map(|t| milter_reply(&t))
                .unwrap_or_else(|| reply(550, "5.7.1", "Command rejected")),
        ),
        MilterVerdict::Tempfail(text) => view::Verdict::Tempfail(
            text.map(|t| milter_reply(&t))
                .unwrap_or_else(|| reply(451, "4.7.1", "Service unavailable - try again later")),
        ),
        MilterVerdict::Discard => view::Verdict::Discard,
        MilterVerdict::Shutdown => {
            view::Verdict::Disconnect(Some("Server closing connection".into()))
        }
    }
}

fn reply(code: u16, enhanced: &str, text: &str) -> view::Reply {
    view::Reply {
        code,
        enhanced: Some(enhanced.into()),
        text: text.into(),
    }
}

/// `"550 5.7.1 text"`, or several lines (`550-5.7.1 a` CRLF `550 5.7.1 b`), as one
/// reply: the code of the first line, its enhanced code if it has one, and the texts
/// of the lines joined by spaces. The reply is then checked as a plugin's is.
fn milter_reply(text: &str) -> view::Reply {
    let mut code = 0;
    let mut enhanced = None;
    let mut texts = Vec::new();
    for (index, line) in text.split("\r\n").filter(|l| !l.is_empty()).enumerate() {
        let (number, rest) = line.split_at(line.len().min(3));
        let rest = rest.get(1..).unwrap_or_default();
        let (line_enhanced, line_text) = match rest.split_once(' ') {
            Some((first, text)) if is_enhanced(first) => (Some(first), text),
            _ if is_enhanced(rest) => (Some(rest), ""),
            _ => (None, rest),
        };
        if index == 0 {
            code = number.parse().unwrap_or(0);
            enhanced = line_enhanced.map(str::to_string);
        }
        texts.push(line_text.trim());
    }
    view::Reply {
        code,
        enhanced,
        text: texts.join(" "),
    }
}

fn is_enhanced(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milter_replies_become_plugin_replies() {
        let table = [
            (
                "554 5.7.1 Gtube pattern",
                554,
                Some("5.7.1"),
                "Gtube pattern",
            ),
            ("451 4.7.1 Try later", 451, Some("4.7.1"), "Try later"),
            ("550 No enhanced code", 550, None, "No enhanced code"),
            ("550 5.7.1", 550, Some("5.7.1"), ""),
            (
                "550-5.7.1 first line\r\n550 5.7.1 second line",
                550,
                Some("5.7.1"),
                "first line second line",
            ),
        ];
        for (text, code, enhanced, words) in table {
            let reply = milter_reply(text);
            assert_eq!(
                (reply.code, reply.enhanced.as_deref(), reply.text.as_str()),
                (code, enhanced, words),
                "{text:?}"
            );
        }
    }

    #[test]
    fn milter_verdicts_map_to_plugin_verdicts() {
        assert_eq!(
            milter_verdict(MilterVerdict::Accept),
            view::Verdict::Continue
        );
        assert_eq!(
            milter_verdict(MilterVerdict::Reject(None)),
            view::Verdict::Reject(reply(550, "5.7.1", "Command rejected"))
        );
        assert_eq!(
            milter_verdict(MilterVerdict::Tempfail(None)),
            view::Verdict::Tempfail(reply(451, "4.7.1", "Service unavailable - try again later"))
        );
        assert_eq!(
            milter_verdict(MilterVerdict::Discard),
            view::Verdict::Discard
        );
    }
}
