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
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn path(raw: &str) -> Path {
        Path { raw: raw.into() }
    }

    fn param(keyword: &str, value: Option<&str>) -> Param {
        Param {
            keyword: keyword.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn parses_commands() {
        let cases: Vec<(&str, Command)> = vec![
            (
                "HELO client.example",
                Command::Helo("client.example".into()),
            ),
            ("ehlo [192.0.2.7]", Command::Ehlo("[192.0.2.7]".into())),
            (
                "EHLO [IPv6:2001:db8::1]",
                Command::Ehlo("[IPv6:2001:db8::1]".into()),
            ),
            ("EHLO DESKTOP_42", Command::Ehlo("DESKTOP_42".into())),
            (
                "MAIL FROM:<a@example.com>",
                Command::Mail(MailCommand {
                    reverse_path: path("<a@example.com>"),
                    params: vec![],
                }),
            ),
            (
                "mail from: <> SIZE=100 BODY=8BITMIME",
                Command::Mail(MailCommand {
                    reverse_path: path("<>"),
                    params: vec![param("SIZE", Some("100")), param("BODY", Some("8BITMIME"))],
                }),
            ),
            (
                "MAIL FROM:<\"john doe\"@example.com> SMTPUTF8",
                Command::Mail(MailCommand {
                    reverse_path: path("<\"john doe\"@example.com>"),
                    params: vec![param("SMTPUTF8", None)],
                }),
            ),
            (
                "MAIL FROM:<@relay.example:a@example.com>",
                Command::Mail(MailCommand {
                    reverse_path: path("<@relay.example:a@example.com>"),
                    params: vec![],
                }),
            ),
            (
                "RCPT TO:<Postmaster>",
                Command::Rcpt(RcptCommand {
                    forward_path: path("<Postmaster>"),
                    params: vec![],
                }),
            ),
            (
                "RCPT TO:<用户@例子.广告> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40y",
                Command::Rcpt(RcptCommand {
                    forward_path: path("<用户@例子.广告>"),
                    params: vec![
                        param("NOTIFY", Some("SUCCESS,FAILURE")),
                        param("ORCPT", Some("rfc822;x+40y")),
                    ],
                }),
            ),
            ("DATA", Command::Data),
            ("rset", Command::Rset),
            ("NOOP anything at all", Command::Noop),
            ("QUIT", Command::Quit),
            ("HELP MAIL", Command::Help),
            ("VRFY postmaster", Command::Vrfy("postmaster".into())),
            ("EXPN staff", Command::Expn("staff".into())),
            ("STARTTLS", Command::StartTls),
            (
                "AUTH PLAIN AGFAAGI=",
                Command::Auth("PLAIN AGFAAGI=".into()),
            ),
            ("SEND FROM:<a@b.c>", Command::NotImplemented("SEND")),
            ("SOML FROM:<a@b.c>", Command::NotImplemented("SOML")),
            ("SAML FROM:<a@b.c>", Command::NotImplemented("SAML")),
            ("TURN", Command::NotImplemented("TURN")),
            ("BDAT 100 LAST", Command::NotImplemented("BDAT")),
        ];
        for (line, expected) in cases {
            assert_eq!(parse(line.as_bytes()), Ok(expected), "{line}");
        }
    }

    #[test]
    fn rejects_bad_commands() {
        use CommandError::*;
        let cases: &[(&[u8], CommandError)] = &[
            (b"FOO bar", Unrecognized),
            (b"", Unrecognized),
            (b"MAILFROM:<a@b.c>", Unrecognized),
            (b"HELO", Syntax("a domain name is required")),
            (b"EHLO a b", Syntax("only one domain name is allowed")),
            (b"EHLO bad\x01name", Syntax("invalid domain name")),
            (b"MAIL TO:<a@b.c>", Syntax("expected MAIL FROM:<address>")),
            (
                b"MAIL FROM:a@b.c",
                Syntax("the address must be enclosed in <>"),
            ),
            (b"MAIL FROM:<a@b.c", Syntax("unterminated address")),
            (b"MAIL FROM:<a@b.c>x", Syntax("garbage after the address")),
            (b"MAIL FROM:<ab.c>", Syntax("the address needs a domain")),
            (b"MAIL FROM:<a..b@b.c>", Syntax("invalid local part")),
            (b"MAIL FROM:<a@b..c>", Syntax("invalid domain")),
            (b"MAIL FROM:<a@[300.1.1.1]>", Syntax("invalid domain")),
            (b"RCPT TO:<>", Syntax("the address needs a domain")),
            (b"RCPT TO:<a@b.c> =x", Syntax("invalid parameter keyword")),
            (
                b"RCPT TO:<a@b.c> NOTIFY=",
                Syntax("invalid parameter value"),
            ),
            (b"DATA now", Syntax("this command takes no argument")),
            (b"VRFY", Syntax("an argument is required")),
            (b"MAIL FROM:<\xff@b.c>", NotUtf8),
        ];
        for (line, expected) in cases {
            assert_eq!(
                parse(line),
                Err(expected.clone()),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn path_accessors() {
        let Ok(Command::Mail(mail)) = parse(b"MAIL FROM:<@r.example:a@example.com>") else {
            panic!("expected MAIL");
        };
        assert_eq!(mail.reverse_path.mailbox(), "a@example.com");
        assert!(!mail.reverse_path.is_null());
        assert!(path("<>").is_null());
        assert!(path("<ü@example.com>").is_utf8());
    }

    /// MAIL and RCPT lines shaped like the grammar, with the characters that matter
    /// to it (quotes, backslashes, brackets, spaces, controls, non-ASCII) in every
    /// part, or plain arbitrary bytes.
    fn command_line() -> impl Strategy<Value = Vec<u8>> {
        let verb = prop::sample::select(vec!["MAIL FROM:", "RCPT TO:", "mail from: ", "Rcpt To:"]);
        let local = "[a-z.+\"\\\\ \t\r\n\u{0}ü@<>]{0,8}";
        let domain = "([a-z0-9.-]{0,12}|\\[(127.0.0.1|IPv6:::1|[0-9a-z:.]{0,8})\\])";
        let param = "( [A-Za-z]{1,6}(=[!-~ü\r\n\t ]{0,6})?)";
        let structured = (verb, local, domain, prop::collection::vec(param, 0..3)).prop_map(
            |(verb, local, domain, params)| {
                format!("{verb}<{local}@{domain}>{}", params.concat()).into_bytes()
            },
        );
        prop_oneof![
            4 => structured,
            1 => prop::collection::vec(any::<u8>(), 0..80),
        ]
    }

    proptest! {
        /// Whatever a client sends (or a plugin's rewrite becomes), parsing does not
        /// panic; a MAIL or RCPT it accepts renders — as the proxy writes it upstream —
        /// to a line without control characters that parses back to the same command.
        #[test]
        fn accepted_paths_render_to_the_line_that_was_checked(line in command_line()) {
            let (rendered, command) = match parse(&line) {
                Ok(Command::Mail(mail)) => (mail.to_string(), Command::Mail(mail)),
                Ok(Command::Rcpt(rcpt)) => (rcpt.to_string(), Command::Rcpt(rcpt)),
                _ => return Ok(()),
            };
            prop_assert!(!rendered.chars().any(char::is_control), "{:?}", rendered);
            prop_assert_eq!(parse(rendered.as_bytes()), Ok(command));
        }
    }
}
