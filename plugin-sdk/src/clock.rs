//! Time, from the host (plugins have no WASI clock).

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::portcullis::plugin::clock::now_ms();
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::host::now_ms();
}
