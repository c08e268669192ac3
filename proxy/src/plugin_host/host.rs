//! The host side of the plugin imports: logging into tracing, the key-value store,
//! DNS, the clock, and the spooled message resource. Every call is tagged with the
//! plugin and the session it serves.

use std::sync::Arc;

use tokio::time::Instant;
use wasmtime::{
    ResourceLimiter, StoreLimits,
    component::{Resource, ResourceTable},
};

use super::{
    KvStore,
    generated::portcullis::plugin::{clock, context, dns, kv, log, types},
    known_envelope::KnownEnvelope,
    session_store::SessionStore,
    view,
};
use crate::{
    dns::{LookupError, Resolver, to_text},
    kv::KvError,
};
use hickory_resolver::proto::rr::{RData, RecordType};

/// The services every plugin instance calls, shared by all of them.
#[derive(Clone)]
pub(super) struct Services {
    /// The key-value store.
    pub kv: Arc<KvStore>,
    /// The DNS resolver: the current generation's, so a reload that reads new
    /// resolver settings needs no new engines.
    pub dns: Arc<std::sync::RwLock<Arc<Resolver>>>,
}

/// An instance's memory cap (`memory_mb`), which remembers having refused to grow the
/// memory, so the trap that follows is reported as the memory limit it is.
pub(super) struct Limits {
    inner: StoreLimits,
    /// A growth was refused since the last call started.
    pub memory_refused: bool,
}

impl Limits {
    /// Caps from wasmtime's builder.
    pub(super) fn new(inner: StoreLimits) -> Self {
        Self {
            inner,
            memory_refused: false,
        }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        self.memory_refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// What one plugin instance's store holds.
pub(super) struct PluginState {
    plugin: Arc<str>,
    session: String,
    /// The memory cap.
    pub limits: Limits,
    /// What the plugin reported as it panicked, during the current call.
    pub panic: Option<String>,
    table: ResourceTable,
    services: Services,
    /// When the current call must end.
    pub deadline: Instant,
    /// The session the plugin was last told about, and its version.
    known_session: Option<view::SessionInfo>,
    session_version: u32,
    envelope: KnownEnvelope,
    /// The store of the session this call serves, lent for the call.
    pub session_store: SessionStore,
}

impl PluginState {
    /// The state of a new instance of `plugin` in session `session`.
    pub(super) fn new(
        plugin: Arc<str>,
        session: &str,
        limits: StoreLimits,
        services: Services,
    ) -> Self {
        Self {
            plugin,
            session: session.to_string(),
            limits: Limits::new(limits),
            panic: None,
            table: ResourceTable::new(),
            services,
            deadline: Instant::now(),
            known_session: None,
            session_version: 0,
            envelope: KnownEnvelope::new(),
            session_store: SessionStore::default(),
        }
    }

    /// Tags what the plugin logs from now on with `session` (a shared instance serves
    /// many sessions).
    pub(super) fn serve(&mut self, session: &str) {
        if self.session != session {
            // Reuses the buffer: session ids are all about 14 characters.
            self.session.clear();
            self.session.push_str(session);
        }
    }

    /// The version of `session` for the next call: unchanged while the session is,
    /// so the plugin fetches it (through `context.current`) only when it changed.
    pub(super) fn session_version(&mut self, session: &view::SessionInfo) -> u32 {
        if self
            .known_session
            .as_ref()
            .is_none_or(|known| known != session)
        {
            self.known_session = Some(session.clone());
            self.session_version = self.session_version.wrapping_add(1);
        }
        self.session_version
    }

    /// How the next call refers to `envelope`: the version stays while recipients are
    /// only added at the end, so a plugin that kept the recipients it read fetches
    /// just the new ones (`context.recipients-from`), and one that reads nothing
    /// costs nothing — the envelope is never copied into a call.
    pub(super) fn envelope_ref(&mut self, envelope: &view::Envelope) -> types::EnvelopeRef {
        self.envelope.refer(envelope)
    }

    /// The resources lent to the plugin (the message during the DATA hook).
    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// `key` as stored: keys are per plugin, so two plugins never see each other's
    /// values.
    fn stored_key(&self, key: &str) -> String {
        let mut stored = String::with_capacity(self.plugin.len() + 1 + key.len());
        stored.push_str(&self.plugin);
        stored.push('\0');
        stored.push_str(key);
        stored
    }
}

/// The message the DATA hook reads: header fields, and the spooled body, which is
/// shared and copied into the plugin only as far as it reads.
pub struct MessageResource {
    /// Header fields in order, as the chain has made them so far.
    headers: Vec<types::Header>,
    /// The body.
    body: crate::message::Body,
}

impl MessageResource {
    /// The message as the chain has made it so far: its header fields as (name,
    /// value) pairs in order, and its body.
    pub fn new(headers: Vec<(String, String)>, body: crate::message::Body) -> Self {
        let headers = headers
            .into_iter()
            .map(|(name, value)| types::Header { name, value })
            .collect();
        Self { headers, body }
    }
}

/// The most body octets one `read-body` call returns.
const MAX_BODY_READ: u32 = 1024 * 1024;

type Result<T> = wasmtime::Result<T>;

impl log::Host for PluginState {
    fn write(&mut self, level: log::Level, message: String) -> Result<()> {
        let (plugin, session) = (&*self.plugin, &self.session);
        match level {
            log::Level::Trace => tracing::trace!(plugin, session, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, session, "{message}"),
            log::Level::Info => tracing::info!(plugin, session, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, session, "{message}"),
            log::Level::Error => tracing::error!(plugin, session, "{message}"),
        }
        Ok(())
    }

    fn panic(&mut self, message: String) -> Result<()> {
        // std writes "panicked at PLACE:\nMESSAGE"; one line reads better in a log.
        let mut message = message.replace('\n', " ");
        if message.len() > MAX_PANIC_MESSAGE {
            let mut end = MAX_PANIC_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        self.panic = Some(message);
        Ok(())
    }
}

/// The longest panic message kept for the failure's log line.
const MAX_PANIC_MESSAGE: usize = 2000;

type KvResult<T> = Result<std::result::Result<T, kv::KvError>>;

impl PluginState {
    /// One call to the store, within what is left of the plugin's call (less a
    /// margin, so the plugin can act on the error itself), logged at debug level
    /// when it fails.
    async fn kv_call<T, F>(
        &mut self,
        key: &str,
        call: impl FnOnce(Arc<KvStore>, String) -> F,
    ) -> KvResult<T>
    where
        F: Future<Output = std::result::Result<T, KvError>>,
    {
        let budget = self
            .deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(DNS_MARGIN);
        let stored = self.stored_key(key);
        let outcome = tokio::time::timeout(budget, call(self.services.kv.clone(), stored))
            .await
            .unwrap_or(Err(KvError::Timeout(budget)));
        Ok(outcome.map_err(|error| {
            tracing::debug!(plugin = &*self.plugin, session = %self.session, %error, "key-value call failed");
            match error {
                KvError::Timeout(_) => kv::KvError::Timeout,
                _ => kv::KvError::Unavailable,
            }
        }))
    }
}

impl kv::Host for PluginState {
    async fn get(&mut self, key: String) -> KvResult<Option<Vec<u8>>> {
        self.kv_call(&key, |kv, key| async move { kv.get(&key).await })
            .await
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> KvResult<()> {
        self.kv_call(
            &key,
            |kv, key| async move { kv.set(&key, value, ttl_ms).await },
        )
        .await
    }

    async fn incr(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> KvResult<i64> {
        self.kv_call(
            &key,
            |kv, key| async move { kv.incr(&key, delta, ttl_ms).await },
        )
        .await
    }

    async fn delete(&mut self, key: String) -> KvResult<bool> {
        self.kv_call(&key, |kv, key| async move { kv.delete(&key).await })
            .await
    }
}

/// Time a plugin keeps after a DNS lookup that used up its budget.
const DNS_MARGIN: std::time::Duration = std::time::Duration::from_millis(20);

type DnsResult<T> = Result<std::result::Result<Vec<T>, dns::DnsError>>;

impl PluginState {
    /// One lookup, logged at debug level with the plugin that asked.
    async fn lookup(
        &mut self,
        name: &str,
        kind: RecordType,
    ) -> std::result::Result<Vec<RData>, dns::DnsError> {
        // A lookup ends in time for the plugin to act on the timeout itself (e.g. its
        // own "on DNS error" choice) before its call's deadline stops it.
        let budget = self
            .deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(DNS_MARGIN);
        let resolver = self.services.dns.read().expect("lock poisoned").clone();
        let result = resolver.lookup(name, kind, budget).await;
        tracing::debug!(plugin = &*self.plugin, session = %self.session, %name, ?kind, ok = result.is_ok(), "DNS lookup");
        result.map_err(|error| match error {
            LookupError::NotFound => dns::DnsError::NotFound,
            LookupError::Timeout => dns::DnsError::Timeout,
            LookupError::Failure => dns::DnsError::Failure,
        })
    }

    async fn lookup_text(&mut self, name: &str, kind: RecordType) -> DnsResult<String> {
        Ok(self
            .lookup(name, kind)
            .await
            .map(|records| records.iter().filter_map(to_text).collect()))
    }
}

impl dns::Host for PluginState {
    async fn a(&mut self, name: String) -> DnsResult<String> {
        self.lookup_text(&name, RecordType::A).await
    }

    async fn aaaa(&mut self, name: String) -> DnsResult<String> {
        self.lookup_text(&name, RecordType::AAAA).await
    }

    async fn txt(&mut self, name: String) -> DnsResult<String> {
        self.lookup_text(&name, RecordType::TXT).await
    }

    async fn mx(&mut self, name: String) -> DnsResult<(u16, String)> {
        Ok(self.lookup(&name, RecordType::MX).await.map(|records| {
            records
                .iter()
                .filter_map(|r| match r {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_string())),
                    _ => None,
                })
                .collect()
        }))
    }

    async fn ptr(&mut self, ip: String) -> DnsResult<String> {
        match Resolver::reverse_name(&ip) {
            Some(name) => self.lookup_text(&name, RecordType::PTR).await,
            None => Ok(Err(dns::DnsError::Failure)),
        }
    }
}

impl context::Host for PluginState {
    fn current(&mut self) -> Result<types::Session> {
        self.known_session
            .as_ref()
            .map(Into::into)
            .ok_or_else(|| wasmtime::Error::msg("no session yet"))
    }

    fn current_envelope(&mut self) -> Result<types::Envelope> {
        Ok((&self.envelope.envelope).into())
    }

    fn recipients_from(&mut self, index: u32) -> Result<Vec<String>> {
        Ok(self.envelope.recipients_from(index))
    }
}

impl clock::Host for PluginState {
    fn now_ms(&mut self) -> Result<u64> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        Ok(now.as_millis() as u64)
    }
}

impl types::Host for PluginState {}

impl types::HostMessage for PluginState {
    fn headers(&mut self, message: Resource<MessageResource>) -> Result<Vec<types::Header>> {
        Ok(self.table.get(&message)?.headers.clone())
    }

    fn body_size(&mut self, message: Resource<MessageResource>) -> Result<u64> {
        Ok(self.table.get(&message)?.body.len())
    }

    async fn read_body(
        &mut self,
        message: Resource<MessageResource>,
        offset: u64,
        length: u32,
    ) -> Result<Vec<u8>> {
        let body = self.table.get(&message)?.body.clone();
        let length = length.min(MAX_BODY_READ) as usize;
        Ok(body.read_at(offset, length).await?)
    }

    fn drop(&mut self, message: Resource<MessageResource>) -> Result<()> {
        self.table.delete(message)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(helo: Option<&str>) -> view::SessionInfo {
        view::SessionInfo {
            id: "s1".into(),
            listener: "mx".into(),
            client_ip: "192.0.2.1".into(),
            client_port: 4000,
            helo: helo.map(Into::into),
            tls: false,
            login: None,
        }
    }

    #[test]
    fn the_session_version_changes_only_with_the_session() {
        let services = Services {
            kv: Arc::new(KvStore::default()),
            dns: Arc::new(std::sync::RwLock::new(Arc::new(Resolver::offline()))),
        };
        let mut state = PluginState::new("p".into(), "s1", StoreLimits::default(), services);
        let first = state.session_version(&session(None));
        assert_eq!(state.session_version(&session(None)), first);
        let after_helo = state.session_version(&session(Some("client.example")));
        assert_ne!(after_helo, first);
        assert_eq!(
            state.session_version(&session(Some("client.example"))),
            after_helo
        );
        assert_eq!(
            state.known_session.as_ref().and_then(|s| s.helo.as_deref()),
            Some("client.example")
        );
    }
}
