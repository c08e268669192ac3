//! Configuration: the TOML file as written (`raw.rs`: serde with
//! `deny_unknown_fields` and RFC 5321 defaults), and the validated [`Config`] the rest
//! of the proxy uses, which cannot hold an invalid combination. Every error names the
//! key and the line it is on. `config/portcullis.toml` documents every key in place.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

pub use crate::smtp::{Mechanism, data::BareLineEndings};

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
    /// The MTA behind the proxy: every listener's that names no other.
    pub upstream: UpstreamConfig,
    /// More upstreams by name (`[upstreams.NAME]`), for listeners that name one:
    /// port 587 to the submission service, say.
    pub upstreams: std::collections::BTreeMap<String, UpstreamConfig>,
    /// The plugins by name; listeners refer to them.
    pub plugins: std::collections::BTreeMap<String, PluginConfig>,
    /// The milters by name; listeners' chains name them beside plugins.
    pub milters: std::collections::BTreeMap<String, MilterConfig>,
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
    /// The metrics endpoint, if any.
    pub metrics: Option<MetricsConfig>,
    /// The audit trail, if on.
    pub audit: Option<AuditConfig>,
    /// What validation found doubtful; the proxy runs, and says so.
    pub warnings: Vec<ConfigWarning>,
    /// The file it was read from, which a reload reads again; `None` when it was
    /// parsed from text (a reload then prepares the same configuration again, reading
    /// its certificates, credentials and plugin files anew).
    pub source: Option<PathBuf>,
}

/// `[metrics]`: Prometheus' text exposition on `/metrics`, with `/health` and `/ready`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where the endpoint listens; keep it on loopback or a management network.
    pub address: SocketAddr,
}

/// `[audit]`: one record per message, as a log event and, with `path`, in a file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The file records are appended to, one JSON object per line; without it the
    /// records are only log events (target `portcullis::audit`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The file is rotated (to `path.1`, `path.2` …) once it passes this size, in
    /// MiB: 1 to 100,000 (default 100).
    #[serde(default = "default_audit_size", deserialize_with = "audit_size")]
    pub max_size_mb: u64,
    /// How many rotated files are kept: 1 to 1,000 (default 10).
    #[serde(default = "default_audit_keep", deserialize_with = "audit_keep")]
    pub keep: usize,
}

fn default_audit_size() -> u64 {
    100
}

fn default_audit_keep() -> usize {
    10
}

fn audit_size<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = u64::deserialize(deserializer)?;
    if !(1..=100_000).contains(&value) {
        return Err(serde::de::Error::custom("must be 1 to 100000 (MiB)"));
    }
    Ok(value)
}

fn audit_keep<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let value = usize::deserialize(deserializer)?;
    if !(1..=1000).contains(&value) {
        return Err(serde::de::Error::custom("must be 1 to 1000"));
    }
    Ok(value)
}

/// The default cap on keys (`kv.max_entries`): a million counters keyed by client
/// address took 206 MiB.
pub const DEFAULT_MAX_ENTRIES: std::num::NonZeroUsize =
    std::num::NonZeroUsize::new(1_000_000).unwrap();

/// One certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// With `[kv] backend = "redis"` the failures are counted there, so every proxy
    /// sharing it sees them; this is what an attempt gets when Redis cannot count it.
    pub on_store_error: ThrottleStoreError,
}

/// What an AUTH attempt gets when the shared store cannot count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ThrottleStoreError {
    /// Counted in this proxy's own memory until the store is back: logins keep
    /// working, and a guesser gets `max_failures` per proxy meanwhile.
    #[default]
    Local,
    /// 454 4.7.0: no password is checked until the store is back.
    Tempfail,
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
            on_store_error: ThrottleStoreError::Local,
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

/// `[dns]`: the resolver behind the plugins' DNS lookups.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// A Unix socket on which `portcullis reload` asks the running proxy to reload
    /// and hears the outcome; only the proxy's own user may use it (mode 0600).
    pub control_socket: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            max_connections: 1000,
            worker_threads: 0,
            plugin_pool_size: 1024,
            drain_timeout: Duration::from_secs(30),
            control_socket: None,
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
    /// The chain of this listener, in order: names of `[plugins.NAME]` and
    /// `[milters.NAME]`.
    pub plugins: Vec<String>,
    /// TLS toward clients.
    pub tls: TlsMode,
    /// MAIL before TLS gets 530 5.7.0.
    pub require_tls: bool,
    /// SMTP AUTH.
    pub auth: AuthConfig,
    /// Behind load balancers: the PROXY protocol header each connection starts with.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
    /// This listener's own `[client_limits]`, counted apart from the other
    /// listeners'; `None`: the global ones, whose counts all such listeners share.
    pub client_limits: Option<ClientLimitsConfig>,
    /// The `[upstreams.NAME]` its sessions relay to; `None`: `[upstream]`.
    pub upstream: Option<String>,
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
        let mut config = Config::parse(&text)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }
}

mod client_limits;
mod de;
mod kv;
mod milters;
mod plugins;
mod proxy_protocol;
mod raw;
mod upstream;
mod validate;

pub use client_limits::ClientLimitsConfig;
use de::*;
pub use kv::{KvBackend, KvConfig, RedisConfig};
pub use milters::{MilterAddress, MilterConfig};
pub use plugins::{OnError, PluginConfig, PluginMode};
pub use proxy_protocol::{ProxyProtocolConfig, ProxyVersions};

use raw::RawConfig;
pub use upstream::{
    Balance, ClientAddressMode, OpenAt, ReuseConfig, Trust, UpstreamConfig, UpstreamTarget,
    UpstreamTimeouts, UpstreamTlsConfig,
};

#[cfg(test)]
mod tests;
