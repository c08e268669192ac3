//! Replies a plugin gives for the client: a code that fits the verdict, an enhanced
//! status code (RFC 3463) of the same class, and text without control characters. Text
//! longer than one line allows is wrapped by the proxy into a multi-line reply whose
//! every line, code and CRLF included, stays within [`MAX_LINE`] octets; text past
//! [`MAX_TEXT`] octets is refused.

use crate::Violation;

/// Longest reply line, code and CRLF included (RFC 5321 §4.5.3.1.5).
pub const MAX_LINE: usize = 512;

/// Longest reply text a plugin may give (some eight wrapped lines).
pub const MAX_TEXT: usize = 4000;

/// An enhanced status code `class.subject.detail`: class 2, 4 or 5, subject and detail
/// of 1 to 3 digits.
pub fn parse_enhanced(token: &str) -> Option<(u8, u16, u16)> {
    let mut parts = token.split('.');
    let class = part(parts.next()?, 1)?;
    let subject = part(parts.next()?, 3)?;
    let detail = part(parts.next()?, 3)?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some((class as u8, subject, detail))
}

fn part(text: &str, max_digits: usize) -> Option<u16> {
    if text.is_empty() || text.len() > max_digits || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Checks a reply for a verdict whose codes are of `class` (5: reject, 4: tempfail).
pub fn check_reply(
    class: u16,
    code: u16,
    enhanced: Option<&str>,
    text: &str,
) -> Result<(), Violation> {
    if code / 100 != class || code > 599 {
        return Err(Violation::Reply(if class == 5 {
            "a reject needs a 5xx code"
        } else {
            "a tempfail needs a 4xx code"
        }));
    }
    if let Some(enhanced) = enhanced
        && parse_enhanced(enhanced).is_none_or(|(c, _, _)| u16::from(c) != class)
    {
        return Err(Violation::Reply(
            "the enhanced code is not class.subject.detail of the reply code's class (RFC 3463)",
        ));
    }
    check_text(text)
}

/// Reply text: no control characters, at most [`MAX_TEXT`] octets.
pub fn check_text(text: &str) -> Result<(), Violation> {
    if text.chars().any(char::is_control) {
        return Err(Violation::Reply(
            "control characters (CR, LF, ...) in the text",
        ));
    }
    if text.len() > MAX_TEXT {
        return Err(Violation::Reply("text longer than 4000 octets"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_fit_their_verdict() {
        let cases: &[(u16, u16, Option<&str>, &str, bool)] = &[
            (5, 550, Some("5.7.1"), "no", true),
            (5, 550, None, "no", true),
            (5, 250, None, "fine", false),
            (5, 450, None, "later", false),
            (5, 650, None, "x", false),
            (4, 451, Some("4.3.0"), "later", true),
            (4, 451, Some("5.3.0"), "later", false),
            (4, 451, Some("4.3"), "later", false),
            (4, 451, Some("4.1000.0"), "later", false),
            (5, 550, None, "a\r\nRCPT TO:<x@y.z>", false),
        ];
        for (class, code, enhanced, text, valid) in cases {
            assert_eq!(
                check_reply(*class, *code, *enhanced, text).is_ok(),
                *valid,
                "{code} {enhanced:?} {text:?}"
            );
        }
        assert!(
            check_text(&"x".repeat(2000)).is_ok(),
            "wrapped, not refused"
        );
        assert!(check_text(&"x".repeat(4001)).is_err());
        assert_eq!(parse_enhanced("2.1.0"), Some((2, 1, 0)));
        assert_eq!(parse_enhanced("3.1.0"), None);
    }
}
