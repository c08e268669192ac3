//! The credentials file of edge AUTH: one `login:hash` per line, `#` comments and
//! blank lines ignored. A hash is an Argon2 PHC string (`$argon2id$…`, made by
//! `portcullis hash-password`) or a SHA-512-crypt string (`$6$…`, made by
//! `mkpasswd -m sha-512` or `openssl passwd -6`). Errors name the file and the line.
//!
//! Checking a password costs what its hash says (tens of milliseconds and, for Argon2,
//! its memory cost), so checks run on the `checks` threads, each with its own
//! Argon2 working memory ([`Scratch`]), never one allocation per attempt.
//!
//! An unknown login must cost what a known one costs, whatever the hash schemes in
//! the file, or the time of a 535 tells which logins exist. So an unknown login is
//! checked against a decoy made with the scheme and parameters of one of the file's
//! entries, chosen by a keyed hash of the login: each name always costs the same,
//! and unknown names cost what the file's entries cost, in the same proportions.

use std::collections::HashMap;

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};
use password_hash::{Output, SaltString, rand_core::OsRng};
use sha2::{Digest, Sha256};

use super::{Check, EntryError, policy_lines};

/// Argon2 working memory, kept by a checking thread from one check to the next and
/// dropped when the thread idles.
#[derive(Debug, Default)]
pub struct Scratch {
    blocks: Vec<Block>,
}

/// Blocks reserved at least for a working memory. glibc's malloc serves requests
/// above 32 MiB with a mapping of their own, which it unmaps when they are freed, but
/// puts a freed smaller one back in its heap and serves later ones of that size from
/// there: reserving (not touching) a little over 32 MiB makes a dropped working memory
/// go back to the system after a burst.
const RESERVE_BLOCKS: usize = 32 * 1024 + 1;

impl Scratch {
    /// At least `count` blocks (the largest cost seen since the thread last idled).
    fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.blocks.len() < count {
            let mut blocks = Vec::with_capacity(count.max(RESERVE_BLOCKS));
            blocks.resize(count, Block::default());
            self.blocks = blocks;
        }
        &mut self.blocks[..count]
    }

    /// The memory held, in bytes.
    pub fn size(&self) -> usize {
        self.blocks.len() * Block::SIZE
    }
}

/// An Argon2 hash, taken apart when the file is read.
#[derive(Debug, Clone)]
pub(crate) struct Argon2Hash {
    algorithm: Algorithm,
    version: Version,
    params: Params,
    salt: Vec<u8>,
    hash: Output,
}

/// A stored hash, parsed when the file is read.
#[derive(Debug, Clone)]
pub(crate) enum StoredHash {
    Argon2(Argon2Hash),
    Sha512Crypt { text: String, rounds: usize },
}

/// What a check of a hash costs: its scheme and parameters, without salt or hash.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cost {
    Argon2 {
        algorithm: Algorithm,
        version: Version,
        params: Params,
    },
    Sha512Crypt {
        rounds: usize,
    },
}

impl StoredHash {
    fn parse(text: &str) -> Result<Self, HashError> {
        if text.starts_with("$argon2") {
            parse_argon2(text).map(StoredHash::Argon2)
        } else if text.starts_with("$6$") {
            let rounds = sha512_rounds(text).ok_or(HashError::Sha512Crypt)?;
            if rounds > MAX_SHA512_ROUNDS {
                return Err(HashError::TooCostly("rounds above 10,000,000"));
            }
            Ok(StoredHash::Sha512Crypt {
                text: text.to_string(),
                rounds,
            })
        } else {
            Err(HashError::Unknown)
        }
    }

    fn matches(&self, password: &str, scratch: &mut Scratch) -> bool {
        match self {
            StoredHash::Argon2(stored) => {
                let context = Argon2::new(stored.algorithm, stored.version, stored.params.clone());
                let mut out = [0u8; Output::MAX_LENGTH];
                let out = &mut out[..stored.hash.len()];
                let blocks = scratch.blocks(stored.params.block_count());
                context
                    .hash_password_into_with_memory(password.as_bytes(), &stored.salt, out, blocks)
                    .is_ok()
                    // Output's equality takes the same time wherever the bytes differ.
                    && Output::new(out).is_ok_and(|out| out == stored.hash)
            }
            StoredHash::Sha512Crypt { text, .. } => sha_crypt::sha512_check(password, text).is_ok(),
        }
    }

    fn cost(&self) -> Cost {
        match self {
            StoredHash::Argon2(stored) => Cost::Argon2 {
                algorithm: stored.algorithm,
                version: stored.version,
                params: stored.params.clone(),
            },
            StoredHash::Sha512Crypt { rounds, .. } => Cost::Sha512Crypt { rounds: *rounds },
        }
    }
}

impl Cost {
    /// A hash of a random password with this scheme and these parameters.
    fn decoy(&self) -> StoredHash {
        let secret = SaltString::generate(&mut OsRng);
        match self {
            Cost::Argon2 {
                algorithm,
                version,
                params,
            } => {
                let context = Argon2::new(*algorithm, *version, params.clone());
                let hash = context
                    .hash_password(
                        secret.as_str().as_bytes(),
                        &SaltString::generate(&mut OsRng),
                    )
                    .expect("parameters that parsed can hash")
                    .to_string();
                StoredHash::parse(&hash).expect("a hash just made parses")
            }
            Cost::Sha512Crypt { rounds } => {
                let params = sha_crypt::Sha512Params::new(*rounds).expect("rounds that parsed");
                let hash =
                    sha_crypt::sha512_simple(secret.as_str(), &params).expect("hashing works");
                StoredHash::parse(&hash).expect("a hash just made parses")
            }
        }
    }
}

/// Why a stored hash cannot be used.
#[derive(Debug, thiserror::Error)]
enum HashError {
    #[error("invalid Argon2 hash: {0}")]
    Argon2(password_hash::Error),
    /// A cost beyond what the proxy checks: each distinct cost has a decoy hashed
    /// when the file is read, so such an entry would stall start-up and reloads (or
    /// exhaust memory) rather than slow one login.
    #[error("the hash costs more than this proxy checks: {0}")]
    TooCostly(&'static str),
    #[error("invalid SHA-512-crypt hash")]
    Sha512Crypt,
    #[error(
        "unknown hash format: expected $argon2id$… or $6$… (plaintext passwords are not accepted)"
    )]
    Unknown,
}

/// The most an Argon2 entry may cost: 1 GiB of memory (OWASP suggests 19–64 MiB), 64
/// passes, 64 lanes. And SHA-512-crypt rounds (the scheme allows 999,999,999: minutes
/// for one check; 5,000 is the default).
const MAX_ARGON2_COSTS: [(&str, u32, &str); 3] = [
    ("m", 1024 * 1024, "m above 1 GiB (1048576)"),
    ("t", 64, "t above 64"),
    ("p", 64, "p above 64"),
];
const MAX_SHA512_ROUNDS: usize = 10_000_000;

fn parse_argon2(text: &str) -> Result<Argon2Hash, HashError> {
    let hash = PasswordHash::new(text).map_err(HashError::Argon2)?;
    // Checked before argon2 sees them: its own check of p overflows on huge values.
    for (name, max, why) in MAX_ARGON2_COSTS {
        if hash
            .params
            .get_decimal(name)
            .is_some_and(|value| value > max)
        {
            return Err(HashError::TooCostly(why));
        }
    }
    parse_argon2_within_costs(&hash).map_err(HashError::Argon2)
}

fn parse_argon2_within_costs(hash: &PasswordHash<'_>) -> Result<Argon2Hash, password_hash::Error> {
    let hash = hash.clone();
    let algorithm = Algorithm::try_from(hash.algorithm)?;
    let version = hash
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or_default();
    let params = Params::try_from(&hash)?;
    let (Some(salt), Some(output)) = (hash.salt, hash.hash) else {
        return Err(password_hash::Error::PhcStringField);
    };
    let mut buffer = [0u8; 64];
    let salt = salt.decode_b64(&mut buffer)?.to_vec();
    Ok(Argon2Hash {
        algorithm,
        version,
        params,
        salt,
        hash: output,
    })
}

/// The rounds of a `$6$[rounds=N$]salt$hash` string, if it has that shape.
fn sha512_rounds(text: &str) -> Option<usize> {
    let fields: Vec<&str> = text.split('$').collect();
    let rounds = match fields.as_slice() {
        ["", "6", rounds, _salt, _hash] => rounds.strip_prefix("rounds=")?.parse().ok()?,
        ["", "6", _salt, _hash] => sha_crypt::ROUNDS_DEFAULT,
        _ => return None,
    };
    (sha_crypt::ROUNDS_MIN..=sha_crypt::ROUNDS_MAX)
        .contains(&rounds)
        .then_some(rounds)
}

/// The file's entries as (line, login, hash), each checked on its own; what they cost
/// to check (the decoys) is left to [`CredentialsFile::parse`]. The fuzz target for
/// the file's syntax calls this directly, so a fuzzed cost cannot stall it.
pub(crate) fn parse_lines(
    text: &str,
) -> impl Iterator<Item = Result<(usize, &str, StoredHash), EntryError>> {
    policy_lines(text).map(|(number, line)| {
        let fail = |reason: &str| EntryError::new(number, reason);
        let Some((login, hash)) = line.split_once(':') else {
            return Err(fail("expected login:hash"));
        };
        if login.is_empty() || login.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("the login is empty or contains spaces"));
        }
        let hash = StoredHash::parse(hash.trim()).map_err(|e| fail(&e.to_string()))?;
        Ok((number, login, hash))
    })
}

/// Logins and their password hashes.
#[derive(Debug)]
pub struct CredentialsFile {
    entries: HashMap<String, StoredHash>,
    /// One decoy per distinct cost in the file.
    decoys: Vec<StoredHash>,
    /// For each entry, in file order, the index of the decoy with its cost.
    decoy_of_entry: Vec<usize>,
    /// Picks an unknown login's decoy; from the file's text, so a name keeps its
    /// decoy across restarts (a change would tell it apart from a real login).
    key: [u8; 32],
}

impl CredentialsFile {
    /// Parses the file's text; errors carry the 1-based line.
    pub fn parse(text: &str) -> Result<Self, EntryError> {
        let mut entries = HashMap::new();
        let mut decoys: Vec<StoredHash> = Vec::new();
        let mut costs: Vec<Cost> = Vec::new();
        let mut decoy_of_entry = Vec::new();
        for entry in parse_lines(text) {
            let (number, login, hash) = entry?;
            let fail = |reason: &str| EntryError::new(number, reason);
            let cost = hash.cost();
            let index = match costs.iter().position(|c| *c == cost) {
                Some(index) => index,
                None => {
                    decoys.push(cost.decoy());
                    costs.push(cost);
                    costs.len() - 1
                }
            };
            decoy_of_entry.push(index);
            if entries.insert(login.to_string(), hash).is_some() {
                return Err(fail(&format!("{login} is listed twice")));
            }
        }
        if decoys.is_empty() {
            let default = Cost::Argon2 {
                algorithm: Algorithm::default(),
                version: Version::default(),
                params: Params::default(),
            };
            decoys.push(default.decoy());
            decoy_of_entry.push(0);
        }
        Ok(Self {
            entries,
            decoys,
            decoy_of_entry,
            key: Sha256::digest(text.as_bytes()).into(),
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

    /// The Argon2 working memory the most expensive entry needs, in bytes.
    pub fn max_memory(&self) -> usize {
        self.decoys
            .iter()
            .map(|decoy| match decoy {
                StoredHash::Argon2(hash) => hash.params.block_count() * Block::SIZE,
                StoredHash::Sha512Crypt { .. } => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// Checks a login and password (slow on purpose: run it on a checking thread).
    pub fn check(&self, login: &str, password: &str, scratch: &mut Scratch) -> Check {
        match self.entries.get(login) {
            Some(hash) if hash.matches(password, scratch) => Check::Valid,
            Some(_) => Check::Invalid,
            None => {
                self.decoy(login).matches(password, scratch);
                Check::Invalid
            }
        }
    }

    /// The decoy an unknown `login` is checked against.
    fn decoy(&self, login: &str) -> &StoredHash {
        let digest = Sha256::new()
            .chain_update(self.key)
            .chain_update(login.as_bytes())
            .finalize();
        let pick = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        let entry = (pick % self.decoy_of_entry.len() as u64) as usize;
        &self.decoys[self.decoy_of_entry[entry]]
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
        let scratch = &mut Scratch::default();
        assert_eq!(file.len(), 2);
        assert_eq!(file.check("alice", "correct horse", scratch), Check::Valid);
        assert_eq!(file.check("alice", "wrong", scratch), Check::Invalid);
        assert_eq!(file.check("bob", "s3cret", scratch), Check::Valid);
        assert_eq!(file.check("bob", "s3cret ", scratch), Check::Invalid);
        assert_eq!(file.check("mallory", "s3cret", scratch), Check::Invalid);
        assert_eq!(
            scratch.size(),
            file.max_memory(),
            "one Argon2 buffer, reused"
        );
        assert_eq!(file.max_memory(), 19 * 1024 * 1024);
    }

    #[test]
    fn unknown_logins_get_decoys_with_the_costs_of_the_files_entries() {
        let only_sha = CredentialsFile::parse(&format!("bob:{SHA512}\n")).unwrap();
        assert_eq!(
            only_sha.max_memory(),
            0,
            "no Argon2 decoy in a SHA-512-crypt file"
        );
        for login in ["nobody", "admin", "root", "bob2"] {
            assert_eq!(
                only_sha.decoy(login).cost(),
                Cost::Sha512Crypt { rounds: 5000 }
            );
        }
        let rounds = "$6$rounds=20000$saltsalt$0Nr6kyvT6aZVjtVbJ4zqnqQ7m/qB0Dc6gQ33B6KsOQ3SwfSLhGOnn3AbwLHKXKIFuW9iALpM.Gcxm7VDa4uxy1";
        let argon = hash_password("x").unwrap();
        let mixed =
            CredentialsFile::parse(&format!("a:{argon}\nb:{SHA512}\nc:{rounds}\nd:{SHA512}\n"))
                .unwrap();
        assert_eq!(mixed.decoys.len(), 3, "one decoy per distinct cost");
        let costs: Vec<Cost> = (0..400)
            .map(|n| mixed.decoy(&format!("user{n}")).cost())
            .collect();
        let sha_default = costs
            .iter()
            .filter(|c| **c == Cost::Sha512Crypt { rounds: 5000 })
            .count();
        assert!(
            (150..250).contains(&sha_default),
            "about half the names, as half the entries: {sha_default}"
        );
        assert!(costs.contains(&Cost::Sha512Crypt { rounds: 20000 }));
        assert!(costs.iter().any(|c| matches!(c, Cost::Argon2 { .. })));
        assert_eq!(
            mixed.decoy("user7").cost(),
            mixed.decoy("user7").cost(),
            "a name always gets the same decoy"
        );
        let scratch = &mut Scratch::default();
        assert_eq!(mixed.check("c", "s3cret", scratch), Check::Invalid);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("alice\n", 1, "login:hash"),
            ("# c\nalice:plaintext\n", 2, "unknown hash format"),
            ("alice:$argon2id$nonsense\n", 1, "invalid Argon2"),
            ("alice:$6$only\n", 1, "invalid SHA-512-crypt"),
            ("alice:$6$rounds=5$salt$hash\n", 1, "invalid SHA-512-crypt"),
            (&format!("a:{SHA512}\na:{SHA512}\n") as &str, 2, "twice"),
            (&format!("a b:{SHA512}\n"), 1, "spaces"),
            // Costs that would stall the load (a decoy is hashed per cost) or worse;
            // the last one overflowed the argon2 crate's own check (found by fuzzing).
            (
                "a:$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHQ$WKmXr8lmhjH1m7Rm0ibYyH5mGq+1rH+2R5Ih5F5PHBg\n",
                1,
                "m above 1 GiB",
            ),
            (
                "a:$argon2id$v=19$m=65536,t=1000,p=1$c29tZXNhbHQ$WKmXr8lmhjH1m7Rm0ibYyH5mGq+1rH+2R5Ih5F5PHBg\n",
                1,
                "t above 64",
            ),
            (
                "a:$argon2id$v=19$m=65536,t=2,p=945694561$c29tZXNhbHQ$WKmXr8lmhjH1m7Rm0ibYyH5mGq+1rH+2R5Ih5F5PHBg\n",
                1,
                "p above 64",
            ),
            ("a:$6$rounds=999999999$salt$hash\n", 1, "rounds above"),
        ];
        for (text, line, message) in cases {
            let error = CredentialsFile::parse(text).unwrap_err();
            let (at, error) = (error.line, error.reason);
            assert_eq!(at, line, "{text}");
            assert!(error.contains(message), "{error}");
        }
    }
}
