//! The data a session carries, split by lifetime: [`Peer`] lives as long as the
//! connection, [`Transaction`] as long as one mail transaction.

use std::net::SocketAddr;

use tokio::time::Instant;

use crate::{
    dns::ClientName,
    smtp::{MailCommand, RcptCommand},
    tls::TlsInfo,
    upstream::{ClientInfo, Greeting},
};

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

    /// What the upstream is told about this client (XCLIENT / PROXY).
    pub(crate) fn client_info(&self) -> ClientInfo {
        ClientInfo {
            address: self.address,
            local_address: self.local_address,
            greeting: self.greeting(),
            // The upstream verified a passthrough login itself; only edge logins go
            // in XCLIENT.
            login: self
                .login
                .as_ref()
                .filter(|login| login.verified_here)
                .map(|login| login.name.clone()),
            name: self.name.clone(),
        }
    }
}

/// Where the client's mail transaction is (RFC 5321 §3.3): each state holds only its
/// own data, so ending a transaction is `transaction = Transaction::Idle`.
#[derive(Debug, Default)]
pub(crate) enum Transaction {
    /// No transaction.
    #[default]
    Idle,
    /// The last MAIL was refused, so the RCPTs and DATA a client pipelined behind it
    /// get 503 without counting as its errors (RFC 2920 lets it send them unanswered;
    /// the refusal may be the upstream's doing) — at most one pipelined group's worth
    /// (`max_recipients` RCPTs and a DATA), counted in `excused`, so a client cannot
    /// loop on them forever.
    MailRefused {
        /// 503s excused since that MAIL.
        excused: usize,
    },
    /// MAIL was accepted upstream.
    Open(Envelope),
    /// The upstream was lost after MAIL: RCPT and DATA get 451 until RSET.
    UpstreamLost,
}

/// The envelope of an open transaction.
#[derive(Debug)]
pub(crate) struct Envelope {
    /// The MAIL command the upstream accepted.
    pub mail: MailCommand,
    /// The recipients the upstream accepted.
    pub recipients: Vec<RcptCommand>,
    /// When MAIL was accepted.
    pub started: Instant,
}

impl Transaction {
    /// True once MAIL has been accepted (or was accepted before the upstream was lost).
    pub(crate) fn in_transaction(&self) -> bool {
        matches!(self, Transaction::Open(_) | Transaction::UpstreamLost)
    }

    /// The envelope, while a transaction is open.
    pub(crate) fn envelope(&self) -> Option<&Envelope> {
        match self {
            Transaction::Open(envelope) => Some(envelope),
            _ => None,
        }
    }
}

impl Envelope {
    /// A transaction of `mail`, accepted now.
    pub(crate) fn new(mail: MailCommand) -> Self {
        Self {
            mail,
            recipients: Vec::new(),
            started: Instant::now(),
        }
    }

    /// True if MAIL carried the SMTPUTF8 parameter.
    pub(crate) fn smtputf8(&self) -> bool {
        self.mail.params.iter().any(|p| p.is("SMTPUTF8"))
    }
}
