//! The SASL mechanisms of AUTH (RFC 4954) by name, as EHLO offers them and the AUTH
//! command names them. The exchanges themselves are `auth::sasl`.

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
