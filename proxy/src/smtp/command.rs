//! The SMTP command parser: one command line (without its CRLF) in, a typed
//! [`Command`] or a [`CommandError`] out. No I/O and no policy: whether a command is
//! allowed in the current state is the session's business.
//!
//! Addresses keep the exact text the client sent (`raw`), because the relay forwards
//! envelopes unchanged; the parser only checks that they are well formed
//! (RFC 5321 §4.1.2, with UTF-8 allowed as RFC 6531 extends it).

use std::fmt;

use portcullis_syntax::{address, param};

/// A parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `HELO domain`.
    Helo(String),
    /// `EHLO domain-or-address-literal`.
    Ehlo(String),
    /// `MAIL FROM:<reverse-path> [params]`.
    Mail(MailCommand),
    /// `RCPT TO:<forward-path> [params]`.
    Rcpt(RcptCommand),
    /// `DATA`.
    Data,
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `HELP [topic]`.
    Help,
    /// `VRFY string`.
    Vrfy(String),
    /// `EXPN string`.
    Expn(String),
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]`.
    Auth(String),
    /// A verb we know but do not implement: the RFC 821 relics SEND, SOML, SAML and
    /// TURN, and BDAT (CHUNKING is not offered).
    NotImplemented(&'static str),
}

/// `MAIL FROM:` with its reverse-path and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailCommand {
    /// The reverse-path; `<>` is the null path.
    pub reverse_path: Path,
    /// ESMTP parameters in the order given.
    pub params: Vec<Param>,
}

/// `RCPT TO:` with its forward-path and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptCommand {
    /// The forward-path (`<Postmaster>` is allowed without a domain).
    pub forward_path: Path,
    /// ESMTP parameters in the order given.
    pub params: Vec<Param>,
}

/// An envelope path as the client wrote it, angle brackets included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    raw: String,
}

impl Path {
    /// The path for a mailbox given without brackets (empty: the null path). Not
    /// checked: a path from anywhere but the parser is checked by rendering the
    /// command it belongs to and parsing that back.
    pub fn bracketed(mailbox: &str) -> Self {
        Self {
            raw: format!("<{mailbox}>"),
        }
    }

    /// The path exactly as sent, e.g. `<a@example.com>` or `<>`.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The mailbox without brackets and source route; empty for the null path.
    pub fn mailbox(&self) -> &str {
        let inner = &self.raw[1..self.raw.len() - 1];
        match inner.split_once(':') {
            Some((route, mailbox)) if route.starts_with('@') => mailbox,
            _ => inner,
        }
    }

    /// True for `<>`.
    pub fn is_null(&self) -> bool {
        self.raw == "<>"
    }

    /// True if the path contains non-ASCII characters (needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        !self.raw.is_ascii()
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The one rendering of MAIL as it goes upstream: `MAIL FROM:<path> params`.
impl fmt::Display for MailCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MAIL FROM:{}", self.reverse_path)?;
        self.params
            .iter()
            .try_for_each(|param| write!(f, " {param}"))
    }
}

/// The one rendering of RCPT as it goes upstream: `RCPT TO:<path> params`.
impl fmt::Display for RcptCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RCPT TO:{}", self.forward_path)?;
        self.params
            .iter()
            .try_for_each(|param| write!(f, " {param}"))
    }
}

/// One ESMTP parameter, `KEYWORD[=value]`, spelled as the client spelled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The keyword as sent; compare with [`Param::is`].
    pub keyword: String,
    /// The value, if the parameter had one.
    pub value: Option<String>,
}

impl Param {
    /// Case-insensitive keyword comparison.
    pub fn is(&self, keyword: &str) -> bool {
        self.keyword.eq_ignore_ascii_case(keyword)
    }

    /// Keyword and value, as the syntax rules take them.
    pub fn pair(&self) -> (&str, Option<&str>) {
        (&self.keyword, self.value.as_deref())
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value}", self.keyword),
            None => f.write_str(&self.keyword),
        }
    }
}

/// Why a command line could not be parsed; each maps to one SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The verb is not an SMTP command (500).
    #[error("command unrecognized")]
    Unrecognized,
    /// The verb is known but its arguments are malformed (501).
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// The line is not valid UTF-8 (500).
    #[error("command line is not valid UTF-8")]
    NotUtf8,
}

/// Parses one command line (without CRLF).
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::NotUtf8)?;
    let (verb, rest) = match line.find(' ') {
        Some(at) => (&line[..at], &line[at + 1..]),
        None => (line, ""),
    };
    match verb.to_ascii_uppercase().as_str() {
        "HELO" => parse_domain_argument(rest).map(Command::Helo),
        "EHLO" => parse_domain_argument(rest).map(Command::Ehlo),
        "MAIL" => parse_mail(rest).map(Command::Mail),
        "RCPT" => parse_rcpt(rest).map(Command::Rcpt),
        "DATA" => no_argument(rest, Command::Data),
        "RSET" => no_argument(rest, Command::Rset),
        "QUIT" => no_argument(rest, Command::Quit),
        "STARTTLS" => no_argument(rest, Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" => required_argument(rest).map(Command::Vrfy),
        "EXPN" => required_argument(rest).map(Command::Expn),
        "AUTH" => required_argument(rest).map(Command::Auth),
        "SEND" => Ok(Command::NotImplemented("SEND")),
        "SOML" => Ok(Command::NotImplemented("SOML")),
        "SAML" => Ok(Command::NotImplemented("SAML")),
        "TURN" => Ok(Command::NotImplemented("TURN")),
        "BDAT" => Ok(Command::NotImplemented("BDAT")),
        _ => Err(CommandError::Unrecognized),
    }
}

fn no_argument(rest: &str, command: Command) -> Result<Command, CommandError> {
    if rest.trim().is_empty() {
        Ok(command)
    } else {
        Err(CommandError::Syntax("this command takes no argument"))
    }
}

fn required_argument(rest: &str) -> Result<String, CommandError> {
    let argument = rest.trim();
    if argument.is_empty() {
        return Err(CommandError::Syntax("an argument is required"));
    }
    Ok(argument.to_string())
}

/// The HELO/EHLO argument. RFC 5321 asks for a domain or an address literal, but real
/// clients send NetBIOS names with underscores and worse; like most MTAs we accept any
/// single visible token and leave HELO policy to plugins and the upstream.
fn parse_domain_argument(rest: &str) -> Result<String, CommandError> {
    let argument = rest.trim();
    if argument.is_empty() {
        return Err(CommandError::Syntax("a domain name is required"));
    }
    if argument.contains(' ') {
        return Err(CommandError::Syntax("only one domain name is allowed"));
    }
    if argument.chars().any(char::is_control) {
        return Err(CommandError::Syntax("invalid domain name"));
    }
    Ok(argument.to_string())
}

fn parse_mail(rest: &str) -> Result<MailCommand, CommandError> {
    let arguments = strip_prefix_ignore_case(rest, "FROM:")
        .ok_or(CommandError::Syntax("expected MAIL FROM:<address>"))?;
    let (path, params) = split_path(arguments)?;
    if path != "<>" {
        check_path(path, false)?;
    }
    Ok(MailCommand {
        reverse_path: Path { raw: path.into() },
        params: parse_params(params)?,
    })
}

fn parse_rcpt(rest: &str) -> Result<RcptCommand, CommandError> {
    let arguments = strip_prefix_ignore_case(rest, "TO:")
        .ok_or(CommandError::Syntax("expected RCPT TO:<address>"))?;
    let (path, params) = split_path(arguments)?;
    check_path(path, true)?;
    Ok(RcptCommand {
        forward_path: Path { raw: path.into() },
        params: parse_params(params)?,
    })
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Splits `<path> params` (a space after the colon is tolerated, as most MTAs do).
fn split_path(arguments: &str) -> Result<(&str, &str), CommandError> {
    let arguments = arguments.trim_start_matches(' ');
    if !arguments.starts_with('<') {
        return Err(CommandError::Syntax("the address must be enclosed in <>"));
    }
    let end = path_end(arguments).ok_or(CommandError::Syntax("unterminated address"))?;
    let (path, rest) = arguments.split_at(end + 1);
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return Err(CommandError::Syntax("garbage after the address"));
    }
    Ok((path, rest.trim_start_matches(' ')))
}

/// Finds the closing `>`, skipping quoted strings (which may contain `>`).
fn path_end(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (index, ch) in text.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(index),
            _ => {}
        }
    }
    None
}

fn check_path(path: &str, allow_postmaster: bool) -> Result<(), CommandError> {
    let inner = &path[1..path.len() - 1];
    let mailbox = match inner.split_once(':') {
        Some((route, mailbox)) if route.starts_with('@') => {
            address::check_source_route(route).map_err(CommandError::Syntax)?;
            mailbox
        }
        _ => inner,
    };
    if allow_postmaster && mailbox.eq_ignore_ascii_case("postmaster") {
        return Ok(());
    }
    address::check_mailbox(mailbox).map_err(CommandError::Syntax)
}

fn parse_params(text: &str) -> Result<Vec<Param>, CommandError> {
    text.split(' ')
        .filter(|word| !word.is_empty())
        .map(parse_param)
        .collect()
}

fn parse_param(word: &str) -> Result<Param, CommandError> {
    let (keyword, value) = match word.split_once('=') {
        Some((keyword, value)) => (keyword, Some(value)),
        None => (word, None),
    };
    if !param::is_keyword(keyword) {
        return Err(CommandError::Syntax("invalid parameter keyword"));
    }
    if value.is_some_and(|value| !param::is_value(value)) {
        return Err(CommandError::Syntax("invalid parameter value"));
    }
    Ok(Param {
        keyword: keyword.to_string(),
        value: value.map(str::to_string),
    })
}

#[cfg(test)]
mod tests;
