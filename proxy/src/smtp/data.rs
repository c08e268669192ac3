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
mod tests;
