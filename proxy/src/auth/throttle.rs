//! Failed-AUTH throttling per client address. An attempt is counted *before* its
//! credentials are checked (a [`Reservation`]) and the count is given back only when
//! it succeeds, so any number of concurrent attempts from one address get at most
//! `max_failures` checks between them. Each failure is answered after
//! `delay × failures` (at most `max_delay`); once an address has `max_failures`
//! within `window` it gets 421 4.7.0.
//!
//! The counts live in a store of their own, with room for `max_clients` addresses, so
//! plugins filling the shared key-value store cannot make the throttle forget. When
//! even that is full of live counts, a new address is refused AUTH for now (454)
//! instead of being let in uncounted.

use std::{net::IpAddr, sync::Arc, time::Duration};

use crate::{config::ThrottleConfig, kv::MemoryStore};

/// The throttle of one proxy.
#[derive(Debug, Clone)]
pub(crate) struct AuthThrottle {
    counts: Arc<MemoryStore>,
    config: ThrottleConfig,
}

/// What the throttle says about one more failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Wait this long, then answer 535.
    Delay(Duration),
    /// The limit is reached: 421 4.7.0 and close.
    Disconnect,
}

/// Why an attempt may not be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// The address has used up its failures (in flight ones included): 421 4.7.0.
    #[error("too many failed AUTH attempts from this address")]
    Blocked,
    /// The throttle's store is full, so this attempt could not be counted: 454 4.7.0.
    #[error("the AUTH throttle cannot count this address (auth_throttle.max_clients)")]
    CannotCount,
}

impl AuthThrottle {
    /// A throttle with its own store, sized by `config.max_clients`.
    pub(crate) fn new(config: ThrottleConfig) -> Self {
        let room =
            std::num::NonZeroUsize::new(config.max_clients).unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            counts: Arc::new(MemoryStore::new(room)),
            config,
        }
    }

    /// A throttle by `config` over the same counts: a reload forgets no failure.
    /// Its `max_clients` applies once [`Self::take_effect`] is called.
    pub(crate) fn reconfigured(&self, config: ThrottleConfig) -> Self {
        Self {
            counts: self.counts.clone(),
            config,
        }
    }

    /// Sizes the shared counts by this throttle's `max_clients` (a reload put it in
    /// place).
    pub(crate) fn take_effect(&self) {
        if let Some(room) = std::num::NonZeroUsize::new(self.config.max_clients) {
            self.counts.set_max_entries(room);
        }
    }

    fn key(address: IpAddr) -> String {
        format!("portcullis:auth-failures:{address}")
    }

    fn count(&self, address: IpAddr) -> i64 {
        self.counts
            .get(&Self::key(address))
            .and_then(|value| String::from_utf8(value).ok()?.parse().ok())
            .unwrap_or(0)
    }

    /// True if this address may not try again now.
    pub(crate) fn is_blocked(&self, address: IpAddr) -> bool {
        self.count(address) >= i64::from(self.config.max_failures)
    }

    /// Counts an attempt from `address` as a failure until it is settled; an error if
    /// it may not be checked at all.
    pub(crate) fn reserve(&self, address: IpAddr) -> Result<Reservation, Refused> {
        let key = Self::key(address);
        let window = u64::try_from(self.config.window.as_millis()).unwrap_or(u64::MAX);
        let number = self
            .counts
            .try_incr(&key, 1, Some(window))
            .ok_or(Refused::CannotCount)?;
        let reservation = Reservation {
            throttle: self.clone(),
            key,
            number,
            settled: false,
        };
        if number > i64::from(self.config.max_failures) {
            // Dropping it gives the count back: a refused attempt is not a failure.
            return Err(Refused::Blocked);
        }
        Ok(reservation)
    }

    fn give_back(&self, key: &str) {
        if self.counts.try_incr(key, -1, None).is_some_and(|n| n <= 0) {
            self.counts.delete(key);
        }
    }
}

/// One attempt, counted as a failure until [`Reservation::succeeded`]. Dropped
/// without being settled (the verifier could not decide, the client left before a
/// check) it is given back.
#[derive(Debug)]
pub(crate) struct Reservation {
    throttle: AuthThrottle,
    key: String,
    /// This attempt's place in the address's count.
    number: i64,
    settled: bool,
}

impl Reservation {
    /// The credentials were right: the attempt is not a failure.
    pub(crate) fn succeeded(mut self) {
        self.settled = true;
        self.throttle.give_back(&self.key);
    }

    /// The credentials were wrong: the count keeps it; what to answer.
    pub(crate) fn failed(mut self) -> AfterFailure {
        self.settled = true;
        let config = &self.throttle.config;
        if self.number >= i64::from(config.max_failures) {
            return AfterFailure::Disconnect;
        }
        let steps = u32::try_from(self.number).unwrap_or(u32::MAX);
        AfterFailure::Delay(config.delay.saturating_mul(steps).min(config.max_delay))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.throttle.give_back(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(max_failures: u32, max_clients: usize) -> AuthThrottle {
        AuthThrottle::new(ThrottleConfig {
            max_failures,
            max_clients,
            window: Duration::from_secs(60),
            delay: Duration::from_millis(300),
            max_delay: Duration::from_millis(700),
            ..ThrottleConfig::default()
        })
    }

    #[test]
    fn delays_grow_then_the_address_is_blocked_for_every_session() {
        let throttle = throttle(4, 100);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let delays: Vec<_> = (0..3)
            .map(|_| throttle.reserve(client).unwrap().failed())
            .collect();
        assert_eq!(
            delays,
            [300, 600, 700].map(|ms| AfterFailure::Delay(Duration::from_millis(ms)))
        );
        assert!(!throttle.is_blocked(client));
        assert_eq!(
            throttle.reserve(client).unwrap().failed(),
            AfterFailure::Disconnect
        );
        // A clone (another session) sees the count.
        let shared = throttle.clone();
        assert!(shared.is_blocked(client));
        assert_eq!(shared.reserve(client).unwrap_err(), Refused::Blocked);
        assert!(!shared.is_blocked(other));
    }

    #[test]
    fn attempts_in_flight_count_until_they_succeed() {
        let throttle = throttle(3, 100);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        // A burst: only max_failures attempts get to be checked.
        let burst: Vec<_> = (0..10).map(|_| throttle.reserve(client)).collect();
        let admitted: Vec<_> = burst.into_iter().filter_map(Result::ok).collect();
        assert_eq!(admitted.len(), 3);
        assert!(throttle.is_blocked(client), "in flight counts as failed");
        let mut admitted = admitted.into_iter();
        admitted.next().unwrap().succeeded();
        assert!(
            !throttle.is_blocked(client),
            "a success gives its count back"
        );
        drop(admitted.next().unwrap());
        assert_eq!(
            throttle.count(client),
            1,
            "so does an attempt never settled"
        );
        admitted.next().unwrap().failed();
        assert_eq!(throttle.count(client), 1);
        throttle.reserve(client).unwrap().succeeded();
        throttle.reserve(client).unwrap().succeeded();
        assert_eq!(throttle.count(client), 1);
    }

    #[test]
    fn a_full_throttle_refuses_instead_of_forgetting() {
        let throttle = throttle(3, 2);
        let [a, b, c]: [IpAddr; 3] =
            ["192.0.2.1", "192.0.2.2", "192.0.2.3"].map(|s| s.parse().unwrap());
        throttle.reserve(a).unwrap().failed();
        throttle.reserve(b).unwrap().failed();
        assert_eq!(throttle.reserve(c).unwrap_err(), Refused::CannotCount);
        assert_eq!(
            throttle.reserve(a).unwrap().failed(),
            AfterFailure::Delay(Duration::from_millis(600)),
            "known addresses are still counted"
        );
    }
}
