//! The hosts file, read as the system's resolver reads it for a client's name: the
//! first entry that lists an address gives its name (the first name on that line), so
//! the name is the same from one start to the next — hickory's own hosts lookups
//! answer in no fixed order — and the same name Postfix's smtpd would find.

use std::{collections::HashMap, net::IpAddr, path::Path};

/// Names by address and addresses by name.
#[derive(Debug, Default)]
pub(crate) struct HostsFile {
    names: HashMap<IpAddr, String>,
    addresses: HashMap<String, Vec<IpAddr>>,
}

impl HostsFile {
    /// Reads `path`; `None` (with a warning) if it cannot be read.
    pub(crate) fn read(path: &Path) -> Option<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Some(Self::parse(&text)),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the hosts file");
                None
            }
        }
    }

    /// `address name [alias ...]` lines; `#` starts a comment.
    pub(crate) fn parse(text: &str) -> Self {
        let mut hosts = HostsFile::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let mut words = line.split_whitespace();
            let Some(Ok(address)) = words.next().map(str::parse::<IpAddr>) else {
                continue;
            };
            let address = address.to_canonical();
            for (index, name) in words.enumerate() {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if index == 0 {
                    hosts.names.entry(address).or_insert_with(|| name.clone());
                }
                let listed = hosts.addresses.entry(name).or_default();
                if !listed.contains(&address) {
                    listed.push(address);
                }
            }
        }
        hosts
    }

    /// The name of the first entry listing `address`.
    pub(crate) fn name_of(&self, address: IpAddr) -> Option<&str> {
        self.names.get(&address.to_canonical()).map(String::as_str)
    }

    /// True if an entry gives `name` (any of its names) the address `address`.
    pub(crate) fn confirms(&self, name: &str, address: IpAddr) -> bool {
        self.addresses
            .get(&name.to_ascii_lowercase())
            .is_some_and(|listed| listed.contains(&address.to_canonical()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_entry_names_an_address() {
        let hosts = HostsFile::parse(
            "# comment\n127.0.0.1 localhost\n127.0.0.2\tfirst.test second.test # x\n\
             127.0.0.2 third.test\n::1 localhost ip6-localhost\nbad line\n",
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for _ in 0..3 {
            assert_eq!(hosts.name_of(ip("127.0.0.2")), Some("first.test"));
        }
        assert_eq!(hosts.name_of(ip("::ffff:127.0.0.2")), Some("first.test"));
        assert!(hosts.confirms("THIRD.test", ip("127.0.0.2")));
        assert!(hosts.confirms("second.test", ip("127.0.0.2")));
        assert!(!hosts.confirms("first.test", ip("127.0.0.1")));
        assert_eq!(hosts.name_of(ip("192.0.2.1")), None);
    }
}
