//! Logging into the proxy's logs; each line is tagged with the plugin and the session.
//!
//! ```no_run
//! portcullis_sdk::log::info("greylisted a new sender");
//! ```

/// How important a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed.
    Trace,
    /// Detailed.
    Debug,
    /// Normal.
    Info,
    /// Something unexpected.
    Warn,
    /// Something failed.
    Error,
}

/// Writes one log line.
pub fn write(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::portcullis::plugin::log::{Level as L, write};
        let level = match level {
            Level::Trace => L::Trace,
            Level::Debug => L::Debug,
            Level::Info => L::Info,
            Level::Warn => L::Warn,
            Level::Error => L::Error,
        };
        write(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::host::log(level, message);
}

/// Writes an info line.
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Writes a warning.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// Writes a debug line.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// Reports a panic (the message and its place) just before the call aborts; the proxy
/// logs it as the reason the call failed.
pub(crate) fn panic(message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::portcullis::plugin::log::panic(message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::host::log(Level::Error, message);
}
