//! What the upstream offers, learned once and kept fresh, so that EHLO replies to
//! clients offer only extensions the upstream can carry, without an upstream round trip
//! per client.
//!
//! How it is learned: a probe session (connect, EHLO, QUIT) at start-up; again whenever
//! the last sighting is older than `upstream.capabilities_refresh`; and every real
//! upstream session that opens refreshes it with what that upstream said after XCLIENT.
//! If the cache is empty when a client says EHLO (upstream down since start-up), the
//! session probes once inline; if that fails too, only basic SMTP is offered.

use std::sync::RwLock;

use tokio::time::Instant;

use super::{UpstreamError, UpstreamSession};
use crate::{config::UpstreamConfig, smtp::capabilities::Capabilities};

/// The last known extensions of the upstream and when they were seen.
#[derive(Debug, Default)]
pub struct CapabilityCache {
    latest: RwLock<Option<(Capabilities, Instant)>>,
}

impl CapabilityCache {
    /// The last known extensions, if any were ever learned.
    pub fn get(&self) -> Option<Capabilities> {
        self.latest
            .read()
            .expect("lock poisoned")
            .as_ref()
            .map(|(caps, _)| caps.clone())
    }

    /// Records what an upstream session announced.
    pub fn update(&self, capabilities: &Capabilities) {
        *self.latest.write().expect("lock poisoned") = Some((capabilities.clone(), Instant::now()));
    }

    /// True if nothing was learned within `max_age`.
    pub fn is_stale(&self, max_age: std::time::Duration) -> bool {
        self.latest
            .read()
            .expect("lock poisoned")
            .as_ref()
            .is_none_or(|(_, seen)| seen.elapsed() >= max_age)
    }

    /// Opens a session without a client, reads the EHLO reply, and quits.
    pub async fn probe(
        &self,
        config: &UpstreamConfig,
        address: &str,
        hostname: &str,
    ) -> Result<Capabilities, UpstreamError> {
        let session = UpstreamSession::open(config, address, hostname, None).await?;
        let capabilities = session.capabilities().clone();
        self.update(&capabilities);
        session.quit().await;
        Ok(capabilities)
    }
}
