//! The key-value store shared by all sessions of the proxy, in its memory (a backend
//! shared by several proxies, such as Redis, fits the same calls but is not there
//! yet). Keys are per plugin: two plugins using the same key do not see each other's
//! values.
//!
//! The store holds at most the operator's `kv.max_entries` keys. When it is full of
//! live keys, existing keys still change but new ones are not kept: `set` of a new key
//! does nothing and `incr` of one returns `delta` each time, as for a fresh counter.
//!
//! ```no_run
//! use std::time::Duration;
//! // Count this client's messages in the current hour.
//! let count = portcullis_sdk::kv::incr("msgs:192.0.2.1", 1, Some(Duration::from_secs(3600)));
//! # let _ = count;
//! ```

use std::time::Duration;

#[cfg(target_arch = "wasm32")]
use crate::bindings::portcullis::plugin::kv as host;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::host::kv as host;

fn millis(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|ttl| ttl.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// The value of `key`, if set and not expired.
pub fn get(key: &str) -> Option<Vec<u8>> {
    host::get(key)
}

/// Sets `key`, expiring after `ttl` if given (a new key is not kept while the store
/// is full).
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) {
    host::set(key, value, millis(ttl));
}

/// Adds `delta` to the number stored at `key` atomically and returns the new value. A
/// missing key starts at 0 and gets `ttl`.
pub fn incr(key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
    host::incr(key, delta, millis(ttl))
}

/// Removes `key`; true if it existed.
pub fn delete(key: &str) -> bool {
    host::delete(key)
}
