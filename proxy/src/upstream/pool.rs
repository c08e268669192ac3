//! Idle upstream sessions kept for later client sessions (`[upstream.reuse]`), like
//! Postfix's own SMTP connection cache: a client session that ends outside a
//! transaction gives its upstream session back instead of QUITting it, and the next
//! client session takes it. Only sessions that name no client are kept: a PROXY header
//! or an XCLIENT names one client for the whole upstream session (config validation
//! refuses PROXY with reuse; XCLIENT sessions are simply never given back), and one
//! that carried a client's AUTH (passthrough) is closed too. A kept session that the upstream closed meanwhile, or that idled past
//! `idle_timeout`, is never handed out.

use std::sync::Mutex;

use tokio::time::Instant;

use super::UpstreamSession;
use crate::config::ReuseConfig;

/// The idle upstream sessions, newest last.
#[derive(Debug)]
pub(crate) struct SessionPool {
    idle: Mutex<Vec<(UpstreamSession, Instant)>>,
    reuse: ReuseConfig,
    /// A reload replaced the upstream: sessions given back are not kept.
    closed: std::sync::atomic::AtomicBool,
}

impl SessionPool {
    /// An empty pool with these limits (reuse may be off).
    pub(crate) fn new(reuse: ReuseConfig) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            reuse,
            closed: Default::default(),
        }
    }

    /// The newest idle session that is still usable, if any.
    pub(crate) fn take(&self) -> Option<UpstreamSession> {
        let mut idle = self.idle.lock().expect("lock poisoned");
        while let Some((session, since)) = idle.pop() {
            if since.elapsed() < self.reuse.idle_timeout && !session.is_stale() {
                return Some(session);
            }
        }
        None
    }

    /// Offers a session that finished outside a transaction. Returns it when the pool
    /// does not keep it; the caller then QUITs it.
    pub(crate) fn give_back(&self, session: UpstreamSession) -> Option<UpstreamSession> {
        if !self.reuse.enabled()
            || self.closed.load(std::sync::atomic::Ordering::Relaxed)
            || session.uses() >= self.reuse.max_uses
            || session.is_identified()
            || session.is_stale()
        {
            return Some(session);
        }
        let mut idle = self.idle.lock().expect("lock poisoned");
        if idle.len() >= self.reuse.max_idle {
            return Some(session);
        }
        idle.push((session, Instant::now()));
        None
    }

    /// Removes the sessions idle for longer than the timeout (all of them with
    /// `everything`, at shutdown), for the caller to QUIT.
    pub(crate) fn remove_expired(&self, everything: bool) -> Vec<UpstreamSession> {
        let mut idle = self.idle.lock().expect("lock poisoned");
        let (expired, kept): (Vec<_>, Vec<_>) = idle
            .drain(..)
            .partition(|(_, since)| everything || since.elapsed() >= self.reuse.idle_timeout);
        *idle = kept;
        expired.into_iter().map(|(session, _)| session).collect()
    }

    /// Keeps no session from now on (a reload replaced the upstream or its
    /// settings): the idle ones are returned for the caller to QUIT.
    pub(crate) fn close(&self) -> Vec<UpstreamSession> {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.remove_expired(true)
    }

    /// How often the reaper should look for expired sessions.
    pub(crate) fn reap_interval(&self) -> std::time::Duration {
        (self.reuse.idle_timeout / 2).clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(5),
        )
    }
}
