//! The message the DATA hook sees: header fields up front, the body read on demand.

use std::cell::OnceCell;

use crate::{__runtime::wit, Header};

/// The spooled message. In the proxy the body stays with the host and is copied in
/// only as far as [`Message::read_body`] asks; in tests it is held in memory.
pub struct Message<'a> {
    source: Source<'a>,
}

enum Source<'a> {
    /// The host's message; its header fields are fetched once, at the first use.
    Host {
        message: &'a wit::Message,
        headers: OnceCell<Vec<Header>>,
    },
    Memory {
        headers: Vec<Header>,
        body: &'a [u8],
    },
}

impl<'a> Message<'a> {
    pub(crate) fn from_host(message: &'a wit::Message) -> Self {
        Message {
            source: Source::Host {
                message,
                headers: OnceCell::new(),
            },
        }
    }

    /// A message held in memory (for tests): `raw` is the message as sent, CRLF line
    /// endings, header fields, an empty line, the body.
    pub fn from_bytes(raw: &'a [u8]) -> Self {
        let (headers, body) = split_header(raw);
        Message {
            source: Source::Memory { headers, body },
        }
    }

    /// The header fields in order (a copy; [`Message::header_fields`] lends them).
    pub fn headers(&self) -> Vec<Header> {
        self.header_fields().to_vec()
    }

    /// The value of the first field with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_fields()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.clone())
    }

    /// The header fields in order, lent. They are fetched from the proxy once, at
    /// the first call of this or another header method.
    pub fn header_fields(&self) -> &[Header] {
        match &self.source {
            Source::Host { message, headers } => headers.get_or_init(|| {
                message
                    .headers()
                    .into_iter()
                    .map(|h| Header {
                        name: h.name,
                        value: h.value,
                    })
                    .collect()
            }),
            Source::Memory { headers, .. } => headers,
        }
    }

    /// The body's size in octets.
    pub fn body_size(&self) -> u64 {
        match &self.source {
            Source::Host { message, .. } => message.body_size(),
            Source::Memory { body, .. } => body.len() as u64,
        }
    }

    /// Up to `length` body octets from `offset`; empty at the end.
    pub fn read_body(&self, offset: u64, length: u32) -> Vec<u8> {
        match &self.source {
            Source::Host { message, .. } => message.read_body(offset, length),
            Source::Memory { body, .. } => {
                let start = (offset as usize).min(body.len());
                let end = start.saturating_add(length as usize).min(body.len());
                body[start..end].to_vec()
            }
        }
    }

    /// The whole body. Prefer [`Message::read_body`] in chunks for large messages.
    pub fn body(&self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let chunk = self.read_body(body.len() as u64, 64 * 1024);
            if chunk.is_empty() {
                return body;
            }
            body.extend_from_slice(&chunk);
        }
    }
}

/// Splits a message into unfolded header fields and the body.
fn split_header(raw: &[u8]) -> (Vec<Header>, &[u8]) {
    let (head, body) = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => (&raw[..at + 2], &raw[at + 4..]),
        None => (raw, &raw[raw.len()..]),
    };
    let mut headers: Vec<Header> = Vec::new();
    for line in String::from_utf8_lossy(head)
        .split("\r\n")
        .filter(|l| !l.is_empty())
    {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.value.push_str(line);
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push(Header {
                name: name.to_string(),
                value: value.strip_prefix(' ').unwrap_or(value).to_string(),
            });
        }
    }
    (headers, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_fields_and_body() {
        let message = Message::from_bytes(b"Subject: hi\r\n there\r\nFrom: a@b.c\r\n\r\nbody\r\n");
        assert_eq!(message.header("subject").as_deref(), Some("hi there"));
        assert_eq!(message.headers().len(), 2);
        assert_eq!(message.body(), b"body\r\n");
        assert_eq!(message.read_body(2, 100), b"dy\r\n");
        assert_eq!(message.body_size(), 6);
    }
}
