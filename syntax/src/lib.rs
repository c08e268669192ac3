//! The syntax rules for everything Portcullis puts on the upstream wire, whoever
//! wrote it: a client, a plugin or a milter. The proxy checks client commands and
//! plugin results with these functions, and the plugin SDK's native test harness
//! checks a plugin's results with the same ones, so a result the proxy would refuse
//! fails the plugin's own `cargo test` first. The rules live here and nowhere else.
//!
//! Pure functions over text, no I/O and no dependencies: [`address`] (mailboxes and
//! paths, RFC 5321 §4.1.2 with RFC 6531's UTF-8), [`param`] (ESMTP parameters and the
//! extensions that define them), [`header`] (header fields, RFC 5322), [`reply`]
//! (reply codes and text), [`body`] (body lines). Each check returns a
//! [`Violation`] that names the rule broken.
#![forbid(unsafe_code)]

pub mod address;
pub mod body;
pub mod header;
pub mod param;
pub mod reply;

use std::fmt;

/// A rule a command, a plugin result or an edit breaks; its text says which rule and
/// where, for the log line and the test failure a plugin author reads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// An address that is not a valid path for its verb.
    Address {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A parameter that breaks the ESMTP grammar or its extension's definition.
    Param {
        /// The parameter's keyword as given.
        keyword: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A HELO name that is neither a domain nor an address literal.
    HeloName(String),
    /// A header field name or value that would break the header block.
    Header {
        /// The field name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A reply that does not fit its verdict or the wire.
    Reply(&'static str),
    /// A body line over the RFC 5321 limit.
    BodyLine,
    /// A free text (a quarantine reason, a disconnect text) with control characters.
    Text(&'static str),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Address { address, reason } => {
                write!(f, "address {address:?}: {reason} (RFC 5321 §4.1.2)")
            }
            Violation::Param { keyword, reason } => write!(f, "parameter {keyword:?}: {reason}"),
            Violation::HeloName(name) => write!(
                f,
                "HELO name {name:?}: not a domain or an address literal (RFC 5321 §4.1.1.1)"
            ),
            Violation::Header { name, reason } => {
                write!(f, "header field {name:?}: {reason} (RFC 5322 §2.2)")
            }
            Violation::Reply(reason) => write!(f, "reply: {reason}"),
            Violation::BodyLine => write!(
                f,
                "body: a line longer than {} octets (RFC 5321 §4.5.3.1.6)",
                body::MAX_LINE
            ),
            Violation::Text(what) => write!(f, "{what}: control characters (CR, LF, ...)"),
        }
    }
}

impl std::error::Error for Violation {}
