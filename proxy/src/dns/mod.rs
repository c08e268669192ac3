//! DNS lookups through hickory's resolver, for plugins and for the client's host name
//! (`client_name.rs`): the system's nameservers, or those of `[dns] nameservers` (so
//! tests and operators can point the proxy at a local resolver), each query bounded by
//! `[dns] timeout`. Answers are cached by the resolver for their TTL.

mod client_name;
mod hosts;

use std::{net::IpAddr, time::Duration};

use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider},
    proto::rr::{Name, RData, RecordType},
};

use crate::config::DnsConfig;
pub use client_name::{ClientName, HostName};

/// Why a lookup gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    /// NXDOMAIN, or no records of that type.
    NotFound,
    /// No answer within the timeout.
    Timeout,
    /// Anything else (no resolver, a server failure, a malformed name).
    Failure,
}

/// The resolver the whole proxy shares.
pub struct Resolver {
    inner: Option<TokioResolver>,
    timeout: Duration,
    /// Consulted first for client names (`dns.hosts_file`).
    hosts: Option<hosts::HostsFile>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("online", &self.inner.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Resolver {
    /// A resolver as configured. Without nameservers in the config the system's are
    /// used; if those cannot be read, every lookup fails (and says so in the log).
    pub fn new(config: &DnsConfig) -> Self {
        let builder = if config.nameservers.is_empty() {
            TokioResolver::builder_tokio()
                .inspect_err(|error| tracing::warn!(%error, "no system DNS configuration; DNS lookups will fail"))
                .ok()
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|address| {
                    let mut server = NameServerConfig::udp_and_tcp(address.ip());
                    for connection in &mut server.connections {
                        connection.port = address.port();
                    }
                    server
                })
                .collect();
            Some(TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            ))
        };
        let inner = builder.and_then(|mut builder| {
            let options = builder.options_mut();
            options.timeout = config.timeout;
            options.attempts = 1;
            // Configured nameservers are the whole truth; the system's configuration
            // includes /etc/hosts, as the system's own lookups do.
            if !config.nameservers.is_empty() {
                options.use_hosts_file = ResolveHosts::Never;
            }
            builder
                .build()
                .inspect_err(|error| tracing::warn!(%error, "cannot build the DNS resolver"))
                .ok()
        });
        let hosts_file = config
            .hosts_file
            .clone()
            .or_else(|| config.nameservers.is_empty().then(|| "/etc/hosts".into()));
        Self {
            inner,
            timeout: config.timeout,
            hosts: hosts_file.as_deref().and_then(hosts::HostsFile::read),
        }
    }

    /// A resolver that never touches the network: every lookup fails (for replay).
    pub fn offline() -> Self {
        Self {
            inner: None,
            timeout: Duration::ZERO,
            hosts: None,
        }
    }

    /// The records of `kind` for `name` (treated as fully qualified), waiting at most
    /// the configured timeout or `budget`, whichever is shorter.
    pub async fn lookup(
        &self,
        name: &str,
        kind: RecordType,
        budget: Duration,
    ) -> Result<Vec<RData>, LookupError> {
        let resolver = self.inner.as_ref().ok_or(LookupError::Failure)?;
        let mut name = Name::from_utf8(name).map_err(|_| LookupError::Failure)?;
        name.set_fqdn(true);
        let wait = self.timeout.min(budget);
        let lookup = tokio::time::timeout(wait, resolver.lookup(name, kind))
            .await
            .map_err(|_| LookupError::Timeout)?;
        match lookup {
            Ok(lookup) => {
                let records: Vec<RData> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == kind)
                    .map(|r| r.data.clone())
                    .collect();
                if records.is_empty() {
                    Err(LookupError::NotFound)
                } else {
                    Ok(records)
                }
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(_))) => Err(LookupError::NotFound),
            Err(NetError::Timeout) => Err(LookupError::Timeout),
            Err(error) => {
                tracing::debug!(%error, "DNS lookup failed");
                Err(LookupError::Failure)
            }
        }
    }

    /// The name to look up for a PTR query of `ip`, or `None` if it is no address.
    pub fn reverse_name(ip: &str) -> Option<String> {
        ip.parse::<IpAddr>()
            .ok()
            .map(|ip| Name::from(ip).to_string())
    }
}

/// A record's data as plugins get it: addresses and names as text, TXT strings joined.
pub fn to_text(data: &RData) -> Option<String> {
    match data {
        RData::A(a) => Some(a.0.to_string()),
        RData::AAAA(aaaa) => Some(aaaa.0.to_string()),
        RData::TXT(txt) => Some(
            txt.txt_data
                .iter()
                .map(|part| String::from_utf8_lossy(part))
                .collect(),
        ),
        RData::PTR(ptr) => Some(ptr.0.to_string()),
        _ => None,
    }
}
