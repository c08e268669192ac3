//! SMTP replies as typed values: the reply code, an optional enhanced status code
//! (RFC 2034 / RFC 3463) and the text lines. One function renders them, and it strips
//! anything that could break the framing (CR, LF, other control characters), so a
//! reply built from foreign text can never inject a line into the session.
//!
//! This module also parses replies read from an upstream server, keeping every line of
//! text exactly as the upstream wrote it so they can be relayed verbatim.

use std::fmt;

/// An enhanced mail system status code, `class.subject.detail` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject sub-code, 0..=999.
    pub subject: u16,
    /// The detail sub-code, 0..=999.
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds an enhanced code; the parts are not checked here.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parses `class.subject.detail` at the start of `text`, returning the code and the
    /// rest of the text after the separating space.
    pub fn parse_prefix(text: &str) -> Option<(Self, &str)> {
        let (token, rest) = text.split_once(' ').unwrap_or((text, ""));
        let (class, subject, detail) = portcullis_syntax::reply::parse_enhanced(token)?;
        Some((Self::new(class, subject, detail), rest))
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: a three-digit code and one or more lines of text.
///
/// Each text line is stored without the code and separator, including the enhanced
/// status code if there is one (`"2.1.0 Ok"`), so an upstream reply relays unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    lines: Vec<String>,
}

/// Room for text on one reply line: 512 octets (RFC 5321 §4.5.3.1.5) less the code,
/// its separator and CRLF.
const LINE_ROOM: usize = portcullis_syntax::reply::MAX_LINE - 6;

/// `text` in lines that each fit a reply line after `prefix` (the enhanced code, which
/// RFC 2034 repeats on every line): broken at the last space that fits, or inside a
/// word too long for a line.
fn wrap(prefix: &str, text: &str) -> Vec<String> {
    let room = LINE_ROOM - prefix.len();
    let mut lines = Vec::new();
    let mut rest = text;
    while rest.len() > room {
        let mut cut = room;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Some(space) = rest[..cut].rfind(' ').filter(|&space| space > 0) {
            cut = space;
        }
        lines.push(format!("{prefix}{}", &rest[..cut]));
        rest = rest[cut..].trim_start_matches(' ');
    }
    lines.push(format!("{prefix}{rest}"));
    lines
}

impl Reply {
    /// A reply with an enhanced status code, the usual form for replies we make. Text
    /// too long for one line is wrapped into several, each with the enhanced code.
    pub fn new(code: u16, enhanced: EnhancedCode, text: impl fmt::Display) -> Self {
        Self {
            code,
            lines: wrap(&format!("{enhanced} "), &text.to_string()),
        }
    }

    /// A reply without an enhanced code (greetings, EHLO, 354, replies to HELO
    /// clients), wrapped like [`Reply::new`].
    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            lines: wrap("", &text.into()),
        }
    }

    /// A reply with several lines of text, each as given.
    pub fn multiline(code: u16, lines: Vec<String>) -> Self {
        let lines = if lines.is_empty() {
            vec![String::new()]
        } else {
            lines
        };
        Self { code, lines }
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The text lines, without code and separator.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// True for 2xx replies.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The enhanced status code at the start of the first line, if any.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        EnhancedCode::parse_prefix(self.lines.first()?).map(|(code, _)| code)
    }

    /// Renders the reply in wire form, appending to `out`. Control characters in the
    /// text are replaced by spaces, so the text can never end a line early.
    pub fn render_into(&self, out: &mut Vec<u8>) {
        let last = self.lines.len() - 1;
        for (index, line) in self.lines.iter().enumerate() {
            let separator = if index == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{:03}{separator}", self.code).as_bytes());
            out.extend(
                line.bytes()
                    .map(|b| if b.is_ascii_control() { b' ' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Renders the reply in wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.render_into(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

/// Why a reply from an upstream server could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The line does not start with three digits and a separator.
    #[error("malformed reply line")]
    Malformed,
    /// A continuation line carried a different code than the first.
    #[error("reply lines disagree on the code")]
    CodeMismatch,
    /// More lines than we are willing to collect for one reply.
    #[error("reply has too many lines")]
    TooManyLines,
}

/// Collects the lines of one reply as they arrive; "need more lines" is `Ok(None)`.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
}

/// The most lines one upstream reply may have (EHLO replies are the longest in practice).
pub const MAX_REPLY_LINES: usize = 100;

impl ReplyParser {
    /// Feeds one line (without CRLF); returns the reply when this was its last line.
    pub fn push_line(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let (code, last, text) = split_reply_line(line)?;
        if *self.code.get_or_insert(code) != code {
            return Err(ReplyError::CodeMismatch);
        }
        if self.lines.len() >= MAX_REPLY_LINES {
            return Err(ReplyError::TooManyLines);
        }
        self.lines.push(text);
        if !last {
            return Ok(None);
        }
        let lines = std::mem::take(&mut self.lines);
        self.code = None;
        Ok(Some(Reply::multiline(code, lines)))
    }
}

fn split_reply_line(line: &[u8]) -> Result<(u16, bool, String), ReplyError> {
    if line.len() < 3
        || !line[..3].iter().all(u8::is_ascii_digit)
        || !(b'2'..=b'5').contains(&line[0])
    {
        return Err(ReplyError::Malformed);
    }
    let code = line[..3]
        .iter()
        .fold(0u16, |acc, digit| acc * 10 + u16::from(digit - b'0'));
    let (last, text) = match line.get(3) {
        None => (true, &[][..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(ReplyError::Malformed),
    };
    Ok((code, last, String::from_utf8_lossy(text).into_owned()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn renders_single_and_multiline_replies() {
        let cases: &[(Reply, &str)] = &[
            (
                Reply::new(250, EnhancedCode::new(2, 1, 0), "Ok"),
                "250 2.1.0 Ok\r\n",
            ),
            (Reply::plain(354, "go ahead"), "354 go ahead\r\n"),
            (
                Reply::multiline(250, vec!["mx".into(), "PIPELINING".into()]),
                "250-mx\r\n250 PIPELINING\r\n",
            ),
            (
                Reply::plain(550, "evil\r\nRCPT TO:<x>"),
                "550 evil  RCPT TO:<x>\r\n",
            ),
        ];
        for (reply, wire) in cases {
            assert_eq!(String::from_utf8(reply.to_bytes()).unwrap(), *wire);
        }
    }

    #[test]
    fn long_text_is_wrapped_into_lines_of_at_most_512_octets() {
        let words = "word ".repeat(400);
        let reply = Reply::new(550, EnhancedCode::new(5, 7, 1), words.trim_end());
        let wire = String::from_utf8(reply.to_bytes()).unwrap();
        let lines: Vec<&str> = wire.split_inclusive("\r\n").collect();
        assert!(lines.len() >= 4, "{}", lines.len());
        for (index, line) in lines.iter().enumerate() {
            assert!(line.len() <= 512, "{} octets", line.len());
            let separator = if index + 1 == lines.len() { ' ' } else { '-' };
            assert!(
                line.starts_with(&format!("550{separator}5.7.1 word")),
                "{line}"
            );
        }
        let unbroken = Reply::plain(550, "ü".repeat(600));
        for line in String::from_utf8(unbroken.to_bytes())
            .unwrap()
            .split_inclusive("\r\n")
        {
            assert!(line.len() <= 512, "{} octets", line.len());
        }
        assert_eq!(
            unbroken.lines().concat(),
            "ü".repeat(600),
            "cut between characters"
        );
    }

    #[test]
    fn parses_enhanced_codes() {
        let cases: &[(&str, Option<(EnhancedCode, &str)>)] = &[
            ("2.1.0 Ok", Some((EnhancedCode::new(2, 1, 0), "Ok"))),
            ("5.7.1 no", Some((EnhancedCode::new(5, 7, 1), "no"))),
            ("4.4.2", Some((EnhancedCode::new(4, 4, 2), ""))),
            ("3.1.0 x", None),
            ("2.1 x", None),
            ("2.1.0.1 x", None),
            ("Ok", None),
            ("2.1000.0 x", None),
        ];
        for (text, expected) in cases {
            assert_eq!(EnhancedCode::parse_prefix(text), *expected, "{text}");
        }
    }

    #[test]
    fn parses_upstream_replies_line_by_line() {
        let mut parser = ReplyParser::default();
        assert_eq!(parser.push_line(b"250-mx.example"), Ok(None));
        assert_eq!(parser.push_line(b"250-SIZE 1000"), Ok(None));
        let reply = parser.push_line(b"250 8BITMIME").unwrap().unwrap();
        assert_eq!(reply.code(), 250);
        assert_eq!(reply.lines(), ["mx.example", "SIZE 1000", "8BITMIME"]);
        assert_eq!(parser.push_line(b"354").unwrap().unwrap().lines(), [""]);
    }

    #[test]
    fn rejects_malformed_upstream_replies() {
        let cases: &[&[u8]] = &[b"25", b"abc ok", b"250_ok", b"650 ok", b"150 ok"];
        for line in cases {
            let mut parser = ReplyParser::default();
            assert_eq!(
                parser.push_line(line),
                Err(ReplyError::Malformed),
                "{line:?}"
            );
        }
        let mut parser = ReplyParser::default();
        parser.push_line(b"250-a").unwrap();
        assert_eq!(parser.push_line(b"251 b"), Err(ReplyError::CodeMismatch));
    }

    proptest! {
        /// Whatever lines an upstream sends, parsing does not panic, and a reply it
        /// accepts reaches the client as whole lines: CRLF only at their ends, each
        /// starting with the code.
        #[test]
        fn upstream_replies_relay_as_whole_lines(
            lines in prop::collection::vec(
                prop_oneof![
                    "[2-5][0-9][0-9][ -][ -~\\r\\n\\t\\u{0}ü]{0,12}",
                    prop::collection::vec(any::<u8>(), 0..16)
                        .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
                ],
                1..6,
            )
        ) {
            let mut parser = ReplyParser::default();
            for line in &lines {
                let Ok(Some(reply)) = parser.push_line(line.as_bytes()) else {
                    continue;
                };
                let wire = reply.to_bytes();
                let code = format!("{:03}", reply.code());
                let text = String::from_utf8_lossy(&wire);
                let mut wire_lines: Vec<&str> = text.split("\r\n").collect();
                prop_assert_eq!(wire_lines.pop(), Some(""));
                prop_assert_eq!(wire_lines.len(), reply.lines().len());
                for line in wire_lines {
                    prop_assert!(line.starts_with(&code), "{:?}", line);
                    prop_assert!(!line.contains(['\r', '\n']), "{:?}", line);
                }
            }
        }
    }
}
