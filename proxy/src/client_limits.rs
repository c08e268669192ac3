//! Per-client connection limits, applied when a connection is accepted and before any
//! plugin runs: how many sessions one client address may have open at once, and how
//! many it may open per window (Postfix's `smtpd_client_connection_count_limit` and
//! `smtpd_client_connection_rate_limit`). Without them one address can take every
//! connection slot of the proxy.
//!
//! No I/O here: the listener asks [`ClientLimits::admit`] and answers a refusal.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::config::ClientLimitsConfig;

/// Addresses whose new-session windows are remembered at most; past it (many
/// addresses in one window, say a scan from an IPv6 prefix) new addresses are not
/// rate-limited until older windows end. Their open sessions are still counted.
const MAX_RATE_ENTRIES: usize = 100_000;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The address has `max_sessions` open already.
    Sessions,
    /// The address opened `max_new_sessions` within the window.
    Rate,
}

/// The counts of every client address.
#[derive(Debug)]
pub(crate) struct ClientLimits {
    config: ClientLimitsConfig,
    open: Mutex<HashMap<IpAddr, usize>>,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

/// The new sessions of one address since `start`.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: usize,
}

impl ClientLimits {
    pub(crate) fn new(config: ClientLimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            open: Mutex::default(),
            windows: Mutex::default(),
        })
    }

    /// Counts a new connection from `address`: a slot that the session holds until
    /// it ends, or why it is refused. A refused attempt counts toward the rate, so a
    /// client that keeps hammering stays refused until it slows down.
    pub(crate) fn admit(self: &Arc<Self>, address: IpAddr) -> Result<ClientSlot, Refusal> {
        self.admit_at(address, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, address: IpAddr, now: Instant) -> Result<ClientSlot, Refusal> {
        if self.config.max_new_sessions > 0 && !self.within_rate(address, now) {
            return Err(Refusal::Rate);
        }
        let mut open = self.open.lock().expect("lock poisoned");
        let count = open.entry(address).or_default();
        if self.config.max_sessions > 0 && *count >= self.config.max_sessions {
            return Err(Refusal::Sessions);
        }
        *count += 1;
        Ok(ClientSlot {
            limits: self.clone(),
            address,
        })
    }

    /// Counts one new session of `address`; false if that is one too many.
    fn within_rate(&self, address: IpAddr, now: Instant) -> bool {
        let window_length = self.config.window;
        let mut windows = self.windows.lock().expect("lock poisoned");
        if windows.len() >= MAX_RATE_ENTRIES && !windows.contains_key(&address) {
            windows.retain(|_, window| now < window.start + window_length);
            if windows.len() >= MAX_RATE_ENTRIES {
                return true;
            }
        }
        let window = windows.entry(address).or_insert(Window {
            start: now,
            count: 0,
        });
        if now >= window.start + window_length {
            *window = Window {
                start: now,
                count: 0,
            };
        }
        window.count += 1;
        window.count <= self.config.max_new_sessions
    }

    /// Drops the windows that have ended (called now and then by the server).
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let window_length = self.config.window;
        self.windows
            .lock()
            .expect("lock poisoned")
            .retain(|_, window| now < window.start + window_length);
    }

    /// How often [`Self::sweep`] is worth calling.
    pub(crate) fn sweep_interval(&self) -> Duration {
        self.config.window.max(Duration::from_secs(1))
    }

    fn release(&self, address: IpAddr) {
        let mut open = self.open.lock().expect("lock poisoned");
        if let Some(count) = open.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&address);
            }
        }
    }
}

/// One open session of a client address; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    limits: Arc<ClientLimits>,
    address: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.limits.release(self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_sessions: usize, max_new_sessions: usize) -> Arc<ClientLimits> {
        ClientLimits::new(ClientLimitsConfig {
            max_sessions,
            max_new_sessions,
            window: Duration::from_secs(60),
        })
    }

    #[test]
    fn sessions_per_address_are_counted_until_they_end() {
        let limits = limits(2, 0);
        let (a, b): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::Sessions);
        let _other = limits.admit(b).expect("another address is not affected");
        drop(first);
        let _third = limits.admit(a).expect("a slot was freed");
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::Sessions);
    }

    #[test]
    fn new_sessions_per_window_including_refused_attempts() {
        let limits = limits(0, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            drop(limits.admit_at(a, start).unwrap());
        }
        assert_eq!(limits.admit_at(a, start).unwrap_err(), Refusal::Rate);
        let almost = start + Duration::from_secs(59);
        assert_eq!(
            limits.admit_at(a, almost).unwrap_err(),
            Refusal::Rate,
            "refused attempts count too"
        );
        let next = start + Duration::from_secs(60);
        assert!(limits.admit_at(a, next).is_ok(), "a new window");
        assert!(
            limits.open.lock().unwrap().is_empty(),
            "no slot left behind"
        );
    }

    #[test]
    fn zero_means_no_limit() {
        let limits = limits(0, 0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..1000).map(|_| limits.admit(a).unwrap()).collect();
        assert_eq!(slots.len(), 1000);
        assert!(limits.windows.lock().unwrap().is_empty());
    }
}
