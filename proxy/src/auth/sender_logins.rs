//! Which logins may use which sender addresses: a file of `sender  login[, login…]`
//! lines, where the sender is a full address or `@domain` (every address of the
//! domain). A full address's line wins over its domain's. Like Postfix's
//! `reject_sender_login_mismatch`:
//! - an authenticated client may only use a sender listed for its login;
//! - a client that has not authenticated may not use a listed sender (no one may
//!   pose as a local user on a port without AUTH);
//! - the null sender `<>` (bounces) is always allowed.
//!
//! Addresses and domains compare case-insensitively. Errors name the file and line.

use std::collections::HashMap;

use super::{EntryError, policy_lines};

/// The sender → logins map.
#[derive(Debug, Default)]
pub struct SenderLogins {
    owners: HashMap<String, Vec<String>>,
}

impl SenderLogins {
    /// Parses the file's text; errors carry the 1-based line.
    pub fn parse(text: &str) -> Result<Self, EntryError> {
        let mut owners = HashMap::new();
        for (number, line) in policy_lines(text) {
            let fail = |reason: &str| EntryError::new(number, reason);
            let (sender, logins) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| fail("expected: sender login[, login…]"))?;
            let at = sender
                .find('@')
                .ok_or_else(|| fail("the sender needs an @"))?;
            if sender[at + 1..].is_empty() || sender[at + 1..].contains('@') {
                return Err(fail("the sender must be user@domain or @domain"));
            }
            let logins: Vec<String> = logins
                .split([',', ' ', '\t'])
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            if logins.is_empty() {
                return Err(fail("no login given"));
            }
            if owners.insert(sender.to_ascii_lowercase(), logins).is_some() {
                return Err(fail(&format!("{sender} is listed twice")));
            }
        }
        Ok(Self { owners })
    }

    /// The logins listed for `sender`, if any.
    fn owners(&self, sender: &str) -> Option<&[String]> {
        let sender = sender.to_ascii_lowercase();
        let domain = sender.rfind('@').map(|at| &sender[at..]);
        self.owners
            .get(&sender)
            .or_else(|| domain.and_then(|d| self.owners.get(d)))
            .map(Vec::as_slice)
    }

    /// May a client logged in as `login` (or not logged in) use `sender`?
    pub fn allows(&self, login: Option<&str>, sender: &str) -> bool {
        if sender.is_empty() {
            return true;
        }
        match (self.owners(sender), login) {
            (Some(owners), Some(login)) => owners.iter().any(|o| o == login),
            (Some(_), None) => false,
            (None, Some(_)) => false,
            (None, None) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_belong_to_their_logins() {
        let map = SenderLogins::parse(
            "# who sends as whom\nalice@example.org alice\n@example.org  bob, carol\nboss@Example.NET alice bob\n",
        )
        .unwrap();
        let cases = [
            (Some("alice"), "alice@example.org", true),
            (Some("bob"), "alice@example.org", false),
            (Some("bob"), "anyone@EXAMPLE.org", true),
            (Some("alice"), "anyone@example.org", false),
            (Some("bob"), "boss@example.net", true),
            (Some("alice"), "stranger@elsewhere.example", false),
            (None, "alice@example.org", false),
            (None, "stranger@elsewhere.example", true),
            (Some("alice"), "", true),
            (None, "", true),
        ];
        for (login, sender, allowed) in cases {
            assert_eq!(map.allows(login, sender), allowed, "{login:?} as {sender}");
        }
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("alice@example.org\n", 1, "expected"),
            ("\nexample.org alice\n", 2, "needs an @"),
            ("a@ alice\n", 1, "user@domain"),
            ("a@x b\nA@X c\n", 2, "twice"),
        ];
        for (text, line, message) in cases {
            let error = SenderLogins::parse(text).unwrap_err();
            let (at, error) = (error.line, error.reason);
            assert_eq!(at, line, "{text}");
            assert!(error.contains(message), "{error}");
        }
    }
}
