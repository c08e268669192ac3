//! What the rest of the proxy says to plugins and hears from them, as plain Rust types.
//! The bindings generated from the WIT file (`abi`) stay inside `plugin_host`; calls
//! convert at the boundary, so a change to the ABI touches this file and the calls,
//! not the hooks, the session or replay. Each type mirrors the WIT type of the same
//! name (see plugin-sdk/wit/portcullis.wit for what each field means).

use std::{
    fmt,
    ops::{BitAnd, BitOr, Not},
};

use super::abi;
use crate::message::Edit;

/// A reply a plugin gave with a refusal (checked by `hooks` before use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply code.
    pub code: u16,
    /// An enhanced status code such as "5.7.1", if any.
    pub enhanced: Option<String>,
    /// The text.
    pub text: String,
}

/// What a hook decided for its stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No objection: the next plugin decides.
    Continue,
    /// Accept the stage: later plugins are not asked.
    Accept,
    /// Refuse with a 5xx reply.
    Reject(Reply),
    /// Refuse for now with a 4xx reply.
    Tempfail(Reply),
    /// Message stage only: 250 to the client, nothing upstream.
    Discard,
    /// 421 and close, with this text if any.
    Disconnect(Option<String>),
}

/// The hooks a plugin asked for, and whether it is shareable. Shown as `portcullis
/// check` prints it: `(HELO|RCPT)`.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Hooks(u16);

impl Hooks {
    /// The connect hook.
    pub const CONNECT: Self = Self(1);
    /// The HELO hook.
    pub const HELO: Self = Self(1 << 1);
    /// The AUTH hook.
    pub const AUTH: Self = Self(1 << 2);
    /// The MAIL hook.
    pub const MAIL: Self = Self(1 << 3);
    /// The RCPT hook.
    pub const RCPT: Self = Self(1 << 4);
    /// The DATA hook.
    pub const DATA: Self = Self(1 << 5);
    /// The session-end hook.
    pub const SESSION_END: Self = Self(1 << 6);
    /// The plugin checks passwords (`auth.verifier`).
    pub const VERIFY_LOGIN: Self = Self(1 << 7);
    /// Not a hook: calls of many sessions may share instances.
    pub const SHAREABLE: Self = Self(1 << 8);

    /// No hook.
    pub fn empty() -> Self {
        Self(0)
    }

    /// True if every flag of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = HOOK_NAMES
            .into_iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| name)
            .collect();
        write!(f, "({})", names.join("|"))
    }
}

const HOOK_NAMES: [(Hooks, &str); 9] = [
    (Hooks::CONNECT, "CONNECT"),
    (Hooks::HELO, "HELO"),
    (Hooks::AUTH, "AUTH"),
    (Hooks::MAIL, "MAIL"),
    (Hooks::RCPT, "RCPT"),
    (Hooks::DATA, "DATA"),
    (Hooks::SESSION_END, "SESSION_END"),
    (Hooks::VERIFY_LOGIN, "VERIFY_LOGIN"),
    (Hooks::SHAREABLE, "SHAREABLE"),
];

impl BitOr for Hooks {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl BitAnd for Hooks {
    type Output = Self;
    fn bitand(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
}

impl Not for Hooks {
    type Output = Self;
    fn not(self) -> Self {
        Self(!self.0)
    }
}

/// A verifier's answer about a login and password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginCheck {
    /// They match.
    Valid,
    /// They do not, or the login is unknown.
    Invalid,
    /// Cannot tell now.
    Unavailable,
}

/// What a plugin knows about the session (the WIT's `session`, the SDK's
/// `SessionInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id of the proxy's logs.
    pub id: String,
    /// The listener's name.
    pub listener: String,
    /// The client's IP address, as text.
    pub client_ip: String,
    /// The client's port.
    pub client_port: u16,
    /// The HELO/EHLO name, once given.
    pub helo: Option<String>,
    /// True once the session is encrypted.
    pub tls: bool,
    /// The authenticated login, if any.
    pub login: Option<String>,
}

/// An ESMTP parameter of MAIL or RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The keyword.
    pub keyword: String,
    /// The value, if any.
    pub value: Option<String>,
}

/// The envelope so far.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// The reverse-path without brackets; empty for the null path.
    pub sender: String,
    /// MAIL's parameters.
    pub mail_params: Vec<Param>,
    /// Accepted recipients, without brackets.
    pub recipients: Vec<String>,
}

/// A new address and/or parameters for MAIL or RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRewrite {
    /// The new mailbox, without brackets.
    pub address: Option<String>,
    /// The new parameter list.
    pub params: Option<Vec<Param>>,
}

/// The HELO hook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeloOutcome {
    /// The verdict.
    pub verdict: Verdict,
    /// A new HELO name for the upstream.
    pub rewrite_name: Option<String>,
}

/// The MAIL and RCPT hooks' answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathOutcome {
    /// The verdict.
    pub verdict: Verdict,
    /// A rewrite of the address or parameters.
    pub rewrite: Option<PathRewrite>,
}

/// The DATA hook's answer: its edits are the message layer's own ([`Edit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOutcome {
    /// The verdict.
    pub verdict: Verdict,
    /// The edits, in order.
    pub edits: Vec<Edit>,
}

impl From<abi::Reply> for Reply {
    fn from(reply: abi::Reply) -> Self {
        Self {
            code: reply.code,
            enhanced: reply.enhanced,
            text: reply.text,
        }
    }
}

impl From<abi::Verdict> for Verdict {
    fn from(verdict: abi::Verdict) -> Self {
        match verdict {
            abi::Verdict::Continue => Verdict::Continue,
            abi::Verdict::Accept => Verdict::Accept,
            abi::Verdict::Reject(reply) => Verdict::Reject(reply.into()),
            abi::Verdict::Tempfail(reply) => Verdict::Tempfail(reply.into()),
            abi::Verdict::Discard => Verdict::Discard,
            abi::Verdict::Disconnect(text) => Verdict::Disconnect(text),
        }
    }
}

/// Each WIT flag and its counterpart here.
const HOOK_FLAGS: [(abi::Hooks, Hooks); 9] = [
    (abi::Hooks::CONNECT, Hooks::CONNECT),
    (abi::Hooks::HELO, Hooks::HELO),
    (abi::Hooks::AUTH, Hooks::AUTH),
    (abi::Hooks::MAIL, Hooks::MAIL),
    (abi::Hooks::RCPT, Hooks::RCPT),
    (abi::Hooks::DATA, Hooks::DATA),
    (abi::Hooks::SESSION_END, Hooks::SESSION_END),
    (abi::Hooks::VERIFY_LOGIN, Hooks::VERIFY_LOGIN),
    (abi::Hooks::SHAREABLE, Hooks::SHAREABLE),
];

impl From<abi::Hooks> for Hooks {
    fn from(flags: abi::Hooks) -> Self {
        HOOK_FLAGS
            .into_iter()
            .filter(|(flag, _)| flags.contains(*flag))
            .fold(Hooks::empty(), |hooks, (_, ours)| hooks | ours)
    }
}

impl From<abi::LoginCheck> for LoginCheck {
    fn from(check: abi::LoginCheck) -> Self {
        match check {
            abi::LoginCheck::Valid => LoginCheck::Valid,
            abi::LoginCheck::Invalid => LoginCheck::Invalid,
            abi::LoginCheck::Unavailable => LoginCheck::Unavailable,
        }
    }
}

impl From<&SessionInfo> for abi::Session {
    fn from(session: &SessionInfo) -> Self {
        abi::Session {
            id: session.id.clone(),
            listener: session.listener.clone(),
            client_ip: session.client_ip.clone(),
            client_port: session.client_port,
            helo: session.helo.clone(),
            tls: session.tls,
            login: session.login.clone(),
        }
    }
}

impl From<&Param> for abi::Param {
    fn from(param: &Param) -> Self {
        abi::Param {
            keyword: param.keyword.clone(),
            value: param.value.clone(),
        }
    }
}

impl From<abi::Param> for Param {
    fn from(param: abi::Param) -> Self {
        Param {
            keyword: param.keyword,
            value: param.value,
        }
    }
}

impl From<&Envelope> for abi::Envelope {
    fn from(envelope: &Envelope) -> Self {
        abi::Envelope {
            sender: envelope.sender.clone(),
            mail_params: envelope.mail_params.iter().map(Into::into).collect(),
            recipients: envelope.recipients.clone(),
        }
    }
}

impl From<abi::PathRewrite> for PathRewrite {
    fn from(rewrite: abi::PathRewrite) -> Self {
        PathRewrite {
            address: rewrite.address,
            params: rewrite
                .params
                .map(|params| params.into_iter().map(Into::into).collect()),
        }
    }
}

impl From<abi::HeloOutcome> for HeloOutcome {
    fn from(outcome: abi::HeloOutcome) -> Self {
        HeloOutcome {
            verdict: outcome.verdict.into(),
            rewrite_name: outcome.rewrite_name,
        }
    }
}

impl From<abi::PathOutcome> for PathOutcome {
    fn from(outcome: abi::PathOutcome) -> Self {
        PathOutcome {
            verdict: outcome.verdict.into(),
            rewrite: outcome.rewrite.map(Into::into),
        }
    }
}

impl From<abi::MessageEdit> for Edit {
    fn from(edit: abi::MessageEdit) -> Self {
        match edit {
            abi::MessageEdit::AddHeader(header) => Edit::AddHeader {
                name: header.name,
                value: header.value,
            },
            abi::MessageEdit::InsertHeader(at) => Edit::InsertHeader {
                index: at.index as usize,
                name: at.name,
                value: at.value,
            },
            abi::MessageEdit::ChangeHeader(change) => Edit::ChangeHeader {
                name: change.name,
                index: change.index as usize,
                value: change.value,
            },
            abi::MessageEdit::RemoveHeader(name) => Edit::RemoveHeader(name),
            abi::MessageEdit::ReplaceBody(body) => Edit::ReplaceBody(body),
            abi::MessageEdit::AppendBody(text) => Edit::AppendBody(text),
            abi::MessageEdit::PrependBody(text) => Edit::PrependBody(text),
            abi::MessageEdit::AddRecipient(address) => Edit::AddRecipient(address),
            abi::MessageEdit::RemoveRecipient(address) => Edit::RemoveRecipient(address),
            abi::MessageEdit::Quarantine(reason) => Edit::Quarantine(reason),
        }
    }
}

impl From<abi::DataOutcome> for DataOutcome {
    fn from(outcome: abi::DataOutcome) -> Self {
        DataOutcome {
            verdict: outcome.verdict.into(),
            edits: outcome.edits.into_iter().map(Into::into).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wit_hook_flag_maps_to_its_own_flag() {
        // Back to the WIT's flags: a flag the WIT gained without a counterpart here
        // would be lost on the way.
        let back = |ours: Hooks| {
            HOOK_FLAGS
                .into_iter()
                .filter(|(_, flag)| ours.contains(*flag))
                .fold(abi::Hooks::empty(), |flags, (wit, _)| flags | wit)
        };
        assert_eq!(back(Hooks::from(abi::Hooks::all())), abi::Hooks::all());
        for (wit, ours) in HOOK_FLAGS {
            assert_eq!(Hooks::from(wit), ours);
        }
        let distinct = HOOK_FLAGS
            .iter()
            .fold(Hooks::empty(), |hooks, (_, flag)| hooks | *flag);
        assert_eq!(distinct.0.count_ones(), 9);
        // What `portcullis check` prints is what the WIT's own flags printed.
        for flags in [
            abi::Hooks::all(),
            abi::Hooks::RCPT,
            abi::Hooks::HELO | abi::Hooks::DATA,
        ] {
            assert_eq!(format!("{:?}", Hooks::from(flags)), format!("{flags:?}"));
        }
    }
}
