//! The key-value store plugins share: in memory, with TTLs and atomic increments. Its
//! methods are the whole interface a shared backend (Redis) has to provide.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The fewest entries at which a new key sweeps out the expired ones.
const SWEEP_AT: usize = 100_000;

/// An in-memory store with expiry.
#[derive(Debug, Default)]
pub struct KvStore {
    entries: Mutex<Entries>,
}

/// The entries, and the size at which the next sweep of expired ones runs.
#[derive(Debug)]
struct Entries {
    map: HashMap<String, Entry>,
    sweep_at: usize,
}

impl Default for Entries {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            sweep_at: SWEEP_AT,
        }
    }
}

impl Entries {
    /// Called before a key is inserted: once the map has grown to `sweep_at`, drops
    /// the expired entries and sets the next sweep at twice the live ones left. A
    /// store full of live keys (say, a counter for each of 200,000 client addresses)
    /// is then scanned once per doubling, not on every insert under the lock.
    fn make_room(&mut self, now: Instant) {
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, e| e.live(now));
            self.sweep_at = (self.map.len() * 2).max(SWEEP_AT);
        }
    }
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
            .map
            .get(key)
            .filter(|e| e.live(Instant::now()))
            .map(|e| e.value.clone())
    }

    /// Sets `key`, expiring after `ttl_ms` if given.
    pub fn set(&self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("lock poisoned");
        entries.make_room(now);
        entries.map.insert(
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
        // A live counter is updated in place: no new key, no new value buffer.
        if let Some(entry) = entries.map.get_mut(key).filter(|e| e.live(now)) {
            let number = decimal(&entry.value).unwrap_or(0).saturating_add(delta);
            entry.value.clear();
            write_decimal(&mut entry.value, number);
            return number;
        }
        let mut value = Vec::new();
        write_decimal(&mut value, delta);
        entries.make_room(now);
        entries.map.insert(
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
        entries
            .map
            .remove(key)
            .is_some_and(|e| e.live(Instant::now()))
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

    #[test]
    fn expired_entries_are_swept_once_the_store_is_large() {
        let store = KvStore::default();
        for n in 0..SWEEP_AT {
            store.set(&format!("old{n}"), Vec::new(), Some(1));
        }
        std::thread::sleep(Duration::from_millis(5));
        store.set("new", b"v".to_vec(), None);
        let entries = store.entries.lock().unwrap();
        assert_eq!(entries.map.len(), 1, "only the live key is left");
        assert_eq!(entries.sweep_at, SWEEP_AT);
    }

    #[test]
    fn a_store_of_live_keys_is_not_swept_on_every_insert() {
        let store = KvStore::default();
        let live = SWEEP_AT + SWEEP_AT / 2;
        for n in 0..live {
            assert_eq!(store.incr(&format!("client{n}"), 1, Some(3_600_000)), 1);
        }
        let entries = store.entries.lock().unwrap();
        assert_eq!(entries.map.len(), live, "live keys are never dropped");
        // The sweep at SWEEP_AT found nothing to drop: the next waits for twice as many.
        assert_eq!(entries.sweep_at, 2 * SWEEP_AT);
    }
}
