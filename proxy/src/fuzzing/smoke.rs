//! The CI smoke of the fuzz targets: each body over its seeds (`fuzz/seeds/`) and
//! a few thousand deterministic mutations of them. The real runs are
//! `bench/fuzz.sh`'s, ten minutes a target.

use std::{fs, path::PathBuf};

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("command", super::command),
    ("reply", super::reply),
    ("data", super::data),
    ("sasl", super::sasl),
    ("credentials", super::credentials),
    ("sender_logins", super::sender_logins),
    ("proxy_header", super::proxy_header),
];

/// Pieces the mutations splice in: what the parsers treat specially.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\r\n.\r\n",
    b"\n.\n",
    b"<",
    b">",
    b"\"",
    b"\\",
    b"=",
    b"@",
    b":",
    b" ",
    b"\0",
    b"\t",
    b"-",
    b"250",
    b"$6$",
    b"$argon2id$",
    b"\xc3\xa9",
    b"\xff",
    b"AGFsaWNlAHNlY3JldA==",
    b"*",
];

/// xorshift64: the same mutations on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../fuzz/seeds/{target}"));
    let mut seeds: Vec<Vec<u8>> = fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .map(|entry| fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", folder.display());
    seeds.sort();
    seeds
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(5) {
            0 if !input.is_empty() => {
                let at = at.min(input.len() - 1);
                input[at] = rng.next() as u8;
            }
            1 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            2 if at < input.len() => {
                let end = (at + rng.below(8) + 1).min(input.len());
                input.drain(at..end);
            }
            3 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                input.splice(at..at, other[from..].iter().copied());
            }
            _ => input.insert(at, rng.next() as u8),
        }
    }
}

#[test]
fn every_target_holds_on_its_seeds_and_their_mutations() {
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for seed in &seeds {
            target(seed);
        }
        for _ in 0..4000 {
            let mut input = seeds[rng.below(seeds.len())].clone();
            mutate(&mut rng, &mut input, &seeds);
            let result = std::panic::catch_unwind(|| target(&input));
            assert!(
                result.is_ok(),
                "fuzz target {name} fails on {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}
