//! Per-client connection limits, applied when a connection is accepted and before any
//! plugin runs: how many sessions one client may have open at once, and how many it
//! may open per window (Postfix's `smtpd_client_connection_count_limit` and
//! `smtpd_client_connection_rate_limit`). Without them one address can take every
//! connection slot of the proxy. A client is an address, or the network of
//! `ipv4_prefix` / `ipv6_prefix` bits around it (by default each IPv4 address, and
//! each IPv6 /64).
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

/// The counts of every client address. The counts are shared with the limits a
/// reload makes of them ([`Self::reconfigured`]), so a reload forgets no session.
#[derive(Debug)]
pub(crate) struct ClientLimits {
    config: ClientLimitsConfig,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    windows: Arc<Mutex<HashMap<IpAddr, Window>>>,
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
            open: Arc::default(),
            windows: Arc::default(),
        })
    }

    /// Limits by `config` over the same counts: the sessions open now still count.
    pub(crate) fn reconfigured(&self, config: ClientLimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            open: self.open.clone(),
            windows: self.windows.clone(),
        })
    }

    /// Counts a new connection from `address`: a slot that the session holds until
    /// it ends, or why it is refused. A refused attempt counts toward the rate, so a
    /// client that keeps hammering stays refused until it slows down.
    pub(crate) fn admit(self: &Arc<Self>, address: IpAddr) -> Result<ClientSlot, Refusal> {
        self.admit_at(address, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, address: IpAddr, now: Instant) -> Result<ClientSlot, Refusal> {
        let address = self.client_of(address);
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

    /// The client `address` counts as: its network of the configured prefix length
    /// (an IPv4 address mapped into IPv6 counts as IPv4).
    fn client_of(&self, address: IpAddr) -> IpAddr {
        match address.to_canonical() {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & mask32(self.config.ipv4_prefix);
                IpAddr::from(bits.to_be_bytes())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & mask128(self.config.ipv6_prefix);
                IpAddr::from(bits.to_be_bytes())
            }
        }
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

fn mask32(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
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
            ipv4_prefix: 32,
            ipv6_prefix: 128,
        })
    }

    #[test]
    fn addresses_of_one_network_count_as_one_client() {
        let limits = ClientLimits::new(ClientLimitsConfig {
            max_sessions: 2,
            ipv4_prefix: 24,
            ..ClientLimitsConfig::default()
        });
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let _a = limits.admit(ip("192.0.2.1")).unwrap();
        let _b = limits.admit(ip("192.0.2.200")).unwrap();
        assert_eq!(
            limits.admit(ip("::ffff:192.0.2.77")).unwrap_err(),
            Refusal::Sessions,
            "the same /24, mapped into IPv6"
        );
        let _other = limits.admit(ip("192.0.3.1")).expect("another /24");
        // IPv6 by /64 by default.
        let _c = limits.admit(ip("2001:db8:1:2::1")).unwrap();
        let _d = limits.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            limits.admit(ip("2001:db8:1:2:aaaa::1")).unwrap_err(),
            Refusal::Sessions
        );
        let _e = limits.admit(ip("2001:db8:1:3::1")).expect("another /64");
        assert_eq!(mask32(32), u32::MAX);
        assert_eq!(mask32(24), 0xffff_ff00);
        assert_eq!(mask128(64), u128::MAX << 64);
        assert_eq!(mask128(128), u128::MAX);
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
