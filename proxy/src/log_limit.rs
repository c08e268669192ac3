//! Warnings about events a client can repeat at will (connections refused at a limit,
//! throttled AUTH, a full store) are written at most once per [`INTERVAL`] for each
//! kind of event. The next line of that kind says how many were left out, and
//! [`flush`] reports what a burst left out once it is over, so a flood costs the log a
//! few lines instead of one per event, and the operator still learns its size.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use tracing::warn;

/// How often one kind of event may be written.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// The kinds of event whose warnings are rate-limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// `server.max_connections` was reached.
    ConnectionLimit,
    /// An address had `client_limits.max_sessions` open.
    ClientSessionLimit,
    /// An address opened `client_limits.max_new_sessions` within the window.
    ClientRateLimit,
    /// A client was refused AUTH after too many failures.
    AuthThrottled,
    /// The AUTH throttle could not count a client (its store is full).
    ThrottleFull,
    /// The key-value store is full of live keys.
    KvFull,
    /// The shared store could not count an AUTH attempt.
    ThrottleStoreDown,
    /// A connection to a `proxy_protocol` listener from an address not trusted.
    ProxyUntrusted,
    /// A PROXY protocol header that was missing, malformed or too slow.
    ProxyHeader,
    /// An audit record could not be written to `[audit] path`.
    AuditWrite,
}

impl Event {
    const ALL: [Event; 10] = [
        Event::ConnectionLimit,
        Event::ClientSessionLimit,
        Event::ClientRateLimit,
        Event::AuthThrottled,
        Event::ThrottleFull,
        Event::KvFull,
        Event::ThrottleStoreDown,
        Event::ProxyUntrusted,
        Event::ProxyHeader,
        Event::AuditWrite,
    ];

    /// Its label in `portcullis_connections_refused_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Event::ConnectionLimit => "connection_limit",
            Event::ClientSessionLimit => "client_sessions",
            Event::ClientRateLimit => "client_rate",
            Event::AuthThrottled => "auth_throttled",
            Event::ThrottleFull => "throttle_full",
            Event::KvFull => "kv_full",
            Event::ThrottleStoreDown => "throttle_store_down",
            Event::ProxyUntrusted => "proxy_untrusted",
            Event::ProxyHeader => "proxy_header",
            Event::AuditWrite => "audit_write",
        }
    }

    /// What the summary line calls it.
    fn name(self) -> &'static str {
        match self {
            Event::ConnectionLimit => "connection limit reached",
            Event::ClientSessionLimit => "sessions per client limit reached",
            Event::ClientRateLimit => "new sessions per client limit reached",
            Event::AuthThrottled => "AUTH refused: too many failures from this address",
            Event::ThrottleFull => "AUTH refused: the throttle cannot count this client",
            Event::KvFull => "the key-value store is full",
            Event::ThrottleStoreDown => "AUTH attempts the shared store could not count",
            Event::ProxyUntrusted => "connections from addresses not in proxy_trusted",
            Event::ProxyHeader => "connections without a valid PROXY protocol header",
            Event::AuditWrite => "audit records not written to the file",
        }
    }

    fn limiter(self) -> &'static Occasional {
        &LIMITERS[self as usize]
    }
}

static LIMITERS: [Occasional; Event::ALL.len()] = [const { Occasional::new() }; Event::ALL.len()];

/// `Some(left_out)` when a warning about `event` may be written now, with how many
/// were left out since the last one; `None` when this one is to be left out.
pub(crate) fn admit(event: Event) -> Option<u64> {
    event.limiter().admit(Instant::now())
}

/// Writes one line for each kind of event that left warnings out and has been quiet
/// for an interval since; called every [`INTERVAL`] by the server.
pub(crate) fn flush() {
    let now = Instant::now();
    for event in Event::ALL {
        if let Some(left_out) = event.limiter().overdue(now) {
            warn!(
                suppressed = left_out,
                "{}: {left_out} more like this were not logged",
                event.name()
            );
        }
    }
}

/// One kind of event: when it was last written and how many were left out since.
#[derive(Debug)]
pub(crate) struct Occasional {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last: Option<Instant>,
    left_out: u64,
}

impl Occasional {
    pub(crate) const fn new() -> Self {
        Self {
            state: Mutex::new(State {
                last: None,
                left_out: 0,
            }),
        }
    }

    /// See [`admit`].
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().expect("lock poisoned");
        if state.last.is_some_and(|last| now < last + INTERVAL) {
            state.left_out += 1;
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.left_out))
    }

    /// The count left out, if there is one and the interval since the last line is
    /// over; the count starts again.
    pub(crate) fn overdue(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().expect("lock poisoned");
        let due = state.last.is_none_or(|last| now >= last + INTERVAL);
        if !due || state.left_out == 0 {
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_next_says_how_many_were_left_out() {
        let limiter = Occasional::new();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(limiter.admit(at(0)), Some(0), "the first is written");
        assert_eq!(limiter.admit(at(1)), None);
        assert_eq!(limiter.admit(at(2)), None);
        assert_eq!(
            limiter.overdue(at(3)),
            None,
            "not before the interval is over"
        );
        let later = INTERVAL.as_millis() as u64;
        assert_eq!(limiter.admit(at(later)), Some(2));
        assert_eq!(limiter.admit(at(later + 1)), None);
        assert_eq!(
            limiter.overdue(at(2 * later + 1)),
            Some(1),
            "a burst's tail is reported once it is over"
        );
        assert_eq!(limiter.overdue(at(4 * later)), None, "and only once");
        assert_eq!(limiter.admit(at(4 * later)), Some(0));
    }
}
