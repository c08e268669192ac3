//! The key-value store plugins share: in memory, with TTLs and atomic increments. Its
//! methods are the whole interface a shared backend (Redis) has to provide.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Entries past this count trigger a sweep of expired ones.
const SWEEP_AT: usize = 100_000;

/// An in-memory store with expiry.
#[derive(Debug, Default)]
pub struct KvStore {
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|expires| expires > now)
    }
}

fn expiry(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.map(|ttl| now + Duration::from_millis(ttl))
}

impl KvStore {
    /// The value of `key`, if set and not expired.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let entries = self.entries.lock().expect("lock poisoned");
        entries
            .get(key)
            .filter(|e| e.live(Instant::now()))
            .map(|e| e.value.clone())
    }

    /// Sets `key`, expiring after `ttl_ms` if given.
    pub fn set(&self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("lock poisoned");
        sweep(&mut entries, now);
        entries.insert(
            key.to_string(),
            Entry {
                value,
                expires: expiry(now, ttl_ms),
            },
        );
    }

    /// Adds `delta` to the decimal number at `key` and returns the result; a missing or
    /// expired key starts at 0 and gets `ttl_ms`; an existing one keeps its expiry.
    pub fn incr(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("lock poisoned");
        sweep(&mut entries, now);
        // A live counter is updated in place: no new key, no new value buffer.
        if let Some(entry) = entries.get_mut(key).filter(|e| e.live(now)) {
            let number = decimal(&entry.value).unwrap_or(0).saturating_add(delta);
            entry.value.clear();
            write_decimal(&mut entry.value, number);
            return number;
        }
        let mut value = Vec::new();
        write_decimal(&mut value, delta);
        entries.insert(
            key.to_string(),
            Entry {
                value,
                expires: expiry(now, ttl_ms),
            },
        );
        delta
    }

    /// Removes `key`; true if it existed and had not expired.
    pub fn delete(&self, key: &str) -> bool {
        let mut entries = self.entries.lock().expect("lock poisoned");
        entries.remove(key).is_some_and(|e| e.live(Instant::now()))
    }
}

/// The decimal number a value holds, if it is one.
fn decimal(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn write_decimal(value: &mut Vec<u8>, number: i64) {
    use std::io::Write;
    write!(value, "{number}").expect("writing to a Vec cannot fail");
}

fn sweep(entries: &mut HashMap<String, Entry>, now: Instant) {
    if entries.len() >= SWEEP_AT {
        entries.retain(|_, e| e.live(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_expires_and_deletes() {
        let store = KvStore::default();
        assert_eq!(store.incr("n", 1, Some(50)), 1);
        assert_eq!(store.incr("n", 5, Some(50)), 6);
        store.set("text", b"not a number".to_vec(), None);
        assert_eq!(store.incr("text", 2, None), 2, "a non-number counts from 0");
        assert_eq!(store.get("n"), Some(b"6".to_vec()));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(store.get("n"), None);
        assert_eq!(
            store.incr("n", 1, None),
            1,
            "an expired counter starts again"
        );
        store.set("s", b"v".to_vec(), None);
        assert!(store.delete("s"));
        assert!(!store.delete("s"));
    }
}
