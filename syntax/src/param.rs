//! ESMTP parameters of MAIL and RCPT (RFC 5321 §4.1.2): the grammar of keywords and
//! values, the extensions that define the parameters the proxy relays, and what each
//! of them allows as its value. xtext (RFC 3461 §4) is checked and encoded here too.

use crate::Violation;

/// The command a parameter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `MAIL FROM`.
    Mail,
    /// `RCPT TO`.
    Rcpt,
}

/// The EHLO keyword of the extension that defines `keyword` for `verb`, if the proxy
/// relays that parameter at all.
pub fn extension_of(verb: Verb, keyword: &str) -> Option<&'static str> {
    let keyword = keyword.to_ascii_uppercase();
    match (verb, keyword.as_str()) {
        (Verb::Mail, "SIZE") => Some("SIZE"),
        (Verb::Mail, "BODY") => Some("8BITMIME"),
        (Verb::Mail, "SMTPUTF8") => Some("SMTPUTF8"),
        (Verb::Mail, "RET" | "ENVID") => Some("DSN"),
        (Verb::Mail, "AUTH") => Some("AUTH"),
        (Verb::Rcpt, "NOTIFY" | "ORCPT") => Some("DSN"),
        _ => None,
    }
}

/// `esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`.
pub fn is_keyword(keyword: &str) -> bool {
    keyword
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && keyword
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `esmtp-value`: one or more characters but `=`, space and controls (UTF-8 allowed,
/// RFC 6531).
pub fn is_value(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|ch| ch != '=' && ch != ' ' && !ch.is_control())
}

/// A non-empty xtext: printable ASCII but `=`, and `+` only as `+HH`.
pub fn is_xtext(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => {
                let hex = bytes.get(index + 1..index + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                index += 3;
            }
            b'=' => return false,
            b'!'..=b'~' => index += 1,
            _ => return false,
        }
    }
    !bytes.is_empty()
}

/// Encodes `value` as xtext: octets outside `!`..`~`, and `+` and `=`, become `+HH`.
pub fn encode_xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (b'!'..=b'~').contains(&byte) && byte != b'+' && byte != b'=' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("+{byte:02X}"));
        }
    }
    out
}

/// Checks one parameter: its grammar, that the proxy relays it for `verb`, and that
/// its value is what its extension defines.
pub fn check_param(verb: Verb, keyword: &str, value: Option<&str>) -> Result<(), Violation> {
    let fail = |reason| {
        Err(Violation::Param {
            keyword: keyword.into(),
            reason,
        })
    };
    if !is_keyword(keyword) {
        return fail("not an esmtp-keyword");
    }
    if value.is_some_and(|value| !is_value(value)) {
        return fail("not an esmtp-value (empty, or a space, '=' or control character)");
    }
    if extension_of(verb, keyword).is_none() {
        return fail(match verb {
            Verb::Mail => {
                "not a MAIL parameter the proxy relays (SIZE, BODY, SMTPUTF8, RET, ENVID, AUTH)"
            }
            Verb::Rcpt => "not a RCPT parameter the proxy relays (NOTIFY, ORCPT)",
        });
    }
    match value_rule(keyword, value) {
        Some(reason) => fail(reason),
        None => Ok(()),
    }
}

/// Checks a parameter list: each parameter, and no keyword twice.
pub fn check_params<'a>(
    verb: Verb,
    params: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<(), Violation> {
    let mut seen: Vec<&str> = Vec::new();
    for (keyword, value) in params {
        check_param(verb, keyword, value)?;
        if seen.iter().any(|k| k.eq_ignore_ascii_case(keyword)) {
            return Err(Violation::Param {
                keyword: keyword.into(),
                reason: "given twice",
            });
        }
        seen.push(keyword);
    }
    Ok(())
}

/// What is wrong with the value of a relayed parameter, if anything.
fn value_rule(keyword: &str, value: Option<&str>) -> Option<&'static str> {
    let is =
        |options: &[&str]| value.is_some_and(|v| options.iter().any(|o| v.eq_ignore_ascii_case(o)));
    match keyword.to_ascii_uppercase().as_str() {
        "SIZE"
            if !value.is_some_and(|v| v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit())) =>
        {
            Some("SIZE needs a number of octets (RFC 1870)")
        }
        "BODY" if !is(&["7BIT", "8BITMIME"]) => Some("BODY must be 7BIT or 8BITMIME (RFC 6152)"),
        "SMTPUTF8" if value.is_some() => Some("SMTPUTF8 takes no value (RFC 6531)"),
        "RET" if !is(&["FULL", "HDRS"]) => Some("RET must be FULL or HDRS (RFC 3461)"),
        "ENVID" if value.is_none() => Some("ENVID needs a value (RFC 3461)"),
        "AUTH" if !value.is_some_and(|v| v == "<>" || is_xtext(v)) => {
            Some("AUTH must be <> or an xtext mailbox (RFC 4954 §5)")
        }
        "NOTIFY" if !value.is_some_and(is_notify) => {
            Some("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY (RFC 3461)")
        }
        "ORCPT"
            if !value.is_some_and(|v| {
                v.split_once(';')
                    .is_some_and(|(kind, address)| is_keyword(kind) && !address.is_empty())
            }) =>
        {
            Some("ORCPT must be addr-type;address (RFC 3461)")
        }
        _ => None,
    }
}

fn is_notify(value: &str) -> bool {
    if value.eq_ignore_ascii_case("NEVER") {
        return true;
    }
    value.split(',').all(|item| {
        ["SUCCESS", "FAILURE", "DELAY"]
            .iter()
            .any(|known| item.eq_ignore_ascii_case(known))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_by_rule() {
        use Verb::*;
        let cases: &[(Verb, &str, Option<&str>, bool)] = &[
            (Mail, "SIZE", Some("1000"), true),
            (Mail, "size", Some("x"), false),
            (Mail, "BODY", Some("8bitmime"), true),
            (Mail, "BODY", Some("BINARYMIME"), false),
            (Mail, "SMTPUTF8", None, true),
            (Mail, "SMTPUTF8", Some("yes"), false),
            (Mail, "RET", Some("HDRS"), true),
            (Mail, "ENVID", Some("QQ314159"), true),
            (Mail, "ENVID", None, false),
            (Mail, "AUTH", Some("<>"), true),
            (Mail, "AUTH", Some("a+40b"), true),
            (Mail, "AUTH", Some("a=b"), false),
            (Rcpt, "NOTIFY", Some("SUCCESS,FAILURE"), true),
            (Rcpt, "NOTIFY", Some("NEVER"), true),
            (Rcpt, "NOTIFY", Some("NEVER ORCPT"), false),
            (Rcpt, "NOTIFY", Some("SOMETIMES"), false),
            (Rcpt, "ORCPT", Some("rfc822;x+40y"), true),
            (Rcpt, "ORCPT", Some("x"), false),
            (Rcpt, "SIZE", Some("1"), false),
            (Mail, "XEVIL", Some("1"), false),
            (Mail, "X EVIL", None, false),
            (Mail, "", None, false),
            (Mail, "-X", None, false),
        ];
        for (verb, keyword, value, valid) in cases {
            assert_eq!(
                check_param(*verb, keyword, *value).is_ok(),
                *valid,
                "{verb:?} {keyword}={value:?}"
            );
        }
        let twice = check_params(Verb::Mail, [("SIZE", Some("1")), ("size", Some("2"))]);
        assert!(twice.unwrap_err().to_string().contains("given twice"));
    }

    #[test]
    fn xtext_round_trip() {
        for (input, encoded) in [
            ("client.example", "client.example"),
            ("a+b=c", "a+2Bb+3Dc"),
            ("two words", "two+20words"),
            ("ü", "+C3+BC"),
        ] {
            assert_eq!(encode_xtext(input), encoded);
            assert!(is_xtext(encoded));
        }
        assert!(!is_xtext("a+4"));
        assert!(!is_xtext(""));
    }
}
