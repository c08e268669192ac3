//! `rate-limit`: counts messages (MAIL commands) per client address and per
//! authenticated login in the proxy's key-value store, shared by every session (and by
//! every proxy, once the store is shared), and tempfails past the limit with
//! `450 4.7.1`, so well-behaved clients retry later.
//!
//! - `per_client = { messages = 100, window_seconds = 3600 }`: per client IP address;
//! - `per_login = { messages = 500, window_seconds = 3600 }`: per authenticated login
//!   (sessions without a login are not counted here);
//! - `skip`: client addresses that are never limited;
//! - `on_store_error = "continue" | "tempfail"`: what a message gets when the store
//!   cannot count it (a shared Redis that is slow or down): let it through uncounted
//!   (the default: mail keeps flowing) or `451 4.3.0` so the client retries.
//!
//! A window starts with the first message counted in it and lasts `window_seconds`
//! (fixed windows: a counter in the store that expires).

use std::{
    num::{NonZeroU32, NonZeroU64},
    time::Duration,
};

use portcullis_sdk::{Config, Hooks, Param, PathOutcome, Plugin, Session, Verdict, kv, log};
use serde::Deserialize;

/// The `config` table, as the operator writes it (an unknown key is an error).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    per_client: Option<LimitSetting>,
    per_login: Option<LimitSetting>,
    #[serde(default)]
    skip: Vec<String>,
    #[serde(default)]
    on_store_error: OnStoreError,
}

/// What a message gets when the store cannot count it.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum OnStoreError {
    /// Through, uncounted: a store outage does not stop mail.
    #[default]
    Continue,
    /// 451 4.3.0: the client retries once the store is back.
    Tempfail,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSetting {
    messages: NonZeroU32,
    window_seconds: NonZeroU64,
}

/// One limit: so many messages per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limit {
    messages: i64,
    window: Duration,
}

impl From<LimitSetting> for Limit {
    fn from(setting: LimitSetting) -> Self {
        Limit {
            messages: i64::from(setting.messages.get()),
            window: Duration::from_secs(setting.window_seconds.get()),
        }
    }
}

/// The plugin's configuration.
pub struct RateLimit {
    per_client: Option<Limit>,
    per_login: Option<Limit>,
    skip: Vec<String>,
    on_store_error: OnStoreError,
}

impl RateLimit {
    /// Counts one message against `limit` under `key`; the reply if it is over (or
    /// if it could not be counted and the operator chose to tempfail then).
    fn count(&self, what: impl Fn() -> String, key: &str, limit: Limit) -> Option<Verdict> {
        let count = match kv::incr(key, 1, Some(limit.window)) {
            Ok(count) => count,
            Err(error) => {
                log::warn(&format!("{} not counted: {error}", what()));
                return match self.on_store_error {
                    OnStoreError::Continue => None,
                    OnStoreError::Tempfail => Some(Verdict::tempfail(
                        451,
                        "4.3.0",
                        "Cannot check the rate limit now, try again later",
                    )),
                };
            }
        };
        if count <= limit.messages {
            return None;
        }
        let what = what();
        if count == limit.messages + 1 {
            log::info(&format!(
                "{what} went over {} messages per {}s",
                limit.messages,
                limit.window.as_secs()
            ));
        }
        Some(Verdict::tempfail(
            450,
            "4.7.1",
            format!("Rate limit reached for {what}, try again later"),
        ))
    }
}

impl Plugin for RateLimit {
    fn init(config: &Config) -> Result<(Self, Hooks), String> {
        let settings: Settings = config.parse()?;
        if settings.per_client.is_none() && settings.per_login.is_none() {
            return Err("set per_client, per_login or both".into());
        }
        let plugin = RateLimit {
            per_client: settings.per_client.map(Limit::from),
            per_login: settings.per_login.map(Limit::from),
            skip: settings.skip,
            on_store_error: settings.on_store_error,
        };
        Ok((plugin, Hooks::MAIL | Hooks::SHAREABLE))
    }

    fn mail(&mut self, session: &Session, _sender: &str, _params: &[Param]) -> PathOutcome {
        let ip = &session.client_ip;
        if self.skip.contains(ip) {
            return PathOutcome::default();
        }
        let over = self
            .per_client
            .and_then(|limit| {
                self.count(|| format!("client [{ip}]"), &format!("client/{ip}"), limit)
            })
            .or_else(|| {
                let login = session.login.as_deref()?;
                let limit = self.per_login?;
                self.count(
                    || format!("login {login}"),
                    &format!("login/{login}"),
                    limit,
                )
            });
        over.map(PathOutcome::from).unwrap_or_default()
    }
}

portcullis_sdk::export!(RateLimit);

#[cfg(test)]
mod tests {
    use portcullis_sdk::{
        Verdict,
        kv::KvError,
        testing::{Harness, kv_fails, reset, set_now_ms},
    };

    use super::RateLimit;

    const CONFIG: &str = r#"
        per_client = { messages = 2, window_seconds = 60 }
        per_login = { messages = 3, window_seconds = 60 }
        skip = ["192.0.2.250"]
    "#;

    fn send(ip: &str, login: Option<&str>) -> Verdict {
        let mut harness = Harness::<RateLimit>::new(CONFIG).unwrap();
        harness.session_mut().client_ip = ip.into();
        harness.session_mut().login = login.map(Into::into);
        harness.mail("sender@example.org").verdict
    }

    #[test]
    fn counts_per_client_across_sessions_and_windows() {
        reset();
        assert_eq!(send("192.0.2.1", None), Verdict::Continue);
        assert_eq!(send("192.0.2.1", None), Verdict::Continue);
        assert_eq!(
            send("192.0.2.1", None),
            Verdict::tempfail(
                450,
                "4.7.1",
                "Rate limit reached for client [192.0.2.1], try again later"
            )
        );
        assert_eq!(send("192.0.2.2", None), Verdict::Continue, "another client");
        assert_eq!(send("192.0.2.250", None), Verdict::Continue);
        set_now_ms(1_700_000_000_000 + 61_000);
        assert_eq!(send("192.0.2.1", None), Verdict::Continue, "a new window");
    }

    #[test]
    fn counts_per_login_whatever_the_address() {
        reset();
        for n in 0..3 {
            assert_eq!(
                send(&format!("198.51.100.{n}"), Some("alice")),
                Verdict::Continue
            );
        }
        assert!(matches!(
            send("198.51.100.9", Some("alice")),
            Verdict::Tempfail(_)
        ));
        assert_eq!(send("198.51.100.9", Some("bob")), Verdict::Continue);
    }

    #[test]
    fn a_store_that_cannot_count_lets_mail_through_or_tempfails_as_configured() {
        reset();
        kv_fails(Some(KvError::Unavailable));
        assert_eq!(send("192.0.2.1", None), Verdict::Continue, "fails open");
        let mut strict =
            Harness::<RateLimit>::new(&format!("{CONFIG}\non_store_error = \"tempfail\"")).unwrap();
        assert_eq!(
            strict.mail("sender@example.org").verdict,
            Verdict::tempfail(
                451,
                "4.3.0",
                "Cannot check the rate limit now, try again later"
            )
        );
        kv_fails(None);
        assert_eq!(strict.mail("sender@example.org").verdict, Verdict::Continue);
    }

    #[test]
    fn bad_configuration_is_refused() {
        for config in [
            "",
            "per_client = 3",
            "per_client = { messages = 0, window_seconds = 1 }",
            "per_login = { messages = 1 }",
            "per_client = { messages = 1, window_seconds = 1 }\non_store_error = \"maybe\"",
        ] {
            assert!(Harness::<RateLimit>::new(config).is_err(), "{config}");
        }
    }
}
