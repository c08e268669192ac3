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
    /// The key-value store shared by plugins and the AUTH throttle.
    pub kv: KvConfig,
}

/// `[kv]`: the in-memory key-value store that plugins and the AUTH throttle share.
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

/// `[auth_throttle]`: failed AUTH attempts per client address, counted in the shared
/// key-value store. Each failure waits `delay × failures` (at most `max_delay`) before
/// its 535; past `max_failures` within `window` the client gets 421 4.7.0.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Failures allowed per address within the window.
    pub max_failures: u32,
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
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
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
    /// Longest time one hook call may run.
    #[serde(default = "default_plugin_timeout")]
    pub timeout_ms: u64,
    /// Most linear memory one instance may grow to.
    #[serde(default = "default_plugin_memory")]
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
    /// Postfix's XCLIENT command (ADDR, PORT, NAME, HELO, PROTO).
    Xclient,
    /// A PROXY protocol version 1 header (text).
    ProxyV1,
    /// A PROXY protocol version 2 header (binary).
    ProxyV2,
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
    /// Timeouts of the client side of the relay (RFC 5321 §4.5.3.2).
    pub timeouts: UpstreamTimeouts,
    /// How often the upstream's extensions are probed again when no session did it.
    pub capabilities_refresh: Duration,
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
    plugins: std::collections::BTreeMap<String, PluginConfig>,
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
    #[serde(default = "default_client_address")]
    client_address: ClientAddressMode,
    #[serde(default)]
    timeouts: UpstreamTimeouts,
    #[serde(default = "default_capabilities_refresh", with = "humantime_serde")]
    capabilities_refresh: Duration,
    reuse: Option<Spanned<ReuseConfig>>,
    tls: Option<Spanned<TlsMode>>,
    tls_ca: Option<Spanned<PathBuf>>,
    #[serde(default)]
    tls_insecure: bool,
    tls_server_name: Option<String>,
}

fn default_client_address() -> ClientAddressMode {
    ClientAddressMode::None
}

fn default_capabilities_refresh() -> Duration {
    Duration::from_secs(300)
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

/// Maps a byte offset of the config text to its line number.
type LineOf<'a> = &'a dyn Fn(usize) -> usize;

/// An error at `key`, on the line of byte `offset`.
fn error_at(line_of: LineOf, key: &str, offset: usize, message: &str) -> ConfigError {
    ConfigError {
        key: key.into(),
        line: Some(line_of(offset)),
        message: message.into(),
    }
}

impl RawConfig {
    fn validate(self, line_of: LineOf) -> Result<Config, ConfigError> {
        if self.listener.is_empty() {
            return Err(ConfigError {
                key: "listener".into(),
                line: None,
                message: "at least one [[listener]] is required".into(),
            });
        }
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        for (index, raw) in self.listener.into_iter().enumerate() {
            let listener = validate_listener(index, raw, &self.plugins, &self.tls, line_of)?;
            if listeners.iter().any(|l| l.name == listener.config.name) {
                return Err(error_at(
                    line_of,
                    &format!("listener[{index}].name"),
                    listener.name_offset,
                    "another listener has this name",
                ));
            }
            listeners.push(listener.config);
        }
        let upstream = validate_upstream(self.upstream, line_of)?;
        let quarantine = validate_quarantine(self.quarantine, line_of)?;
        Ok(Config {
            server: self.server,
            smtp: self.smtp,
            plugins: self.plugins,
            spool: self.spool,
            quarantine,
            dns: self.dns,
            listeners,
            upstream,
            tls: self.tls,
            auth_throttle: self.auth_throttle,
            kv: self.kv,
        })
    }
}

/// A listener's validated config, and where its name is (for the duplicate check).
struct ValidListener {
    config: ListenerConfig,
    name_offset: usize,
}

/// Checks `[[listener]]` number `index`: its name, that its plugins are configured,
/// that TLS has a certificate, and that TLS and AUTH requirements fit together.
fn validate_listener(
    index: usize,
    raw: RawListener,
    plugin_configs: &std::collections::BTreeMap<String, PluginConfig>,
    tls_config: &TlsConfig,
    line_of: LineOf,
) -> Result<ValidListener, ConfigError> {
    let error = |key: &str, offset: usize, message: &str| {
        error_at(
            line_of,
            &format!("listener[{index}].{key}"),
            offset,
            message,
        )
    };
    let name_offset = raw.name.span().start;
    if raw.name.get_ref().is_empty() {
        return Err(error("name", name_offset, "must not be empty"));
    }
    let (plugins_offset, plugins) = raw
        .plugins
        .map(|p| (p.span().start, p.into_inner()))
        .unwrap_or_default();
    if let Some(missing) = plugins
        .iter()
        .find(|name| !plugin_configs.contains_key(*name))
    {
        return Err(error(
            "plugins",
            plugins_offset,
            &format!("no [plugins.{missing}] is configured"),
        ));
    }
    let (tls_offset, tls) = raw
        .tls
        .map(|t| (t.span().start, t.into_inner()))
        .unwrap_or_default();
    if tls != TlsMode::None && tls_config.certificate.is_empty() {
        return Err(error(
            "tls",
            tls_offset,
            "TLS needs a certificate: add a [[tls.certificate]] with cert and key",
        ));
    }
    let auth_offset = raw.auth.as_ref().map(|a| a.span().start);
    let auth_requires_tls = raw.auth.as_ref().is_some_and(|a| a.get_ref().require_tls);
    let (require_tls_key, require_tls) = match raw.require_tls {
        Some(r) => (
            "require_tls",
            Some((r.span().start, *r.get_ref() || auth_requires_tls)),
        ),
        None => (
            "auth.require_tls",
            auth_offset.map(|offset| (offset, auth_requires_tls)),
        ),
    };
    if let Some((offset, true)) = require_tls
        && tls == TlsMode::None
    {
        return Err(error(
            require_tls_key,
            offset,
            "TLS cannot be required on a listener with tls = \"none\"",
        ));
    }
    let auth = match raw.auth {
        Some(auth) => validate_auth(index, auth, plugin_configs, line_of)?,
        None => AuthConfig::default(),
    };
    if let Some(offset) = auth_offset
        && auth.mode != AuthMode::Off
        && tls == TlsMode::None
        && !auth.allow_plaintext
    {
        return Err(error(
            "auth.mode",
            offset,
            "AUTH is only offered over TLS and this listener has none: set tls, or allow_plaintext = true",
        ));
    }
    Ok(ValidListener {
        config: ListenerConfig {
            name: raw.name.into_inner(),
            address: raw.address,
            plugins,
            tls,
            require_tls: require_tls.is_some_and(|(_, r)| r),
            auth,
        },
        name_offset,
    })
}

/// Checks `[upstream]`: exactly one of address and development_folder, no reuse
/// with a PROXY header, and its TLS settings.
fn validate_upstream(
    raw: Spanned<RawUpstream>,
    line_of: LineOf,
) -> Result<UpstreamConfig, ConfigError> {
    let error = |key: &str, offset: usize, message: &str| error_at(line_of, key, offset, message);
    let upstream_offset = raw.span().start;
    let upstream = raw.into_inner();
    let target = match (
        upstream.address.clone(),
        upstream.development_folder.clone(),
    ) {
        (Some(address), None) => {
            let (host, port) = address.get_ref().rsplit_once(':').unwrap_or(("", ""));
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(error(
                    "upstream.address",
                    address.span().start,
                    "expected host:port",
                ));
            }
            UpstreamTarget::Address(address.into_inner())
        }
        (None, Some(folder)) => UpstreamTarget::Development(folder.into_inner()),
        (Some(address), Some(_)) => {
            return Err(error(
                "upstream.address",
                address.span().start,
                "set either address or development_folder, not both",
            ));
        }
        (None, None) => {
            return Err(error(
                "upstream",
                upstream_offset,
                "set address (a real MTA) or development_folder (the built-in development upstream)",
            ));
        }
    };
    let proxy_header = matches!(
        upstream.client_address,
        ClientAddressMode::ProxyV1 | ClientAddressMode::ProxyV2
    );
    if let Some(reuse) = &upstream.reuse
        && proxy_header
        && reuse.get_ref().enabled()
    {
        return Err(error(
            "upstream.reuse.idle_timeout",
            reuse.span().start,
            "upstream sessions cannot be reused with the PROXY protocol (its header describes one client)",
        ));
    }
    let tls = validate_upstream_tls(&upstream, &target, line_of)?;
    Ok(UpstreamConfig {
        target,
        client_address: upstream.client_address,
        timeouts: upstream.timeouts,
        capabilities_refresh: upstream.capabilities_refresh,
        reuse: upstream.reuse.map(Spanned::into_inner).unwrap_or_default(),
        tls,
    })
}

/// Checks `[quarantine]`: a valid header field name and redirect mailbox.
fn validate_quarantine(
    raw: Option<Spanned<QuarantineConfig>>,
    line_of: LineOf,
) -> Result<QuarantineConfig, ConfigError> {
    let (offset, quarantine) = raw
        .map(|q| (q.span().start, q.into_inner()))
        .unwrap_or_default();
    if crate::message::HeaderField::new(&quarantine.header, "").is_err() {
        return Err(error_at(
            line_of,
            "quarantine.header",
            offset,
            "not a valid header field name",
        ));
    }
    if let Some(redirect) = &quarantine.redirect
        && !matches!(
            crate::smtp::command::parse(format!("RCPT TO:<{redirect}>").as_bytes()),
            Ok(crate::smtp::Command::Rcpt(_))
        )
    {
        return Err(error_at(
            line_of,
            "quarantine.redirect",
            offset,
            "not a valid mailbox",
        ));
    }
    Ok(quarantine)
}

fn validate_auth(
    index: usize,
    raw: Spanned<RawAuth>,
    plugins: &std::collections::BTreeMap<String, PluginConfig>,
    line_of: LineOf,
) -> Result<AuthConfig, ConfigError> {
    let span = raw.span().start;
    let raw = raw.into_inner();
    let error = |key: &str, message: &str| ConfigError {
        key: format!("listener[{index}].auth.{key}"),
        line: Some(line_of(span)),
        message: message.into(),
    };
    match raw.mode {
        AuthMode::Edge => match (&raw.credentials, &raw.verifier) {
            (None, None) => {
                return Err(error(
                    "credentials",
                    "edge mode needs a credentials file or a verifier plugin",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(error("verifier", "set credentials or verifier, not both"));
            }
            (None, Some(verifier)) if !plugins.contains_key(verifier) => {
                return Err(error(
                    "verifier",
                    &format!("no [plugins.{verifier}] is configured"),
                ));
            }
            _ => {}
        },
        AuthMode::Passthrough | AuthMode::Off => {
            if raw.credentials.is_some() || raw.verifier.is_some() {
                return Err(error(
                    "credentials",
                    "credentials and verifier are for mode = \"edge\" only",
                ));
            }
            if raw.required && raw.mode == AuthMode::Off {
                return Err(error(
                    "required",
                    "AUTH cannot be required when mode = \"off\"",
                ));
            }
        }
    }
    let mechanisms = raw
        .mechanisms
        .unwrap_or_else(|| vec![Mechanism::Plain, Mechanism::Login]);
    if raw.mode != AuthMode::Off && mechanisms.is_empty() {
        return Err(error("mechanisms", "at least one mechanism is needed"));
    }
    Ok(AuthConfig {
        mode: raw.mode,
        mechanisms,
        allow_plaintext: raw.allow_plaintext,
        required: raw.required,
        credentials: raw.credentials,
        verifier: raw.verifier,
        sender_logins: raw.sender_logins,
    })
}

fn validate_upstream_tls(
    upstream: &RawUpstream,
    target: &UpstreamTarget,
    line_of: LineOf,
) -> Result<UpstreamTlsConfig, ConfigError> {
    let Some(mode) = &upstream.tls else {
        return Ok(UpstreamTlsConfig::default());
    };
    let error = |key: &str, span: usize, message: &str| ConfigError {
        key: format!("upstream.{key}"),
        line: Some(line_of(span)),
        message: message.into(),
    };
    let trust = match (&upstream.tls_ca, upstream.tls_insecure) {
        (Some(ca), true) => {
            return Err(error(
                "tls_ca",
                ca.span().start,
                "set tls_ca or tls_insecure, not both",
            ));
        }
        (Some(ca), false) => Trust::CaFile(ca.get_ref().clone()),
        (None, true) => Trust::Insecure,
        (None, false) => Trust::SystemRoots,
    };
    let server_name = match (&upstream.tls_server_name, target) {
        (Some(name), _) => name.clone(),
        (None, UpstreamTarget::Address(address)) => address
            .rsplit_once(':')
            .map(|(host, _)| host.trim_matches(['[', ']']).to_string())
            .unwrap_or_default(),
        (None, UpstreamTarget::Development(_)) => "localhost".into(),
    };
    if *mode.get_ref() == TlsMode::None {
        return Ok(UpstreamTlsConfig::default());
    }
    let key = match trust {
        Trust::CaFile(_) => "tls_ca",
        _ => "tls",
    };
    let span = upstream
        .tls_ca
        .as_ref()
        .map_or(mode.span().start, |ca| ca.span().start);
    let connector =
        UpstreamTls::new(&trust, &server_name).map_err(|e| error(key, span, &e.to_string()))?;
    Ok(UpstreamTlsConfig {
        mode: *mode.get_ref(),
        connector: Some(connector),
    })
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

fn positive_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = u64::deserialize(deserializer)?;
    if value == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n\n[upstream]\naddress = \"127.0.0.1:10025\"\n";

    #[test]
    fn minimal_config_gets_rfc_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.smtp.command_line_limit, 512);
        assert_eq!(config.smtp.text_line_limit, 1000);
        assert_eq!(config.smtp.max_recipients, 100);
        assert_eq!(config.smtp.command_timeout, Duration::from_secs(300));
        assert_eq!(
            config.upstream.timeouts.data_termination,
            Duration::from_secs(600)
        );
        assert_eq!(
            config.upstream.target,
            UpstreamTarget::Address("127.0.0.1:10025".into())
        );
        assert_eq!(
            config.listeners[0].address,
            "127.0.0.1:2525".parse().unwrap()
        );
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let cases: &[(&str, &str, Option<usize>, &str)] = &[
            (
                &MINIMAL.replace("127.0.0.1:2525", "nowhere"),
                "listener[0].address",
                Some(3),
                "invalid socket address",
            ),
            (
                &format!("{MINIMAL}\n[smtp]\ncommand_line_limit = 100\n"),
                "smtp.command_line_limit",
                Some(9),
                "at least 512",
            ),
            (
                &format!("{MINIMAL}\n[smtp]\ncommand_timeout = \"soon\"\n"),
                "smtp.command_timeout",
                Some(9),
                "",
            ),
            (
                &format!("{MINIMAL}\n[smtp]\nbare_line_endings = \"fix\"\n"),
                "smtp.bare_line_endings",
                Some(9),
                "unknown variant",
            ),
            (
                &format!("{MINIMAL}\n[smtp]\ncolour = 1\n"),
                "smtp.colour",
                Some(9),
                "unknown field",
            ),
            (
                &MINIMAL.replace("127.0.0.1:10025", "no-port"),
                "upstream.address",
                Some(6),
                "host:port",
            ),
            (
                &format!("{MINIMAL}development_folder = \"x\"\n"),
                "upstream.address",
                Some(6),
                "not both",
            ),
            (
                &format!("{MINIMAL}[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:1\"\n"),
                "listener[1].name",
                Some(8),
                "another listener",
            ),
            (
                "[upstream]\naddress = \"a:1\"\n",
                "listener",
                None,
                "at least one",
            ),
            ("[[listener]\n", "(syntax)", Some(1), ""),
            (
                &format!("{MINIMAL}\n[kv]\nmax_entries = 0\n"),
                "kv.max_entries",
                Some(9),
                "nonzero",
            ),
            (
                &MINIMAL.replace("name = \"mx\"", "name = \"mx\"\nplugins = [\"nope\"]"),
                "listener[0].plugins",
                Some(3),
                "no [plugins.nope]",
            ),
            (
                &format!("{MINIMAL}\n[plugins.x]\npath = \"x.wasm\"\nshare_instances = \"yes\"\n"),
                "plugins.x.share_instances",
                Some(10),
                "invalid type",
            ),
            (
                &format!("{MINIMAL}\n[plugins.x]\npath = \"x.wasm\"\non_error = \"explode\"\n"),
                "plugins.x.on_error",
                Some(10),
                "unknown variant",
            ),
            (
                &MINIMAL.replace("name = \"mx\"", "name = \"mx\"\ntls = \"starttls\""),
                "listener[0].tls",
                Some(3),
                "[[tls.certificate]]",
            ),
            (
                &MINIMAL.replace("name = \"mx\"", "name = \"mx\"\nrequire_tls = true"),
                "listener[0].require_tls",
                Some(3),
                "tls = \"none\"",
            ),
            (
                &MINIMAL.replace(
                    "address = \"127.0.0.1:2525\"",
                    "address = \"127.0.0.1:2525\"\nauth = { require_tls = true }",
                ),
                "listener[0].auth.require_tls",
                Some(4),
                "tls = \"none\"",
            ),
            (
                &MINIMAL.replace("name = \"mx\"", "name = \"mx\"\ntls = \"sometimes\""),
                "listener[0].tls",
                Some(3),
                "unknown variant",
            ),
            (
                &MINIMAL.replace(
                    "address = \"127.0.0.1:2525\"",
                    "address = \"127.0.0.1:2525\"\n[listener.auth]\nmode = \"edge\"",
                ),
                "listener[0].auth.credentials",
                Some(4),
                "credentials file or a verifier",
            ),
            (
                &MINIMAL.replace(
                    "address = \"127.0.0.1:2525\"",
                    "address = \"127.0.0.1:2525\"\n[listener.auth]\nmode = \"edge\"\nverifier = \"ghost\"",
                ),
                "listener[0].auth.verifier",
                Some(4),
                "no [plugins.ghost]",
            ),
            (
                &MINIMAL.replace(
                    "address = \"127.0.0.1:2525\"",
                    "address = \"127.0.0.1:2525\"\n[listener.auth]\nrequired = true",
                ),
                "listener[0].auth.required",
                Some(4),
                "mode = \"off\"",
            ),
            (
                &MINIMAL.replace(
                    "address = \"127.0.0.1:2525\"",
                    "address = \"127.0.0.1:2525\"\n[listener.auth]\nmode = \"edge\"\ncredentials = \"u\"\nmechanisms = [\"CRAM-MD5\"]",
                ),
                "listener[0].auth.mechanisms[0]",
                Some(7),
                "unknown variant",
            ),
            (
                &MINIMAL.replace(
                    "address = \"127.0.0.1:2525\"",
                    "address = \"127.0.0.1:2525\"\n[listener.auth]\nmode = \"passthrough\"",
                ),
                "listener[0].auth.mode",
                Some(4),
                "only offered over TLS",
            ),
            (
                &format!("{MINIMAL}tls = \"starttls\"\ntls_ca = \"/nonexistent/ca.pem\"\n"),
                "upstream.tls_ca",
                Some(8),
                "/nonexistent/ca.pem",
            ),
            (
                &format!("{MINIMAL}tls = \"implicit\"\ntls_insecure = true\ntls_ca = \"ca.pem\"\n"),
                "upstream.tls_ca",
                Some(9),
                "not both",
            ),
        ];
        for (text, key, line, message) in cases {
            let error = Config::parse(text).unwrap_err();
            assert_eq!(
                (error.key.as_str(), error.line),
                (*key, *line),
                "{text}\n{error}"
            );
            assert!(error.message.contains(message), "{error}");
        }
    }

    #[test]
    fn require_tls_may_also_sit_in_the_auth_table() {
        // The form of DESIGN.md's config sketch.
        let text = MINIMAL.replace(
            "address = \"127.0.0.1:2525\"",
            "address = \"127.0.0.1:2525\"\ntls = \"starttls\"\nauth = { mode = \"edge\", required = true, require_tls = true, credentials = \"users\" }\n[[tls.certificate]]\ncert = \"c.pem\"\nkey = \"k.pem\"",
        );
        let config = Config::parse(&text).unwrap();
        assert!(config.listeners[0].require_tls);
        assert!(config.listeners[0].auth.required);
        let implicit = text.replace("\"starttls\"", "\"implicit\"");
        assert!(Config::parse(&implicit).unwrap().listeners[0].require_tls);
    }

    #[test]
    fn submission_and_mx_examples_are_valid() {
        let submission = Config::parse(include_str!("../../config/submission.toml")).unwrap();
        let ports: Vec<_> = submission
            .listeners
            .iter()
            .map(|l| (l.address.port(), l.tls))
            .collect();
        assert_eq!(ports, [(587, TlsMode::Starttls), (465, TlsMode::Implicit)]);
        assert!(
            submission
                .listeners
                .iter()
                .all(|l| l.auth.mode == AuthMode::Edge
                    && l.auth.required
                    && l.auth.sender_logins.is_some())
        );
        assert!(submission.listeners[0].require_tls);
        let mx = Config::parse(include_str!("../../config/mx.toml")).unwrap();
        assert_eq!(mx.listeners[0].address.port(), 25);
        assert_eq!(mx.listeners[0].auth.mode, AuthMode::Off);
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../config/portcullis.toml");
        let config = Config::parse(text).unwrap();
        assert_eq!(config.listeners[0].address.port(), 2525);
        assert!(matches!(
            config.upstream.target,
            UpstreamTarget::Development(_)
        ));
    }
}
