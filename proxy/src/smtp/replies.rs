//! The replies the proxy makes itself, each a named constructor, so codes and texts
//! live in one place. Upstream replies are relayed as received and never built here.

use crate::smtp::{EnhancedCode, Reply};

const fn code(class: u8, subject: u16, detail: u16) -> EnhancedCode {
    EnhancedCode::new(class, subject, detail)
}

/// 220 greeting.
pub(crate) fn greeting(hostname: &str) -> Reply {
    Reply::plain(220, format!("{hostname} ESMTP Portcullis"))
}

/// 250 for NOOP and RSET.
pub(crate) fn ok() -> Reply {
    Reply::new(250, code(2, 0, 0), "Ok")
}

/// 221 for QUIT.
pub(crate) fn bye() -> Reply {
    Reply::new(221, code(2, 0, 0), "Bye")
}

/// 214 for HELP.
pub(crate) fn help() -> Reply {
    Reply::new(
        214,
        code(2, 0, 0),
        "See RFC 5321; commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY EXPN",
    )
}

/// 252 for VRFY when it is not relayed.
pub(crate) fn cannot_verify() -> Reply {
    Reply::new(
        252,
        code(2, 5, 0),
        "Cannot VRFY user, but will accept message and attempt delivery",
    )
}

/// 502 for EXPN when it is not relayed.
pub(crate) fn expn_disabled() -> Reply {
    Reply::new(502, code(5, 5, 1), "EXPN is not available")
}

/// 500 for an unknown verb.
pub(crate) fn unrecognized() -> Reply {
    Reply::new(500, code(5, 5, 2), "Command unrecognized")
}

/// 500 for a line over the command line limit.
pub(crate) fn line_too_long() -> Reply {
    Reply::new(500, code(5, 5, 2), "Line too long")
}

/// 501 for a malformed argument.
pub(crate) fn syntax(detail: impl std::fmt::Display) -> Reply {
    Reply::new(501, code(5, 5, 4), format!("Syntax error: {detail}"))
}

/// 501 for a command line ended by a bare LF.
pub(crate) fn bare_lf_command() -> Reply {
    Reply::new(
        501,
        code(5, 5, 2),
        "Syntax error: command lines must end with CRLF",
    )
}

/// 502 for verbs we do not implement.
pub(crate) fn not_implemented(verb: &str) -> Reply {
    Reply::new(502, code(5, 5, 1), format!("{verb} not implemented"))
}

/// 503 for a command out of sequence.
pub(crate) fn bad_sequence(detail: &str) -> Reply {
    Reply::new(
        503,
        code(5, 5, 1),
        format!("Bad sequence of commands: {detail}"),
    )
}

/// 555 for a MAIL/RCPT parameter of an extension not offered.
pub(crate) fn unsupported_parameter(keyword: &str) -> Reply {
    Reply::new(
        555,
        code(5, 5, 4),
        format!("Unsupported parameter {keyword}"),
    )
}

/// 552 when SIZE or the message exceeds the limit.
pub(crate) fn message_too_big() -> Reply {
    Reply::new(
        552,
        code(5, 3, 4),
        "Message size exceeds fixed maximum message size",
    )
}

/// 553 for a UTF-8 address without SMTPUTF8.
pub(crate) fn utf8_needs_smtputf8() -> Reply {
    Reply::new(
        553,
        code(5, 6, 7),
        "Non-ASCII address requires the SMTPUTF8 parameter",
    )
}

/// 452 past the recipient limit.
pub(crate) fn too_many_recipients() -> Reply {
    Reply::new(452, code(4, 5, 3), "Too many recipients")
}

/// 554 for DATA without any accepted recipient.
pub(crate) fn no_valid_recipients() -> Reply {
    Reply::new(554, code(5, 5, 1), "No valid recipients")
}

/// 451 when the upstream changed its extensions since we offered them.
pub(crate) fn extension_gone(keyword: &str) -> Reply {
    Reply::new(
        451,
        code(4, 3, 0),
        format!("Parameter {keyword} cannot be relayed right now, try again later"),
    )
}

/// 451 for RCPT/DATA after the upstream was lost in this transaction.
pub(crate) fn upstream_lost() -> Reply {
    Reply::new(
        451,
        code(4, 4, 1),
        "Upstream connection lost, send RSET and try again",
    )
}

/// 550 for a message with bare CR or LF (policy `reject`).
pub(crate) fn bare_line_ending() -> Reply {
    Reply::new(
        550,
        code(5, 6, 0),
        "Message contains bare CR or LF; lines must end with CRLF",
    )
}

/// 500 for a message line over the text line limit.
pub(crate) fn message_line_too_long() -> Reply {
    Reply::new(500, code(5, 5, 2), "Line too long in message")
}

/// 421 when the client sent too many bad commands.
pub(crate) fn too_many_errors(hostname: &str) -> Reply {
    Reply::new(
        421,
        code(4, 7, 0),
        format!("{hostname} Too many errors, closing connection"),
    )
}

/// 421 when the client sent too many commands that move no mail.
pub(crate) fn too_many_junk_commands(hostname: &str) -> Reply {
    Reply::new(
        421,
        code(4, 7, 0),
        format!("{hostname} Too many commands without mail, closing connection"),
    )
}

/// 421 when the client is idle or slow past the timeout.
pub(crate) fn timeout(hostname: &str) -> Reply {
    Reply::new(
        421,
        code(4, 4, 2),
        format!("{hostname} Timeout exceeded, closing connection"),
    )
}

/// 421 during shutdown.
pub(crate) fn shutting_down(hostname: &str) -> Reply {
    Reply::new(
        421,
        code(4, 3, 2),
        format!("{hostname} Service shutting down, try again later"),
    )
}

/// 421 when the connection limit is reached.
pub(crate) fn too_many_connections(hostname: &str) -> Reply {
    Reply::new(
        421,
        code(4, 7, 0),
        format!("{hostname} Too many connections, try again later"),
    )
}

/// 502 for STARTTLS and AUTH, which this listener does not offer.
pub(crate) fn not_offered(verb: &str) -> Reply {
    Reply::new(
        502,
        code(5, 5, 1),
        format!("{verb} is not offered on this listener"),
    )
}

/// 354 when the proxy takes the message itself (a plugin wants to see it first).
pub(crate) fn start_input() -> Reply {
    Reply::plain(354, "End data with <CR><LF>.<CR><LF>")
}

/// 250 for a message a plugin discarded: the client must not learn it went nowhere.
pub(crate) fn discarded() -> Reply {
    Reply::new(250, code(2, 0, 0), "Ok")
}

/// 451 when the message could not be spooled (disk full, ...).
pub(crate) fn spool_failed() -> Reply {
    Reply::new(
        451,
        code(4, 3, 0),
        "Local error in processing, try again later",
    )
}

/// 451 when a plugin failed and its policy is `tempfail` (the default).
pub(crate) fn plugin_tempfail() -> Reply {
    Reply::new(
        451,
        code(4, 3, 0),
        "Temporary failure in a filter, try again later",
    )
}

/// 550 when a plugin failed and its policy is `reject`.
pub(crate) fn plugin_reject() -> Reply {
    Reply::new(550, code(5, 3, 0), "Rejected by a filter")
}

/// 421 when a plugin asked to disconnect.
pub(crate) fn plugin_disconnect(text: Option<&str>) -> Reply {
    Reply::new(421, code(4, 7, 0), text.unwrap_or("Closing connection"))
}

/// 220 after STARTTLS: the handshake comes next.
pub(crate) fn ready_for_tls() -> Reply {
    Reply::new(220, code(2, 0, 0), "Ready to start TLS")
}

/// 530 for MAIL before STARTTLS on a listener that requires TLS.
pub(crate) fn tls_required() -> Reply {
    Reply::new(530, code(5, 7, 0), "Must issue a STARTTLS command first")
}

/// 530 for MAIL without AUTH on a listener that requires it.
pub(crate) fn auth_required() -> Reply {
    Reply::new(530, code(5, 7, 0), "Authentication required")
}

/// 538 for AUTH before TLS where plaintext AUTH is not allowed.
pub(crate) fn encryption_required() -> Reply {
    Reply::new(
        538,
        code(5, 7, 11),
        "Encryption required for requested authentication mechanism",
    )
}

/// 235 after a successful AUTH.
pub(crate) fn authenticated() -> Reply {
    Reply::new(235, code(2, 7, 0), "Authentication successful")
}

/// 535 for wrong credentials.
pub(crate) fn bad_credentials() -> Reply {
    Reply::new(535, code(5, 7, 8), "Authentication credentials invalid")
}

/// 534 for a mechanism this listener's policy does not permit.
pub(crate) fn mechanism_too_weak() -> Reply {
    Reply::new(534, code(5, 7, 9), "Authentication mechanism is too weak")
}

/// 504 for a mechanism the proxy does not know.
pub(crate) fn unknown_mechanism() -> Reply {
    Reply::new(504, code(5, 5, 4), "Unrecognized authentication type")
}

/// 454 when the credentials cannot be checked now.
pub(crate) fn auth_unavailable() -> Reply {
    Reply::new(454, code(4, 7, 0), "Temporary authentication failure")
}

/// 501 when the client cancels an AUTH exchange with `*`.
pub(crate) fn auth_cancelled() -> Reply {
    Reply::new(501, code(5, 0, 0), "Authentication cancelled")
}

/// 501 for an AUTH response that is not valid base64 or not what the mechanism expects.
pub(crate) fn auth_malformed(detail: impl std::fmt::Display) -> Reply {
    Reply::new(
        501,
        code(5, 5, 2),
        format!("Cannot decode response: {detail}"),
    )
}

/// 500 for an AUTH response line over the limit.
pub(crate) fn auth_line_too_long() -> Reply {
    Reply::new(
        500,
        code(5, 5, 6),
        "Authentication exchange line is too long",
    )
}

/// 421 for a client that failed AUTH too often.
pub(crate) fn auth_throttled(hostname: &str) -> Reply {
    Reply::new(
        421,
        code(4, 7, 0),
        format!("{hostname} Too many failed authentication attempts, closing connection"),
    )
}

/// 553 for a sender the login may not use.
pub(crate) fn sender_not_owned(login: Option<&str>) -> Reply {
    let text = match login {
        Some(login) => format!("Sender address rejected: not owned by user {login}"),
        None => "Sender address rejected: authentication required to use this sender".into(),
    };
    Reply::new(553, code(5, 7, 1), text)
}
