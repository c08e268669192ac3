//! Header fields as they travel: each field keeps its exact bytes (folding included),
//! so fields no plugin touched reach the upstream unchanged.

use std::borrow::Cow;

use portcullis_syntax::{Violation, header};

/// One header field: its raw bytes from the name to the CRLF that ends its last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    raw: Vec<u8>,
    name_len: usize,
}

/// A header field a plugin gave that would break the header block: which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct FieldError(#[from] Violation);

impl HeaderField {
    /// A new field `Name: value` CRLF, checked by RFC 5322's rules
    /// (`portcullis_syntax::header`) so it cannot break the header block. The value
    /// may be folded (CRLF, then a space or tab).
    pub fn new(name: &str, value: &str) -> Result<Self, FieldError> {
        header::check_field(name, value)?;
        let field = Self {
            raw: format!("{name}: {value}\r\n").into_bytes(),
            name_len: name.len(),
        };
        // Written out and read back, it must be this one field and nothing more.
        let mut block = field.raw.clone();
        block.extend_from_slice(b"\r\n");
        match parse_block(&block) {
            (fields, _, true) if fields.len() == 1 && fields[0] == field => Ok(field),
            _ => Err(FieldError(Violation::Header {
                name: name.into(),
                reason: "does not read back as one field",
            })),
        }
    }

    /// The field's name as written.
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.raw[..self.name_len]).into_owned()
    }

    /// True if the field has this name (ASCII case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.raw[..self.name_len].eq_ignore_ascii_case(name.as_bytes())
    }

    /// The value, unfolded (line breaks removed), without the space after the colon.
    pub fn value(&self) -> String {
        let value = &self.raw[self.name_len + 1..];
        let value = value.strip_suffix(b"\r\n").unwrap_or(value);
        let unfolded: Cow<'_, [u8]> = if memchr::memchr2(b'\r', b'\n', value).is_some() {
            Cow::Owned(
                value
                    .iter()
                    .copied()
                    .filter(|&b| b != b'\r' && b != b'\n')
                    .collect(),
            )
        } else {
            Cow::Borrowed(value)
        };
        let text = String::from_utf8_lossy(&unfolded);
        text.strip_prefix(' ')
            .unwrap_or(&text)
            .trim_end()
            .to_string()
    }

    /// The exact text after the colon (leading space and folding kept), without the
    /// CRLF that ends the field.
    pub fn raw_value(&self) -> &[u8] {
        let value = &self.raw[self.name_len + 1..];
        value.strip_suffix(b"\r\n").unwrap_or(value)
    }

    /// The exact bytes, CRLF included.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// Splits the start of a message into header fields. Returns the fields, how many
/// octets they (and the empty line after them, if present) take, and whether that
/// empty line was there. Parsing stops at the empty line, at a line that is not a
/// field, or at an unfinished line; what follows belongs to the body.
pub fn parse_block(head: &[u8]) -> (Vec<HeaderField>, usize, bool) {
    let mut fields: Vec<HeaderField> = Vec::new();
    let mut at = 0;
    while let Some(end) = memchr::memmem::find(&head[at..], b"\r\n").map(|i| at + i + 2) {
        let line = &head[at..end];
        if line == b"\r\n" {
            return (fields, end, true);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            match fields.last_mut() {
                Some(field) => field.raw.extend_from_slice(line),
                None => break,
            }
        } else {
            match field_name_len(line) {
                Some(name_len) => fields.push(HeaderField {
                    raw: line.to_vec(),
                    name_len,
                }),
                None => break,
            }
        }
        at = end;
    }
    (fields, at, false)
}

/// The length of the name if `line` starts a header field (`name:`).
fn field_name_len(line: &[u8]) -> Option<usize> {
    let colon = memchr::memchr(b':', line)?;
    let name = &line[..colon];
    (!name.is_empty() && name.iter().all(|b| (33..=126).contains(b))).then_some(colon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_split_where_the_fields_end() {
        let cases: [(&[u8], usize, usize, bool); 6] = [
            (
                b"Subject: hi\r\n there\r\nFrom: a@b\r\n\r\nbody",
                2,
                34,
                true,
            ),
            (b"\r\nbody only", 0, 2, true),
            (b"no header here\r\n", 0, 0, false),
            (b"A: 1\r\nnot a field\r\n", 1, 6, false),
            (b"A: 1\r\nB: unfinished", 1, 6, false),
            (b" folded first\r\n", 0, 0, false),
        ];
        for (input, count, consumed, separator) in cases {
            let (fields, used, blank) = parse_block(input);
            assert_eq!(
                (fields.len(), used, blank),
                (count, consumed, separator),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn fields_keep_their_bytes_and_unfold_their_values() {
        let (fields, _, _) = parse_block(b"Subject:  two\r\n\tlines \r\n\r\n");
        assert_eq!(fields[0].raw(), b"Subject:  two\r\n\tlines \r\n");
        assert_eq!(fields[0].value(), " two\tlines");
        assert!(fields[0].is("SUBJECT"));
        assert_eq!(fields[0].name(), "Subject");
    }

    #[test]
    fn new_fields_are_checked() {
        assert_eq!(
            HeaderField::new("X-Tag", "ok").unwrap().raw(),
            b"X-Tag: ok\r\n"
        );
        let folded = HeaderField::new("X-Tag", "one\r\n two").unwrap();
        assert_eq!(folded.raw(), b"X-Tag: one\r\n two\r\n");
        assert_eq!(folded.value(), "one two");
        for (name, value) in [
            ("X-Tag", "a\r\nRCPT TO:<x@y>".to_string()),
            ("Bad Name", "v".into()),
            ("", "v".into()),
            ("X", "v".repeat(998)),
        ] {
            let error = HeaderField::new(name, &value).unwrap_err();
            assert!(error.to_string().contains("RFC 5322"), "{error}");
        }
    }
}
