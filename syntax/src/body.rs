//! Body text a plugin supplies (a replacement, a footer, a header at the top): every
//! line ending becomes CRLF, so a bare CR or LF is never passed on, and every line is
//! checked against RFC 5321's limit.

use crate::Violation;

/// Longest line of message text, CRLF excluded (RFC 5321 §4.5.3.1.6).
pub const MAX_LINE: usize = 998;

/// `text` with every line ending made CRLF and a final CRLF added if missing; a line
/// over [`MAX_LINE`] octets is refused.
pub fn normalize(text: &[u8]) -> Result<Vec<u8>, Violation> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 32 + 2);
    let mut line_len = 0;
    let mut bytes = text.iter().copied().peekable();
    while let Some(byte) = bytes.next() {
        match byte {
            b'\r' | b'\n' => {
                if byte == b'\r' && bytes.peek() == Some(&b'\n') {
                    bytes.next();
                }
                out.extend_from_slice(b"\r\n");
                line_len = 0;
            }
            _ => {
                out.push(byte);
                line_len += 1;
                if line_len > MAX_LINE {
                    return Err(Violation::BodyLine);
                }
            }
        }
    }
    if line_len > 0 {
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// Checks text that goes on one line of its own (a quarantine reason, a disconnect
/// text): no control characters. `what` names it in the violation.
pub fn check_text(what: &'static str, text: &str) -> Result<(), Violation> {
    if text.chars().any(char::is_control) {
        return Err(Violation::Text(what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_endings_become_crlf_and_lines_are_bounded() {
        assert_eq!(
            normalize(b"one\ntwo\rthree\r\n.\r\nfour").unwrap(),
            b"one\r\ntwo\r\nthree\r\n.\r\nfour\r\n"
        );
        assert_eq!(normalize(b"").unwrap(), b"");
        assert_eq!(normalize(&[b'x'; 999]), Err(Violation::BodyLine));
        assert!(normalize(&[b'x'; 998]).is_ok());
        assert!(check_text("reason", "fine").is_ok());
        assert!(check_text("reason", "no\r\n").is_err());
    }
}
