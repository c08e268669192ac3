//! `dnsbl`: at connect, looks the client's address up in DNS blocklists (RFC 5782) and
//! refuses a listed client with `554 5.7.1`, quoting the list's TXT reason.
//!
//! - `zones`: the blocklist zones, asked in order; the first listing decides;
//! - `cache_seconds`: how long an answer (listed or not) is kept in the key-value
//!   store, shared by all sessions (default 300);
//! - `on_dns_error`: `"continue"` (default: a list that does not answer lets the client
//!   through) or `"tempfail"` (`451 4.7.1`, try again later);
//! - `skip`: client addresses never looked up (e.g. your own relays).
//!
//! An address is listed when the zone has an A record in 127.0.0.0/8 for it (other
//! answers, like the 127.255.255.x error codes of some lists, do not count).

use std::time::Duration;

use portcullis_sdk::{Config, Hooks, Plugin, Session, Verdict, dns, kv, log};
use serde::Deserialize;

/// The plugin's configuration.
pub struct Dnsbl {
    zones: Vec<String>,
    cache: Duration,
    tempfail_on_error: bool,
    skip: Vec<String>,
}

/// What a zone says about an address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Listing {
    Listed(String),
    Clean,
    Unknown,
}

/// The `config` table, as the operator writes it (an unknown key is an error).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    zones: Vec<String>,
    #[serde(default = "default_cache_seconds")]
    cache_seconds: u64,
    #[serde(default)]
    on_dns_error: OnDnsError,
    #[serde(default)]
    skip: Vec<String>,
}

fn default_cache_seconds() -> u64 {
    300
}

/// What a zone that does not answer means.
#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum OnDnsError {
    #[default]
    Continue,
    Tempfail,
}

/// Names or addresses lower-cased, without a final dot.
fn names(list: Vec<String>) -> Vec<String> {
    list.iter()
        .map(|s| s.trim_end_matches('.').to_ascii_lowercase())
        .collect()
}

/// The name to look up for `ip` in `zone`: reversed octets, or reversed nibbles for
/// IPv6 (RFC 5782 §2.1, §2.4). `None` if `ip` is not an address.
fn query_name(ip: &str, zone: &str) -> Option<String> {
    if let Ok(v4) = ip.parse::<std::net::Ipv4Addr>() {
        let [a, b, c, d] = v4.octets();
        return Some(format!("{d}.{c}.{b}.{a}.{zone}"));
    }
    let v6 = ip.parse::<std::net::Ipv6Addr>().ok()?;
    let nibbles: Vec<String> = v6
        .octets()
        .iter()
        .rev()
        .flat_map(|byte| [byte & 0xf, byte >> 4])
        .map(|nibble| format!("{nibble:x}"))
        .collect();
    Some(format!("{}.{zone}", nibbles.join(".")))
}

impl Dnsbl {
    /// Asks `zone` about `ip`, through the shared cache.
    fn check(&self, ip: &str, zone: &str) -> Listing {
        let key = format!("{zone}/{ip}");
        // The cache is only a cache: a store that cannot answer means asking DNS.
        if let Ok(Some(cached)) = kv::get(&key) {
            return match cached.split_first() {
                Some((b'L', reason)) => Listing::Listed(String::from_utf8_lossy(reason).into()),
                _ => Listing::Clean,
            };
        }
        let Some(name) = query_name(ip, zone) else {
            return Listing::Clean;
        };
        let listing = match dns::a(&name) {
            Ok(addresses) if addresses.iter().any(|a| is_listing(a)) => {
                let reason = dns::txt(&name)
                    .ok()
                    .and_then(|texts| texts.into_iter().next())
                    .unwrap_or_else(|| format!("listed in {zone}"));
                Listing::Listed(reason)
            }
            Ok(_) | Err(dns::DnsError::NotFound) => Listing::Clean,
            Err(error) => {
                log::warn(&format!("{zone} did not answer for {ip}: {error:?}"));
                return Listing::Unknown;
            }
        };
        let value = match &listing {
            Listing::Listed(reason) => [b"L", reason.as_bytes()].concat(),
            _ => b"C".to_vec(),
        };
        if let Err(error) = kv::set(&key, &value, Some(self.cache)) {
            log::debug(&format!("{zone} answer for {ip} not cached: {error}"));
        }
        listing
    }
}

/// 127.0.0.0/8 except the 127.255.255.0/24 error codes.
fn is_listing(address: &str) -> bool {
    address.starts_with("127.") && !address.starts_with("127.255.255.")
}

/// Keeps the reason printable and short enough for a reply line.
fn sanitize(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect()
}

impl Plugin for Dnsbl {
    fn init(config: &Config) -> Result<(Self, Hooks), String> {
        let settings: Settings = config.parse()?;
        let zones = names(settings.zones);
        if zones.is_empty() {
            return Err("zones must list at least one blocklist zone".into());
        }
        let plugin = Dnsbl {
            zones,
            cache: Duration::from_secs(settings.cache_seconds),
            tempfail_on_error: settings.on_dns_error == OnDnsError::Tempfail,
            skip: names(settings.skip),
        };
        Ok((plugin, Hooks::CONNECT | Hooks::SHAREABLE))
    }

    fn connect(&mut self, session: &Session) -> Verdict {
        let ip = session.client_ip.as_str();
        if self.skip.iter().any(|s| s == ip) {
            return Verdict::Continue;
        }
        for zone in &self.zones {
            match self.check(ip, zone) {
                Listing::Listed(reason) => {
                    log::info(&format!("{ip} is listed in {zone}: {reason}"));
                    return Verdict::reject(
                        554,
                        "5.7.1",
                        format!(
                            "Service unavailable; client [{ip}] blocked using {zone}; {}",
                            sanitize(&reason)
                        ),
                    );
                }
                Listing::Unknown if self.tempfail_on_error => {
                    return Verdict::tempfail(
                        451,
                        "4.7.1",
                        format!("Cannot check [{ip}] against {zone}; try again later"),
                    );
                }
                Listing::Clean | Listing::Unknown => {}
            }
        }
        Verdict::Continue
    }
}

portcullis_sdk::export!(Dnsbl);

#[cfg(test)]
mod tests {
    use portcullis_sdk::{
        Verdict,
        dns::DnsError,
        testing::{Harness, dns_answer, reset},
    };

    use super::{Dnsbl, query_name};

    const CONFIG: &str = r#"zones = ["bl.test", "second.test"]
        skip = ["192.0.2.99"]"#;

    fn verdict_for(config: &str, ip: &str) -> Verdict {
        let mut harness = Harness::<Dnsbl>::new(config).unwrap();
        harness.session_mut().client_ip = ip.into();
        harness.connect()
    }

    #[test]
    fn query_names_reverse_the_address() {
        assert_eq!(
            query_name("192.0.2.1", "bl.test").unwrap(),
            "1.2.0.192.bl.test"
        );
        assert_eq!(
            query_name("2001:db8::1", "bl.test").unwrap(),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
        );
        assert!(query_name("not an ip", "bl.test").is_none());
    }

    #[test]
    fn a_listed_client_is_refused_with_the_zone_reason() {
        reset();
        dns_answer("a", "1.2.0.192.second.test", Ok(vec!["127.0.0.2".into()]));
        dns_answer(
            "txt",
            "1.2.0.192.second.test",
            Ok(vec!["Spam source\r\n, see x".into()]),
        );
        assert_eq!(
            verdict_for(CONFIG, "192.0.2.1"),
            Verdict::reject(
                554,
                "5.7.1",
                "Service unavailable; client [192.0.2.1] blocked using second.test; Spam source, see x"
            )
        );
        assert_eq!(verdict_for(CONFIG, "192.0.2.2"), Verdict::Continue);
        assert_eq!(verdict_for(CONFIG, "192.0.2.99"), Verdict::Continue);
    }

    #[test]
    fn answers_are_cached_in_the_store() {
        reset();
        dns_answer("a", "1.2.0.192.bl.test", Ok(vec!["127.0.0.2".into()]));
        assert!(matches!(
            verdict_for(CONFIG, "192.0.2.1"),
            Verdict::Reject(_)
        ));
        // The list changed its mind, but the cached answer holds for cache_seconds.
        dns_answer("a", "1.2.0.192.bl.test", Err(DnsError::NotFound));
        assert!(matches!(
            verdict_for(CONFIG, "192.0.2.1"),
            Verdict::Reject(_)
        ));
        assert_eq!(
            verdict_for(&format!("{CONFIG}\ncache_seconds = 0"), "192.0.2.3"),
            Verdict::Continue
        );
    }

    #[test]
    fn error_codes_and_dns_failures_follow_the_policy() {
        reset();
        dns_answer("a", "1.2.0.192.bl.test", Ok(vec!["127.255.255.254".into()]));
        dns_answer("a", "5.2.0.192.bl.test", Err(DnsError::Timeout));
        assert_eq!(verdict_for(CONFIG, "192.0.2.1"), Verdict::Continue);
        assert_eq!(verdict_for(CONFIG, "192.0.2.5"), Verdict::Continue);
        let strict = format!("{CONFIG}\non_dns_error = \"tempfail\"");
        assert!(matches!(
            verdict_for(&strict, "192.0.2.5"),
            Verdict::Tempfail(_)
        ));
    }

    #[test]
    fn bad_configuration_is_refused() {
        for config in [
            "",
            "zones = []",
            "zones = [\"a\"]\non_dns_error = \"x\"",
            "zones = [\"a\"]\ncache_seconds = -1",
        ] {
            assert!(Harness::<Dnsbl>::new(config).is_err(), "{config}");
        }
    }
}
