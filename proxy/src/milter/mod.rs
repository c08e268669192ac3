//! Milters in a listener's chain: the filters sites already run (OpenDKIM, rspamd,
//! ClamAV…) called through Sendmail's mail filter protocol, version 6, as Postfix
//! calls them. `codec` is the protocol as data (no I/O), `client` one session's
//! conversation with one milter. The chain (`hooks`) turns what a milter answers into
//! the verdicts and edits plugins give, checked by the same code, so a milter cannot
//! put on the wire what a client or a plugin could not.
//!
//! Written here rather than taken from a crate: the one Rust milter client
//! (`miltr-client` 0.1) is young, has one maintainer and would sit on the path from a
//! milter to the upstream, which the proxy guards itself.

mod client;
mod codec;

use std::{net::SocketAddr, sync::Arc, time::Duration};

pub(crate) use client::Conversation;

use crate::{config::MilterConfig, telemetry};

/// One configured milter.
pub struct Milter {
    /// Its name in the configuration.
    pub name: Arc<str>,
    /// Where it is, its timeouts and default action.
    pub config: MilterConfig,
    /// Its calls, counted as a plugin's are.
    pub(crate) meters: telemetry::PluginMeters,
}

impl Milter {
    /// The milter `name` as configured.
    pub fn new(name: &str, config: MilterConfig) -> Self {
        let name: Arc<str> = name.into();
        Self {
            meters: telemetry::PluginMeters::new(name.clone()),
            name,
            config,
        }
    }
}

/// What a milter answered for a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MilterVerdict {
    Continue,
    /// It wants nothing more of this message (or, at connect and HELO, of this
    /// session); the chain goes on without it.
    Accept,
    /// 5xx: its own reply (`"550 5.7.1 text"`), or the default.
    Reject(Option<String>),
    /// 4xx, likewise.
    Tempfail(Option<String>),
    /// Tell the client 250 and deliver nothing.
    Discard,
    /// 421 and close.
    Shutdown,
}

/// Why a conversation with a milter ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MilterError {
    /// It could not be reached.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    /// It did not answer in time.
    #[error("no answer while {0} within {1:?}")]
    Timeout(&'static str, Duration),
    /// It closed the connection.
    #[error("it closed the connection during {0}")]
    Closed(&'static str),
    /// Reading or writing failed.
    #[error("connection failed: {0}")]
    Io(std::io::Error),
    /// It answered what the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Something of the session cannot be written in the protocol.
    #[error("cannot send: {0}")]
    Encode(codec::EncodeError),
    /// The spooled message could not be read.
    #[error("reading the spooled message: {0}")]
    Spool(std::io::Error),
}

impl MilterError {
    /// Its kind, as `portcullis_plugin_faults_total` counts it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            MilterError::Connect(..) | MilterError::Closed(_) | MilterError::Io(_) => "unavailable",
            MilterError::Timeout(..) => "timeout",
            MilterError::Protocol(_) | MilterError::Encode(_) => "invalid",
            MilterError::Spool(_) => "spool",
        }
    }
}

/// What a session tells its milters in macros, as Postfix does.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    /// The session id (and, with a count, each message's `i`).
    pub(crate) session_id: String,
    /// The proxy's host name (`j`).
    pub(crate) hostname: String,
    /// The listener's name (`{daemon_name}`).
    pub(crate) listener: String,
    pub(crate) client: SocketAddr,
    pub(crate) local: SocketAddr,
    /// The client's verified host name, if known.
    pub(crate) client_name: Option<String>,
    /// TLS version and cipher, once started.
    pub(crate) tls: Option<(String, String)>,
    /// AUTH mechanism and login, once authenticated.
    pub(crate) auth: Option<(String, String)>,
}

impl Facts {
    fn connect_macros(&self) -> Vec<(&'static str, String)> {
        let name = self.client_name.clone().unwrap_or_else(|| "unknown".into());
        let client = self.client.ip().to_string();
        let local = self.local.ip().to_string();
        vec![
            ("j", self.hostname.clone()),
            ("_", format!("{name} [{client}]")),
            ("{daemon_name}", self.listener.clone()),
            ("{daemon_addr}", local.clone()),
            ("{daemon_port}", self.local.port().to_string()),
            ("{if_name}", self.hostname.clone()),
            ("{if_addr}", local),
            ("{client_addr}", client),
            ("{client_port}", self.client.port().to_string()),
            ("{client_name}", name.clone()),
            ("{client_ptr}", name),
            (
                "v",
                concat!("Portcullis ", env!("CARGO_PKG_VERSION")).into(),
            ),
        ]
    }

    fn helo_macros(&self) -> Vec<(&'static str, String)> {
        match &self.tls {
            Some((version, cipher)) => vec![
                ("{tls_version}", version.clone()),
                ("{cipher}", cipher.clone()),
            ],
            None => Vec::new(),
        }
    }

    /// `path` is the reverse-path in angle brackets.
    fn mail_macros(&self, path: &str) -> Vec<(&'static str, String)> {
        let mut macros = address_macros(path, ["{mail_addr}", "{mail_host}", "{mail_mailer}"]);
        if let Some((mechanism, login)) = &self.auth {
            macros.push(("{auth_type}", mechanism.clone()));
            macros.push(("{auth_authen}", login.clone()));
        }
        macros
    }
}

fn rcpt_macros(path: &str) -> Vec<(&'static str, String)> {
    address_macros(path, ["{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"]).to_vec()
}

/// `{x_addr}` (the mailbox), `{x_host}` (its domain) and `{x_mailer}`.
fn address_macros(
    path: &str,
    [addr, host, mailer]: [&'static str; 3],
) -> Vec<(&'static str, String)> {
    let mailbox = path
        .strip_prefix('<')
        .and_then(|p| p.strip_suffix('>'))
        .unwrap_or(path);
    let domain = mailbox.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    vec![
        (addr, mailbox.to_string()),
        (host, domain.to_string()),
        (
            mailer,
            if mailbox.is_empty() { "local" } else { "smtp" }.into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macros_postfix_sends() {
        let facts = Facts {
            session_id: "s1".into(),
            hostname: "mx.example".into(),
            listener: "inbound".into(),
            client: "192.0.2.7:40000".parse().unwrap(),
            local: "198.51.100.1:25".parse().unwrap(),
            client_name: None,
            tls: Some(("TLSv1.3".into(), "TLS13_AES_256_GCM_SHA384".into())),
            auth: Some(("PLAIN".into(), "alice".into())),
        };
        let connect = facts.connect_macros();
        let get = |list: &[(&str, String)], name: &str| {
            list.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get(&connect, "j").as_deref(), Some("mx.example"));
        assert_eq!(get(&connect, "_").as_deref(), Some("unknown [192.0.2.7]"));
        assert_eq!(get(&connect, "{if_addr}").as_deref(), Some("198.51.100.1"));
        assert_eq!(get(&connect, "{client_addr}").as_deref(), Some("192.0.2.7"));
        assert_eq!(get(&connect, "{daemon_name}").as_deref(), Some("inbound"));
        let helo = facts.helo_macros();
        assert_eq!(get(&helo, "{tls_version}").as_deref(), Some("TLSv1.3"));
        let mail = facts.mail_macros("<a@example.com>");
        assert_eq!(get(&mail, "{mail_addr}").as_deref(), Some("a@example.com"));
        assert_eq!(get(&mail, "{mail_host}").as_deref(), Some("example.com"));
        assert_eq!(get(&mail, "{auth_authen}").as_deref(), Some("alice"));
        assert_eq!(get(&mail, "{auth_type}").as_deref(), Some("PLAIN"));
        let null = facts.mail_macros("<>");
        assert_eq!(get(&null, "{mail_addr}").as_deref(), Some(""));
        let rcpt = rcpt_macros("<b@example.org>");
        assert_eq!(get(&rcpt, "{rcpt_addr}").as_deref(), Some("b@example.org"));
        assert_eq!(get(&rcpt, "{rcpt_host}").as_deref(), Some("example.org"));
    }
}
