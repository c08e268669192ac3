//! The file as written: serde structs for the sections that need cross-field
//! validation (`validate.rs`) before they become [`super::Config`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{
    AuthMode, ClientAddressMode, ClientLimitsConfig, DnsConfig, Mechanism, PluginConfig,
    QuarantineConfig, ReuseConfig, ServerConfig, SmtpConfig, SpoolConfig, ThrottleConfig,
    TlsConfig, TlsMode, UpstreamTimeouts,
};

/// The file as written, before cross-field validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: ServerConfig,
    #[serde(default)]
    pub(super) smtp: SmtpConfig,
    #[serde(default)]
    pub(super) listener: Vec<RawListener>,
    pub(super) upstream: Spanned<RawUpstream>,
    #[serde(default)]
    pub(super) upstreams: std::collections::BTreeMap<String, Spanned<RawUpstream>>,
    #[serde(default)]
    pub(super) plugins: std::collections::BTreeMap<String, Spanned<PluginConfig>>,
    #[serde(default)]
    pub(super) milters: std::collections::BTreeMap<String, Spanned<super::milters::RawMilter>>,
    #[serde(default)]
    pub(super) spool: SpoolConfig,
    pub(super) quarantine: Option<Spanned<QuarantineConfig>>,
    #[serde(default)]
    pub(super) dns: DnsConfig,
    #[serde(default)]
    pub(super) tls: TlsConfig,
    #[serde(default)]
    pub(super) auth_throttle: ThrottleConfig,
    #[serde(default)]
    pub(super) kv: Option<Spanned<super::kv::RawKv>>,
    pub(super) client_limits: Option<Spanned<ClientLimitsConfig>>,
    pub(super) metrics: Option<super::MetricsConfig>,
    pub(super) audit: Option<super::AuditConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Spanned<String>,
    pub(super) address: SocketAddr,
    pub(super) plugins: Option<Spanned<Vec<String>>>,
    pub(super) tls: Option<Spanned<TlsMode>>,
    pub(super) require_tls: Option<Spanned<bool>>,
    pub(super) auth: Option<Spanned<RawAuth>>,
    pub(super) proxy_protocol: Option<Spanned<super::ProxyVersions>>,
    pub(super) proxy_trusted: Option<Spanned<Vec<String>>>,
    #[serde(default, with = "humantime_serde::option")]
    pub(super) proxy_timeout: Option<Duration>,
    pub(super) client_limits: Option<Spanned<ClientLimitsConfig>>,
    pub(super) upstream: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) address: Option<Spanned<String>>,
    pub(super) servers: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(super) balance: super::upstream::Balance,
    #[serde(default = "default_down_for", with = "humantime_serde")]
    pub(super) down_for: Duration,
    pub(super) development_folder: Option<Spanned<PathBuf>>,
    pub(super) client_address: Option<Spanned<ClientAddressMode>>,
    pub(super) client_name_lookup: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) received_header: bool,
    #[serde(default)]
    pub(super) timeouts: UpstreamTimeouts,
    #[serde(default = "default_capabilities_refresh", with = "humantime_serde")]
    pub(super) capabilities_refresh: Duration,
    #[serde(default = "default_capabilities_wait", with = "humantime_serde")]
    pub(super) capabilities_wait: Duration,
    pub(super) reuse: Option<Spanned<ReuseConfig>>,
    pub(super) tls: Option<Spanned<TlsMode>>,
    pub(super) tls_ca: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) tls_insecure: bool,
    pub(super) tls_server_name: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) open: super::upstream::OpenAt,
}

pub(super) fn default_down_for() -> Duration {
    Duration::from_secs(30)
}

pub(super) fn default_capabilities_refresh() -> Duration {
    Duration::from_secs(300)
}

pub(super) fn default_capabilities_wait() -> Duration {
    Duration::from_secs(3)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default)]
    pub(super) mode: AuthMode,
    pub(super) mechanisms: Option<Vec<Mechanism>>,
    #[serde(default)]
    pub(super) allow_plaintext: bool,
    #[serde(default)]
    pub(super) required: bool,
    pub(super) credentials: Option<PathBuf>,
    pub(super) verifier: Option<String>,
    pub(super) sender_logins: Option<PathBuf>,
    /// The listener's `require_tls`, also accepted here.
    #[serde(default)]
    pub(super) require_tls: bool,
}
