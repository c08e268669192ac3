//! What sessions share ([`SessionContext`]), what a session knows of its listener
//! ([`ListenerContext`]), and the two phases of a graceful shutdown.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    audit::Auditor,
    auth::{
        checks::PasswordChecks, credentials::CredentialsFile, sender_logins::SenderLogins,
        throttle::AuthThrottle,
    },
    config::{Config, ListenerConfig},
    dns::Resolver,
    hooks::Chain,
    plugin_host::LoadedPlugin,
    telemetry::ListenerMeters,
    tls::server::ServerTls,
    upstream::{Upstream, capability_cache::CapabilityCache, pool::SessionPool},
};

/// The two phases of a graceful shutdown.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shutdown {
    /// Stop accepting; idle sessions close with 421, transactions may finish.
    pub stopping: CancellationToken,
    /// The drain time is over: every session closes with 421 now.
    pub abort: CancellationToken,
}

/// What the sessions of one generation share (a reload makes the next one; a
/// session keeps its own to its end).
#[derive(Debug)]
pub(crate) struct SessionContext {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The upstream, and the TLS connector for it.
    pub upstream: Arc<Upstream>,
    /// The upstream's last known extensions.
    pub capabilities: Arc<CapabilityCache>,
    /// Idle upstream sessions kept for reuse (empty unless `[upstream.reuse]` is on).
    pub pool: Arc<SessionPool>,
    /// Shutdown signals.
    pub shutdown: Shutdown,
    /// The certificates for client TLS (`None` when no listener uses TLS).
    pub server_tls: Option<ServerTls>,
    /// Failed-AUTH counting, shared by all sessions (its counts outlive reloads).
    pub throttle: AuthThrottle,
    /// The threads that check passwords, and the turns to use them.
    pub checks: Arc<PasswordChecks>,
    /// The resolver for the client's host names (shared with the plugins).
    pub dns: Arc<Resolver>,
    /// Where each message's audit record goes, if `[audit]` is on.
    pub audit: Option<Arc<Auditor>>,
}

/// What a session knows about the listener it came in on.
pub struct ListenerContext {
    /// The listener's configuration.
    pub config: ListenerConfig,
    /// Its plugin chain.
    pub chain: Arc<Chain>,
    /// Edge AUTH: logins and password hashes.
    pub credentials: Option<Arc<CredentialsFile>>,
    /// Edge AUTH: the plugin that checks passwords instead.
    pub verifier: Option<Arc<LoadedPlugin>>,
    /// Which logins may use which senders.
    pub sender_logins: Option<Arc<SenderLogins>>,
    /// Its metrics.
    pub(crate) meters: ListenerMeters,
}

impl ListenerContext {
    /// A listener without TLS, AUTH or plugins (for tests and tools).
    pub fn plain(config: ListenerConfig) -> Self {
        Self {
            meters: ListenerMeters::new(&config.name),
            chain: Arc::new(Chain {
                listener: config.name.clone(),
                members: Vec::new(),
            }),
            config,
            credentials: None,
            verifier: None,
            sender_logins: None,
        }
    }
}

/// A short unique id per session, for logs: process start time and a counter.
pub(super) fn next_session_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32)
    });
    format!(
        "{prefix:08x}{:06x}",
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}
