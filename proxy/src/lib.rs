//! Portcullis: an SMTP proxy that stands in front of an existing MTA and relays every
//! session to it in lock step.
//!
//! Layers, data flowing one way: [`config`] → [`listener`] → [`session`] (the only
//! place that decides) → [`smtp`] (protocol as data, no I/O) → [`upstream`] (the client
//! side of the relay). The session asks [`hooks`] (plugin chains) at each stage, which
//! runs [`plugin_host`] (wasmtime, the only module naming it); [`message`] is the
//! spooled message of the DATA hook and its edits; [`replay`] runs a chain offline.
//! [`connection`] is the shared bytes ↔ lines plumbing; [`dns`] the resolver that
//! plugins and the client-name lookup share; [`devupstream`] is the built-in
//! development upstream for trying things out.

#![forbid(unsafe_code)]

pub mod auth;
mod client_limits;
pub mod config;
pub mod connection;
pub mod devupstream;
pub mod dns;
pub mod hooks;
pub mod kv;
pub mod listener;
mod log_limit;
pub mod message;
pub mod plugin_host;
pub mod replay;
pub mod session;
pub mod smtp;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use listener::run;
