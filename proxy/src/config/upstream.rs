//! `[upstream]`, validated: where the MTA is, how it learns the client, its timeouts,
//! reuse of idle sessions and TLS toward it.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{TlsMode, positive_usize};

/// How the upstream learns the real client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAddressMode {
    /// Not at all: the upstream sees the proxy's address.
    None,
    /// Postfix's XCLIENT command (ADDR, PORT, NAME, REVERSE_NAME, HELO, PROTO, LOGIN,
    /// DESTADDR, DESTPORT).
    Xclient,
    /// A PROXY protocol version 1 header (text).
    ProxyV1,
    /// A PROXY protocol version 2 header (binary).
    ProxyV2,
}

impl ClientAddressMode {
    /// Its name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            ClientAddressMode::None => "none",
            ClientAddressMode::Xclient => "xclient",
            ClientAddressMode::ProxyV1 => "proxy-v1",
            ClientAddressMode::ProxyV2 => "proxy-v2",
        }
    }
}

/// Where the upstream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// Real MTAs at `host:port` (`address`, or `servers` for several that take over
    /// for each other).
    Servers(Vec<String>),
    /// The built-in development upstream, writing each message to this folder.
    Development(PathBuf),
}

/// `[upstream]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Where to connect.
    pub target: UpstreamTarget,
    /// How the real client address reaches the upstream.
    pub client_address: ClientAddressMode,
    /// Look the client's host name up (PTR, then forward-confirmed) for XCLIENT NAME
    /// and REVERSE_NAME and the Received field.
    pub client_name_lookup: bool,
    /// Put a Received trace field at the top of each message sent upstream.
    pub received_header: bool,
    /// Timeouts of the client side of the relay (RFC 5321 §4.5.3.2).
    pub timeouts: UpstreamTimeouts,
    /// How often the upstream's extensions are probed again when no session did it.
    pub capabilities_refresh: Duration,
    /// How long a client's EHLO waits for them when none are known yet.
    pub capabilities_wait: Duration,
    /// Keeping idle upstream sessions for later client sessions.
    pub reuse: ReuseConfig,
    /// Which of several servers a session tries first.
    pub balance: Balance,
    /// How long a server that failed is passed over (tried only when every other
    /// one is down too).
    pub down_for: Duration,
    /// TLS toward the upstream.
    pub tls: UpstreamTlsConfig,
    /// When a client's upstream session starts opening.
    pub open: OpenAt,
}

/// When a client's upstream session starts opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpenAt {
    /// As soon as the client is let in: connect, PROXY header, TLS and the upstream's
    /// greeting overlap the client's greeting and EHLO too; EHLO, STARTTLS and
    /// XCLIENT follow once the client's HELO name is known. Each client let in costs
    /// the upstream a connection (an smtpd process), greeting or not. Where the client
    /// may start TLS or log in at the proxy after EHLO, it opens as `Ehlo` does.
    Connect,
    /// In the background once the client's HELO or EHLO was accepted, so connect,
    /// greeting, EHLO, STARTTLS and XCLIENT overlap the client's own round trips and
    /// MAIL pays only its own. Not at an EHLO that offered STARTTLS to a client in
    /// plain text, nor before an AUTH the proxy checks itself: the session would
    /// have to start over after them.
    #[default]
    Ehlo,
    /// When MAIL arrives: no upstream session for a client that sends none.
    Mail,
}

/// Which of several servers a session tries first; the others follow in order when
/// it fails before the client heard anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The first server that is up, in the order written: the rest are backups.
    #[default]
    Primary,
    /// Each session starts at the next server that is up, in turn.
    RoundRobin,
}

/// Where the upstream's certificate is verified against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's root certificates.
    #[default]
    SystemRoots,
    /// The CA certificates in this PEM file.
    CaFile(PathBuf),
    /// No verification (loopback upstreams only).
    Insecure,
}

/// TLS toward the upstream, validated. Start-up reads the trust anchors and builds
/// the TLS connector; parsing reads no file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamTlsConfig {
    /// None, STARTTLS after EHLO, or TLS from the first byte.
    pub mode: TlsMode,
    /// What the upstream's certificate is verified against.
    pub trust: Trust,
    /// The name the upstream's certificate must carry.
    pub server_name: String,
    /// The line of `tls_ca` (or of `tls`), for start-up errors.
    pub line: Option<usize>,
}

/// `[upstream.reuse]`: idle upstream sessions kept for the next client session, like
/// Postfix's own SMTP connection cache. Off by default: each client session then has
/// its own upstream session, closed with QUIT when the client leaves. Only possible with
/// `client_address = "none"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReuseConfig {
    /// How long an idle upstream session is kept; "0s" turns reuse off. Keep it well
    /// below the upstream's own idle timeout (Postfix: smtpd_timeout, 300s).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Idle upstream sessions kept at most (each holds an smtpd process upstream).
    pub max_idle: usize,
    /// Client sessions one upstream session serves before it is closed.
    #[serde(deserialize_with = "positive_usize")]
    pub max_uses: usize,
}

impl Default for ReuseConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::ZERO,
            max_idle: 16,
            max_uses: 100,
        }
    }
}

impl ReuseConfig {
    /// True if idle sessions are kept at all.
    pub fn enabled(&self) -> bool {
        !self.idle_timeout.is_zero() && self.max_idle > 0
    }
}

/// Timeouts towards the upstream, RFC 5321 §4.5.3.2 defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeouts {
    /// TCP connect.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// The 220 greeting (§4.5.3.2.1: 5 min).
    #[serde(with = "humantime_serde")]
    pub greeting: Duration,
    /// Replies to EHLO, XCLIENT, MAIL, RCPT, RSET, VRFY, EXPN, QUIT (§4.5.3.2.2-3: 5 min).
    #[serde(with = "humantime_serde")]
    pub command: Duration,
    /// The reply to DATA (§4.5.3.2.4: 2 min).
    #[serde(with = "humantime_serde")]
    pub data_init: Duration,
    /// Each write of message data (§4.5.3.2.5: 3 min).
    #[serde(with = "humantime_serde")]
    pub data_block: Duration,
    /// The reply to the final dot (§4.5.3.2.6: 10 min).
    #[serde(with = "humantime_serde")]
    pub data_termination: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_termination: Duration::from_secs(600),
        }
    }
}
