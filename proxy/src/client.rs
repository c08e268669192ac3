//! Who is connected: the client as the session knows it, which is also what the
//! upstream is told about it (XCLIENT, a PROXY header, the greeting it hears). One
//! type for both, so what the upstream learns cannot drift from what the session
//! knows.

use std::net::SocketAddr;

use crate::{dns::ClientName, tls::TlsInfo};

/// Who is connected.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The client's address.
    pub address: SocketAddr,
    /// The local address it connected to.
    pub local_address: SocketAddr,
    /// The name given in HELO/EHLO, once greeted.
    pub helo: Option<String>,
    /// True if the client greeted with EHLO.
    pub esmtp: bool,
    /// The HELO name a plugin gave for the upstream, if it rewrote the client's.
    pub helo_rewrite: Option<String>,
    /// What TLS negotiated, once the session is encrypted.
    pub tls: Option<TlsInfo>,
    /// Who authenticated with AUTH, and how.
    pub login: Option<Login>,
    /// The client's host names, once looked up (for XCLIENT and the Received field).
    pub name: Option<ClientName>,
}

/// A successful AUTH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Login {
    /// The authenticated identity.
    pub name: String,
    /// True if the proxy verified it (edge mode); false if the upstream did.
    pub verified_here: bool,
}

impl Peer {
    /// A peer that has not greeted yet.
    pub(crate) fn new(address: SocketAddr, local_address: SocketAddr) -> Self {
        Self {
            address,
            local_address,
            helo: None,
            esmtp: false,
            helo_rewrite: None,
            tls: None,
            login: None,
            name: None,
        }
    }

    /// How the upstream is to be greeted for this client: its HELO/EHLO name (or
    /// the one a plugin gave), with its verb; `None` before it greeted.
    pub(crate) fn greeting(&self) -> Option<Greeting> {
        let name = self.helo_rewrite.as_ref().or(self.helo.as_ref())?;
        Some(Greeting {
            name: name.clone(),
            esmtp: self.esmtp,
        })
    }

    /// The login the proxy verified itself (edge AUTH), which XCLIENT LOGIN carries;
    /// the upstream verified a passthrough login itself.
    pub(crate) fn verified_login(&self) -> Option<&str> {
        self.login
            .as_ref()
            .filter(|login| login.verified_here)
            .map(|login| login.name.as_str())
    }
}

/// A HELO or EHLO as sent upstream: the name, and whether it was EHLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Greeting {
    /// The HELO/EHLO argument.
    pub name: String,
    /// EHLO (true) or HELO.
    pub esmtp: bool,
}
