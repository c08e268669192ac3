//! Header fields a plugin adds or changes (RFC 5322 §2.2): a name of printable ASCII
//! without a colon, and a value that can never end the field or the header block early
//! — no NUL or other control characters, CR and LF only as a fold (CRLF followed by a
//! space or tab, the next line not blank), every line within 998 octets, the whole
//! field bounded.

use crate::Violation;

/// Longest line of a field, CRLF excluded (RFC 5322 §2.1.1).
pub const MAX_LINE: usize = 998;

/// Longest field, name, colon, folds and all.
pub const MAX_FIELD: usize = 16 * 1024;

/// Checks a field name: 1 or more printable ASCII characters but `:`.
pub fn check_name(name: &str) -> Result<(), Violation> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(Violation::Header {
            name: name.into(),
            reason: "a name is printable ASCII without spaces or ':'",
        });
    }
    if name.len() > MAX_LINE - 2 {
        return Err(Violation::Header {
            name: name.into(),
            reason: "the name is too long",
        });
    }
    Ok(())
}

/// Checks a field as it will be written: `name: value` CRLF.
pub fn check_field(name: &str, value: &str) -> Result<(), Violation> {
    check_name(name)?;
    let fail = |reason| {
        Err(Violation::Header {
            name: name.into(),
            reason,
        })
    };
    if name.len() + 2 + value.len() > MAX_FIELD {
        return fail("longer than 16 KiB");
    }
    let mut lines = value.split("\r\n");
    let first = lines.next().unwrap_or_default();
    if name.len() + 2 + first.len() > MAX_LINE {
        return fail("a line longer than 998 octets (fold it with CRLF and a space)");
    }
    if !is_line_text(first) {
        return fail("CR, LF, NUL or another control character outside a fold");
    }
    for line in lines {
        if !line.starts_with([' ', '\t']) || line.trim_matches([' ', '\t']).is_empty() {
            return fail("a fold must be CRLF, then a space or tab, then more text");
        }
        if line.len() > MAX_LINE {
            return fail("a line longer than 998 octets (fold it with CRLF and a space)");
        }
        if !is_line_text(line) {
            return fail("CR, LF, NUL or another control character outside a fold");
        }
    }
    Ok(())
}

/// No control characters but tab (UTF-8 allowed, RFC 6532).
fn is_line_text(text: &str) -> bool {
    !text.chars().any(|c| c.is_control() && c != '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let long = "x".repeat(1000);
        let folded_long = format!("{}\r\n {}", "a".repeat(900), "b".repeat(900));
        let cases: &[(&str, &str, bool)] = &[
            ("X-Tag", "value", true),
            ("X-Tag", "", true),
            ("Subject", "Grüße", true),
            ("X-Tag", "one\r\n two", true),
            ("X-Tag", "one\r\n\ttwo", true),
            ("X-Tag", &folded_long, true),
            ("X-Tag", "x\r\n.\r\nMAIL FROM:<evil@example.com>", false),
            ("X-Tag", "one\r\ntwo", false),
            ("X-Tag", "one\ntwo", false),
            ("X-Tag", "one\r two", false),
            ("X-Tag", "one\r\n \r\n two", false),
            ("X-Tag", "end\r\n", false),
            ("X-Tag", "nul\0", false),
            ("X-Tag", &long, false),
            ("Bad:Name", "x", false),
            ("Bad Name", "x", false),
            ("", "x", false),
        ];
        for (name, value, valid) in cases {
            assert_eq!(
                check_field(name, value).is_ok(),
                *valid,
                "{name}: {value:?}"
            );
        }
        let huge = format!("a{}", "\r\n b".repeat(6000));
        assert!(check_field("X-Huge", &huge).is_err());
    }
}
