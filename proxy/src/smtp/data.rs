//! The DATA phase on the wire, in both directions, with no I/O.
//!
//! [`DataReader`] turns the client's dot-stuffed stream into message content and finds
//! the end of data. The only terminator is CRLF "." CRLF (the first CRLF belongs to
//! the last line), so the 2023 SMTP-smuggling variants (`LF.LF`, `CR.CR`, `LF.CRLF`)
//! are content, never an end. A bare CR or bare LF anywhere is either a violation
//! (reported when the message ends) or rewritten to CRLF, as configured — never passed
//! on as is.
//!
//! [`DotStuffer`] does the reverse for the upstream: it doubles a leading dot on every
//! line and appends the terminator.

use std::sync::LazyLock;

use memchr::memchr2;

/// What to do with a bare CR or bare LF inside a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    /// Reject the message with a 5xx once it has ended (the default).
    #[default]
    Reject,
    /// Rewrite each bare CR or LF to CRLF.
    Normalize,
}

/// Why a message cannot be accepted, found while reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataViolation {
    /// A bare CR or LF, with the `reject` policy.
    BareLineEnding,
    /// A line longer than the text line limit.
    LineTooLong,
    /// More content than the message size limit.
    TooBig,
}

/// How far one call to [`DataReader::feed`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feed {
    /// Input bytes used; bytes after the terminator are left for the command reader.
    pub consumed: usize,
    /// True when the terminating CRLF.CRLF was seen.
    pub finished: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after a real CRLF, or at the start of the message).
    LineStart,
    /// Inside a line.
    Text,
    /// After a CR inside a line.
    Cr,
    /// After a "." at the start of a line.
    Dot,
    /// After "." CR at the start of a line.
    DotCr,
}

/// Reads the client's side of DATA: un-stuffs dots, finds the end, checks limits.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    policy: BareLineEndings,
    /// Longest line allowed, CRLF included.
    line_limit: usize,
    /// Largest message allowed, in octets of content.
    size_limit: u64,
    line_length: usize,
    size: u64,
    violation: Option<DataViolation>,
}

impl DataReader {
    /// A reader for one message.
    pub fn new(policy: BareLineEndings, line_limit: usize, size_limit: u64) -> Self {
        Self {
            state: State::LineStart,
            policy,
            line_limit,
            size_limit,
            line_length: 0,
            size: 0,
            violation: None,
        }
    }

    /// The first limit or policy the message broke, if any.
    pub fn violation(&self) -> Option<DataViolation> {
        self.violation
    }

    /// Octets of content read so far (after un-stuffing).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Consumes wire bytes and appends message content to `out`. After a violation no
    /// more content is produced, but the input is still scanned for the end.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        let mut index = 0;
        while index < input.len() {
            if self.state == State::Text {
                index = self.copy_text(input, index, out);
                continue;
            }
            let byte = input[index];
            index += 1;
            if self.step(byte, out) {
                return Feed {
                    consumed: index,
                    finished: true,
                };
            }
        }
        Feed {
            consumed: index,
            finished: false,
        }
    }

    /// Copies a run of ordinary bytes in one go; returns the index of the next CR/LF.
    fn copy_text(&mut self, input: &[u8], index: usize, out: &mut Vec<u8>) -> usize {
        let run_end = memchr2(b'\r', b'\n', &input[index..]).map_or(input.len(), |at| index + at);
        self.emit(&input[index..run_end], out);
        if run_end < input.len() {
            let byte = input[run_end];
            self.step(byte, out);
            return run_end + 1;
        }
        run_end
    }

    /// Advances by one byte; true when the terminator is complete.
    fn step(&mut self, byte: u8, out: &mut Vec<u8>) -> bool {
        match (self.state, byte) {
            (State::DotCr, b'\n') => return true,
            (State::DotCr, _) => {
                self.emit(b".", out);
                self.state = State::Cr;
                return self.step(byte, out);
            }
            (State::Cr, b'\n') => self.end_line(out),
            (State::Cr, _) => {
                self.bare_line_ending(out);
                self.state = State::Text;
                return self.step(byte, out);
            }
            (State::LineStart, b'.') => self.state = State::Dot,
            (State::Dot, b'\r') => self.state = State::DotCr,
            (State::Dot, b'\n') => {
                self.emit(b".", out);
                self.bare_line_ending(out);
            }
            (State::Dot, _) => {
                // RFC 5321 §4.5.2: a leading dot followed by more characters is deleted.
                self.emit(&[byte], out);
                self.state = State::Text;
            }
            (_, b'\r') => self.state = State::Cr,
            (_, b'\n') => self.bare_line_ending(out),
            (_, _) => {
                self.emit(&[byte], out);
                self.state = State::Text;
            }
        }
        false
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        self.emit(b"\r\n", out);
        self.line_length = 0;
        self.state = State::LineStart;
    }

    /// A CR not followed by LF, or an LF not preceded by CR. A normalised break does not
    /// start a new line for dot handling, so it can never form a terminator.
    fn bare_line_ending(&mut self, out: &mut Vec<u8>) {
        match self.policy {
            BareLineEndings::Reject => self.violate(DataViolation::BareLineEnding),
            BareLineEndings::Normalize => {
                self.emit(b"\r\n", out);
                self.line_length = 0;
            }
        }
        self.state = State::Text;
    }

    /// Adds `bytes` to the content, unless they cross a limit. A run of text is
    /// emitted in one piece or byte by byte depending on how the input arrived, so
    /// when one run crosses both limits the violation is the one a byte-by-byte
    /// reader would have met first: the reply never depends on the segmentation.
    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let length = bytes.len();
        let line_room = self.line_limit.saturating_sub(self.line_length);
        let size_room = self.size_limit.saturating_sub(self.size);
        self.size += length as u64;
        self.line_length += length;
        let line_crossed = length > line_room;
        let size_crossed = length as u64 > size_room;
        match (line_crossed, size_crossed) {
            (true, true) if size_room < line_room as u64 => self.violate(DataViolation::TooBig),
            (true, _) => self.violate(DataViolation::LineTooLong),
            (false, true) => self.violate(DataViolation::TooBig),
            (false, false) => {}
        }
        if self.violation.is_none() {
            out.extend_from_slice(bytes);
        }
    }

    fn violate(&mut self, violation: DataViolation) {
        self.violation.get_or_insert(violation);
    }
}

/// Dot-stuffs message content for the upstream and writes the terminator.
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    empty: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self {
            at_line_start: true,
            empty: true,
        }
    }
}

impl DotStuffer {
    /// Appends `content` to `out`, doubling every dot that starts a line. Lines are
    /// not visited one by one: only the places where an LF is followed by a dot are
    /// searched for, so most content is copied in one piece.
    pub fn stuff(&mut self, content: &[u8], out: &mut Vec<u8>) {
        static LINE_STARTING_WITH_DOT: LazyLock<memchr::memmem::Finder<'static>> =
            LazyLock::new(|| memchr::memmem::Finder::new(b"\n."));
        let Some(&last) = content.last() else {
            return;
        };
        self.empty = false;
        out.reserve(content.len() + 1);
        if self.at_line_start && content[0] == b'.' {
            out.push(b'.');
        }
        let mut copied = 0;
        for lf in LINE_STARTING_WITH_DOT.find_iter(content) {
            out.extend_from_slice(&content[copied..=lf]);
            out.push(b'.');
            copied = lf + 1;
        }
        out.extend_from_slice(&content[copied..]);
        self.at_line_start = last == b'\n';
    }

    /// Appends the end of data: a CRLF if the content did not end with one, then `.` CRLF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.empty && !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.at_line_start = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads `input` (split into `chunk`-sized pieces) and returns content, consumed
    /// count, whether the end was seen, and the violation.
    fn read(
        input: &[u8],
        policy: BareLineEndings,
        chunk: usize,
    ) -> (Vec<u8>, usize, bool, Option<DataViolation>) {
        let mut reader = DataReader::new(policy, 1000, 1 << 30);
        let mut out = Vec::new();
        let mut consumed = 0;
        for piece in input.chunks(chunk.max(1)) {
            let feed = reader.feed(piece, &mut out);
            consumed += feed.consumed;
            if feed.finished {
                return (out, consumed, true, reader.violation());
            }
        }
        (out, consumed, false, reader.violation())
    }

    fn stuff(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut stuffer = DotStuffer::default();
        stuffer.stuff(content, &mut out);
        stuffer.finish(&mut out);
        out
    }

    #[test]
    fn the_limit_met_first_decides_however_the_input_is_split() {
        // Line limit 10, size limit 15. The second line is one run of text that
        // crosses the size limit at its 6th octet and the line limit at its 11th.
        let cases: &[(&[u8], DataViolation)] = &[
            (
                b"abcdefgh\r\nijklmnopqrstuvwxyz\r\n.\r\n",
                DataViolation::TooBig,
            ),
            (
                b"abc\r\nabcdefghijklmnop\r\n.\r\n",
                DataViolation::LineTooLong,
            ),
            (
                b"abcdefghijklmnopqrstuvwxyz\r\n.\r\n",
                DataViolation::LineTooLong,
            ),
        ];
        for (input, expected) in cases {
            for chunk in [1, 2, 3, 7, input.len()] {
                let mut reader = DataReader::new(BareLineEndings::Reject, 10, 15);
                let mut out = Vec::new();
                for piece in input.chunks(chunk) {
                    reader.feed(piece, &mut out);
                }
                assert_eq!(
                    reader.violation(),
                    Some(*expected),
                    "{} in pieces of {chunk}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn finds_the_end_and_unstuffs() {
        use BareLineEndings::Reject;
        let cases: &[(&[u8], &[u8], usize, bool)] = &[
            (b".\r\n", b"", 3, true),
            (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", 6, true),
            (b"..x\r\n.\r\n", b".x\r\n", 8, true),
            (b"...\r\n.\r\n", b"..\r\n", 8, true),
            (b"..\r\n.\r\n", b".\r\n", 7, true),
            (b"a\r\n.", b"a\r\n", 4, false),
            (b"a\r\n.\r", b"a\r\n", 5, false),
            (b"a.\r\n.\r\n", b"a.\r\n", 7, true),
        ];
        for (input, content, consumed, finished) in cases {
            for chunk in [1, 2, 3, 1000] {
                let (out, used, done, violation) = read(input, Reject, chunk);
                assert_eq!(
                    (out.as_slice(), used, done, violation),
                    (*content, *consumed, *finished, None),
                    "{input:?} chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn smuggling_terminators_are_not_the_end() {
        // Each of these would end the message for a lax receiver.
        let attempts: &[&[u8]] = &[
            b"a\n.\nMAIL FROM:<x@y.z>\r\n",
            b"a\r.\rMAIL FROM:<x@y.z>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y.z>\r\n",
            b"a\r\n.\nMAIL FROM:<x@y.z>\r\n",
            b"a\r\n.\rMAIL FROM:<x@y.z>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y.z>\r\n",
        ];
        for attempt in attempts {
            for policy in [BareLineEndings::Reject, BareLineEndings::Normalize] {
                let (out, used, done, violation) = read(attempt, policy, 1000);
                assert!(!done, "{attempt:?} ended the message under {policy:?}");
                assert_eq!(used, attempt.len());
                match policy {
                    BareLineEndings::Reject => {
                        assert_eq!(violation, Some(DataViolation::BareLineEnding))
                    }
                    BareLineEndings::Normalize => {
                        assert_eq!(violation, None);
                        let upstream = stuff(&out);
                        let body = &upstream[..upstream.len() - 3];
                        assert!(
                            !contains(body, b"\r\n.\r\n"),
                            "{attempt:?} smuggles a terminator upstream: {upstream:?}"
                        );
                        assert!(!has_bare_line_ending(&upstream), "{upstream:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn bare_line_endings_in_every_position() {
        let cases: &[&[u8]] = &[
            b"\nabc\r\n.\r\n",
            b"\rabc\r\n.\r\n",
            b"ab\ncd\r\n.\r\n",
            b"ab\rcd\r\n.\r\n",
            b"abc\n\r\n.\r\n",
            b"abc\r\r\n.\r\n",
            b"abc\r\n\nx\r\n.\r\n",
            b".\nabc\r\n.\r\n",
            b"x\r\n.\rabc\r\n.\r\n",
        ];
        for input in cases {
            let (_, used, done, violation) = read(input, BareLineEndings::Reject, 1);
            assert_eq!(
                (used, done, violation),
                (input.len(), true, Some(DataViolation::BareLineEnding)),
                "{input:?}"
            );
            let (out, _, done, violation) = read(input, BareLineEndings::Normalize, 1);
            assert!(done && violation.is_none(), "{input:?}");
            assert!(!has_bare_line_ending(&out), "{input:?} -> {out:?}");
        }
    }

    #[test]
    fn enforces_line_and_size_limits() {
        let long_line = [vec![b'x'; 998], b"\r\n.\r\n".to_vec()].concat();
        let mut reader = DataReader::new(BareLineEndings::Reject, 1000, 1 << 20);
        assert!(reader.feed(&long_line, &mut Vec::new()).finished);
        assert_eq!(reader.violation(), None);

        let too_long = [vec![b'x'; 999], b"\r\n.\r\n".to_vec()].concat();
        let mut reader = DataReader::new(BareLineEndings::Reject, 1000, 1 << 20);
        assert!(reader.feed(&too_long, &mut Vec::new()).finished);
        assert_eq!(reader.violation(), Some(DataViolation::LineTooLong));

        let mut reader = DataReader::new(BareLineEndings::Reject, 1000, 10);
        let mut out = Vec::new();
        assert!(reader.feed(b"0123456789\r\n.\r\n", &mut out).finished);
        assert_eq!(reader.violation(), Some(DataViolation::TooBig));
    }

    #[test]
    fn stuffs_leading_dots() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.b\r\n..\r\n", b"a\r\n..b\r\n...\r\n.\r\n"),
            (b"no newline", b"no newline\r\n.\r\n"),
        ];
        for (content, wire) in cases {
            assert_eq!(stuff(content), *wire, "{content:?}");
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    fn has_bare_line_ending(bytes: &[u8]) -> bool {
        bytes.iter().enumerate().any(|(i, &b)| {
            (b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
                || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
        })
    }

    /// Message content as the reader produces it: lines of any bytes but CR and LF,
    /// each ended by CRLF.
    fn content_strategy() -> impl Strategy<Value = Vec<u8>> {
        let line = prop::collection::vec(
            prop::num::u8::ANY.prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
            0..40,
        )
        .prop_map(|mut line| {
            // Lines that start with dots are the interesting ones.
            if line.first().is_some_and(|b| *b % 3 == 0) {
                line.insert(0, b'.');
            }
            line
        });
        prop::collection::vec(line, 0..20).prop_map(|lines| {
            lines
                .into_iter()
                .flat_map(|l| [l, b"\r\n".to_vec()].concat())
                .collect()
        })
    }

    proptest! {
        #[test]
        fn stuffing_then_unstuffing_is_identity(content in content_strategy(), chunk in 1usize..64) {
            let wire = stuff(&content);
            let (out, used, done, violation) = read(&wire, BareLineEndings::Reject, chunk);
            prop_assert!(done);
            prop_assert_eq!(used, wire.len());
            prop_assert_eq!(violation, None);
            prop_assert_eq!(out, content);
        }

        #[test]
        fn stuffing_in_pieces_doubles_exactly_the_dots_that_start_lines(content in prop::collection::vec(prop::sample::select(b"a.\r\n".to_vec()), 0..200), chunk in 1usize..16) {
            let mut stuffer = DotStuffer::default();
            let mut wire = Vec::new();
            for piece in content.chunks(chunk) {
                stuffer.stuff(piece, &mut wire);
            }
            stuffer.finish(&mut wire);
            // The same, the slow way: line by line.
            let mut expected = Vec::new();
            for line in content.split_inclusive(|&b| b == b'\n') {
                if line[0] == b'.' {
                    expected.push(b'.');
                }
                expected.extend_from_slice(line);
            }
            if !content.is_empty() && !content.ends_with(b"\n") {
                expected.extend_from_slice(b"\r\n");
            }
            expected.extend_from_slice(b".\r\n");
            prop_assert_eq!(wire, expected);
        }

        #[test]
        fn any_input_never_sends_bare_endings_or_early_terminators(input in prop::collection::vec(prop::sample::select(b"ab.\r\n".to_vec()), 0..200)) {
            let (out, _, done, violation) = read(&input, BareLineEndings::Normalize, 7);
            prop_assert_eq!(violation, None);
            let upstream = stuff(&out);
            prop_assert!(!has_bare_line_ending(&upstream));
            let body = &upstream[..upstream.len() - 3];
            prop_assert!(!body.starts_with(b".\r\n") && !contains(body, b"\r\n.\r\n"));
            if done {
                prop_assert!(contains(&[b"\r\n".as_slice(), &input].concat(), b"\r\n.\r\n"));
            }
        }
    }
}
