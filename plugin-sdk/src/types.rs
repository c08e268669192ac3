//! The values hooks receive and return.

use std::{
    fmt,
    ops::{BitOr, Deref},
    sync::{Arc, OnceLock},
};

/// A reply for the client. The proxy checks it: 5xx for [`Verdict::Reject`], 4xx for
/// [`Verdict::Tempfail`], an enhanced code of the same class, no CR or LF in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// An enhanced status code such as `"5.7.1"`.
    pub enhanced: Option<String>,
    /// The text after the codes.
    pub text: String,
}

impl Reply {
    /// A reply with an enhanced status code.
    ///
    /// ```
    /// let reply = portcullis_sdk::Reply::new(550, "5.7.1", "Not here");
    /// assert_eq!(reply.enhanced.as_deref(), Some("5.7.1"));
    /// ```
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced: Some(enhanced.to_string()),
            text: text.into(),
        }
    }
}

/// A verifier's answer: does the password match the login?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LoginCheck {
    /// It does: the client gets 235 (unless an AUTH hook refuses).
    Valid,
    /// It does not, or the login is unknown: 535 5.7.8.
    Invalid,
    /// Cannot tell now (a backend is down): 454 4.7.0, the client tries later.
    #[default]
    Unavailable,
}

/// What a hook decides for its stage. The first verdict in the chain that is not
/// `Continue` decides the stage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Verdict {
    /// No objection: the next plugin decides.
    #[default]
    Continue,
    /// Accept this stage; later plugins are not asked.
    Accept,
    /// Refuse with a 5xx reply.
    Reject(Reply),
    /// Refuse for now with a 4xx reply.
    Tempfail(Reply),
    /// DATA stage only: the client gets 250 and nothing goes upstream.
    Discard,
    /// 421 and close the connection, with an optional text.
    Disconnect(Option<String>),
}

impl Verdict {
    /// `Reject` with a reply built from its parts.
    pub fn reject(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        Verdict::Reject(Reply::new(code, enhanced, text))
    }

    /// `Tempfail` with a reply built from its parts.
    pub fn tempfail(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        Verdict::Tempfail(Reply::new(code, enhanced, text))
    }
}

/// The hooks a plugin wants called; combine with `|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hooks(u16);

impl Hooks {
    /// No hooks.
    pub const NONE: Hooks = Hooks(0);
    /// [`crate::Plugin::connect`].
    pub const CONNECT: Hooks = Hooks(1);
    /// [`crate::Plugin::helo`].
    pub const HELO: Hooks = Hooks(1 << 1);
    /// [`crate::Plugin::auth`].
    pub const AUTH: Hooks = Hooks(1 << 2);
    /// [`crate::Plugin::mail`].
    pub const MAIL: Hooks = Hooks(1 << 3);
    /// [`crate::Plugin::rcpt`].
    pub const RCPT: Hooks = Hooks(1 << 4);
    /// [`crate::Plugin::data`].
    pub const DATA: Hooks = Hooks(1 << 5);
    /// [`crate::Plugin::session_end`].
    pub const SESSION_END: Hooks = Hooks(1 << 6);
    /// [`crate::Plugin::verify_login`]: the plugin checks passwords for listeners
    /// that name it as `auth.verifier`.
    pub const VERIFY_LOGIN: Hooks = Hooks(1 << 7);
    /// Not a hook: a promise that the plugin keeps nothing between calls that a
    /// session relies on. The proxy may then serve many sessions' calls, one call at a
    /// time, from a few shared instances, so the plugin's memory follows the calls in
    /// progress rather than the sessions open. Without it every session gets an
    /// instance of its own, created at its first call and dropped when it ends.
    ///
    /// Whatever the plugin keeps in `self` or in statics is then seen by later calls
    /// from other sessions: keep only what `init` built, caches that are valid for
    /// every session, state for all sessions in [`crate::kv`], and state for one
    /// session in [`crate::session_store`]. Each call still gets its own session and
    /// envelope. The operator can refuse sharing (`share_instances = false`).
    pub const SHAREABLE: Hooks = Hooks(1 << 8);

    /// True if every hook in `other` is in `self`.
    pub fn contains(self, other: Hooks) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw bits, in the order of the WIT `hooks` flags.
    pub fn bits(self) -> u16 {
        self.0
    }
}

impl BitOr for Hooks {
    type Output = Hooks;

    fn bitor(self, other: Hooks) -> Hooks {
        Hooks(self.0 | other.0)
    }
}

/// What a plugin knows about the session: the fields a [`Session`] shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session id in the proxy's logs.
    pub id: String,
    /// The listener's name.
    pub listener: String,
    /// The client's IP address.
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

/// What a plugin knows about the session. Read it like a [`SessionInfo`]
/// (`session.client_ip`): a hook gets it from the proxy the first time it reads a
/// field, and until the session changes later hooks reuse that copy, so a hook that
/// does not look at the session pays nothing for it.
pub struct Session {
    info: OnceLock<Arc<SessionInfo>>,
    /// The proxy's version of the session, to fetch it by; `None` for one made with
    /// `Session::new`, whose details are known from the start.
    version: Option<u32>,
}

impl Session {
    /// A session with these details (for tests and tools; hooks get theirs from the
    /// proxy).
    pub fn new(info: SessionInfo) -> Self {
        Session {
            info: OnceLock::from(Arc::new(info)),
            version: None,
        }
    }

    /// The session the proxy calls `version`, fetched when first read.
    pub(crate) fn from_host(version: u32) -> Self {
        Session {
            info: OnceLock::new(),
            version: Some(version),
        }
    }
}

impl Deref for Session {
    type Target = SessionInfo;

    fn deref(&self) -> &SessionInfo {
        self.info.get_or_init(|| {
            crate::__runtime::session_info(self.version.expect("a session without details"))
        })
    }
}

impl Clone for Session {
    fn clone(&self) -> Self {
        Session::new(SessionInfo::clone(self))
    }
}

impl Default for Session {
    fn default() -> Self {
        Session::new(SessionInfo::default())
    }
}

impl PartialEq for Session {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Session {}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SessionInfo::fmt(self, f)
    }
}

/// An ESMTP parameter of MAIL or RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The keyword as the client spelled it.
    pub keyword: String,
    /// The value, if any.
    pub value: Option<String>,
}

/// The result of the HELO hook.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HeloOutcome {
    /// The decision.
    pub verdict: Verdict,
    /// A new HELO name for the upstream.
    pub rewrite_name: Option<String>,
}

/// The result of the MAIL and RCPT hooks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PathOutcome {
    /// The decision.
    pub verdict: Verdict,
    /// A new address (without brackets), if rewritten.
    pub rewrite_address: Option<String>,
    /// A new parameter list, if rewritten.
    pub rewrite_params: Option<Vec<Param>>,
}

impl PathOutcome {
    /// Continue, with the address rewritten.
    pub fn rewrite(address: impl Into<String>) -> Self {
        PathOutcome {
            rewrite_address: Some(address.into()),
            ..PathOutcome::default()
        }
    }

    /// The same, with the parameter list replaced by `params`.
    pub fn with_params(mut self, params: Vec<Param>) -> Self {
        self.rewrite_params = Some(params);
        self
    }
}

impl From<Verdict> for PathOutcome {
    fn from(verdict: Verdict) -> Self {
        PathOutcome {
            verdict,
            ..PathOutcome::default()
        }
    }
}

impl HeloOutcome {
    /// Continue, with the HELO name the upstream hears changed to `name`.
    pub fn rename(name: impl Into<String>) -> Self {
        HeloOutcome {
            verdict: Verdict::Continue,
            rewrite_name: Some(name.into()),
        }
    }
}

impl From<Verdict> for HeloOutcome {
    fn from(verdict: Verdict) -> Self {
        HeloOutcome {
            verdict,
            rewrite_name: None,
        }
    }
}

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The field name as written.
    pub name: String,
    /// The value, unfolded, without the leading space.
    pub value: String,
}

/// A change to the message or its envelope at the DATA stage; build one with the
/// constructors (`MessageEdit::add_header("X-Checked", "yes")`). Header positions
/// count from 0. The proxy checks every edit by the rules in the crate's README (the
/// `testing` harness applies the same ones); one that breaks a rule fails the call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageEdit {
    /// Append a header field at the end of the header block.
    AddHeader {
        /// The field name.
        name: String,
        /// The value; fold a long one with CRLF and a space.
        value: String,
    },
    /// Insert a header field before the field now at `index` (at the end past it).
    InsertHeader {
        /// 0-based among all the header fields.
        index: u32,
        /// The field name.
        name: String,
        /// The value.
        value: String,
    },
    /// Change the `index`-th field called `name`; `None` removes it. With a value and
    /// no such field, the field is added at the end.
    ChangeHeader {
        /// The field name.
        name: String,
        /// 0-based among the fields of this name.
        index: u32,
        /// The new value, or `None` to remove the field.
        value: Option<String>,
    },
    /// Remove every field of this name.
    RemoveHeader {
        /// The field name.
        name: String,
    },
    /// Replace the body.
    ReplaceBody {
        /// The new body (line ends become CRLF).
        body: Vec<u8>,
    },
    /// Add text after the body, without reading it (a footer).
    AppendBody {
        /// The text (line ends become CRLF).
        text: Vec<u8>,
    },
    /// Add text before the body, without reading it.
    PrependBody {
        /// The text (line ends become CRLF).
        text: Vec<u8>,
    },
    /// Add a recipient. If the upstream refuses it, the plugin's `on_error` applies
    /// to the whole message (451 by default: nothing is delivered, the client
    /// retries), so an added copy is never lost silently.
    AddRecipient {
        /// The mailbox, without angle brackets.
        address: String,
    },
    /// Remove a recipient.
    RemoveRecipient {
        /// The mailbox, without angle brackets.
        address: String,
    },
    /// Quarantine the message, with a reason.
    Quarantine {
        /// Why; goes into the quarantine header field.
        reason: String,
    },
}

impl MessageEdit {
    /// [`MessageEdit::AddHeader`].
    pub fn add_header(name: impl Into<String>, value: impl Into<String>) -> Self {
        MessageEdit::AddHeader {
            name: name.into(),
            value: value.into(),
        }
    }

    /// [`MessageEdit::InsertHeader`]: `index` 0 puts the field first.
    pub fn insert_header(index: u32, name: impl Into<String>, value: impl Into<String>) -> Self {
        MessageEdit::InsertHeader {
            index,
            name: name.into(),
            value: value.into(),
        }
    }

    /// [`MessageEdit::ChangeHeader`] to a new value: `index` 0 is the first field of
    /// that name.
    pub fn change_header(name: impl Into<String>, index: u32, value: impl Into<String>) -> Self {
        MessageEdit::ChangeHeader {
            name: name.into(),
            index,
            value: Some(value.into()),
        }
    }

    /// [`MessageEdit::ChangeHeader`] removing the `index`-th field of that name.
    pub fn delete_header(name: impl Into<String>, index: u32) -> Self {
        MessageEdit::ChangeHeader {
            name: name.into(),
            index,
            value: None,
        }
    }

    /// [`MessageEdit::RemoveHeader`]: every field of this name.
    pub fn remove_header(name: impl Into<String>) -> Self {
        MessageEdit::RemoveHeader { name: name.into() }
    }

    /// [`MessageEdit::ReplaceBody`].
    pub fn replace_body(body: impl Into<Vec<u8>>) -> Self {
        MessageEdit::ReplaceBody { body: body.into() }
    }

    /// [`MessageEdit::AppendBody`].
    pub fn append_body(text: impl Into<Vec<u8>>) -> Self {
        MessageEdit::AppendBody { text: text.into() }
    }

    /// [`MessageEdit::PrependBody`].
    pub fn prepend_body(text: impl Into<Vec<u8>>) -> Self {
        MessageEdit::PrependBody { text: text.into() }
    }

    /// [`MessageEdit::AddRecipient`].
    pub fn add_recipient(address: impl Into<String>) -> Self {
        MessageEdit::AddRecipient {
            address: address.into(),
        }
    }

    /// [`MessageEdit::RemoveRecipient`].
    pub fn remove_recipient(address: impl Into<String>) -> Self {
        MessageEdit::RemoveRecipient {
            address: address.into(),
        }
    }

    /// [`MessageEdit::Quarantine`].
    pub fn quarantine(reason: impl Into<String>) -> Self {
        MessageEdit::Quarantine {
            reason: reason.into(),
        }
    }
}

/// The result of the DATA hook.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DataOutcome {
    /// The decision.
    pub verdict: Verdict,
    /// Edits, applied in order when the verdict lets the message through.
    pub edits: Vec<MessageEdit>,
}

impl DataOutcome {
    /// Continue, with these edits.
    pub fn with_edits(edits: Vec<MessageEdit>) -> Self {
        DataOutcome {
            verdict: Verdict::Continue,
            edits,
        }
    }
}

impl From<Verdict> for DataOutcome {
    fn from(verdict: Verdict) -> Self {
        DataOutcome {
            verdict,
            edits: Vec::new(),
        }
    }
}
