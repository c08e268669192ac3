//! The host side of the plugin imports: logging into tracing, the key-value store,
//! DNS, the clock, and the spooled message resource. Every call is tagged with the
//! plugin and the session it serves.

use std::sync::Arc;

use tokio::time::Instant;
use wasmtime::{
    StoreLimits,
    component::{Resource, ResourceTable},
};

use super::{
    KvStore,
    generated::portcullis::plugin::{clock, dns, kv, log, types},
};

/// What one plugin instance's store holds.
pub struct PluginState {
    plugin: Arc<str>,
    session: String,
    /// The memory cap.
    pub limits: StoreLimits,
    table: ResourceTable,
    kv: Arc<KvStore>,
    /// When the current call must end.
    pub deadline: Instant,
}

impl PluginState {
    /// The state of a new instance of `plugin` in session `session`.
    pub fn new(plugin: Arc<str>, session: &str, limits: StoreLimits, kv: Arc<KvStore>) -> Self {
        Self {
            plugin,
            session: session.to_string(),
            limits,
            table: ResourceTable::new(),
            kv,
            deadline: Instant::now(),
        }
    }

    /// The resources lent to the plugin (the message during the DATA hook).
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// Keys are per plugin: two plugins never see each other's values.
    fn key(&self, key: &str) -> String {
        format!("{}\u{0}{key}", self.plugin)
    }
}

/// The message the DATA hook reads: header fields, and the spooled body, which is
/// shared and copied into the plugin only as far as it reads.
pub struct MessageResource {
    /// Header fields in order, as the chain has made them so far.
    pub headers: Vec<types::Header>,
    /// The body.
    pub body: crate::message::Body,
}

/// The most body octets one `read-body` call returns.
const MAX_BODY_READ: u32 = 1024 * 1024;

type Result<T> = wasmtime::Result<T>;

impl log::Host for PluginState {
    async fn write(&mut self, level: log::Level, message: String) -> Result<()> {
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
}

impl kv::Host for PluginState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>> {
        Ok(self.kv.get(&self.key(&key)))
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<()> {
        self.kv.set(&self.key(&key), value, ttl_ms);
        Ok(())
    }

    async fn incr(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> Result<i64> {
        Ok(self.kv.incr(&self.key(&key), delta, ttl_ms))
    }

    async fn delete(&mut self, key: String) -> Result<bool> {
        Ok(self.kv.delete(&self.key(&key)))
    }
}

/// DNS lookups need the resolver that the next step of the plugin work adds; until
/// then every query fails (plugins see `failure`) and says so in the log.
fn no_resolver<T>(
    plugin: &str,
    kind: &str,
    name: &str,
) -> Result<std::result::Result<T, dns::DnsError>> {
    tracing::warn!(
        plugin,
        kind,
        name,
        "DNS lookups are not available in this version"
    );
    Ok(Err(dns::DnsError::Failure))
}

impl dns::Host for PluginState {
    async fn a(&mut self, name: String) -> Result<std::result::Result<Vec<String>, dns::DnsError>> {
        no_resolver(&self.plugin, "A", &name)
    }

    async fn aaaa(
        &mut self,
        name: String,
    ) -> Result<std::result::Result<Vec<String>, dns::DnsError>> {
        no_resolver(&self.plugin, "AAAA", &name)
    }

    async fn txt(
        &mut self,
        name: String,
    ) -> Result<std::result::Result<Vec<String>, dns::DnsError>> {
        no_resolver(&self.plugin, "TXT", &name)
    }

    async fn mx(
        &mut self,
        name: String,
    ) -> Result<std::result::Result<Vec<(u16, String)>, dns::DnsError>> {
        no_resolver(&self.plugin, "MX", &name)
    }

    async fn ptr(&mut self, ip: String) -> Result<std::result::Result<Vec<String>, dns::DnsError>> {
        no_resolver(&self.plugin, "PTR", &ip)
    }
}

impl clock::Host for PluginState {
    async fn now_ms(&mut self) -> Result<u64> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        Ok(now.as_millis() as u64)
    }
}

impl types::Host for PluginState {}

impl types::HostMessage for PluginState {
    async fn headers(&mut self, message: Resource<MessageResource>) -> Result<Vec<types::Header>> {
        Ok(self.table.get(&message)?.headers.clone())
    }

    async fn body_size(&mut self, message: Resource<MessageResource>) -> Result<u64> {
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

    async fn drop(&mut self, message: Resource<MessageResource>) -> Result<()> {
        self.table.delete(message)?;
        Ok(())
    }
}
