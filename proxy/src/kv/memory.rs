//! The key-value store in this process's memory, with TTLs, atomic increments and a
//! cap on its keys. Synchronous: the AUTH throttle's own counts use it directly.

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The fewest entries at which a new key sweeps out the expired ones.
const SWEEP_AT: usize = 100_000;

/// How often a full store may sweep for expired keys to make room for a new one.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

use super::DEFAULT_MAX_ENTRIES;

/// An in-memory store with expiry and a cap on its keys.
#[derive(Debug)]
pub struct MemoryStore {
    entries: Mutex<Entries>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

/// The entries, and when the next sweep of expired ones runs.
#[derive(Debug)]
struct Entries {
    map: HashMap<String, Entry>,
    /// The size at which a new key sweeps.
    sweep_at: usize,
    max_entries: usize,
    /// When the last sweep ran, which spaces out the sweeps of a full store.
    last_sweep: Option<Instant>,
}

impl Entries {
    /// Called before a new key is inserted; false when there is no room for it.
    ///
    /// Once the map has grown to `sweep_at`, drops the expired entries and sets the
    /// next sweep at twice the live ones left: a store of many live keys (say, a
    /// counter for each of 200,000 client addresses) is scanned once per doubling,
    /// not on every insert under the lock. At `max_entries` it sweeps at most once
    /// per [`FULL_SWEEP_INTERVAL`], and says so when that frees nothing.
    fn make_room(&mut self, now: Instant) -> bool {
        let full = self.map.len() >= self.max_entries;
        let full_sweep_due = full
            && self
                .last_sweep
                .is_none_or(|last| now >= last + FULL_SWEEP_INTERVAL);
        if self.map.len() >= self.sweep_at || full_sweep_due {
            self.map.retain(|_, e| e.live(now));
            self.sweep_at = (self.map.len() * 2).max(SWEEP_AT);
            self.last_sweep = Some(now);
            if self.map.len() >= self.max_entries {
                tracing::warn!(
                    max_entries = self.max_entries,
                    "the key-value store is full of live keys: new keys are not stored (kv.max_entries)"
                );
            }
        }
        self.map.len() < self.max_entries
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

impl MemoryStore {
    /// An empty store that holds at most `max_entries` keys.
    pub fn new(max_entries: NonZeroUsize) -> Self {
        Self {
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                sweep_at: SWEEP_AT,
                max_entries: max_entries.get(),
                last_sweep: None,
            }),
        }
    }

    /// Holds at most `max_entries` keys from now on (a reload changed
    /// `kv.max_entries`); keys past it are not dropped, new ones wait for room.
    pub fn set_max_entries(&self, max_entries: NonZeroUsize) {
        self.entries.lock().expect("lock poisoned").max_entries = max_entries.get();
    }

    /// The value of `key`, if set and not expired.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let entries = self.entries.lock().expect("lock poisoned");
        entries
            .map
            .get(key)
            .filter(|e| e.live(Instant::now()))
            .map(|e| e.value.clone())
    }

    /// Sets `key`, expiring after `ttl_ms` if given. A new key is not stored while the
    /// store is full.
    pub fn set(&self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) {
        let now = Instant::now();
        let entry = Entry {
            value,
            expires: expiry(now, ttl_ms),
        };
        let mut entries = self.entries.lock().expect("lock poisoned");
        if let Some(existing) = entries.map.get_mut(key) {
            *existing = entry;
        } else if entries.make_room(now) {
            entries.map.insert(key.to_string(), entry);
        }
    }

    /// Adds `delta` to the decimal number at `key` and returns the result; a missing or
    /// expired key starts at 0 and gets `ttl_ms`; a live one keeps its expiry. While
    /// the store is full, a new key is counted from 0 but not stored.
    pub fn incr(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
        self.try_incr(key, delta, ttl_ms).unwrap_or(delta)
    }

    /// [`MemoryStore::incr`], but `None` when a new key could not be stored because the
    /// store is full: for counts that must not be lost (the AUTH throttle's).
    pub fn try_incr(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Option<i64> {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("lock poisoned");
        // A known key is updated in place: no new key, no new value buffer.
        if let Some(entry) = entries.map.get_mut(key) {
            let number = if entry.live(now) {
                decimal(&entry.value).unwrap_or(0).saturating_add(delta)
            } else {
                entry.expires = expiry(now, ttl_ms);
                delta
            };
            entry.value.clear();
            write_decimal(&mut entry.value, number);
            return Some(number);
        }
        if !entries.make_room(now) {
            return None;
        }
        let mut value = Vec::new();
        write_decimal(&mut value, delta);
        entries.map.insert(
            key.to_string(),
            Entry {
                value,
                expires: expiry(now, ttl_ms),
            },
        );
        Some(delta)
    }

    /// How many entries the store holds (expired ones not swept yet included).
    pub fn len(&self) -> usize {
        self.entries.lock().expect("lock poisoned").map.len()
    }

    /// True if the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        let store = MemoryStore::default();
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
        let store = MemoryStore::default();
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
        let store = MemoryStore::default();
        let live = SWEEP_AT + SWEEP_AT / 2;
        for n in 0..live {
            assert_eq!(store.incr(&format!("client{n}"), 1, Some(3_600_000)), 1);
        }
        let entries = store.entries.lock().unwrap();
        assert_eq!(entries.map.len(), live, "live keys are never dropped");
        // The sweep at SWEEP_AT found nothing to drop: the next waits for twice as many.
        assert_eq!(entries.sweep_at, 2 * SWEEP_AT);
    }

    #[test]
    fn a_full_store_keeps_its_keys_and_stores_no_new_ones() {
        let store = MemoryStore::new(NonZeroUsize::new(3).unwrap());
        store.set("a", b"1".to_vec(), None);
        store.incr("b", 1, None);
        store.incr("short", 1, Some(20));
        store.set("d", b"4".to_vec(), None);
        assert_eq!(store.get("d"), None, "a new key is not stored");
        assert_eq!(store.incr("e", 5, None), 5, "counted from 0 ...");
        assert_eq!(store.get("e"), None, "... but not kept");
        assert_eq!(store.incr("b", 1, None), 2, "known keys still count");
        store.set("a", b"changed".to_vec(), None);
        assert_eq!(store.get("a"), Some(b"changed".to_vec()));

        // Once a key has expired, the next sweep (spaced out while full) frees its room.
        std::thread::sleep(Duration::from_millis(30));
        store.set("f", b"6".to_vec(), None);
        assert_eq!(store.get("f"), None, "the full store swept moments ago");
        store.entries.lock().unwrap().last_sweep = None;
        store.set("f", b"6".to_vec(), None);
        assert_eq!(store.get("f"), Some(b"6".to_vec()));
        assert_eq!(store.get("short"), None);
    }
}
