//! The [`Plugin`] trait: one method per hook, each with a default that continues.

use crate::{
    Config, DataOutcome, Envelope, HeloOutcome, Hooks, LoginCheck, Message, Param, PathOutcome,
    Session, Verdict,
};

/// A filter plugin. Every hook has a default that continues, so implement only the
/// stages you need and return them from [`Plugin::init`]; the proxy never calls the
/// others.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its configuration and names the hooks it wants. An `Err`
    /// at start-up stops the proxy with that message.
    ///
    /// The proxy runs `init` once, at start-up, and every session's instance starts
    /// from the state it left (the plugin's memory is snapshotted after it): parse and
    /// precompute here, and a session pays nothing for it. For the same reason `init`
    /// should not read the clock, the key-value store or DNS — what it sees there is
    /// what every session will start with.
    fn init(config: &Config) -> Result<(Self, Hooks), String>;

    /// A client connected (before the greeting).
    fn connect(&mut self, _session: &Session) -> Verdict {
        Verdict::Continue
    }

    /// HELO or EHLO; may rewrite the name the upstream sees.
    fn helo(&mut self, _session: &Session, _name: &str) -> HeloOutcome {
        HeloOutcome::default()
    }

    /// After a successful login: the mechanism and the login, never a password.
    fn auth(&mut self, _session: &Session, _mechanism: &str, _login: &str) -> Verdict {
        Verdict::Continue
    }

    /// MAIL FROM; `sender` is without brackets, empty for the null reverse-path.
    fn mail(&mut self, _session: &Session, _sender: &str, _params: &[Param]) -> PathOutcome {
        PathOutcome::default()
    }

    /// RCPT TO, one call per recipient.
    fn rcpt(
        &mut self,
        _session: &Session,
        _envelope: &Envelope,
        _recipient: &str,
        _params: &[Param],
    ) -> PathOutcome {
        PathOutcome::default()
    }

    /// The whole message, after the client's final dot and before anything goes upstream.
    fn data(
        &mut self,
        _session: &Session,
        _envelope: &Envelope,
        _message: &Message,
    ) -> DataOutcome {
        DataOutcome::default()
    }

    /// The session ended.
    fn session_end(&mut self, _session: &Session) {}

    /// Only for a plugin named as a listener's `auth.verifier` (ask for
    /// [`Hooks::VERIFY_LOGIN`]): checks a password. Called in an instance of its own
    /// (lent for the call if the plugin is shareable), and the only call that ever
    /// sees a password; never log or keep it.
    fn verify_login(
        &mut self,
        _session: &Session,
        _mechanism: &str,
        _login: &str,
        _password: &str,
    ) -> LoginCheck {
        LoginCheck::Unavailable
    }
}
