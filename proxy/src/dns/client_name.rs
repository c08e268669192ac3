//! The client's host name as Postfix's own smtpd would find it: the PTR name of the
//! client's address (its *reverse* name) and, if that name resolves back to the address,
//! the *verified* (forward-confirmed) name. The proxy sends both upstream as XCLIENT
//! NAME and REVERSE_NAME, so `reject_unknown_client_hostname`, its Received header and
//! its logs see the real client instead of "unknown".

use std::net::IpAddr;

use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::time::Instant;

use super::{LookupError, Resolver};

/// PTR names tried, in the order given, for the forward confirmation.
const MAX_NAMES: usize = 4;

/// The longest host name Postfix accepts (`VALID_HOSTNAME_LEN`).
const MAX_HOSTNAME: usize = 255;

/// The longest label of a host name.
const MAX_LABEL: usize = 63;

/// What a host-name lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    /// A name that passed.
    Known(String),
    /// No name, for good: no PTR record, no match, or no name Postfix would accept.
    Unavailable,
    /// No name for now: a timeout or a server failure.
    TemporarilyUnavailable,
}

/// The client's reverse and verified names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientName {
    /// The first usable PTR name, whether or not it resolves back (REVERSE_NAME).
    pub reverse: HostName,
    /// A PTR name whose A or AAAA records include the address (NAME).
    pub verified: HostName,
}

impl ClientName {
    /// Both names missing in the same way.
    pub fn neither(status: HostName) -> Self {
        Self {
            reverse: status.clone(),
            verified: status,
        }
    }
}

impl Resolver {
    /// Looks up the PTR names of `ip` (the hosts file's first entry for it, if it has
    /// one, as the system's resolver answers), then the addresses of each (at most
    /// `MAX_NAMES`) until one includes `ip`. The PTR query has the configured
    /// timeout, the forward queries together as long again.
    pub async fn client_name(&self, ip: IpAddr) -> ClientName {
        // IPv4-mapped IPv6 addresses are looked up as the IPv4 address they carry.
        let ip = ip.to_canonical();
        let from_hosts = self.hosts.as_ref().and_then(|hosts| hosts.name_of(ip));
        let names: Vec<String> = match from_hosts {
            Some(name) => vec![name.to_string()],
            None => {
                let reverse_zone = Name::from(ip).to_string();
                match self
                    .lookup(&reverse_zone, RecordType::PTR, self.timeout)
                    .await
                {
                    Ok(records) => records.iter().filter_map(ptr_host_name).collect(),
                    Err(LookupError::NotFound) => Vec::new(),
                    Err(LookupError::Timeout | LookupError::Failure) => {
                        return ClientName::neither(HostName::TemporarilyUnavailable);
                    }
                }
            }
        };
        let Some(first) = names.first() else {
            return ClientName::neither(HostName::Unavailable);
        };
        let reverse = HostName::Known(first.clone());
        let kind = if ip.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        let deadline = Instant::now() + self.timeout;
        let mut verified = HostName::Unavailable;
        for name in names.iter().take(MAX_NAMES) {
            if self
                .hosts
                .as_ref()
                .is_some_and(|hosts| hosts.confirms(name, ip))
            {
                verified = HostName::Known(name.clone());
                break;
            }
            let budget = deadline.saturating_duration_since(Instant::now());
            match self.lookup(name, kind, budget).await {
                Ok(records) if records.iter().any(|data| address(data) == Some(ip)) => {
                    verified = HostName::Known(name.clone());
                    break;
                }
                Ok(_) | Err(LookupError::NotFound) => {}
                Err(LookupError::Timeout | LookupError::Failure) => {
                    verified = HostName::TemporarilyUnavailable;
                }
            }
        }
        ClientName { reverse, verified }
    }
}

/// A PTR record's name without the root dot, if Postfix would accept it as a host
/// name.
fn ptr_host_name(data: &RData) -> Option<String> {
    let RData::PTR(ptr) = data else {
        return None;
    };
    let name = ptr.0.to_ascii();
    let name = name.strip_suffix('.').unwrap_or(&name);
    is_valid_host_name(name).then(|| name.to_ascii_lowercase())
}

fn address(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// Postfix's `valid_hostname()`: at most 255 octets; labels of 1 to 63 letters, digits,
/// hyphens and underscores, not starting or ending with a hyphen; not all digits and
/// dots (that is an address, not a name). XCLIENT NAME gets a 501 from Postfix for
/// anything else, which would fail every session of that client.
pub(super) fn is_valid_host_name(name: &str) -> bool {
    let label_ok = |label: &str| {
        (1..=MAX_LABEL).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    name.len() <= MAX_HOSTNAME
        && name.split('.').all(label_ok)
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_resolver::proto::rr::rdata::{A, PTR};

    use super::*;

    #[test]
    fn host_names_are_checked_as_postfix_does() {
        let long_label = "a".repeat(64);
        let long_name = format!("{}.example", "a.".repeat(125));
        let cases: &[(&str, bool)] = &[
            ("mail.example.com", true),
            ("MX-1.Example.COM", true),
            ("dsl_pool.isp.example", true),
            ("localhost", true),
            ("1a.example", true),
            ("", false),
            ("mail..example.com", false),
            (".example.com", false),
            ("-mx.example.com", false),
            ("mx-.example.com", false),
            ("mail example.com", false),
            ("mail.exämple.com", false),
            ("192.0.2.1", false),
            ("12345", false),
            (&long_label, false),
            (&long_name, false),
        ];
        for (name, valid) in cases {
            assert_eq!(is_valid_host_name(name), *valid, "{name:?}");
        }
    }

    #[test]
    fn ptr_names_lose_the_root_dot_and_invalid_ones_are_dropped() {
        let ptr = |name: &str| {
            let labels = name.trim_end_matches('.').split('.').map(str::as_bytes);
            RData::PTR(PTR(Name::from_labels(labels).unwrap()))
        };
        assert_eq!(
            ptr_host_name(&ptr("Mail.Example.com.")).as_deref(),
            Some("mail.example.com")
        );
        assert_eq!(ptr_host_name(&ptr("-bad.example.")), None);
        assert_eq!(ptr_host_name(&ptr("bad name.example.")), None);
        assert_eq!(ptr_host_name(&ptr("192.0.2.1.")), None);
        assert_eq!(ptr_host_name(&RData::A(A(Ipv4Addr::LOCALHOST))), None);
    }

    #[tokio::test]
    async fn without_a_resolver_the_names_are_temporarily_unavailable() {
        let name = Resolver::offline()
            .client_name(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
            .await;
        assert_eq!(name, ClientName::neither(HostName::TemporarilyUnavailable));
    }
}
