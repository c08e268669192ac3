//! `[milters.NAME]`: milters (Sendmail's mail filter protocol) a listener's chain
//! calls beside its plugins, with the timeouts and the default action Postfix's
//! `milter_*` settings have.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::{ConfigError, OnError, PluginMode, validate::LineOf};

/// One `[milters.NAME]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct MilterConfig {
    /// Where the milter listens.
    pub address: MilterAddress,
    /// Longest time to connect and negotiate (Postfix's `milter_connect_timeout`).
    pub connect_timeout: Duration,
    /// Longest wait for the answer to a connect, HELO, MAIL or RCPT
    /// (`milter_command_timeout`).
    pub command_timeout: Duration,
    /// Longest wait for each answer while the message is sent, and for the verdict
    /// on it (`milter_content_timeout`).
    pub content_timeout: Duration,
    /// What the session gets when the milter is down, too slow or answers what the
    /// protocol does not allow (`milter_default_action`): `accept` carries on
    /// without it.
    pub default_action: OnError,
    /// Enforcing, or in shadow (logged and counted as "would have", never applied).
    pub mode: PluginMode,
    /// The line of its table, for errors about it.
    pub line: Option<usize>,
}

/// `inet:HOST:PORT` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterAddress {
    /// A TCP address; the host may be a name, an IPv4 address or `[IPv6]`.
    Inet {
        /// Host name or address (without brackets).
        host: String,
        /// The port.
        port: u16,
    },
    /// A Unix-domain socket.
    Unix(PathBuf),
}

impl std::fmt::Display for MilterAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MilterAddress::Inet { host, port } if host.contains(':') => {
                write!(f, "inet:[{host}]:{port}")
            }
            MilterAddress::Inet { host, port } => write!(f, "inet:{host}:{port}"),
            MilterAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for MilterAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{text:?}: a Unix socket's path must be absolute"));
            }
            return Ok(MilterAddress::Unix(PathBuf::from(path)));
        }
        let Some(rest) = text.strip_prefix("inet:") else {
            return Err(format!(
                "{text:?}: write inet:HOST:PORT or unix:/path/to/socket"
            ));
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?}: inet: needs HOST:PORT"))?;
        let host = match host.strip_prefix('[') {
            Some(bracketed) => bracketed
                .strip_suffix(']')
                .ok_or_else(|| format!("{text:?}: an unclosed [ in the host"))?,
            None if host.contains(':') => {
                return Err(format!("{text:?}: write an IPv6 host in brackets, [::1]"));
            }
            None => host,
        };
        if host.is_empty() {
            return Err(format!("{text:?}: the host is empty"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{text:?}: the port must be 1 to 65535"))?;
        Ok(MilterAddress::Inet {
            host: host.to_string(),
            port,
        })
    }
}

/// `[milters.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMilter {
    address: Spanned<String>,
    #[serde(default, deserialize_with = "timeout")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "timeout")]
    command_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "timeout")]
    content_timeout: Option<Duration>,
    #[serde(default)]
    default_action: DefaultAction,
    #[serde(default)]
    mode: PluginMode,
}

/// Postfix's names for what a failed milter means.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DefaultAction {
    #[default]
    Tempfail,
    Accept,
    Reject,
}

fn timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let value: Duration = humantime_serde::deserialize(deserializer)?;
    if value.is_zero() || value > Duration::from_secs(3600) {
        return Err(serde::de::Error::custom(
            "must be more than 0 and at most 1h",
        ));
    }
    Ok(Some(value))
}

/// Checks one `[milters.NAME]` whose table starts at `offset`.
pub(super) fn validate(
    name: &str,
    raw: Spanned<RawMilter>,
    line_of: LineOf,
) -> Result<MilterConfig, ConfigError> {
    let line = line_of(raw.span().start);
    let raw = raw.into_inner();
    let address = raw
        .address
        .get_ref()
        .parse()
        .map_err(|message| ConfigError {
            key: format!("milters.{name}.address"),
            line: Some(line_of(raw.address.span().start)),
            message,
        })?;
    Ok(MilterConfig {
        address,
        connect_timeout: raw.connect_timeout.unwrap_or(Duration::from_secs(30)),
        command_timeout: raw.command_timeout.unwrap_or(Duration::from_secs(30)),
        content_timeout: raw.content_timeout.unwrap_or(Duration::from_secs(300)),
        default_action: match raw.default_action {
            DefaultAction::Tempfail => OnError::Tempfail,
            DefaultAction::Accept => OnError::Continue,
            DefaultAction::Reject => OnError::Reject,
        },
        mode: raw.mode,
        line: Some(line),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let inet = |host: &str, port| MilterAddress::Inet {
            host: host.into(),
            port,
        };
        let good = [
            ("inet:127.0.0.1:8891", inet("127.0.0.1", 8891)),
            ("inet:localhost:11332", inet("localhost", 11332)),
            ("inet:[::1]:8891", inet("::1", 8891)),
            (
                "unix:/run/opendkim/opendkim.sock",
                MilterAddress::Unix("/run/opendkim/opendkim.sock".into()),
            ),
        ];
        for (text, address) in good {
            assert_eq!(text.parse::<MilterAddress>(), Ok(address.clone()));
            assert_eq!(address.to_string(), text);
        }
        let bad = [
            ("127.0.0.1:8891", "write inet:HOST:PORT"),
            ("inet:127.0.0.1", "needs HOST:PORT"),
            ("inet:::1:8891", "in brackets"),
            ("inet:[::1:8891", "unclosed"),
            ("inet::8891", "host is empty"),
            ("inet:localhost:0", "1 to 65535"),
            ("inet:localhost:99999", "1 to 65535"),
            ("unix:relative.sock", "absolute"),
        ];
        for (text, why) in bad {
            let error = text.parse::<MilterAddress>().unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
