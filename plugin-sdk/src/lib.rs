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
//! are per-session state. Host calls live in [`kv`], [`dns`], [`log`] and [`clock`];
//! [`testing`] runs a plugin natively under `cargo test`.
#![deny(missing_docs)]

mod convert;
mod message;
mod types;

pub mod clock;
pub mod dns;
pub mod kv;
pub mod log;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use message::Message;
pub use types::{
    DataOutcome, Envelope, Header, HeloOutcome, Hooks, MessageEdit, Param, PathOutcome, Reply,
    Session, Verdict,
};

/// The plugin's own configuration: its `config` table from the proxy's TOML file.
pub type Config = toml::Table;

/// The TOML crate the configuration comes in, for reading its values.
pub use toml;

/// A filter plugin. Every hook has a default that continues, so implement only the
/// stages you need and return them from [`Plugin::init`]; the proxy never calls the
/// others.
pub trait Plugin: Sized + 'static {
    /// Builds the per-session instance from the plugin's configuration and names the
    /// hooks it wants. An `Err` at start-up stops the proxy with that message.
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
            fn on_connect(session: $crate::__runtime::wit::Session) -> $crate::__runtime::wit::Verdict {
                $crate::__runtime::connect::<$plugin>(session)
            }
            fn on_helo(session: $crate::__runtime::wit::Session, name: String) -> $crate::__runtime::wit::HeloOutcome {
                $crate::__runtime::helo::<$plugin>(session, name)
            }
            fn on_auth(session: $crate::__runtime::wit::Session, mechanism: String, login: String) -> $crate::__runtime::wit::Verdict {
                $crate::__runtime::auth::<$plugin>(session, mechanism, login)
            }
            fn on_mail(
                session: $crate::__runtime::wit::Session,
                sender: String,
                params: Vec<$crate::__runtime::wit::Param>,
            ) -> $crate::__runtime::wit::PathOutcome {
                $crate::__runtime::mail::<$plugin>(session, sender, params)
            }
            fn on_rcpt(
                session: $crate::__runtime::wit::Session,
                envelope: $crate::__runtime::wit::Envelope,
                recipient: String,
                params: Vec<$crate::__runtime::wit::Param>,
            ) -> $crate::__runtime::wit::PathOutcome {
                $crate::__runtime::rcpt::<$plugin>(session, envelope, recipient, params)
            }
            fn on_data(
                session: $crate::__runtime::wit::Session,
                envelope: $crate::__runtime::wit::Envelope,
                message: &$crate::__runtime::wit::Message,
            ) -> $crate::__runtime::wit::DataOutcome {
                $crate::__runtime::data::<$plugin>(session, envelope, message)
            }
            fn on_session_end(session: $crate::__runtime::wit::Session) {
                $crate::__runtime::session_end::<$plugin>(session)
            }
        }

        $crate::bindings::__export_guest!(__PortcullisGuest with_types_in $crate::bindings);
    };
}

/// The glue between the generated bindings and a [`Plugin`]. Not for plugin authors.
#[doc(hidden)]
pub mod __runtime {
    use std::{any::Any, cell::RefCell};

    pub use crate::bindings::portcullis::plugin::types as wit;
    use crate::{Config, Plugin, convert};

    thread_local! {
        /// The instance of this component: one per session, so one per store.
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = RefCell::new(None);
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
        let table: Config = config
            .parse()
            .map_err(|error| format!("invalid plugin config: {error}"))?;
        let (plugin, hooks) = P::init(&table)?;
        INSTANCE.with(|instance| *instance.borrow_mut() = Some(Box::new(plugin)));
        Ok(wit::Hooks::from_bits_retain(hooks.bits()))
    }

    pub fn connect<P: Plugin>(session: wit::Session) -> wit::Verdict {
        convert::verdict(with::<P, _>(|p| p.connect(&session.into())))
    }

    pub fn helo<P: Plugin>(session: wit::Session, name: String) -> wit::HeloOutcome {
        convert::helo_outcome(with::<P, _>(|p| p.helo(&session.into(), &name)))
    }

    pub fn auth<P: Plugin>(
        session: wit::Session,
        mechanism: String,
        login: String,
    ) -> wit::Verdict {
        convert::verdict(with::<P, _>(|p| {
            p.auth(&session.into(), &mechanism, &login)
        }))
    }

    pub fn mail<P: Plugin>(
        session: wit::Session,
        sender: String,
        params: Vec<wit::Param>,
    ) -> wit::PathOutcome {
        let params = convert::params(params);
        convert::path_outcome(with::<P, _>(|p| p.mail(&session.into(), &sender, &params)))
    }

    pub fn rcpt<P: Plugin>(
        session: wit::Session,
        envelope: wit::Envelope,
        recipient: String,
        params: Vec<wit::Param>,
    ) -> wit::PathOutcome {
        let params = convert::params(params);
        let envelope = envelope.into();
        convert::path_outcome(with::<P, _>(|p| {
            p.rcpt(&session.into(), &envelope, &recipient, &params)
        }))
    }

    pub fn data<P: Plugin>(
        session: wit::Session,
        envelope: wit::Envelope,
        message: &wit::Message,
    ) -> wit::DataOutcome {
        let message = crate::Message::from_host(message);
        let envelope = envelope.into();
        convert::data_outcome(with::<P, _>(|p| {
            p.data(&session.into(), &envelope, &message)
        }))
    }

    pub fn session_end<P: Plugin>(session: wit::Session) {
        with::<P, _>(|p| p.session_end(&session.into()))
    }
}
