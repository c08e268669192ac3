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

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

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

fn read_policy_file<T>(path: &Path, parse: Parse<T>) -> Result<T, PolicyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|source| PolicyFileError::Line {
        path: path.display().to_string(),
        source,
    })
}

/// A policy file read at start-up and again on SIGHUP. A reload that fails keeps the
/// contents in use.
#[derive(Debug)]
pub struct Reloadable<T> {
    path: PathBuf,
    current: RwLock<Arc<T>>,
    parse: Parse<T>,
}

impl<T> Reloadable<T> {
    /// Reads `path` and parses it with `parse`.
    pub fn load(path: &Path, parse: Parse<T>) -> Result<Self, PolicyFileError> {
        Ok(Self {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(read_policy_file(path, parse)?)),
            parse,
        })
    }

    /// The contents in use.
    pub fn get(&self) -> Arc<T> {
        self.current.read().expect("lock poisoned").clone()
    }

    /// Reads the file again.
    pub fn reload(&self) -> Result<(), PolicyFileError> {
        let fresh = read_policy_file(&self.path, self.parse)?;
        *self.current.write().expect("lock poisoned") = Arc::new(fresh);
        Ok(())
    }
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
    fn policy_files_name_file_and_line_and_a_failed_reload_keeps_the_old_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy");
        std::fs::write(&path, "# comment\n\n  one\ntwo\n").unwrap();
        let file = Reloadable::load(&path, count_entries).unwrap();
        assert_eq!(*file.get(), 2);
        std::fs::write(&path, "one\n\nbad\n").unwrap();
        let error = file.reload().unwrap_err().to_string();
        assert!(error.ends_with("policy: line 3: bad entry"), "{error}");
        assert_eq!(*file.get(), 2);
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        file.reload().unwrap();
        assert_eq!(*file.get(), 3);
        let missing = Reloadable::load(&dir.path().join("missing"), count_entries);
        assert!(matches!(missing, Err(PolicyFileError::Read { .. })));
    }
}
