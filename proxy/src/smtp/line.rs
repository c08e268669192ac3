//! Splitting a byte stream into CRLF-terminated lines under a length limit. No I/O:
//! the caller appends what it read to a [`LineBuffer`] and asks for the next line;
//! "need more bytes" is `None`, not an error.

/// The outcome of asking for the next line.
#[derive(Debug, PartialEq, Eq)]
pub enum NextLine {
    /// A complete line, without its line ending.
    Line(Vec<u8>),
    /// A line ended with a bare LF (no CR before it); its content, without the LF.
    BareLf(Vec<u8>),
    /// A line longer than the limit; its bytes up to the next LF were discarded.
    TooLong,
}

/// A growable input buffer that yields lines.
#[derive(Debug, Default)]
pub struct LineBuffer {
    bytes: Vec<u8>,
    start: usize,
    /// Set while the rest of an over-long line is being thrown away.
    discarding: bool,
}

impl LineBuffer {
    /// Appends bytes read from the peer.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.compact();
        self.bytes.extend_from_slice(bytes);
    }

    /// The bytes not consumed yet.
    pub fn pending(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// Compacts the buffer and makes room for at least `room` more bytes, returning the
    /// vector to read into (bytes are appended after the pending ones).
    pub fn read_target(&mut self, room: usize) -> &mut Vec<u8> {
        self.compact();
        if self.bytes.capacity() - self.bytes.len() < room {
            self.bytes.reserve(room);
        } else if self.bytes.is_empty() && self.bytes.capacity() > room * 4 {
            // Give back a large DATA-sized buffer once the session is idle again.
            self.bytes = Vec::with_capacity(room);
        }
        &mut self.bytes
    }

    /// The next line if it is complete, CRLF-terminated and within `limit`, without
    /// consuming it (used to look ahead at pipelined commands).
    pub fn peek_line(&self, limit: usize) -> Option<&[u8]> {
        if self.discarding {
            return None;
        }
        let pending = self.pending();
        let at = pending.iter().position(|&b| b == b'\n')?;
        if at >= limit {
            return None;
        }
        pending[..at].strip_suffix(b"\r")
    }

    /// Consumes the line [`LineBuffer::peek_line`] returned.
    pub fn skip_peeked_line(&mut self) {
        if let Some(at) = self.pending().iter().position(|&b| b == b'\n') {
            self.start += at + 1;
        }
    }

    /// Marks `count` pending bytes as consumed (used by the DATA reader).
    pub fn consume(&mut self, count: usize) {
        self.start += count;
        debug_assert!(self.start <= self.bytes.len());
    }

    /// Throws away everything pending (e.g. bytes pipelined after STARTTLS).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.start = 0;
        self.discarding = false;
    }

    /// True when a complete line (or an over-long one) is waiting.
    pub fn has_line(&self, limit: usize) -> bool {
        let pending = self.pending();
        pending.contains(&b'\n') || pending.len() >= limit
    }

    /// Takes the next line if one is complete. `limit` counts the line ending too
    /// (RFC 5321 §4.5.3.1.4: 512 octets for a command line including CRLF).
    pub fn next_line(&mut self, limit: usize) -> Option<NextLine> {
        loop {
            let pending = self.pending();
            let newline = pending.iter().position(|&b| b == b'\n');
            if self.discarding {
                match newline {
                    Some(at) => {
                        self.start += at + 1;
                        self.discarding = false;
                        return Some(NextLine::TooLong);
                    }
                    None => {
                        self.start = self.bytes.len();
                        return None;
                    }
                }
            }
            match newline {
                Some(at) if at < limit => {
                    let line = &pending[..at];
                    let next = match line.strip_suffix(b"\r") {
                        Some(content) => NextLine::Line(content.to_vec()),
                        None => NextLine::BareLf(line.to_vec()),
                    };
                    self.start += at + 1;
                    return Some(next);
                }
                Some(_) => self.discarding = true,
                None if pending.len() >= limit => self.discarding = true,
                None => return None,
            }
        }
    }

    fn compact(&mut self) {
        if self.start > 0 && (self.start == self.bytes.len() || self.start > 16 * 1024) {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[&[u8]], limit: usize) -> Vec<NextLine> {
        let mut buffer = LineBuffer::default();
        let mut out = Vec::new();
        for chunk in input {
            buffer.extend(chunk);
            while let Some(line) = buffer.next_line(limit) {
                out.push(line);
            }
        }
        out
    }

    #[test]
    fn splits_lines() {
        use NextLine::*;
        type Case<'a> = (Vec<&'a [u8]>, usize, Vec<NextLine>);
        let cases: Vec<Case> = vec![
            (vec![b"NOOP\r\n"], 512, vec![Line(b"NOOP".to_vec())]),
            (
                vec![b"NO", b"OP\r", b"\nQUIT\r\n"],
                512,
                vec![Line(b"NOOP".to_vec()), Line(b"QUIT".to_vec())],
            ),
            (vec![b"NOOP\n"], 512, vec![BareLf(b"NOOP".to_vec())]),
            (vec![b"NOOP"], 512, vec![]),
            (vec![b"\r\n"], 512, vec![Line(vec![])]),
            // 6 octets with CRLF fits a limit of 6; 7 does not.
            (vec![b"ABCD\r\n"], 6, vec![Line(b"ABCD".to_vec())]),
            (
                vec![b"ABCDE\r\nOK\r\n"],
                6,
                vec![TooLong, Line(b"OK".to_vec())],
            ),
            (
                vec![b"ABCDEFGH", b"IJ", b"K\r\nOK\r\n"],
                6,
                vec![TooLong, Line(b"OK".to_vec())],
            ),
        ];
        for (input, limit, expected) in cases {
            assert_eq!(lines(&input, limit), expected, "{input:?}");
        }
    }

    #[test]
    fn pending_bytes_survive_for_the_data_reader() {
        let mut buffer = LineBuffer::default();
        buffer.extend(b"DATA\r\nSubject: x\r\n");
        assert_eq!(
            buffer.next_line(512),
            Some(NextLine::Line(b"DATA".to_vec()))
        );
        assert_eq!(buffer.pending(), b"Subject: x\r\n");
        buffer.consume(8);
        assert_eq!(buffer.pending(), b" x\r\n");
    }
}
