//! Failed-AUTH throttling per client address, counted in the shared key-value store
//! so that every session (and, with a shared store, every proxy) sees the same count.
//! Each failure is answered after `delay × failures` (at most `max_delay`); once a
//! client has failed `max_failures` times within `window` it gets 421 4.7.0.

use std::{net::IpAddr, sync::Arc, time::Duration};

use crate::{config::ThrottleConfig, kv::KvStore};

/// The throttle of one proxy.
#[derive(Debug, Clone)]
pub struct AuthThrottle {
    kv: Arc<KvStore>,
    config: ThrottleConfig,
}

/// What the throttle says about one more failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Wait this long, then answer 535.
    Delay(Duration),
    /// The limit is reached: 421 4.7.0 and close.
    Disconnect,
}

impl AuthThrottle {
    /// A throttle over `kv`.
    pub fn new(kv: Arc<KvStore>, config: ThrottleConfig) -> Self {
        Self { kv, config }
    }

    /// Plugin keys always contain a NUL; this one never does, so they cannot collide.
    fn key(address: IpAddr) -> String {
        format!("portcullis:auth-failures:{address}")
    }

    fn count(&self, address: IpAddr) -> i64 {
        self.kv
            .get(&Self::key(address))
            .and_then(|value| String::from_utf8(value).ok()?.parse().ok())
            .unwrap_or(0)
    }

    /// True if this address may not try again now.
    pub fn is_blocked(&self, address: IpAddr) -> bool {
        self.count(address) >= i64::from(self.config.max_failures)
    }

    /// Counts a failure and says what to do.
    pub fn record_failure(&self, address: IpAddr) -> AfterFailure {
        let window = u64::try_from(self.config.window.as_millis()).unwrap_or(u64::MAX);
        let failures = self.kv.incr(&Self::key(address), 1, Some(window));
        if failures >= i64::from(self.config.max_failures) {
            return AfterFailure::Disconnect;
        }
        let steps = u32::try_from(failures).unwrap_or(u32::MAX);
        AfterFailure::Delay(
            self.config
                .delay
                .saturating_mul(steps)
                .min(self.config.max_delay),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_the_address_is_blocked_for_every_session() {
        let kv = Arc::new(KvStore::default());
        let config = ThrottleConfig {
            max_failures: 4,
            window: Duration::from_secs(60),
            delay: Duration::from_millis(300),
            max_delay: Duration::from_millis(700),
        };
        let throttle = AuthThrottle::new(kv.clone(), config.clone());
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let delays: Vec<_> = (0..3).map(|_| throttle.record_failure(client)).collect();
        assert_eq!(
            delays,
            [300, 600, 700].map(|ms| AfterFailure::Delay(Duration::from_millis(ms)))
        );
        assert!(!throttle.is_blocked(client));
        assert_eq!(throttle.record_failure(client), AfterFailure::Disconnect);
        // A second throttle over the same store (another session) sees the count.
        let shared = AuthThrottle::new(kv, config);
        assert!(shared.is_blocked(client));
        assert!(!shared.is_blocked(other));
    }
}
