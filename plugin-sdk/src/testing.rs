//! Runs a plugin's hooks natively under `cargo test`, with an in-memory key-value
//! store, scripted DNS answers, a settable clock and captured logs — the same host
//! calls the proxy provides, so a plugin's logic is tested without building WASM.
//!
//! ```
//! use portcullis_sdk::{Config, Envelope, Hooks, Param, PathOutcome, Plugin, Session, Verdict};
//! use portcullis_sdk::testing::Harness;
//!
//! struct OnlyExample;
//! impl Plugin for OnlyExample {
//!     fn init(_: &Config) -> Result<(Self, Hooks), String> {
//!         Ok((OnlyExample, Hooks::RCPT))
//!     }
//!     fn rcpt(&mut self, _: &Session, _: &Envelope, to: &str, _: &[Param]) -> PathOutcome {
//!         if to.ends_with("@example.com") {
//!             PathOutcome::default()
//!         } else {
//!             Verdict::reject(550, "5.7.1", "Relay denied").into()
//!         }
//!     }
//! }
//!
//! let mut harness = Harness::<OnlyExample>::new("").unwrap();
//! harness.mail("a@example.org");
//! assert_eq!(harness.rcpt("b@example.com").verdict, Verdict::Continue);
//! assert!(matches!(harness.rcpt("b@elsewhere.test").verdict, Verdict::Reject(_)));
//! assert_eq!(harness.envelope().recipients(), ["b@example.com"]);
//! ```

use portcullis_syntax::param::Verb;

use crate::{
    Config, DataOutcome, Envelope, HeloOutcome, Hooks, LoginCheck, Message, Param, PathOutcome,
    Plugin, Session, SessionInfo, Verdict, dns::DnsError, log::Level, rules,
};

/// One plugin instance driven like the proxy drives it: hooks the plugin did not ask
/// for are not called, and the envelope grows as the verdicts allow. Every result is
/// checked by the rules the proxy applies (the crate README lists them), taking every
/// extension the proxy relays as offered: a result the proxy would refuse panics with
/// the rule it breaks, so the test fails the way the plugin would fail in the proxy.
pub struct Harness<P: Plugin> {
    plugin: P,
    hooks: Hooks,
    session: SessionInfo,
    envelope: Envelope,
}

impl<P: Plugin> Harness<P> {
    /// Builds the instance from a TOML `config` table (its body, e.g. `limit = 3`).
    pub fn new(config: &str) -> Result<Self, String> {
        let table: Config = config.parse().map_err(|e| format!("invalid config: {e}"))?;
        let (plugin, hooks) = P::init(&table)?;
        // What init stored has no session; the first session starts empty.
        host::session_store::clear();
        Ok(Harness {
            plugin,
            hooks,
            session: SessionInfo {
                id: "test-session".into(),
                listener: "test".into(),
                client_ip: "192.0.2.1".into(),
                client_port: 40000,
                ..SessionInfo::default()
            },
            envelope: Envelope::default(),
        })
    }

    /// The hooks the plugin asked for.
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    /// The session the hooks see; change it to test other clients.
    pub fn session_mut(&mut self) -> &mut SessionInfo {
        &mut self.session
    }

    /// The session as a hook gets it.
    fn hook_session(&self) -> Session {
        Session::new(self.session.clone())
    }

    /// The envelope so far.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The plugin instance, to inspect its state.
    pub fn plugin(&mut self) -> &mut P {
        &mut self.plugin
    }

    /// Runs the connect hook.
    pub fn connect(&mut self) -> Verdict {
        if !self.hooks.contains(Hooks::CONNECT) {
            return Verdict::Continue;
        }
        checked(
            "connect",
            self.plugin.connect(&self.hook_session()),
            rules::verdict,
        )
    }

    /// Runs the HELO hook and records the name.
    pub fn helo(&mut self, name: &str) -> HeloOutcome {
        self.session.helo = Some(name.to_string());
        if !self.hooks.contains(Hooks::HELO) {
            return HeloOutcome::default();
        }
        let outcome = self.plugin.helo(&self.hook_session(), name);
        checked("helo", outcome, rules::helo)
    }

    /// Records a login and runs the AUTH hook.
    pub fn auth(&mut self, mechanism: &str, login: &str) -> Verdict {
        self.session.login = Some(login.to_string());
        if !self.hooks.contains(Hooks::AUTH) {
            return Verdict::Continue;
        }
        let verdict = self.plugin.auth(&self.hook_session(), mechanism, login);
        checked("auth", verdict, rules::verdict)
    }

    /// Runs the verifier's password check, as the proxy does for a listener whose
    /// `auth.verifier` names this plugin.
    pub fn verify_login(&mut self, mechanism: &str, login: &str, password: &str) -> LoginCheck {
        if !self.hooks.contains(Hooks::VERIFY_LOGIN) {
            return LoginCheck::Unavailable;
        }
        self.plugin
            .verify_login(&self.hook_session(), mechanism, login, password)
    }

    /// Runs the MAIL hook for `sender` (no brackets) and starts a new envelope.
    pub fn mail(&mut self, sender: &str) -> PathOutcome {
        self.mail_with(sender, &[])
    }

    /// Runs the MAIL hook with parameters.
    pub fn mail_with(&mut self, sender: &str, params: &[Param]) -> PathOutcome {
        let outcome = if self.hooks.contains(Hooks::MAIL) {
            let outcome = self.plugin.mail(&self.hook_session(), sender, params);
            checked("mail", outcome, |o| rules::path(Verb::Mail, o, params))
        } else {
            PathOutcome::default()
        };
        self.envelope = Envelope::new(
            outcome
                .rewrite_address
                .clone()
                .unwrap_or_else(|| sender.to_string()),
            outcome
                .rewrite_params
                .clone()
                .unwrap_or_else(|| params.to_vec()),
            Vec::new(),
        );
        outcome
    }

    /// Runs the RCPT hook; an allowed recipient (possibly rewritten) joins the envelope.
    pub fn rcpt(&mut self, recipient: &str) -> PathOutcome {
        let outcome = if self.hooks.contains(Hooks::RCPT) {
            let outcome = self
                .plugin
                .rcpt(&self.hook_session(), &self.envelope, recipient, &[]);
            checked("rcpt", outcome, |o| rules::path(Verb::Rcpt, o, &[]))
        } else {
            PathOutcome::default()
        };
        if matches!(outcome.verdict, Verdict::Continue | Verdict::Accept) {
            let address = outcome
                .rewrite_address
                .clone()
                .unwrap_or_else(|| recipient.to_string());
            self.envelope.push_recipient(address);
        }
        outcome
    }

    /// Runs the DATA hook on a whole message (header fields, empty line, body; CRLF).
    pub fn data(&mut self, message: &[u8]) -> DataOutcome {
        if !self.hooks.contains(Hooks::DATA) {
            return DataOutcome::default();
        }
        let message = Message::from_bytes(message);
        let outcome = self
            .plugin
            .data(&self.hook_session(), &self.envelope, &message);
        checked("data", outcome, rules::data)
    }

    /// Runs the session-end hook; the session's store (`session_store`) goes, as in
    /// the proxy.
    pub fn end(&mut self) {
        if self.hooks.contains(Hooks::SESSION_END) {
            self.plugin.session_end(&self.hook_session());
        }
        host::session_store::clear();
    }

    /// Ends this session (its session-end hook, if wanted) and starts the next one on
    /// the same plugin instance, as the proxy does with a shareable plugin: session id
    /// `id`, a client at `client_ip`, no HELO, login or envelope yet. A shareable
    /// plugin must then behave as a fresh instance would.
    pub fn next_session(&mut self, id: &str, client_ip: &str) {
        self.end();
        self.session = SessionInfo {
            id: id.into(),
            listener: self.session.listener.clone(),
            client_ip: client_ip.into(),
            client_port: 40000,
            ..SessionInfo::default()
        };
        self.envelope = Envelope::default();
    }
}

/// `result` if it follows the proxy's rules; a panic naming the hook and the rule if
/// not.
fn checked<T: std::fmt::Debug>(
    hook: &str,
    result: T,
    rule: impl FnOnce(&T) -> Result<(), portcullis_syntax::Violation>,
) -> T {
    if let Err(violation) = rule(&result) {
        panic!(
            "the {hook} hook returned a result the proxy would refuse (the plugin's on_error would apply): {violation}\nthe result: {result:?}"
        );
    }
    result
}

/// Scripts the answer to a DNS query of `kind` ("a", "aaaa", "txt", "mx", "ptr") for
/// `name`. Unscripted queries answer `NotFound`.
pub fn dns_answer(kind: &str, name: &str, answer: Result<Vec<String>, DnsError>) {
    host::with(|state| {
        state
            .dns
            .insert((kind.to_string(), name.to_ascii_lowercase()), answer)
    });
}

/// Makes every key-value call fail with `error` from now on (a shared store that is
/// slow or down), or work again with `None`: for testing what a plugin does then.
pub fn kv_fails(error: Option<crate::kv::KvError>) {
    host::with(|state| state.kv_down = error);
}

/// Sets the clock the plugin sees (milliseconds since the epoch).
pub fn set_now_ms(now: u64) {
    host::with(|state| state.now_ms = now);
}

/// The log lines written so far on this thread.
pub fn logs() -> Vec<(Level, String)> {
    host::with(|state| state.logs.clone())
}

/// Empties the key-value store, the DNS script and the logs (each test thread has its
/// own; call this when one thread runs several scenarios).
pub fn reset() {
    host::with(|state| *state = host::State::default());
}

/// The native stand-in for the proxy's host calls. Not for plugin authors.
#[doc(hidden)]
pub mod host {
    use std::{cell::RefCell, collections::HashMap};

    use crate::{dns::DnsError, log::Level};

    /// Everything the host calls touch, per test thread.
    #[derive(Default)]
    pub struct State {
        pub kv: HashMap<String, (Vec<u8>, Option<u64>)>,
        /// Set while the store is "down": every key-value call fails with it.
        pub kv_down: Option<crate::kv::KvError>,
        /// The current session's store (see `crate::session_store`).
        pub session_store: HashMap<String, Vec<u8>>,
        pub dns: HashMap<(String, String), Result<Vec<String>, DnsError>>,
        pub logs: Vec<(Level, String)>,
        pub now_ms: u64,
    }

    thread_local! {
        static STATE: RefCell<State> = RefCell::new(State { now_ms: 1_700_000_000_000, ..State::default() });
    }

    pub fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
        STATE.with(|state| f(&mut state.borrow_mut()))
    }

    pub fn log(level: Level, message: &str) {
        with(|state| state.logs.push((level, message.to_string())));
    }

    pub fn now_ms() -> u64 {
        with(|state| state.now_ms)
    }

    /// The proxy's `session-store`, with its limits.
    pub mod session_store {
        use super::with;

        const MAX_KEYS: usize = 64;
        const MAX_BYTES: usize = 64 * 1024;

        pub fn get(key: &str) -> Option<Vec<u8>> {
            with(|state| state.session_store.get(key).cloned())
        }

        pub fn set(key: &str, value: &[u8]) -> bool {
            with(|state| {
                let store = &mut state.session_store;
                let old = store.get(key).map(|v| key.len() + v.len());
                let bytes: usize = store.iter().map(|(k, v)| k.len() + v.len()).sum();
                let bytes = bytes - old.unwrap_or(0) + key.len() + value.len();
                if (old.is_none() && store.len() >= MAX_KEYS) || bytes > MAX_BYTES {
                    return false;
                }
                store.insert(key.to_string(), value.to_vec());
                true
            })
        }

        pub fn delete(key: &str) -> bool {
            with(|state| state.session_store.remove(key).is_some())
        }

        /// The session ended: its store goes.
        pub fn clear() {
            with(|state| state.session_store.clear());
        }
    }

    pub mod kv {
        use super::with;
        pub use crate::kv::KvError;

        /// The failure every call gives while the store is "down" (see
        /// `crate::testing::kv_fails`).
        fn down() -> Result<(), KvError> {
            with(|state| state.kv_down.map_or(Ok(()), Err))
        }

        fn live(state: &mut super::State, key: &str) -> Option<Vec<u8>> {
            let now = state.now_ms;
            match state.kv.get(key) {
                Some((_, Some(expiry))) if *expiry <= now => {
                    state.kv.remove(key);
                    None
                }
                Some((value, _)) => Some(value.clone()),
                None => None,
            }
        }

        pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
            down()?;
            Ok(with(|state| live(state, key)))
        }

        pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError> {
            down()?;
            with(|state| {
                let expiry = ttl_ms.map(|ttl| state.now_ms + ttl);
                state.kv.insert(key.to_string(), (value.to_vec(), expiry));
            });
            Ok(())
        }

        pub fn incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
            down()?;
            Ok(with(|state| {
                let current = live(state, key);
                let number = current
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                    .unwrap_or(0)
                    + delta;
                let expiry = match (current, state.kv.get(key)) {
                    (Some(_), Some((_, expiry))) => *expiry,
                    _ => ttl_ms.map(|ttl| state.now_ms + ttl),
                };
                state
                    .kv
                    .insert(key.to_string(), (number.to_string().into_bytes(), expiry));
                number
            }))
        }

        pub fn delete(key: &str) -> Result<bool, KvError> {
            down()?;
            Ok(with(|state| {
                live(state, key).is_some() && state.kv.remove(key).is_some()
            }))
        }
    }

    pub mod dns {
        use super::with;
        pub use crate::dns::DnsError;

        fn lookup(kind: &str, name: &str) -> Result<Vec<String>, DnsError> {
            with(|state| {
                state
                    .dns
                    .get(&(kind.to_string(), name.to_ascii_lowercase()))
                    .cloned()
            })
            .unwrap_or(Err(DnsError::NotFound))
        }

        pub fn a(name: &str) -> Result<Vec<String>, DnsError> {
            lookup("a", name)
        }

        pub fn aaaa(name: &str) -> Result<Vec<String>, DnsError> {
            lookup("aaaa", name)
        }

        pub fn txt(name: &str) -> Result<Vec<String>, DnsError> {
            lookup("txt", name)
        }

        /// Scripted MX answers are "preference host" strings.
        pub fn mx(name: &str) -> Result<Vec<(u16, String)>, DnsError> {
            lookup("mx", name).map(|answers| {
                answers
                    .iter()
                    .filter_map(|a| {
                        let (preference, host) = a.split_once(' ')?;
                        Some((preference.parse().ok()?, host.to_string()))
                    })
                    .collect()
            })
        }

        pub fn ptr(ip: &str) -> Result<Vec<String>, DnsError> {
            lookup("ptr", ip)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_test_key_value_store_counts_and_expires() {
        reset();
        set_now_ms(1_000);
        assert_eq!(
            crate::kv::incr("k", 1, Some(Duration::from_secs(10))),
            Ok(1)
        );
        assert_eq!(
            crate::kv::incr("k", 2, Some(Duration::from_secs(10))),
            Ok(3)
        );
        set_now_ms(10_999);
        assert_eq!(crate::kv::get("k"), Ok(Some(b"3".to_vec())));
        set_now_ms(11_000);
        assert_eq!(crate::kv::get("k"), Ok(None));
        assert_eq!(crate::kv::incr("k", 1, None), Ok(1));
        assert_eq!(crate::kv::delete("k"), Ok(true));
        assert_eq!(crate::kv::delete("k"), Ok(false));
        kv_fails(Some(crate::kv::KvError::Timeout));
        assert_eq!(
            crate::kv::incr("k", 1, None),
            Err(crate::kv::KvError::Timeout)
        );
        kv_fails(None);
        assert_eq!(crate::kv::incr("k", 1, None), Ok(1));
    }

    /// Counts the recipients it saw in `self`: per-session state, so not shareable.
    struct Counting(usize);

    impl Plugin for Counting {
        fn init(_: &Config) -> Result<(Self, Hooks), String> {
            Ok((Counting(0), Hooks::RCPT | Hooks::SESSION_END))
        }

        fn rcpt(&mut self, session: &Session, _: &Envelope, _: &str, _: &[Param]) -> PathOutcome {
            self.0 += 1;
            crate::log::info(&format!("{} {}", session.id, self.0));
            PathOutcome::default()
        }

        fn session_end(&mut self, session: &Session) {
            crate::log::info(&format!("end {}", session.id));
        }
    }

    #[test]
    fn next_session_keeps_the_instance_and_starts_a_clean_session() {
        reset();
        let mut harness = Harness::<Counting>::new("").unwrap();
        harness.helo("first.test");
        harness.mail("a@example.org");
        harness.rcpt("b@example.com");
        harness.next_session("second", "192.0.2.9");
        assert_eq!(harness.envelope().recipient_count(), 0);
        assert_eq!(harness.session_mut().helo, None);
        assert_eq!(harness.session_mut().client_ip, "192.0.2.9");
        harness.mail("a@example.org");
        harness.rcpt("b@example.com");
        let said: Vec<String> = logs().into_iter().map(|(_, text)| text).collect();
        // The count carried over: exactly what a shareable plugin must not rely on.
        assert_eq!(said, ["test-session 1", "end test-session", "second 2"]);
    }

    /// Returns whatever its config names: results the proxy would refuse.
    struct Careless(String);

    impl Plugin for Careless {
        fn init(config: &Config) -> Result<(Self, Hooks), String> {
            let mode = config.get("mode").and_then(|m| m.as_str()).unwrap_or("");
            Ok((Careless(mode.into()), Hooks::RCPT | Hooks::DATA))
        }

        fn rcpt(&mut self, _: &Session, _: &Envelope, _: &str, _: &[Param]) -> PathOutcome {
            match self.0.as_str() {
                "address" => PathOutcome::rewrite("evil@x.example> NOTIFY=NEVER"),
                "param" => PathOutcome {
                    rewrite_params: Some(vec![Param {
                        keyword: "NOTIFY".into(),
                        value: Some("NEVER ORCPT=rfc822;evil@x.example".into()),
                    }]),
                    ..PathOutcome::default()
                },
                "reply" => Verdict::reject(550, "5.7.1", "x".repeat(5000)).into(),
                "code" => Verdict::reject(250, "2.0.0", "fine").into(),
                _ => PathOutcome::rewrite("archive@example.com"),
            }
        }

        fn data(&mut self, _: &Session, _: &Envelope, _: &Message) -> DataOutcome {
            let edit = match self.0.as_str() {
                "header" => crate::MessageEdit::add_header("X-Evil", "x\r\n.\r\nMAIL FROM:<e@x>"),
                "body" => crate::MessageEdit::append_body(vec![b'x'; 1200]),
                _ => crate::MessageEdit::add_header("X-Fine", "folded\r\n value"),
            };
            DataOutcome {
                verdict: Verdict::Continue,
                edits: vec![edit],
            }
        }
    }

    /// The panic message of running `f`, if it panicked.
    fn panic_of(f: impl FnOnce() + std::panic::UnwindSafe) -> Option<String> {
        let error = std::panic::catch_unwind(f).err()?;
        error
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| error.downcast_ref::<&str>().map(|s| s.to_string()))
    }

    #[test]
    fn results_the_proxy_would_refuse_fail_the_test_with_the_rule() {
        let cases = [
            ("address", true, "invalid domain"),
            ("param", true, "not an esmtp-value"),
            ("reply", true, "longer than 4000 octets"),
            ("code", true, "a reject needs a 5xx code"),
            ("header", false, "header field \"X-Evil\""),
            ("body", false, "longer than 998 octets"),
        ];
        for (mode, at_rcpt, rule) in cases {
            let message = panic_of(move || {
                let mut harness = Harness::<Careless>::new(&format!("mode = \"{mode}\"")).unwrap();
                harness.mail("a@example.org");
                if at_rcpt {
                    harness.rcpt("b@example.com");
                } else {
                    harness.data(b"Subject: x\r\n\r\nbody\r\n");
                }
            })
            .unwrap_or_else(|| panic!("{mode}: accepted"));
            assert!(
                message.contains("a result the proxy would refuse") && message.contains(rule),
                "{mode}: {message}"
            );
        }
        let mut fine = Harness::<Careless>::new("mode = \"fine\"").unwrap();
        fine.mail("a@example.org");
        assert_eq!(
            fine.rcpt("b@example.com").rewrite_address.as_deref(),
            Some("archive@example.com")
        );
        assert_eq!(fine.data(b"Subject: x\r\n\r\nbody\r\n").edits.len(), 1);
    }

    #[test]
    fn scripted_dns_answers() {
        reset();
        dns_answer("txt", "2.0.0.127.zen.test", Ok(vec!["listed".into()]));
        assert_eq!(
            crate::dns::txt("2.0.0.127.ZEN.test"),
            Ok(vec!["listed".to_string()])
        );
        assert_eq!(crate::dns::a("nothing.test"), Err(DnsError::NotFound));
        dns_answer("mx", "example.com", Ok(vec!["10 mx.example.com".into()]));
        assert_eq!(
            crate::dns::mx("example.com"),
            Ok(vec![(10, "mx.example.com".to_string())])
        );
    }
}
