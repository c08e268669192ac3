//! SMTP AUTH (RFC 4954) at the edge: the SASL exchanges of PLAIN and LOGIN
//! ([`sasl`]), checking passwords against a file of hashes ([`credentials`]) on a
//! bounded set of threads (`checks`), which logins may use which senders
//! ([`sender_logins`]), and slowing down clients that keep failing (`throttle`).
//! The session drives these; none of them talks SMTP.
//!
//! Passwords only ever live in a [`Secret`], which never prints its content.

pub(crate) mod checks;
pub mod credentials;
pub mod sasl;
pub mod sender_logins;
pub(crate) mod throttle;

pub use crate::smtp::Mechanism;

use std::{fmt, path::Path};

/// A password. Its `Debug` and `Display` print a placeholder, so it cannot reach a
/// log by accident, and its bytes are overwritten when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(password: String) -> Self {
        Self(password)
    }

    /// The password, for the code that checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
    }
}

/// What a client presented in a completed exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The mechanism used.
    pub mechanism: Mechanism,
    /// The login (authentication identity).
    pub login: String,
    /// The password.
    pub password: Secret,
}

/// The result of checking credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Login and password match.
    Valid,
    /// They do not (or the login is unknown).
    Invalid,
    /// The verifier could not decide now (454 4.7.0).
    Unavailable,
}

/// Why a credentials file or sender-login map cannot be used; names the file and, for
/// a bad entry, its line.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path}: {source}")]
    Line {
        /// The file.
        path: String,
        /// Which line, and what is wrong with it.
        #[source]
        source: EntryError,
    },
}

/// A malformed entry of a policy file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct EntryError {
    /// Its 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl EntryError {
    /// The entry on `line` is wrong for `reason`.
    pub fn new(line: usize, reason: impl Into<String>) -> Self {
        Self {
            line,
            reason: reason.into(),
        }
    }
}

/// How a policy file's text becomes its contents.
pub type Parse<T> = fn(&str) -> Result<T, EntryError>;

/// The entries of a policy file: each line trimmed, with its 1-based number; blank
/// lines and `#` comments left out.
pub(crate) fn policy_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(index, line)| (index + 1, line))
}

/// Reads and parses a policy file (credentials, sender-login map), naming the file
/// and the line when it cannot. A reload reads it again into a new generation.
pub fn read_policy_file<T>(path: &Path, parse: Parse<T>) -> Result<T, PolicyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|source| PolicyFileError::Line {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_entries(text: &str) -> Result<usize, EntryError> {
        let mut count = 0;
        for (number, line) in policy_lines(text) {
            if line == "bad" {
                return Err(EntryError::new(number, "bad entry"));
            }
            count += 1;
        }
        Ok(count)
    }

    #[test]
    fn policy_files_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy");
        std::fs::write(&path, "# comment\n\n  one\ntwo\n").unwrap();
        assert_eq!(read_policy_file(&path, count_entries).unwrap(), 2);
        std::fs::write(&path, "one\n\nbad\n").unwrap();
        let error = read_policy_file(&path, count_entries)
            .unwrap_err()
            .to_string();
        assert!(error.ends_with("policy: line 3: bad entry"), "{error}");
        let missing = read_policy_file(&dir.path().join("missing"), count_entries);
        assert!(matches!(missing, Err(PolicyFileError::Read { .. })));
    }
}
