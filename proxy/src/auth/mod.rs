//! SMTP AUTH (RFC 4954) at the edge: the SASL exchanges of PLAIN and LOGIN
//! ([`sasl`]), checking passwords against a file of hashes ([`credentials`]), which
//! logins may use which senders ([`sender_logins`]), and slowing down clients that
//! keep failing ([`throttle`]). The session drives these; none of them talks SMTP.
//!
//! Passwords only ever live in a [`Secret`], which never prints its content.

pub mod credentials;
pub mod sasl;
pub mod sender_logins;
pub mod throttle;

use std::fmt;

/// A SASL mechanism the proxy implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Mechanism {
    /// RFC 4616: authorization id, login and password in one response.
    Plain,
    /// The de-facto LOGIN mechanism: login, then password, each asked for.
    Login,
}

impl Mechanism {
    /// Its name as in EHLO and AUTH.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }

    /// The mechanism of this (case-insensitive) name, if the proxy implements it.
    pub fn from_name(name: &str) -> Option<Self> {
        [Mechanism::Plain, Mechanism::Login]
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

/// A file read at start-up and again on SIGHUP. A reload that fails keeps the
/// contents in use.
#[derive(Debug)]
pub struct Reloadable<T> {
    path: std::path::PathBuf,
    current: std::sync::RwLock<std::sync::Arc<T>>,
    read: fn(&std::path::Path) -> Result<T, credentials::CredentialsError>,
}

impl<T> Reloadable<T> {
    /// Reads `path` with `read`.
    pub fn load(
        path: &std::path::Path,
        read: fn(&std::path::Path) -> Result<T, credentials::CredentialsError>,
    ) -> Result<Self, credentials::CredentialsError> {
        Ok(Self {
            path: path.to_path_buf(),
            current: std::sync::RwLock::new(std::sync::Arc::new(read(path)?)),
            read,
        })
    }

    /// The contents in use.
    pub fn get(&self) -> std::sync::Arc<T> {
        self.current.read().expect("lock poisoned").clone()
    }

    /// Reads the file again.
    pub fn reload(&self) -> Result<(), credentials::CredentialsError> {
        let fresh = (self.read)(&self.path)?;
        *self.current.write().expect("lock poisoned") = std::sync::Arc::new(fresh);
        Ok(())
    }
}
