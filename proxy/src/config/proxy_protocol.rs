//! `proxy_protocol`, `proxy_trusted` and `proxy_timeout` of a `[[listener]]`: a load
//! balancer in front of the proxy sends a PROXY protocol header naming the client,
//! and only the balancers listed may.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;

/// Which header versions a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersions {
    /// The text line only.
    V1,
    /// The binary block only.
    V2,
    /// Either.
    Any,
}

/// A listener behind load balancers, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocolConfig {
    /// The versions taken.
    pub versions: ProxyVersions,
    /// The balancers' networks: a connection from anywhere else is closed unread.
    pub trusted: Vec<IpNet>,
    /// How long the header may take to arrive.
    pub timeout: Duration,
}

impl ProxyProtocolConfig {
    /// True if `address` may send a header here.
    pub fn trusts(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.trusted
            .iter()
            .any(|network| network.contains(&address))
    }
}

/// The listener's PROXY protocol keys as written.
#[derive(Debug, Default)]
pub(super) struct RawProxyProtocol {
    pub(super) proxy_protocol: Option<Spanned<ProxyVersions>>,
    pub(super) proxy_trusted: Option<Spanned<Vec<String>>>,
    pub(super) proxy_timeout: Option<Duration>,
}

/// Time for a header by default: a balancer sends it with its first packet.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl RawProxyProtocol {
    /// Validates the keys of listener `index`; `error` names a key and its offset.
    pub(super) fn validate(
        self,
        error: impl Fn(&str, usize, &str) -> ConfigError,
        listener_offset: usize,
    ) -> Result<Option<ProxyProtocolConfig>, ConfigError> {
        let Some(versions) = self.proxy_protocol else {
            if let Some(trusted) = self.proxy_trusted {
                return Err(error(
                    "proxy_trusted",
                    trusted.span().start,
                    "only used with proxy_protocol (\"v1\", \"v2\" or \"any\")",
                ));
            }
            return Ok(None);
        };
        let Some(trusted) = self.proxy_trusted else {
            return Err(error(
                "proxy_protocol",
                versions.span().start,
                "needs proxy_trusted: the load balancers' addresses or networks, e.g. [\"10.0.0.0/8\"]",
            ));
        };
        let offset = trusted.span().start;
        let trusted = trusted
            .into_inner()
            .iter()
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        error(
                            "proxy_trusted",
                            offset,
                            &format!("{entry:?} is not an address or a network (CIDR)"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if trusted.is_empty() {
            return Err(error(
                "proxy_trusted",
                offset,
                "an empty list trusts no one: every connection would be closed",
            ));
        }
        let timeout = self.proxy_timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(error(
                "proxy_timeout",
                listener_offset,
                "must be more than 0s",
            ));
        }
        Ok(Some(ProxyProtocolConfig {
            versions: *versions.get_ref(),
            trusted,
            timeout,
        }))
    }
}
