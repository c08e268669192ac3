//! The upstream as sessions reach it.

use crate::{config::UpstreamConfig, tls::client::UpstreamTls};

/// The upstream as every session reaches it: where, how (its configuration), and the
/// TLS connector start-up built for it.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// `host:port` (the development upstream's address if that is used).
    pub address: String,
    /// `[upstream]`.
    pub config: UpstreamConfig,
    /// `None` unless `upstream.tls` asks for TLS.
    pub(super) tls: Option<UpstreamTls>,
}

impl Upstream {
    /// The upstream at `address`; `tls` is the connector `config.tls` asks for.
    pub(crate) fn new(address: String, config: UpstreamConfig, tls: Option<UpstreamTls>) -> Self {
        Self {
            address,
            config,
            tls,
        }
    }
}
