//! Configuration: the TOML file as written ([`RawConfig`], serde with
//! `deny_unknown_fields` and RFC 5321 defaults), and the validated [`Config`] the rest
//! of the proxy uses, which cannot hold an invalid combination. Every error names the
//! key and the line it is on. `config/portcullis.toml` documents every key in place.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};
use toml::Spanned;

pub use crate::{
    auth::Mechanism,
    smtp::data::BareLineEndings,
    tls::{
        client::{Trust, UpstreamTls},
        server::CertificateFiles,
    },
};

/// A configuration error: which key, on which line, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}{key}: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct ConfigError {
    /// The dotted key path, e.g. `listener[0].address`.
    pub key: String,
    /// The 1-based line of the offending value, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// Something in a valid configuration that is probably not what the operator wants
/// (written at start-up and by `portcullis check`); same shape as [`ConfigError`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{key}: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct ConfigWarning {
    /// The dotted key path.
    pub key: String,
    /// The 1-based line of the value, when known.
    pub line: Option<usize>,
    /// What may be wrong, and what to do.
    pub message: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Identity and process-wide limits.
    pub server: ServerConfig,
    /// The downstream SMTP server's limits and policies.
    pub smtp: SmtpConfig,
    /// The ports to listen on (at least one).
    pub listeners: Vec<ListenerConfig>,
    /// The MTA behind the proxy.
    pub upstream: UpstreamConfig,
    /// The plugins by name; listeners refer to them.
    pub plugins: std::collections::BTreeMap<String, PluginConfig>,
    /// Where messages wait while DATA plugins look at them.
    pub spool: SpoolConfig,
    /// What a plugin's quarantine mark does.
    pub quarantine: QuarantineConfig,
    /// The resolver plugins' DNS lookups go through.
    pub dns: DnsConfig,
    /// Certificates offered to clients.
    pub tls: TlsConfig,
    /// Failed-AUTH throttling per client address.
    pub auth_throttle: ThrottleConfig,
    /// The key-value store plugins share.
    pub kv: KvConfig,
    /// Limits per client address, applied before any plugin runs.
    pub client_limits: ClientLimitsConfig,
    /// What validation found doubtful; the proxy runs, and says so.
    pub warnings: Vec<ConfigWarning>,
}

/// `[client_limits]`: what one client address may hold, checked when a connection is
/// accepted, before any plugin runs; past a limit: 421 4.7.0 and close.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimitsConfig {
    /// Sessions one address may have open at once (Postfix's
    /// `smtpd_client_connection_count_limit`, 50); 0: no limit.
    pub max_sessions: usize,
    /// New sessions one address may open per `window`, refused attempts included
    /// (Postfix's `smtpd_client_connection_rate_limit`); 0: no limit, the default.
    pub max_new_sessions: usize,
    /// The window `max_new_sessions` counts in.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for ClientLimitsConfig {
    fn default() -> Self {
        Self {
            max_sessions: 50,
            max_new_sessions: 0,
            window: Duration::from_secs(60),
        }
    }
}

/// `[kv]`: the in-memory key-value store that plugins share.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    /// Most keys held at once. When it is reached and a sweep finds nothing expired,
    /// new keys are not stored (existing ones still change) and a warning is logged.
    pub max_entries: std::num::NonZeroUsize,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            max_entries: crate::kv::DEFAULT_MAX_ENTRIES,
        }
    }
}

/// `[tls]`: the certificates offered to clients on listeners with TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chains and keys; the one covering the client's SNI name is used,
    /// the first one when none does.
    pub certificate: Vec<CertificateFiles>,
    /// Longest time a TLS handshake may take.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            certificate: Vec::new(),
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// `[auth_throttle]`: failed AUTH attempts per client address, and how many password
/// checks run at once. An attempt counts as a failure from the moment it is checked
/// until it succeeds, so concurrent attempts cannot outrun the count. Each failure
/// waits `delay × failures` (at most `max_delay`) before its 535; at `max_failures`
/// within `window` the client gets 421 4.7.0.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Failures allowed per address within the window.
    #[serde(deserialize_with = "positive_u32")]
    pub max_failures: u32,
    /// Client addresses whose failures are remembered at once, in a part of the store
    /// kept for the throttle alone. When it is full of live counts a new address gets
    /// 454 4.7.0 at AUTH instead of an uncounted guess.
    #[serde(deserialize_with = "positive_usize")]
    pub max_clients: usize,
    /// Password checks that run at once (each Argon2 check holds its memory cost,
    /// 19 MiB by default, while it runs); 0: one per CPU core. A client address has
    /// at most one check running; the others wait their turn.
    pub concurrent_checks: usize,
    /// Longest wait for a turn to be checked; past it: 454 4.7.0.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// How long failures are remembered (from the first one).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Added delay per failure.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Longest delay.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures: 10,
            max_clients: 100_000,
            concurrent_checks: 0,
            check_timeout: Duration::from_secs(30),
            window: Duration::from_secs(15 * 60),
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// TLS on a listener or toward the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext only.
    #[default]
    None,
    /// Plaintext, upgraded by STARTTLS (RFC 3207).
    Starttls,
    /// TLS from the first byte (port 465, RFC 8314).
    Implicit,
}

/// Who checks the credentials of SMTP AUTH on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// AUTH is not offered.
    #[default]
    Off,
    /// The proxy checks them (credentials file or verifier plugin).
    Edge,
    /// The upstream does: the exchange is relayed.
    Passthrough,
}

/// `[listener.auth]`, validated.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Who checks credentials.
    pub mode: AuthMode,
    /// The mechanisms offered, in order.
    pub mechanisms: Vec<Mechanism>,
    /// Offer AUTH before TLS too.
    pub allow_plaintext: bool,
    /// MAIL without AUTH gets 530 5.7.0.
    pub required: bool,
    /// Edge mode: the file of logins and password hashes.
    pub credentials: Option<PathBuf>,
    /// Edge mode: the plugin that checks passwords instead of a file.
    pub verifier: Option<String>,
    /// Which logins may use which sender addresses or domains.
    pub sender_logins: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    mode: AuthMode,
    mechanisms: Option<Vec<Mechanism>>,
    #[serde(default)]
    allow_plaintext: bool,
    #[serde(default)]
    required: bool,
    credentials: Option<PathBuf>,
    verifier: Option<String>,
    sender_logins: Option<PathBuf>,
    /// The listener's `require_tls`, also accepted here.
    #[serde(default)]
    require_tls: bool,
}

/// `[dns]`: the resolver behind the plugins' DNS lookups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Nameservers as `ip:port`; the system's (resolv.conf) if empty.
    pub nameservers: Vec<SocketAddr>,
    /// Longest wait for one query.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The hosts file asked first for client names (the first entry for an address
    /// names it, as in the system's resolver); `/etc/hosts` when `nameservers` is
    /// empty, none otherwise.
    pub hosts_file: Option<PathBuf>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
            hosts_file: None,
        }
    }
}

/// `[spool]`: messages are spooled only when a plugin of the chain wants DATA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Body octets held in memory per message; past it the body goes to a file.
    pub memory_limit: usize,
    /// Folder for the (unnamed) spool files; the system's temporary folder if unset.
    pub directory: Option<PathBuf>,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            memory_limit: 1024 * 1024,
            directory: None,
        }
    }
}

/// `[quarantine]`: what happens to a message a plugin marked for quarantine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuarantineConfig {
    /// A header field added with the plugin's reason, so the MTA can route on it.
    pub header: String,
    /// If set, the message goes to this mailbox only, instead of its recipients.
    pub redirect: Option<String>,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        Self {
            header: "X-Portcullis-Quarantine".into(),
            redirect: None,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The name used in the greeting, in EHLO replies, and in our EHLO upstream.
    pub hostname: String,
    /// Concurrent client connections over all listeners; past it: 421 4.7.0 and close.
    pub max_connections: usize,
    /// Threads that run sessions: 0 means one per CPU core, 1 a single-threaded runtime
    /// (the least CPU per message when the proxy shares a small machine).
    pub worker_threads: usize,
    /// Plugin instances alive at once that take memory and stack from a pool reserved
    /// at start-up (at most `max_connections` × the longest chain); the rest get them
    /// on demand. 0: every instance on demand.
    pub plugin_pool_size: u32,
    /// On SIGTERM/SIGINT, how long running transactions may take to finish.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            max_connections: 1000,
            worker_threads: 0,
            plugin_pool_size: 1024,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// What to answer to VRFY or EXPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyPolicy {
    /// Answer locally without revealing anything (VRFY: 252, EXPN: 502).
    Refuse,
    /// Pass the command to the upstream and relay its reply.
    Relay,
}

/// `[smtp]`: limits and policies of the downstream server, RFC 5321 defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4: at least 512).
    #[serde(deserialize_with = "at_least_512")]
    pub command_line_limit: usize,
    /// Longest line of message text, CRLF included (RFC 5321 §4.5.3.1.6: at least 1000).
    #[serde(deserialize_with = "at_least_1000")]
    pub text_line_limit: usize,
    /// Recipients per message; past it: 452 4.5.3 (RFC 5321 §4.5.3.1.8: at least 100).
    #[serde(deserialize_with = "positive_usize")]
    pub max_recipients: usize,
    /// Largest message in octets, announced with SIZE; past it: 552 5.3.4.
    #[serde(deserialize_with = "positive_u64")]
    pub max_message_size: u64,
    /// Error replies a client may provoke before it is disconnected with 421.
    #[serde(deserialize_with = "positive_usize")]
    pub max_errors: usize,
    /// Commands that move no mail (NOOP, RSET, HELP, VRFY, EXPN) a session may send
    /// between messages; one more gets 421 4.7.0 and the session ends (Postfix's
    /// `smtpd_junk_command_limit`, 100). Each message accepted starts the count again.
    #[serde(deserialize_with = "positive_usize")]
    pub max_junk_commands: usize,
    /// Bare CR or LF inside a message: `reject` (5xx after the message) or `normalize`.
    pub bare_line_endings: BareLineEndings,
    /// VRFY: `refuse` (252) or `relay` to the upstream.
    pub vrfy: VerifyPolicy,
    /// EXPN: `refuse` (502) or `relay` to the upstream.
    pub expn: VerifyPolicy,
    /// Longest time for one whole command line to arrive (RFC 5321 §4.5.3.2.7: 5 min).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Longest wait for the next chunk of message data (§4.5.3.2.5: 3 min).
    #[serde(with = "humantime_serde")]
    pub data_block_timeout: Duration,
    /// Longest time for a whole message to arrive, from 354 to the final dot.
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            command_line_limit: 512,
            text_line_limit: 1000,
            max_recipients: 100,
            max_message_size: 50 * 1024 * 1024,
            max_errors: 10,
            max_junk_commands: 100,
            bare_line_endings: BareLineEndings::Reject,
            vrfy: VerifyPolicy::Refuse,
            expn: VerifyPolicy::Refuse,
            command_timeout: Duration::from_secs(300),
            data_block_timeout: Duration::from_secs(180),
            data_timeout: Duration::from_secs(600),
        }
    }
}

/// One `[[listener]]`.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// A unique name, used in logs.
    pub name: String,
    /// The address to bind (`127.0.0.1:0` picks a free port).
    pub address: SocketAddr,
    /// The plugin chain of this listener, in order (names of `[plugins.NAME]`).
    pub plugins: Vec<String>,
    /// TLS toward clients.
    pub tls: TlsMode,
    /// MAIL before TLS gets 530 5.7.0.
    pub require_tls: bool,
    /// SMTP AUTH.
    pub auth: AuthConfig,
}

/// What a session gets when a plugin fails (trap, timeout, memory, invalid result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// 451 4.3.0: try again later (the default: nothing is lost).
    #[default]
    Tempfail,
    /// Skip the plugin for this stage, as if it had said continue.
    Continue,
    /// 550 5.3.0: refuse.
    Reject,
}

/// One `[plugins.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The component (`.wasm`, built for wasm32-wasip2), relative to the working directory.
    pub path: PathBuf,
    /// Longest time one hook call may run: 1 ms to 10 minutes.
    #[serde(
        default = "default_plugin_timeout",
        deserialize_with = "plugin_timeout"
    )]
    pub timeout_ms: u64,
    /// Most linear memory one instance may grow to: 1 MiB to 4 GiB (wasm32's whole
    /// address space). Too little for the plugin to start is a start-up error.
    #[serde(default = "default_plugin_memory", deserialize_with = "plugin_memory")]
    pub memory_mb: u64,
    /// What the session gets when the plugin fails.
    #[serde(default)]
    pub on_error: OnError,
    /// The plugin's own configuration, handed to its `init` as TOML text.
    #[serde(default)]
    pub config: toml::Table,
    /// Whether a plugin that declares itself shareable serves all sessions from a few
    /// shared instances (true) or gets an instance per session anyway (false).
    #[serde(default = "default_share_instances")]
    pub share_instances: bool,
    /// The line of its `[plugins.NAME]` table, for start-up errors about it.
    #[serde(skip)]
    pub line: Option<usize>,
}

fn plugin_timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    in_range(
        deserializer,
        1..=600_000,
        "1 ms to 10 minutes: 0 would fail every call",
    )
}

fn plugin_memory<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    in_range(
        deserializer,
        1..=4096,
        "1 to 4096 MiB (a WebAssembly memory's whole range)",
    )
}

fn in_range<'de, D: Deserializer<'de>>(
    deserializer: D,
    range: std::ops::RangeInclusive<u64>,
    why: &str,
) -> Result<u64, D::Error> {
    let value = u64::deserialize(deserializer)?;
    if !range.contains(&value) {
        return Err(serde::de::Error::custom(format!("must be {why}")));
    }
    Ok(value)
}

fn default_share_instances() -> bool {
    true
}

fn default_plugin_timeout() -> u64 {
    200
}

fn default_plugin_memory() -> u64 {
    32
}

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
    /// A real MTA at `host:port`.
    Address(String),
    /// The built-in development upstream, writing each message to this folder.
    Development(PathBuf),
}

/// `[upstream]`, validated.
#[derive(Debug, Clone)]
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
    /// TLS toward the upstream.
    pub tls: UpstreamTlsConfig,
}

/// TLS toward the upstream, validated.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTlsConfig {
    /// None, STARTTLS after EHLO, or TLS from the first byte.
    pub mode: TlsMode,
    /// The handshake runner, with the trust anchors read (`None` without TLS).
    pub connector: Option<UpstreamTls>,
}

/// `[upstream.reuse]`: idle upstream sessions kept for the next client session, like
/// Postfix's own SMTP connection cache. Off by default: each client session then has
/// its own upstream session, closed with QUIT when the client leaves. Only possible with
/// `client_address = "none"`.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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

/// The file as written, before cross-field validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    smtp: SmtpConfig,
    #[serde(default)]
    listener: Vec<RawListener>,
    upstream: Spanned<RawUpstream>,
    #[serde(default)]
    plugins: std::collections::BTreeMap<String, Spanned<PluginConfig>>,
    #[serde(default)]
    spool: SpoolConfig,
    quarantine: Option<Spanned<QuarantineConfig>>,
    #[serde(default)]
    dns: DnsConfig,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default)]
    auth_throttle: ThrottleConfig,
    #[serde(default)]
    kv: KvConfig,
    client_limits: Option<Spanned<ClientLimitsConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    address: SocketAddr,
    plugins: Option<Spanned<Vec<String>>>,
    tls: Option<Spanned<TlsMode>>,
    require_tls: Option<Spanned<bool>>,
    auth: Option<Spanned<RawAuth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    address: Option<Spanned<String>>,
    development_folder: Option<Spanned<PathBuf>>,
    client_address: Option<Spanned<ClientAddressMode>>,
    client_name_lookup: Option<Spanned<bool>>,
    #[serde(default)]
    received_header: bool,
    #[serde(default)]
    timeouts: UpstreamTimeouts,
    #[serde(default = "default_capabilities_refresh", with = "humantime_serde")]
    capabilities_refresh: Duration,
    #[serde(default = "default_capabilities_wait", with = "humantime_serde")]
    capabilities_wait: Duration,
    reuse: Option<Spanned<ReuseConfig>>,
    tls: Option<Spanned<TlsMode>>,
    tls_ca: Option<Spanned<PathBuf>>,
    #[serde(default)]
    tls_insecure: bool,
    tls_server_name: Option<String>,
}

fn default_capabilities_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_capabilities_wait() -> Duration {
    Duration::from_secs(3)
}

impl Config {
    /// Parses and validates a configuration file's text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let deserializer = toml::Deserializer::parse(text).map_err(|error| ConfigError {
            key: "(syntax)".into(),
            line: error.span().map(|span| line_of(span.start)),
            message: error.message().trim().to_string(),
        })?;
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            // A value wrapped in `Spanned` shows up in the path under serde_spanned's
            // private field name; users know the key without it.
            let key = error
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = error.into_inner();
            ConfigError {
                key,
                line: inner.span().map(|span| line_of(span.start)),
                message: inner.message().trim().to_string(),
            }
        })?;
        raw.validate(&line_of)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            key: path.display().to_string(),
            line: None,
            message: format!("cannot read the file: {error}"),
        })?;
        Config::parse(&text)
    }
}

fn at_least<'de, D: Deserializer<'de>>(
    deserializer: D,
    minimum: usize,
    why: &str,
) -> Result<usize, D::Error> {
    let value = usize::deserialize(deserializer)?;
    if value < minimum {
        return Err(serde::de::Error::custom(format!(
            "must be at least {minimum} ({why})"
        )));
    }
    Ok(value)
}

fn at_least_512<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    at_least(deserializer, 512, "RFC 5321 §4.5.3.1.4")
}

fn at_least_1000<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    at_least(deserializer, 1000, "RFC 5321 §4.5.3.1.6")
}

fn positive_usize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    at_least(deserializer, 1, "zero would refuse everything")
}

fn positive_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = u32::deserialize(deserializer)?;
    if value == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(value)
}

fn positive_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = u64::deserialize(deserializer)?;
    if value == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(value)
}

mod validate;

#[cfg(test)]
mod tests;
