//! The key-value store plugins share: in this process's memory ([`MemoryStore`]), or
//! in Redis, shared by every proxy that names the same server and prefix (`redis_store.rs`).
//! Both keep the same promises — values and counters with TTLs, `incr` atomic and
//! giving a new key its TTL, a non-number counted from 0 — and one suite of tests
//! (`tests/kv_backends.rs`) holds both to them. A call to Redis waits on the network,
//! so every call is async and may fail ([`KvError`]); the memory store never does.

mod memory;
mod redis_store;

use std::time::Duration;

pub use crate::config::DEFAULT_MAX_ENTRIES;
use crate::{
    config::{KvBackend, KvConfig},
    telemetry,
};
pub use memory::MemoryStore;

/// Why a call to the store did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// No answer within the time allowed (`kv.timeout`, or what is left of a
    /// plugin's call).
    #[error("the key-value store did not answer within {0:?}")]
    Timeout(Duration),
    /// The store cannot be reached or refused the call.
    #[error("the key-value store is unavailable: {0}")]
    Unavailable(String),
    /// The configuration names no store that can be set up (a URL that does not
    /// parse, say); the text names the key.
    #[error("{0}")]
    Setup(String),
}

/// The store, in memory or in Redis.
#[derive(Debug)]
pub struct KvStore {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Memory(MemoryStore),
    Redis(Box<redis_store::RedisStore>),
}

impl Default for KvStore {
    fn default() -> Self {
        Self::memory(MemoryStore::default())
    }
}

impl KvStore {
    /// A store in this process's memory.
    pub fn memory(store: MemoryStore) -> Self {
        Self {
            backend: Backend::Memory(store),
        }
    }

    /// The store `config` asks for. A Redis server that does not answer yet is not
    /// an error here (the calls fail until it does, and the proxy says so); a URL
    /// that cannot be one is. Call it within a tokio runtime: the connection to
    /// Redis is a task of that runtime.
    pub fn new(config: &KvConfig) -> Result<Self, KvError> {
        let backend = match &config.backend {
            KvBackend::Memory => Backend::Memory(MemoryStore::new(config.max_entries)),
            KvBackend::Redis(redis) => {
                Backend::Redis(Box::new(redis_store::RedisStore::new(redis)?))
            }
        };
        Ok(Self { backend })
    }

    /// The memory store, if this is one (for its size and cap).
    pub fn in_memory(&self) -> Option<&MemoryStore> {
        match &self.backend {
            Backend::Memory(store) => Some(store),
            Backend::Redis(_) => None,
        }
    }

    /// True if the store is shared through Redis.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// The value of `key`, if set and not expired.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match &self.backend {
            Backend::Memory(store) => Ok(store.get(key)),
            Backend::Redis(store) => counted(store.get(key).await),
        }
    }

    /// Sets `key`, expiring after `ttl_ms` if given.
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError> {
        match &self.backend {
            Backend::Memory(store) => {
                store.set(key, value, ttl_ms);
                Ok(())
            }
            Backend::Redis(store) => counted(store.set(key, value, ttl_ms).await),
        }
    }

    /// Adds `delta` to the decimal number at `key` atomically and returns the result;
    /// a missing or expired key starts at 0 and gets `ttl_ms`, a live one keeps its
    /// expiry, a value that is not a number counts from 0.
    pub async fn incr(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        match &self.backend {
            Backend::Memory(store) => Ok(store.incr(key, delta, ttl_ms)),
            Backend::Redis(store) => counted(store.incr(key, delta, ttl_ms).await),
        }
    }

    /// Removes `key`; true if it existed and had not expired.
    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        match &self.backend {
            Backend::Memory(store) => Ok(store.delete(key)),
            Backend::Redis(store) => counted(store.delete(key).await),
        }
    }
}

/// Counts a failed call in `portcullis_kv_errors_total`.
fn counted<T>(result: Result<T, KvError>) -> Result<T, KvError> {
    if let Err(error) = &result
        && telemetry::on()
    {
        let kind = match error {
            KvError::Timeout(_) => "timeout",
            _ => "unavailable",
        };
        metrics::counter!(telemetry::KV_ERRORS, "kind" => kind).increment(1);
    }
    result
}
