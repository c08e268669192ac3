//! Mailboxes and paths (RFC 5321 §4.1.2), with the UTF-8 that RFC 6531 allows in local
//! parts and domains. Addresses are given without angle brackets.

use crate::Violation;

/// The longest local part RFC 5321 §4.5.3.1.1 allows.
pub const MAX_LOCAL_PART: usize = 64;
/// The longest domain RFC 5321 §4.5.3.1.2 allows.
pub const MAX_DOMAIN: usize = 255;

/// Checks `local@domain`; the reason names what is wrong.
pub fn check_mailbox(mailbox: &str) -> Result<(), &'static str> {
    let at = mailbox.rfind('@').ok_or("the address needs a domain")?;
    let (local, domain) = (&mailbox[..at], &mailbox[at + 1..]);
    if !is_local_part(local) {
        return Err("invalid local part");
    }
    if !(is_domain(domain) || is_address_literal(domain)) {
        return Err("invalid domain");
    }
    Ok(())
}

/// Checks a source route (`@one.example,@two.example`), which RFC 5321 says to accept
/// and ignore.
pub fn check_source_route(route: &str) -> Result<(), &'static str> {
    for hop in route.split(',') {
        match hop.strip_prefix('@') {
            Some(domain) if is_domain(domain) => {}
            _ => return Err("invalid source route"),
        }
    }
    Ok(())
}

/// A reverse-path as a plugin gives it: a mailbox, or empty for the null path `<>`.
pub fn check_reverse_path(address: &str) -> Result<(), Violation> {
    if address.is_empty() {
        return Ok(());
    }
    check_mailbox(address).map_err(|reason| Violation::Address {
        address: address.into(),
        reason,
    })
}

/// A forward-path as a plugin gives it: a mailbox, or `Postmaster` without a domain.
pub fn check_forward_path(address: &str) -> Result<(), Violation> {
    if address.eq_ignore_ascii_case("postmaster") {
        return Ok(());
    }
    check_mailbox(address).map_err(|reason| Violation::Address {
        address: address.into(),
        reason,
    })
}

/// A HELO name a plugin gives the upstream: a domain or an address literal.
pub fn check_helo_name(name: &str) -> Result<(), Violation> {
    if is_domain(name) || is_address_literal(name) {
        Ok(())
    } else {
        Err(Violation::HeloName(name.into()))
    }
}

/// A Dot-string or Quoted-string local part of at most 64 octets.
pub fn is_local_part(local: &str) -> bool {
    if local.is_empty() || local.len() > MAX_LOCAL_PART {
        return false;
    }
    if let Some(quoted) = local.strip_prefix('"') {
        return is_quoted_string_body(quoted);
    }
    local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// The rest of a Quoted-string after its opening quote: printable ASCII (or UTF-8),
/// backslash escapes, and the closing quote at the very end.
fn is_quoted_string_body(text: &str) -> bool {
    let Some(body) = text.strip_suffix('"') else {
        return false;
    };
    let mut chars = body.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => match chars.next() {
                Some(escaped) if (' '..='~').contains(&escaped) => {}
                _ => return false,
            },
            '"' => return false,
            ch if (' '..='~').contains(&ch) || !ch.is_ascii() && !ch.is_control() => {}
            _ => return false,
        }
    }
    true
}

/// RFC 5322 atext, plus non-ASCII characters (RFC 6531).
pub fn is_atext(ch: char) -> bool {
    ch.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(ch)
        || !ch.is_ascii() && !ch.is_control()
}

/// A domain name: dot-separated labels of letters, digits and hyphens (UTF-8 letters
/// allowed for SMTPUTF8), no label starting or ending with a hyphen.
pub fn is_domain(domain: &str) -> bool {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    !domain.is_empty()
        && domain.len() <= MAX_DOMAIN
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|ch| {
                    ch.is_ascii_alphanumeric()
                        || ch == '-'
                        || (!ch.is_ascii() && ch.is_alphanumeric())
                })
        })
}

/// An address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
pub fn is_address_literal(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
        return false;
    };
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse::<std::net::Ipv6Addr>().is_ok()
        }
        _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes() {
        let cases: &[(&str, Result<(), &str>)] = &[
            ("a@example.com", Ok(())),
            ("\"john doe\"@example.com", Ok(())),
            ("用户@例子.广告", Ok(())),
            ("a@[192.0.2.1]", Ok(())),
            ("a@[IPv6:2001:db8::1]", Ok(())),
            ("a.b+c@example.com", Ok(())),
            ("example.com", Err("the address needs a domain")),
            ("a..b@example.com", Err("invalid local part")),
            ("a b@example.com", Err("invalid local part")),
            ("@example.com", Err("invalid local part")),
            ("a@b..c", Err("invalid domain")),
            ("a@[300.1.1.1]", Err("invalid domain")),
            ("evil@x.example> NOTIFY=NEVER", Err("invalid domain")),
            (
                "x@y.z>\r\nRCPT TO:<victim@example.com",
                Err("invalid local part"),
            ),
            ("a@-x.example", Err("invalid domain")),
        ];
        for (mailbox, expected) in cases {
            assert_eq!(check_mailbox(mailbox), *expected, "{mailbox}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert_eq!(check_mailbox(&long_local), Err("invalid local part"));
    }

    #[test]
    fn paths_by_verb() {
        assert!(check_reverse_path("").is_ok());
        assert!(check_forward_path("").is_err());
        assert!(check_forward_path("Postmaster").is_ok());
        assert!(check_reverse_path("postmaster").is_err());
        let error = check_forward_path("evil@x.example> NOTIFY=NEVER").unwrap_err();
        assert_eq!(
            error.to_string(),
            "address \"evil@x.example> NOTIFY=NEVER\": invalid domain (RFC 5321 §4.1.2)"
        );
        assert!(check_helo_name("mx.example.com").is_ok());
        assert!(check_helo_name("[192.0.2.1]").is_ok());
        assert!(check_helo_name("bad name").is_err());
        assert!(check_source_route("@a.example,@b.example").is_ok());
        assert!(check_source_route("@a.example,b.example").is_err());
    }
}
