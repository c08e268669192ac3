//! DNS lookups through the proxy's resolver, each bounded by the proxy's timeout.
//!
//! ```no_run
//! use portcullis_sdk::dns::{self, DnsError};
//! // Is 192.0.2.1 listed? Query its reversed octets under the list's zone.
//! match dns::a("1.2.0.192.zen.example") {
//!     Ok(addresses) => println!("listed: {addresses:?}"),
//!     Err(DnsError::NotFound) => println!("not listed"),
//!     Err(other) => println!("lookup failed: {other:?}"),
//! }
//! ```

#[cfg(target_arch = "wasm32")]
use crate::bindings::portcullis::plugin::dns as host;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::host::dns as host;

/// Why a lookup gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DnsError {
    /// NXDOMAIN, or no records of that type.
    NotFound,
    /// No answer in time.
    Timeout,
    /// Any other failure (SERVFAIL, network).
    Failure,
}

#[cfg(target_arch = "wasm32")]
fn error(error: host::DnsError) -> DnsError {
    match error {
        host::DnsError::NotFound => DnsError::NotFound,
        host::DnsError::Timeout => DnsError::Timeout,
        host::DnsError::Failure => DnsError::Failure,
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn error(error: DnsError) -> DnsError {
    error
}

/// IPv4 addresses of `name`.
pub fn a(name: &str) -> Result<Vec<String>, DnsError> {
    host::a(name).map_err(error)
}

/// IPv6 addresses of `name`.
pub fn aaaa(name: &str) -> Result<Vec<String>, DnsError> {
    host::aaaa(name).map_err(error)
}

/// TXT strings of `name` (each record's strings joined).
pub fn txt(name: &str) -> Result<Vec<String>, DnsError> {
    host::txt(name).map_err(error)
}

/// Mail exchangers of `name` as (preference, host).
pub fn mx(name: &str) -> Result<Vec<(u16, String)>, DnsError> {
    host::mx(name).map_err(error)
}

/// Names of the IP address `ip`.
pub fn ptr(ip: &str) -> Result<Vec<String>, DnsError> {
    host::ptr(ip).map_err(error)
}
