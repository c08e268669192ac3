//! The credentials file of edge AUTH: one `login:hash` per line, `#` comments and
//! blank lines ignored. A hash is an Argon2 PHC string (`$argon2id$…`, made by
//! `portcullis hash-password`) or a SHA-512-crypt string (`$6$…`, made by
//! `mkpasswd -m sha-512` or `openssl passwd -6`). Errors name the file and the line.
//! Checking a password costs what the hash says (tens of milliseconds for Argon2), so
//! callers run [`CredentialsFile::check`] on a blocking thread.

use std::collections::HashMap;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use password_hash::{SaltString, rand_core::OsRng};

use super::{Check, policy_lines};

/// A stored hash, parsed when the file is read.
#[derive(Debug, Clone)]
enum StoredHash {
    Argon2(String),
    Sha512Crypt(String),
}

impl StoredHash {
    fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("$argon2") {
            let hash = PasswordHash::new(text).map_err(|e| format!("invalid Argon2 hash: {e}"))?;
            if hash.salt.is_none() || hash.hash.is_none() {
                return Err("invalid Argon2 hash: no salt or no hash".into());
            }
            Ok(StoredHash::Argon2(text.to_string()))
        } else if text.starts_with("$6$") {
            if text.split('$').count() < 4 {
                return Err("invalid SHA-512-crypt hash".into());
            }
            Ok(StoredHash::Sha512Crypt(text.to_string()))
        } else {
            Err("unknown hash format: expected $argon2id$… or $6$… (plaintext passwords are not accepted)".into())
        }
    }

    fn matches(&self, password: &str) -> bool {
        match self {
            StoredHash::Argon2(text) => PasswordHash::new(text).is_ok_and(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            }),
            StoredHash::Sha512Crypt(text) => sha_crypt::sha512_check(password, text).is_ok(),
        }
    }
}

/// Logins and their password hashes.
#[derive(Debug)]
pub struct CredentialsFile {
    entries: HashMap<String, StoredHash>,
    /// Checked for unknown logins, so they take as long as known ones.
    decoy: StoredHash,
}

impl CredentialsFile {
    /// Parses the file's text; errors carry the 1-based line.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut entries = HashMap::new();
        for (number, line) in policy_lines(text) {
            let fail = |message: &str| (number, message.to_string());
            let Some((login, hash)) = line.split_once(':') else {
                return Err(fail("expected login:hash"));
            };
            if login.is_empty() || login.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(fail("the login is empty or contains spaces"));
            }
            let hash = StoredHash::parse(hash.trim()).map_err(|m| fail(&m))?;
            if entries.insert(login.to_string(), hash).is_some() {
                return Err(fail(&format!("{login} is listed twice")));
            }
        }
        Ok(Self {
            entries,
            decoy: StoredHash::Argon2(hash_password("decoy").expect("hashing works")),
        })
    }

    /// How many logins the file has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the file lists no login.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks a login and password (slow: run it on a blocking thread).
    pub fn check(&self, login: &str, password: &str) -> Check {
        match self.entries.get(login) {
            Some(hash) if hash.matches(password) => Check::Valid,
            Some(_) => Check::Invalid,
            None => {
                self.decoy.matches(password);
                Check::Invalid
            }
        }
    }
}

/// An Argon2id hash of `password` with a fresh salt, for a credentials file entry.
pub fn hash_password(password: &str) -> Result<String, password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl passwd -6 -salt saltsalt s3cret`
    const SHA512: &str = "$6$saltsalt$As4wrv0kZlfch1du9WeH7qhskyLriQWySXrZzynnvi46nFnNxjdpl6ksRegrrKexvhIa/Iny8S8uF3fVWTMuC1";

    #[test]
    fn argon2_and_sha512_crypt_entries() {
        let argon = hash_password("correct horse").unwrap();
        let file =
            CredentialsFile::parse(&format!("# users\n\nalice:{argon}\nbob:{SHA512}\n")).unwrap();
        assert_eq!(file.len(), 2);
        assert_eq!(file.check("alice", "correct horse"), Check::Valid);
        assert_eq!(file.check("alice", "wrong"), Check::Invalid);
        assert_eq!(file.check("bob", "s3cret"), Check::Valid);
        assert_eq!(file.check("bob", "s3cret "), Check::Invalid);
        assert_eq!(file.check("mallory", "s3cret"), Check::Invalid);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("alice\n", 1, "login:hash"),
            ("# c\nalice:plaintext\n", 2, "unknown hash format"),
            ("alice:$argon2id$nonsense\n", 1, "invalid Argon2"),
            (&format!("a:{SHA512}\na:{SHA512}\n") as &str, 2, "twice"),
            (&format!("a b:{SHA512}\n"), 1, "spaces"),
        ];
        for (text, line, message) in cases {
            let (at, error) = CredentialsFile::parse(text).unwrap_err();
            assert_eq!(at, line, "{text}");
            assert!(error.contains(message), "{error}");
        }
    }
}
