//! Write [Portcullis](https://github.com) filter plugins in Rust.
//!
//! A plugin is a type that implements [`Plugin`]: every hook has a default that lets
//! the session continue, so a plugin overrides only the stages it cares about and
//! names them in the [`Hooks`] it returns from [`Plugin::init`]. One macro,
//! [`export!`], turns it into a WebAssembly component the proxy loads:
//!
//! ```no_run
//! use portcullis_sdk::{Config, Envelope, Hooks, Param, PathOutcome, Plugin, Session, Verdict};
//!
//! #[derive(Default)]
//! struct NoTestDomain;
//!
//! impl Plugin for NoTestDomain {
//!     fn init(_config: &Config) -> Result<(Self, Hooks), String> {
//!         Ok((NoTestDomain, Hooks::RCPT))
//!     }
//!
//!     fn rcpt(&mut self, _: &Session, _: &Envelope, recipient: &str, _: &[Param]) -> PathOutcome {
//!         if recipient.ends_with("@test.invalid") {
//!             return Verdict::reject(550, "5.1.2", "No mail for test.invalid").into();
//!         }
//!         PathOutcome::default()
//!     }
//! }
//!
//! portcullis_sdk::export!(NoTestDomain);
//! ```
//!
//! The proxy makes one instance per plugin per session, so fields of the plugin type
//! are per-session state, unless the plugin adds [`Hooks::SHAREABLE`]: then a few
//! instances serve every session's calls, one call at a time. Host calls live in [`kv`], [`dns`], [`log`] and [`clock`];
//! [`testing`] runs a plugin natively under `cargo test`.
#![deny(missing_docs)]

mod config;
mod convert;
mod envelope;
mod message;
mod types;

pub mod clock;
pub mod dns;
pub mod kv;
pub mod log;
#[cfg(not(target_arch = "wasm32"))]
mod rules;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use envelope::Envelope;
pub use message::Message;
pub use types::{
    DataOutcome, Header, HeloOutcome, Hooks, LoginCheck, MessageEdit, Param, PathOutcome, Reply,
    Session, SessionInfo, Verdict,
};

pub use config::Config;

/// The TOML crate the configuration comes in, for reading its values.
pub use toml;

/// serde, for `#[derive(Deserialize)]` on a configuration type read with
/// [`Config::parse`] (add `serde = { version = "1", features = ["derive"] }` to the
/// plugin's Cargo.toml, or use this one with `#[serde(crate = "portcullis_sdk::serde")]`).
pub use serde;

/// The list of strings at `key` of a configuration table; empty if the key is absent,
/// an error naming the key if it is not a list of strings. [`Config::parse`] into a
/// type of your own does this for every key at once.
pub fn config_strings(config: &toml::Table, key: &str) -> Result<Vec<String>, String> {
    let Some(value) = config.get(key) else {
        return Ok(Vec::new());
    };
    let invalid = || format!("{key} must be a list of strings");
    value
        .as_array()
        .ok_or_else(invalid)?
        .iter()
        .map(|item| item.as_str().map(str::to_string).ok_or_else(invalid))
        .collect()
}

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

/// The bindings generated from `wit/portcullis.wit`. Not for plugin authors.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        export_macro_name: "__export_guest",
        pub_export_macro: true,
        default_bindings_module: "portcullis_sdk::bindings",
    });
}

/// Exports a [`Plugin`] type as the component's implementation of the ABI.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __PortcullisGuest;

        impl $crate::bindings::Guest for __PortcullisGuest {
            fn init(config: String) -> Result<$crate::__runtime::wit::Hooks, String> {
                $crate::__runtime::init::<$plugin>(config)
            }
            fn on_connect(session: u32) -> $crate::__runtime::wit::Verdict {
                $crate::__runtime::connect::<$plugin>(session)
            }
            fn on_helo(session: u32, name: String) -> $crate::__runtime::wit::HeloOutcome {
                $crate::__runtime::helo::<$plugin>(session, name)
            }
            fn on_auth(session: u32, mechanism: String, login: String) -> $crate::__runtime::wit::Verdict {
                $crate::__runtime::auth::<$plugin>(session, mechanism, login)
            }
            fn on_mail(
                session: u32,
                sender: String,
                params: Vec<$crate::__runtime::wit::Param>,
            ) -> $crate::__runtime::wit::PathOutcome {
                $crate::__runtime::mail::<$plugin>(session, sender, params)
            }
            fn on_rcpt(
                session: u32,
                envelope: $crate::__runtime::wit::EnvelopeRef,
                recipient: String,
                params: Vec<$crate::__runtime::wit::Param>,
            ) -> $crate::__runtime::wit::PathOutcome {
                $crate::__runtime::rcpt::<$plugin>(session, envelope, recipient, params)
            }
            fn on_data(
                session: u32,
                envelope: $crate::__runtime::wit::EnvelopeRef,
                message: &$crate::__runtime::wit::Message,
            ) -> $crate::__runtime::wit::DataOutcome {
                $crate::__runtime::data::<$plugin>(session, envelope, message)
            }
            fn on_session_end(session: u32) {
                $crate::__runtime::session_end::<$plugin>(session)
            }
            fn verify_login(
                session: u32,
                mechanism: String,
                login: String,
                password: String,
            ) -> $crate::__runtime::wit::LoginCheck {
                $crate::__runtime::verify_login::<$plugin>(session, mechanism, login, password)
            }
        }

        $crate::bindings::__export_guest!(__PortcullisGuest with_types_in $crate::bindings);
    };
}

/// The glue between the generated bindings and a [`Plugin`]. Not for plugin authors.
#[doc(hidden)]
pub mod __runtime {
    use std::{any::Any, cell::RefCell, sync::Arc};

    pub use crate::bindings::portcullis::plugin::types as wit;
    use crate::{Config, Plugin, Session, SessionInfo, convert};

    thread_local! {
        /// The plugin in this component instance (one per store: a session's own, or
        /// one shared by sessions for a shareable plugin).
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = RefCell::new(None);
        /// The session as last fetched from the host, with its version.
        static SESSION: RefCell<Option<(u32, Arc<SessionInfo>)>> = const { RefCell::new(None) };
    }

    /// The session of `version`, asking the host only if it changed since the last
    /// fetch (read through [`Session`], so only by hooks that look at it).
    pub(crate) fn session_info(version: u32) -> Arc<SessionInfo> {
        SESSION.with(|cell| {
            let mut cached = cell.borrow_mut();
            match cached.as_ref() {
                Some((known, info)) if *known == version => info.clone(),
                _ => {
                    let current = crate::bindings::portcullis::plugin::context::current();
                    let info = Arc::new(SessionInfo::from(current));
                    *cached = Some((version, info.clone()));
                    info
                }
            }
        })
    }

    /// Runs `f` with the session of `version`, fetched only if `f` reads it.
    fn with_session<R>(version: u32, f: impl FnOnce(&Session) -> R) -> R {
        f(&Session::from_host(version))
    }

    fn with<P: Plugin, R: Default>(f: impl FnOnce(&mut P) -> R) -> R {
        INSTANCE.with(|instance| {
            match instance
                .borrow_mut()
                .as_mut()
                .and_then(|b| b.downcast_mut::<P>())
            {
                Some(plugin) => f(plugin),
                None => R::default(),
            }
        })
    }

    pub fn init<P: Plugin>(config: String) -> Result<wit::Hooks, String> {
        // Runs once at start-up and is part of the snapshot every instance starts
        // from: from here on a panic reaches the proxy's log with its message and
        // place, before the abort ends the call.
        std::panic::set_hook(Box::new(|info| {
            crate::log::panic(&info.to_string());
        }));
        let table: Config = config
            .parse()
            .map_err(|error| format!("invalid plugin config: {error}"))?;
        let (plugin, hooks) = P::init(&table)?;
        INSTANCE.with(|instance| *instance.borrow_mut() = Some(Box::new(plugin)));
        Ok(wit::Hooks::from_bits_retain(hooks.bits()))
    }

    pub fn connect<P: Plugin>(session: u32) -> wit::Verdict {
        convert::verdict(with_session(session, |s| with::<P, _>(|p| p.connect(s))))
    }

    pub fn helo<P: Plugin>(session: u32, name: String) -> wit::HeloOutcome {
        convert::helo_outcome(with_session(session, |s| {
            with::<P, _>(|p| p.helo(s, &name))
        }))
    }

    pub fn auth<P: Plugin>(session: u32, mechanism: String, login: String) -> wit::Verdict {
        convert::verdict(with_session(session, |s| {
            with::<P, _>(|p| p.auth(s, &mechanism, &login))
        }))
    }

    pub fn mail<P: Plugin>(
        session: u32,
        sender: String,
        params: Vec<wit::Param>,
    ) -> wit::PathOutcome {
        let params = convert::params(params);
        convert::path_outcome(with_session(session, |s| {
            with::<P, _>(|p| p.mail(s, &sender, &params))
        }))
    }

    pub fn rcpt<P: Plugin>(
        session: u32,
        envelope: wit::EnvelopeRef,
        recipient: String,
        params: Vec<wit::Param>,
    ) -> wit::PathOutcome {
        let params = convert::params(params);
        let envelope = crate::Envelope::from_host(envelope);
        convert::path_outcome(with_session(session, |s| {
            with::<P, _>(|p| p.rcpt(s, &envelope, &recipient, &params))
        }))
    }

    pub fn data<P: Plugin>(
        session: u32,
        envelope: wit::EnvelopeRef,
        message: &wit::Message,
    ) -> wit::DataOutcome {
        let message = crate::Message::from_host(message);
        let envelope = crate::Envelope::from_host(envelope);
        convert::data_outcome(with_session(session, |s| {
            with::<P, _>(|p| p.data(s, &envelope, &message))
        }))
    }

    pub fn session_end<P: Plugin>(session: u32) {
        with_session(session, |s| with::<P, _>(|p| p.session_end(s)))
    }

    pub fn verify_login<P: Plugin>(
        session: u32,
        mechanism: String,
        login: String,
        password: String,
    ) -> wit::LoginCheck {
        let check = with_session(session, |s| {
            with::<P, _>(|p| p.verify_login(s, &mechanism, &login, &password))
        });
        match check {
            crate::LoginCheck::Valid => wit::LoginCheck::Valid,
            crate::LoginCheck::Invalid => wit::LoginCheck::Invalid,
            crate::LoginCheck::Unavailable => wit::LoginCheck::Unavailable,
        }
    }
}
