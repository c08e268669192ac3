//! Write [Portcullis](https://github.com) filter plugins in Rust.
//!
//! A plugin is a type that implements [`Plugin`]: every hook has a default that lets
//! the session continue, so a plugin overrides only the stages it cares about and
//! names them in the [`Hooks`] it returns from [`Plugin::init`]. One macro,
//! [`export!`], turns it into a WebAssembly component the proxy loads:
//!
//! ```no_run
//! use portcullis_sdk::{Config, Envelope, Hooks, Param, PathOutcome, Plugin, Session, Verdict};
//!
//! #[derive(Default)]
//! struct NoTestDomain;
//!
//! impl Plugin for NoTestDomain {
//!     fn init(_config: &Config) -> Result<(Self, Hooks), String> {
//!         Ok((NoTestDomain, Hooks::RCPT))
//!     }
//!
//!     fn rcpt(&mut self, _: &Session, _: &Envelope, recipient: &str, _: &[Param]) -> PathOutcome {
//!         if recipient.ends_with("@test.invalid") {
//!             return Verdict::reject(550, "5.1.2", "No mail for test.invalid").into();
//!         }
//!         PathOutcome::default()
//!     }
//! }
//!
//! portcullis_sdk::export!(NoTestDomain);
//! ```
//!
//! The proxy makes one instance per plugin per session, so fields of the plugin type
//! are per-session state, unless the plugin adds [`Hooks::SHAREABLE`]: then a few
//! instances serve every session's calls, one call at a time, and what a plugin keeps
//! for one session goes in [`session_store`]. Host calls live in [`kv`],
//! [`session_store`], [`dns`], [`log`] and [`clock`]; [`testing`] runs a plugin
//! natively under `cargo test`.
#![deny(missing_docs)]

mod config;
mod convert;
mod envelope;
mod message;
mod plugin;
mod runtime;
mod types;

pub mod clock;
pub mod dns;
pub mod kv;
pub mod log;
#[cfg(not(target_arch = "wasm32"))]
mod rules;
pub mod session_store;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use envelope::Envelope;
pub use message::Message;
pub use plugin::Plugin;
#[doc(hidden)]
pub use runtime::{__runtime, bindings};
pub use types::{
    DataOutcome, Header, HeloOutcome, Hooks, LoginCheck, MessageEdit, Param, PathOutcome, Reply,
    Session, SessionInfo, Verdict,
};

pub use config::{Config, config_strings};

/// The TOML crate the configuration comes in, for reading its values.
pub use toml;

/// serde, for `#[derive(Deserialize)]` on a configuration type read with
/// [`Config::parse`] (add `serde = { version = "1", features = ["derive"] }` to the
/// plugin's Cargo.toml, or use this one with `#[serde(crate = "portcullis_sdk::serde")]`).
pub use serde;
