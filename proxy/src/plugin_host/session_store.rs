//! The `session-store` import: values a plugin keeps for one session. The session's
//! plugin hooks hold each plugin's store and lend it to whichever instance serves a
//! call, so a shareable plugin keeps per-session state without an instance per
//! session; the store goes when the session does. Bounded, like every other place a
//! client's session makes the proxy hold memory.

use std::collections::HashMap;

use super::{generated::portcullis::plugin::session_store, host::PluginState};

/// Keys one plugin may keep in one session's store.
pub(super) const MAX_KEYS: usize = 64;

/// Octets of keys and values one plugin may keep in one session's store.
pub(super) const MAX_BYTES: usize = 64 * 1024;

/// One plugin's values for one session.
#[derive(Debug, Default)]
pub struct SessionStore {
    entries: HashMap<String, Vec<u8>>,
    /// Octets of all keys and values.
    bytes: usize,
}

impl SessionStore {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Sets `key` unless that would pass `MAX_KEYS` or `MAX_BYTES`; false if not
    /// kept (the old value, if any, stays).
    pub fn set(&mut self, key: String, value: Vec<u8>) -> bool {
        let old = self.entries.get(&key).map(|v| key.len() + v.len());
        if old.is_none() && self.entries.len() >= MAX_KEYS {
            return false;
        }
        let bytes = self.bytes - old.unwrap_or(0) + key.len() + value.len();
        if bytes > MAX_BYTES {
            return false;
        }
        self.bytes = bytes;
        self.entries.insert(key, value);
        true
    }

    /// Removes `key`; true if it was there.
    pub fn delete(&mut self, key: &str) -> bool {
        match self.entries.remove_entry(key) {
            Some((key, value)) => {
                self.bytes -= key.len() + value.len();
                true
            }
            None => false,
        }
    }
}

impl session_store::Host for PluginState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.session_store.get(&key).map(<[u8]>::to_vec))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<bool> {
        Ok(self.session_store.set(key, value))
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<bool> {
        Ok(self.session_store.delete(&key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_keeps_within_its_key_and_byte_limits() {
        let mut store = SessionStore::default();
        assert!(store.set("count".into(), vec![1]));
        assert!(store.set("count".into(), vec![2, 3]));
        assert_eq!(store.get("count"), Some(&[2, 3][..]));
        assert_eq!(store.bytes, "count".len() + 2);
        for n in 1..MAX_KEYS {
            assert!(store.set(format!("k{n}"), Vec::new()), "key {n}");
        }
        assert!(!store.set("one-too-many".into(), Vec::new()));
        assert!(
            store.set("k1".into(), vec![0; 10]),
            "an existing key still changes"
        );
        assert!(
            !store.set("k2".into(), vec![0; MAX_BYTES]),
            "over the byte limit"
        );
        assert_eq!(
            store.get("k2"),
            Some(&[][..]),
            "a refused set keeps the old value"
        );
        assert!(store.delete("count"));
        assert!(!store.delete("count"));
        assert!(
            store.set("one-too-many".into(), Vec::new()),
            "room again after delete"
        );
        let total: usize = store.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(store.bytes, total);
    }
}
