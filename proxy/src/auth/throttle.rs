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
//! instead of being let in uncounted. With `[kv] backend = "redis"` they live in
//! Redis instead, under a key no plugin can write, so every proxy sharing it counts
//! the same failures; when Redis cannot count an attempt, `on_store_error` says
//! whether this proxy counts it itself meanwhile or answers 454.

use std::{net::IpAddr, sync::Arc, time::Duration};

use tracing::warn;

use crate::{
    config::{ThrottleConfig, ThrottleStoreError},
    kv::{KvStore, MemoryStore},
    log_limit::{self, Event},
};

/// The throttle of one proxy.
#[derive(Debug, Clone)]
pub(crate) struct AuthThrottle {
    local: Arc<MemoryStore>,
    /// The store several proxies share, if the key-value store is one.
    shared: Option<Shared>,
    config: ThrottleConfig,
}

/// The shared store, and the runtime that gives counts back to it (a check may be
/// settled on a password-checking thread).
#[derive(Debug, Clone)]
struct Shared {
    store: Arc<KvStore>,
    runtime: tokio::runtime::Handle,
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
    /// The shared store could not count it and `on_store_error = "tempfail"`: 454.
    #[error("the shared store cannot count AUTH attempts now")]
    StoreDown,
}

/// Where a reservation was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Local,
    Shared,
}

impl AuthThrottle {
    /// A throttle with its own store, sized by `config.max_clients`; its counts go
    /// to `store` instead when that is shared by several proxies.
    pub(crate) fn new(config: ThrottleConfig, store: &Arc<KvStore>) -> Self {
        let room =
            std::num::NonZeroUsize::new(config.max_clients).unwrap_or(std::num::NonZeroUsize::MIN);
        let shared = match tokio::runtime::Handle::try_current() {
            Ok(runtime) if store.is_shared() => Some(Shared {
                store: store.clone(),
                runtime,
            }),
            _ => None,
        };
        Self {
            local: Arc::new(MemoryStore::new(room)),
            shared,
            config,
        }
    }

    /// A throttle by `config` over the same counts: a reload forgets no failure.
    /// Its `max_clients` applies once [`Self::take_effect`] is called.
    pub(crate) fn reconfigured(&self, config: ThrottleConfig) -> Self {
        Self {
            local: self.local.clone(),
            shared: self.shared.clone(),
            config,
        }
    }

    /// Sizes this proxy's own counts by this throttle's `max_clients` (a reload put
    /// it in place).
    pub(crate) fn take_effect(&self) {
        if let Some(room) = std::num::NonZeroUsize::new(self.config.max_clients) {
            self.local.set_max_entries(room);
        }
    }

    /// The key of an address's count. It starts with a NUL, which no plugin's keys
    /// do (theirs start with the plugin's name), so no plugin can change it.
    fn key(address: IpAddr) -> String {
        format!("\0auth-failures/{address}")
    }

    fn local_count(&self, key: &str) -> i64 {
        self.local
            .get(key)
            .and_then(|value| String::from_utf8(value).ok()?.parse().ok())
            .unwrap_or(0)
    }

    /// The failures counted for `address` (in the shared store if there is one and
    /// it answers; this proxy's own counts otherwise).
    async fn count(&self, address: IpAddr) -> i64 {
        let key = Self::key(address);
        if let Some(shared) = &self.shared
            && let Ok(value) = shared.store.get(&key).await
        {
            return value
                .and_then(|value| String::from_utf8(value).ok()?.parse().ok())
                .unwrap_or(0)
                .max(self.local_count(&key));
        }
        self.local_count(&key)
    }

    /// True if this address may not try again now.
    pub(crate) async fn is_blocked(&self, address: IpAddr) -> bool {
        self.count(address).await >= i64::from(self.config.max_failures)
    }

    /// Counts an attempt from `address` as a failure until it is settled; an error if
    /// it may not be checked at all.
    pub(crate) async fn reserve(&self, address: IpAddr) -> Result<Reservation, Refused> {
        let key = Self::key(address);
        let window = u64::try_from(self.config.window.as_millis()).unwrap_or(u64::MAX);
        let shared = match &self.shared {
            Some(shared) => match shared.store.incr(&key, 1, Some(window)).await {
                Ok(number) => Some(number),
                Err(error) => {
                    if let Some(suppressed) = log_limit::admit(Event::ThrottleStoreDown) {
                        warn!(%error, suppressed, on_store_error = ?self.config.on_store_error, "the shared store could not count an AUTH attempt");
                    }
                    if self.config.on_store_error == ThrottleStoreError::Tempfail {
                        return Err(Refused::StoreDown);
                    }
                    None
                }
            },
            None => None,
        };
        let (number, place) = match shared {
            Some(number) => (number, Place::Shared),
            None => (
                self.local
                    .try_incr(&key, 1, Some(window))
                    .ok_or(Refused::CannotCount)?,
                Place::Local,
            ),
        };
        let reservation = Reservation {
            throttle: self.clone(),
            key,
            place,
            number,
            settled: false,
        };
        if number > i64::from(self.config.max_failures) {
            // Dropping it gives the count back: a refused attempt is not a failure.
            return Err(Refused::Blocked);
        }
        Ok(reservation)
    }

    fn give_back(&self, key: &str, place: Place) {
        match (place, &self.shared) {
            (Place::Shared, Some(shared)) => {
                let (store, key) = (shared.store.clone(), key.to_string());
                shared.runtime.spawn(async move {
                    if store.incr(&key, -1, None).await.is_ok_and(|n| n <= 0) {
                        let _ = store.delete(&key).await;
                    }
                });
            }
            _ => {
                if self.local.try_incr(key, -1, None).is_some_and(|n| n <= 0) {
                    self.local.delete(key);
                }
            }
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
    place: Place,
    /// This attempt's place in the address's count.
    number: i64,
    settled: bool,
}

impl Reservation {
    /// The credentials were right: the attempt is not a failure.
    pub(crate) fn succeeded(mut self) {
        self.settled = true;
        self.throttle.give_back(&self.key, self.place);
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
            self.throttle.give_back(&self.key, self.place);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(max_failures: u32, max_clients: usize) -> AuthThrottle {
        let config = ThrottleConfig {
            max_failures,
            max_clients,
            window: Duration::from_secs(60),
            delay: Duration::from_millis(300),
            max_delay: Duration::from_millis(700),
            ..ThrottleConfig::default()
        };
        AuthThrottle::new(config, &Arc::new(KvStore::default()))
    }

    #[tokio::test]
    async fn delays_grow_then_the_address_is_blocked_for_every_session() {
        let throttle = throttle(4, 100);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let mut delays = Vec::new();
        for _ in 0..3 {
            delays.push(throttle.reserve(client).await.unwrap().failed());
        }
        assert_eq!(
            delays,
            [300, 600, 700].map(|ms| AfterFailure::Delay(Duration::from_millis(ms)))
        );
        assert!(!throttle.is_blocked(client).await);
        assert_eq!(
            throttle.reserve(client).await.unwrap().failed(),
            AfterFailure::Disconnect
        );
        // A clone (another session) sees the count.
        let shared = throttle.clone();
        assert!(shared.is_blocked(client).await);
        assert_eq!(shared.reserve(client).await.unwrap_err(), Refused::Blocked);
        assert!(!shared.is_blocked(other).await);
    }

    #[tokio::test]
    async fn attempts_in_flight_count_until_they_succeed() {
        let throttle = throttle(3, 100);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        // A burst: only max_failures attempts get to be checked.
        let mut admitted = Vec::new();
        for _ in 0..10 {
            admitted.extend(throttle.reserve(client).await.ok());
        }
        assert_eq!(admitted.len(), 3);
        assert!(
            throttle.is_blocked(client).await,
            "in flight counts as failed"
        );
        let mut admitted = admitted.into_iter();
        admitted.next().unwrap().succeeded();
        assert!(
            !throttle.is_blocked(client).await,
            "a success gives its count back"
        );
        drop(admitted.next().unwrap());
        assert_eq!(
            throttle.count(client).await,
            1,
            "so does an attempt never settled"
        );
        admitted.next().unwrap().failed();
        assert_eq!(throttle.count(client).await, 1);
        throttle.reserve(client).await.unwrap().succeeded();
        throttle.reserve(client).await.unwrap().succeeded();
        assert_eq!(throttle.count(client).await, 1);
    }

    #[tokio::test]
    async fn a_full_throttle_refuses_instead_of_forgetting() {
        let throttle = throttle(3, 2);
        let [a, b, c]: [IpAddr; 3] =
            ["192.0.2.1", "192.0.2.2", "192.0.2.3"].map(|s| s.parse().unwrap());
        throttle.reserve(a).await.unwrap().failed();
        throttle.reserve(b).await.unwrap().failed();
        assert_eq!(throttle.reserve(c).await.unwrap_err(), Refused::CannotCount);
        assert_eq!(
            throttle.reserve(a).await.unwrap().failed(),
            AfterFailure::Delay(Duration::from_millis(600)),
            "known addresses are still counted"
        );
    }
}
