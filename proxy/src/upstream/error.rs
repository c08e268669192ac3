//! Why an upstream session cannot go on, at which step, and what the client is told.

use std::io;

use crate::{
    connection::ReadError,
    smtp::{EnhancedCode, Reply, reply::ReplyError},
};

/// The step of the upstream session that failed (not a plugin stage: see `hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// TCP connect (and the PROXY header).
    Connect,
    /// Waiting for the 220 greeting.
    Greeting,
    /// EHLO or HELO.
    Ehlo,
    /// XCLIENT and the greeting that follows it.
    Xclient,
    /// STARTTLS and the TLS handshake.
    Tls,
    /// An envelope or session command (MAIL, RCPT, RSET, VRFY, EXPN, DATA).
    Command,
    /// Sending message data.
    Data,
    /// Waiting for the reply to the final dot.
    DataEnd,
}

/// Why the upstream session cannot go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// TCP connect or name resolution failed.
    #[error("cannot connect to the upstream: {0}")]
    Connect(io::Error),
    /// No answer in time.
    #[error("upstream timed out at {0:?}")]
    Timeout(Step),
    /// The upstream closed the connection.
    #[error("upstream closed the connection at {0:?}")]
    Closed(Step),
    /// A socket error.
    #[error("upstream I/O error at {0:?}: {1}")]
    Io(Step, io::Error),
    /// The upstream's reply could not be parsed.
    #[error("upstream sent a malformed reply at {0:?}: {1}")]
    Protocol(Step, ReplyError),
    /// The upstream refused the session before any transaction (greeting, EHLO, XCLIENT).
    #[error("upstream refused the session at {0:?}: {1}")]
    Refused(Step, Reply),
    /// The TLS handshake with the upstream failed (certificate, protocol).
    #[error("TLS with the upstream failed: {0}")]
    Tls(io::Error),
    /// `upstream.tls = "starttls"` but the upstream does not offer STARTTLS.
    #[error("upstream does not offer STARTTLS")]
    StarttlsNotOffered,
    /// The upstream sent more after its 220 to STARTTLS: a plaintext injection.
    #[error("upstream sent data after its STARTTLS reply; refusing to go on")]
    TlsInjection,
    /// The upstream answered with a code its command cannot have: a 2xx to DATA (it
    /// would read as the message's acceptance before it was sent), a 3xx to MAIL, RCPT
    /// or RSET, or to the final dot.
    #[error("upstream sent an impossible reply at {0:?}: {1}")]
    Unexpected(Step, Reply),
    /// XCLIENT is configured but the upstream does not offer it to us.
    #[error("upstream does not offer XCLIENT to this proxy (check smtpd_authorized_xclient_hosts)")]
    XclientNotOffered,
    /// The upstream refused the client's own HELO/EHLO name: its verdict on the client,
    /// relayed to the client as it is.
    #[error("upstream refused the client's greeting: {0}")]
    GreetingRefused(Reply),
}

impl Step {
    /// Its label in the metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Greeting => "greeting",
            Step::Ehlo => "ehlo",
            Step::Xclient => "xclient",
            Step::Tls => "tls",
            Step::Command => "command",
            Step::Data => "data",
            Step::DataEnd => "data_end",
        }
    }
}

impl UpstreamError {
    /// Its kind, as `portcullis_upstream_errors_total` counts it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Closed(_) => "closed",
            UpstreamError::Io(..) => "io",
            UpstreamError::Protocol(..) => "protocol",
            UpstreamError::Refused(..) => "refused",
            UpstreamError::Tls(_) => "tls",
            UpstreamError::StarttlsNotOffered => "starttls_not_offered",
            UpstreamError::TlsInjection => "tls_injection",
            UpstreamError::Unexpected(..) => "unexpected_reply",
            UpstreamError::XclientNotOffered => "xclient_not_offered",
            UpstreamError::GreetingRefused(_) => "greeting_refused",
        }
    }

    /// True if the upstream is still in step after this error (it answered, just not
    /// as hoped), so the session can be ended with QUIT rather than dropped.
    pub(crate) fn leaves_session_usable(&self) -> bool {
        matches!(
            self,
            UpstreamError::Refused(..)
                | UpstreamError::GreetingRefused(_)
                | UpstreamError::StarttlsNotOffered
                | UpstreamError::XclientNotOffered
                | UpstreamError::Unexpected(Step::Command, _)
        )
    }
}

impl UpstreamError {
    /// What the client is told: always a transient failure, so nothing is lost.
    pub(crate) fn reply(&self) -> Reply {
        let text = match self {
            UpstreamError::GreetingRefused(reply) => return reply.clone(),
            UpstreamError::Timeout(_) => "Upstream server timed out, try again later",
            UpstreamError::Closed(_) | UpstreamError::Io(..) => {
                "Upstream connection lost, try again later"
            }
            _ => "Upstream server unavailable, try again later",
        };
        Reply::new(451, EnhancedCode::new(4, 4, 1), text)
    }
}

/// A refusal (4xx or 5xx) of the client's own greeting is the upstream's verdict on
/// the client. A 421 is the upstream closing, not a verdict: it stays an upstream
/// failure (451 4.4.1), since relaying it would end the client's session for a reply
/// to a command the client did not send.
pub(super) fn on_client(error: UpstreamError) -> UpstreamError {
    match error {
        UpstreamError::Refused(Step::Ehlo, reply)
            if matches!(reply.code(), 400..=599) && reply.code() != 421 =>
        {
            UpstreamError::GreetingRefused(reply)
        }
        other => other,
    }
}

pub(super) fn read_error(stage: Step, error: ReadError) -> UpstreamError {
    match error {
        ReadError::Closed => UpstreamError::Closed(stage),
        ReadError::Timeout => UpstreamError::Timeout(stage),
        ReadError::Io(error) => UpstreamError::Io(stage, error),
    }
}

pub(super) fn write_error(stage: Step, error: io::Error) -> UpstreamError {
    if error.kind() == io::ErrorKind::TimedOut {
        UpstreamError::Timeout(stage)
    } else {
        UpstreamError::Io(stage, error)
    }
}
