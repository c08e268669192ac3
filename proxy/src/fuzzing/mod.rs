//! The bodies of the fuzz targets (`fuzz/`, run by `bench/fuzz.sh`), kept in the
//! library so they can reach crate-internal parsers and so the test suite runs them
//! too (the smoke test below). Each takes arbitrary bytes, drives one parser as the
//! proxy drives it, and panics when a property the relay relies on does not hold:
//! what is rendered for the upstream parses back to what was parsed, carries no line
//! ending of its own, and the end of a message is found where the sender put it.
//!
//! Not API: hidden from the documentation, and free to change with the fuzz crate.

use base64::{Engine, engine::general_purpose::STANDARD};

use crate::{
    auth::{
        Mechanism,
        credentials::parse_lines,
        sasl::{Exchange, Step, login_of},
        sender_logins::SenderLogins,
    },
    proxy_protocol::{self, HeaderError, Progress, Version},
    smtp::{
        Command, EnhancedCode, Reply,
        capabilities::Capabilities,
        command,
        data::{BareLineEndings, DataReader, DotStuffer},
        line::{LineBuffer, NextLine},
        reply::ReplyParser,
    },
};

/// The default command line limit, CRLF included (RFC 5321 §4.5.3.1.4).
const COMMAND_LINE_LIMIT: usize = 512;

/// The command reader and parser: bytes as a client sends them, split into lines as
/// the session splits them. A MAIL or RCPT that parses renders to a line without
/// control characters that parses back to the same command.
pub fn command(data: &[u8]) {
    let mut buffer = LineBuffer::default();
    buffer.extend(data);
    while let Some(next) = buffer.next_line(COMMAND_LINE_LIMIT) {
        let line = match next {
            NextLine::Line(line) | NextLine::BareLf(line) => line,
            NextLine::TooLong => continue,
        };
        assert!(line.len() < COMMAND_LINE_LIMIT, "a line over the limit");
        assert!(!line.contains(&b'\n'), "a line with an LF inside");
        match command::parse(&line) {
            Ok(parsed @ Command::Mail(_)) | Ok(parsed @ Command::Rcpt(_)) => {
                let rendered = match &parsed {
                    Command::Mail(mail) => mail.to_string(),
                    Command::Rcpt(rcpt) => rcpt.to_string(),
                    _ => unreachable!(),
                };
                assert!(
                    !rendered.bytes().any(|b| b.is_ascii_control()),
                    "control character in {rendered:?}"
                );
                assert_eq!(
                    command::parse(rendered.as_bytes()),
                    Ok(parsed),
                    "{rendered:?} does not parse back"
                );
            }
            Ok(Command::Helo(name) | Command::Ehlo(name)) => {
                assert!(
                    !name.is_empty() && !name.contains(' ') && !name.chars().any(char::is_control),
                    "HELO name {name:?}"
                );
            }
            Ok(_) | Err(_) => {}
        }
    }
}

/// The upstream reply parser, and the replies the proxy makes from any text: each
/// renders to CRLF-terminated lines with no other line ending, parses back with its
/// code and line count, and the proxy's own stay within 512 octets a line.
pub fn reply(data: &[u8]) {
    let mut parser = ReplyParser::default();
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match parser.push_line(line) {
            Ok(Some(reply)) => {
                check_rendering(&reply);
                let capabilities = Capabilities::from_ehlo(&reply);
                for line in capabilities.offer(u64::MAX).ehlo_lines() {
                    assert!(!line.bytes().any(|b| b.is_ascii_control()), "{line:?}");
                }
            }
            Ok(None) => {}
            Err(_) => parser = ReplyParser::default(),
        }
    }
    let text = String::from_utf8_lossy(data);
    for own in [
        Reply::new(550, EnhancedCode::new(5, 7, 1), &text),
        Reply::plain(421, text.as_ref()),
    ] {
        let wire = check_rendering(&own);
        for line in wire.split_inclusive(|&b| b == b'\n') {
            assert!(line.len() <= 512, "a reply line of {} octets", line.len());
        }
    }
}

/// Renders `reply`, checks the wire form and parses it back; returns the wire form.
fn check_rendering(reply: &Reply) -> Vec<u8> {
    let wire = reply.to_bytes();
    let mut parser = ReplyParser::default();
    let mut parsed = None;
    for line in wire.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\r\n").expect("every line ends in CRLF");
        assert!(
            !text.contains(&b'\r') && !text.contains(&b'\n'),
            "a line ending inside {text:?}"
        );
        assert!(parsed.is_none(), "lines after the last one");
        parsed = parser.push_line(text).expect("a rendered reply parses");
    }
    let parsed = parsed.expect("the rendered reply is complete");
    assert_eq!(parsed.code(), reply.code());
    assert_eq!(parsed.lines().len(), reply.lines().len());
    wire
}

/// The DATA reader and the dot-stuffer. The first byte picks the bare line ending
/// policy and the size of the pieces the rest arrives in. The reader ends only at
/// CRLF "." CRLF, comes to the same end however the input is split, and yields content
/// without bare CR or LF; content stuffed for the upstream reads back unchanged and
/// ends exactly where the stuffer put the end.
pub fn data(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let policy = if control & 1 == 0 {
        BareLineEndings::Reject
    } else {
        BareLineEndings::Normalize
    };
    let piece = usize::from(control >> 1).max(1);
    // Limits small enough that inputs cross both, so which one comes first counts.
    let whole = read(input, policy, input.len().max(1), 1000, 1500);
    let pieces = read(input, policy, piece, 1000, 1500);
    // What is read before a violation goes nowhere (the upstream is abandoned), so
    // only the outcome must not depend on how the input was split.
    assert_eq!(
        (whole.consumed, whole.finished, whole.violation),
        (pieces.consumed, pieces.finished, pieces.violation),
        "pieces read differently"
    );
    if whole.violation.is_none() {
        assert_eq!(whole.content, pieces.content, "pieces read differently");
    }
    let Read {
        content,
        consumed,
        finished,
        violation,
    } = whole;
    if finished {
        let message = &input[..consumed];
        assert!(
            message == b".\r\n" || message.ends_with(b"\r\n.\r\n"),
            "ended without CRLF.CRLF"
        );
    } else {
        assert_eq!(consumed, input.len(), "stopped before the end");
    }
    if violation.is_none() {
        assert!(
            !has_bare_line_ending(&content),
            "bare line ending in content"
        );
        round_trip(&content);
    }
    round_trip(&with_crlf_line_endings(input));
}

#[derive(Debug, PartialEq, Eq)]
struct Read {
    content: Vec<u8>,
    consumed: usize,
    finished: bool,
    violation: Option<crate::smtp::data::DataViolation>,
}

fn read(
    input: &[u8],
    policy: BareLineEndings,
    piece: usize,
    line_limit: usize,
    size_limit: u64,
) -> Read {
    let mut reader = DataReader::new(policy, line_limit, size_limit);
    let mut content = Vec::new();
    let mut consumed = 0;
    for chunk in input.chunks(piece) {
        let feed = reader.feed(chunk, &mut content);
        assert!(feed.consumed <= chunk.len());
        consumed += feed.consumed;
        if feed.finished {
            return Read {
                content,
                consumed,
                finished: true,
                violation: reader.violation(),
            };
        }
        assert_eq!(feed.consumed, chunk.len(), "unfinished but input left");
    }
    Read {
        content,
        consumed,
        finished: false,
        violation: reader.violation(),
    }
}

/// Stuffs message content as the relay does and reads it back as the upstream would.
fn round_trip(content: &[u8]) {
    let mut stuffed = Vec::new();
    let mut stuffer = DotStuffer::default();
    for piece in content.chunks(7) {
        stuffer.stuff(piece, &mut stuffed);
    }
    stuffer.finish(&mut stuffed);
    let back = read(
        &stuffed,
        BareLineEndings::Reject,
        stuffed.len(),
        usize::MAX,
        u64::MAX,
    );
    assert!(back.finished, "the stuffed message has no end");
    assert_eq!(
        back.consumed,
        stuffed.len(),
        "the stuffed message ends early"
    );
    assert_eq!(back.violation, None);
    let mut expected = content.to_vec();
    if !expected.is_empty() && !expected.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    assert_eq!(back.content, expected, "content changed on the way");
}

fn has_bare_line_ending(content: &[u8]) -> bool {
    content.iter().enumerate().any(|(at, &byte)| match byte {
        b'\r' => content.get(at + 1) != Some(&b'\n'),
        b'\n' => at == 0 || content[at - 1] != b'\r',
        _ => false,
    })
}

/// `bytes` with every CR, LF or CRLF made a CRLF: message content as the relay sends it.
fn with_crlf_line_endings(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\r' if bytes.get(at + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                at += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            byte => out.push(byte),
        }
        at += 1;
    }
    out
}

/// The PLAIN and LOGIN exchanges. The first byte picks the mechanism and whether the
/// AUTH command carries an initial response; the rest are the client's lines. What an
/// exchange completes with is what the passthrough mode reads as the login, and
/// PLAIN's credentials encode back to themselves.
pub fn sasl(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mechanism = if control & 1 == 0 {
        Mechanism::Plain
    } else {
        Mechanism::Login
    };
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let initial = if control & 2 != 0 { lines.next() } else { None };
    let Ok((mut exchange, mut step)) = Exchange::start(mechanism, initial) else {
        return;
    };
    let mut responses: Vec<&str> = initial.into_iter().collect();
    let credentials = loop {
        match step {
            Step::Done(credentials) => break credentials,
            Step::Challenge(_) => {
                let Some(line) = lines.next() else {
                    return;
                };
                responses.push(line);
                step = match exchange.respond(line) {
                    Ok(step) => step,
                    Err(_) => return,
                };
            }
        }
    };
    assert_eq!(credentials.mechanism, mechanism);
    assert!(!credentials.login.is_empty(), "an empty login");
    let first = responses[0];
    assert_eq!(
        login_of(mechanism, first).as_deref(),
        Some(credentials.login.as_str()),
        "passthrough reads another login from {first:?}"
    );
    if mechanism == Mechanism::Plain {
        let encoded = STANDARD.encode(format!(
            "\0{}\0{}",
            credentials.login,
            credentials.password.expose()
        ));
        match Exchange::start(Mechanism::Plain, Some(&encoded)) {
            Ok((_, Step::Done(again))) => assert_eq!(again, credentials),
            other => panic!("PLAIN credentials do not encode back: {other:?}"),
        }
    }
}

/// The credentials file's syntax (line by line, without computing the decoys a real
/// load hashes, whose cost the file chooses).
pub fn credentials(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for (number, login, _) in parse_lines(text).flatten() {
        assert!(number >= 1);
        assert!(!login.is_empty() && !login.contains(char::is_whitespace));
    }
}

/// The sender-login file: a parsed file answers for any sender and login. The last
/// line of the input is the sender and login asked about.
pub fn sender_logins(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, question) = text.rsplit_once('\n').unwrap_or((text, ""));
    let Ok(logins) = SenderLogins::parse(file) else {
        return;
    };
    let (sender, login) = question.split_once(' ').unwrap_or((question, ""));
    let login = (!login.is_empty()).then_some(login);
    let allowed = logins.allows(login, sender);
    if sender.is_empty() {
        assert!(allowed, "the null sender is refused");
    }
    assert_eq!(
        allowed,
        logins.allows(login, &sender.to_ascii_uppercase()),
        "case changes the answer for {sender:?}"
    );
}

/// The PROXY protocol header reader, driven as the listener drives it (reading
/// exactly what the parser asks for): it never reads past a header, and a header it
/// takes, written again, reads back the same.
pub fn proxy_header(data: &[u8]) {
    let (header, read) = read_proxy_header(data);
    let Ok(header) = header else {
        return;
    };
    assert!(read <= data.len());
    let Some((source, destination)) = header.addresses else {
        return;
    };
    assert_eq!(source.is_ipv4(), destination.is_ipv4(), "mixed families");
    let again = match header.version {
        Version::V1 => format!(
            "PROXY {} {} {} {} {}\r\n",
            if source.is_ipv4() { "TCP4" } else { "TCP6" },
            source.ip(),
            destination.ip(),
            source.port(),
            destination.port()
        )
        .into_bytes(),
        Version::V2 => {
            let mut block = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
            let addresses: Vec<u8> = match (source.ip(), destination.ip()) {
                (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
                    block.push(0x11);
                    [s.octets().as_slice(), d.octets().as_slice()].concat()
                }
                (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
                    block.push(0x21);
                    [s.octets().as_slice(), d.octets().as_slice()].concat()
                }
                _ => unreachable!("checked above"),
            };
            block.extend_from_slice(&(addresses.len() as u16 + 4).to_be_bytes());
            block.extend_from_slice(&addresses);
            block.extend_from_slice(&source.port().to_be_bytes());
            block.extend_from_slice(&destination.port().to_be_bytes());
            block
        }
    };
    let (reparsed, reread) = read_proxy_header(&again);
    assert_eq!(reparsed, Ok(header), "{again:?}");
    assert_eq!(reread, again.len());
}

/// Reads `data` as the listener reads a stream: the outcome and the octets taken.
fn read_proxy_header(data: &[u8]) -> (Result<proxy_protocol::Header, HeaderError>, usize) {
    let mut read = 0;
    loop {
        match proxy_protocol::parse(&data[..read]) {
            Ok(Progress::Need(more)) => {
                assert!(more > 0, "asked for nothing");
                if read + more > data.len() {
                    return (Err(HeaderError::Missing), read);
                }
                read += more;
            }
            Ok(Progress::Done(header)) => return (Ok(header), read),
            Err(error) => return (Err(error), read),
        }
    }
}

#[cfg(test)]
mod smoke;
