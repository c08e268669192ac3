//! The data a session carries, split by lifetime: [`Peer`] lives as long as the
//! connection, [`Transaction`] as long as one mail transaction.

use tokio::time::Instant;

pub(crate) use crate::client::{Login, Peer};
use crate::smtp::{MailCommand, RcptCommand};

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
