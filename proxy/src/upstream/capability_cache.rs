//! What the upstream offers, learned once and kept fresh, so that EHLO replies to
//! clients offer only extensions the upstream can carry, without an upstream round trip
//! per client.
//!
//! How it is learned: a probe session (connect, EHLO, QUIT) at start-up; again whenever
//! the last sighting is older than `upstream.capabilities_refresh`; and every real
//! upstream session that opens refreshes it with what that upstream said after XCLIENT.
//! If the cache is empty when a client says EHLO (upstream slow or down since
//! start-up), the client waits for a probe at most `upstream.capabilities_wait`, and
//! gets what is known then (nothing but what the proxy itself offers, if the probe has
//! not answered); the probe goes on for the clients after it. One probe runs at a time.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use super::{Upstream, UpstreamError, UpstreamSession};
use crate::smtp::capabilities::Capabilities;

/// The last known extensions of the upstream and when they were seen.
#[derive(Debug, Default)]
pub(crate) struct CapabilityCache {
    latest: RwLock<Option<(Capabilities, Instant)>>,
    /// Woken when extensions are learned, or a probe ended without them.
    learned: Notify,
    /// A probe is under way.
    probing: AtomicBool,
}

impl CapabilityCache {
    /// The last known extensions, if any were ever learned.
    pub(crate) fn get(&self) -> Option<Capabilities> {
        self.latest
            .read()
            .expect("lock poisoned")
            .as_ref()
            .map(|(caps, _)| caps.clone())
    }

    /// Records what an upstream session announced.
    pub(crate) fn update(&self, capabilities: &Capabilities) {
        *self.latest.write().expect("lock poisoned") = Some((capabilities.clone(), Instant::now()));
        self.learned.notify_waiters();
    }

    /// The last known extensions; if none are known yet, starts a probe (unless one
    /// runs) and waits for it at most `wait`.
    pub(crate) async fn wait_for(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        hostname: &str,
        wait: Duration,
    ) -> Option<Capabilities> {
        if let Some(known) = self.get() {
            return Some(known);
        }
        let learned = self.learned.notified();
        tokio::pin!(learned);
        learned.as_mut().enable();
        self.start_probe(upstream, hostname);
        if let Some(known) = self.get() {
            return Some(known);
        }
        let _ = tokio::time::timeout(wait, learned).await;
        self.get()
    }

    /// A probe in the background, unless one is under way.
    fn start_probe(self: &Arc<Self>, upstream: &Arc<Upstream>, hostname: &str) {
        if self.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (cache, upstream) = (self.clone(), upstream.clone());
        let hostname = hostname.to_string();
        tokio::spawn(async move {
            if let Err(error) = cache.probe(&upstream, &hostname).await {
                tracing::warn!(%error, "upstream capability probe failed");
            }
            cache.probing.store(false, Ordering::SeqCst);
            cache.learned.notify_waiters();
        });
    }

    /// True if nothing was learned within `max_age`.
    pub(crate) fn is_stale(&self, max_age: std::time::Duration) -> bool {
        self.latest
            .read()
            .expect("lock poisoned")
            .as_ref()
            .is_none_or(|(_, seen)| seen.elapsed() >= max_age)
    }

    /// Opens a session without a client, reads the EHLO reply, and quits.
    pub(crate) async fn probe(
        &self,
        upstream: &Arc<Upstream>,
        hostname: &str,
    ) -> Result<Capabilities, UpstreamError> {
        let session = UpstreamSession::open(upstream, hostname, None).await?;
        let capabilities = session.capabilities().clone();
        self.update(&capabilities);
        session.quit().await;
        Ok(capabilities)
    }
}
