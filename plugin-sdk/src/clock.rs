//! Time, from the host (plugins have no WASI clock).
//!
//! ```no_run
//! // A rate window that starts on the hour.
//! let hour = portcullis_sdk::clock::now_ms() / 3_600_000;
//! # let _ = hour;
//! ```

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::portcullis::plugin::clock::now_ms();
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::host::now_ms();
}
