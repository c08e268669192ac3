//! The key-value store shared by all sessions of the proxy — and, when the operator
//! sets `[kv] backend = "redis"`, by every proxy using the same Redis. Keys are per
//! plugin: two plugins using the same key do not see each other's values.
//!
//! Every call may fail ([`KvError`]): a shared store can be slow or out of reach.
//! Decide what that means for your plugin — let the mail through (fail open) or
//! answer 4xx so the client retries (fail closed) — and make it the operator's
//! choice where both make sense, as the rate-limit example does with
//! `on_store_error`. A call never waits past your hook call's own deadline.
//!
//! The memory store holds at most the operator's `kv.max_entries` keys. When it is
//! full of live keys, existing keys still change but new ones are not kept: `set` of a
//! new key does nothing and `incr` of one returns `delta` each time, as for a fresh
//! counter.
//!
//! ```no_run
//! use std::time::Duration;
//! use portcullis_sdk::kv;
//! // Count this client's messages in the current hour.
//! match kv::incr("msgs:192.0.2.1", 1, Some(Duration::from_secs(3600))) {
//!     Ok(count) => println!("{count} so far"),
//!     Err(error) => println!("not counted: {error}"),
//! }
//! ```

use std::time::Duration;

#[cfg(target_arch = "wasm32")]
use crate::bindings::portcullis::plugin::kv as host;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::host::kv as host;

/// Why a call to the store did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvError {
    /// No answer in time (the store's timeout, or the end of the hook call).
    Timeout,
    /// The store cannot be reached, or refused the call.
    Unavailable,
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvError::Timeout => "the key-value store did not answer in time",
            KvError::Unavailable => "the key-value store is unavailable",
        })
    }
}

impl std::error::Error for KvError {}

#[cfg(target_arch = "wasm32")]
fn error(error: host::KvError) -> KvError {
    match error {
        host::KvError::Timeout => KvError::Timeout,
        host::KvError::Unavailable => KvError::Unavailable,
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn error(error: KvError) -> KvError {
    error
}

fn millis(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|ttl| ttl.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// The value of `key`, if set and not expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    host::get(key).map_err(error)
}

/// Sets `key`, expiring after `ttl` if given (a new key is not kept while the memory
/// store is full).
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), KvError> {
    host::set(key, value, millis(ttl)).map_err(error)
}

/// Adds `delta` to the number stored at `key` atomically — across proxies too, with
/// a shared store — and returns the new value. A missing key starts at 0 and gets
/// `ttl`; a value that is not a number counts from 0.
pub fn incr(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
    host::incr(key, delta, millis(ttl)).map_err(error)
}

/// Removes `key`; true if it existed.
pub fn delete(key: &str) -> Result<bool, KvError> {
    host::delete(key).map_err(error)
}
