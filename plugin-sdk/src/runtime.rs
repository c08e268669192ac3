//! What [`export!`](crate::export) expands to, and the glue between the generated
//! bindings and a [`Plugin`](crate::Plugin). Not for plugin authors: nothing here is
//! part of the SDK's API.

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

#[cfg(test)]
mod tests {
    use super::bindings::portcullis::plugin::types::Hooks as Wit;
    use crate::Hooks;

    /// The SDK's hook constants are the bits of the WIT `hooks` flags, in their order:
    /// a flag added to the WIT file without its constant here (or out of order) fails.
    #[test]
    fn hooks_bits_follow_the_wit_flags() {
        let pairs = [
            (Hooks::CONNECT, Wit::CONNECT),
            (Hooks::HELO, Wit::HELO),
            (Hooks::AUTH, Wit::AUTH),
            (Hooks::MAIL, Wit::MAIL),
            (Hooks::RCPT, Wit::RCPT),
            (Hooks::DATA, Wit::DATA),
            (Hooks::SESSION_END, Wit::SESSION_END),
            (Hooks::VERIFY_LOGIN, Wit::VERIFY_LOGIN),
            (Hooks::SHAREABLE, Wit::SHAREABLE),
        ];
        let mut all = 0;
        for (ours, wit) in pairs {
            assert_eq!(u32::from(ours.bits()), u32::from(wit.bits()), "{ours:?}");
            all |= u32::from(wit.bits());
        }
        assert_eq!(
            all,
            u32::from(Wit::all().bits()),
            "every WIT flag has a constant"
        );
    }
}
