//! Values kept for the current session only: the proxy holds them between calls and
//! drops them when the session ends. This is how a plugin that declares
//! [`Hooks::SHAREABLE`](crate::Hooks::SHAREABLE) keeps per-session state — fields of
//! the plugin type are shared by the sessions a shared instance serves, this store is
//! not. Keys are per plugin and per session.
//!
//! One plugin's store for one session holds at most 64 keys and 64 KiB of keys and
//! values; [`set`] past that keeps nothing and returns false. During
//! [`Plugin::init`](crate::Plugin::init) there is no session: what it stores is dropped.
//!
//! ```no_run
//! // Recipients accepted so far in this session, over all its transactions.
//! let so_far = portcullis_sdk::session_store::incr("recipients", 1);
//! # let _ = so_far;
//! ```

#[cfg(target_arch = "wasm32")]
use crate::bindings::portcullis::plugin::session_store as host;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::host::session_store as host;

/// The value of `key` in this session's store, if set.
pub fn get(key: &str) -> Option<Vec<u8>> {
    host::get(key)
}

/// Sets `key` in this session's store; false if it did not fit and was not kept (the
/// old value, if any, stays).
pub fn set(key: &str, value: &[u8]) -> bool {
    host::set(key, value)
}

/// Removes `key` from this session's store; true if it was there.
pub fn delete(key: &str) -> bool {
    host::delete(key)
}

/// Adds `delta` to the number at `key` (0 if unset, stored as decimal text) and
/// returns the new value; `incr(key, 0)` reads a counter. If the store is full the new
/// value is returned but not kept.
pub fn incr(key: &str, delta: i64) -> i64 {
    let current = get(key)
        .and_then(|value| std::str::from_utf8(&value).ok()?.parse::<i64>().ok())
        .unwrap_or(0);
    let updated = current.saturating_add(delta);
    set(key, updated.to_string().as_bytes());
    updated
}
