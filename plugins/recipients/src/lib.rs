//! `recipients`: decides at RCPT which recipients this MX accepts.
//!
//! - `domains`: recipients in these domains are accepted;
//! - `addresses`: these exact addresses are accepted too (any domain);
//! - `aliases`: a table from an address to the address it is rewritten to (the target
//!   must itself be acceptable);
//! - `max_recipients`: recipients per message; past it 452 4.5.3 (the client sends the
//!   rest in another transaction).
//! - `max_per_session`: recipients this plugin lets through in one session, over all
//!   its transactions; past it 452 4.5.3 (the client goes on in another session). It
//!   is counted in the session's store, so the plugin stays shareable.
//!
//! Everything else gets `550 5.1.1`. `<Postmaster>` is always accepted (RFC 5321
//! §4.5.1). Comparisons ignore case.

use std::{
    collections::{BTreeMap, BTreeSet},
    num::NonZeroUsize,
};

use portcullis_sdk::{
    Config, Envelope, Hooks, Param, PathOutcome, Plugin, Session, Verdict, session_store,
};
use serde::Deserialize;

/// The `config` table, as the operator writes it (an unknown key is an error).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    max_recipients: Option<NonZeroUsize>,
    max_per_session: Option<NonZeroUsize>,
}

/// The plugin's configuration, read once at start-up. Sets, so a long list of
/// domains or addresses costs a lookup, not a scan, per recipient.
pub struct Recipients {
    domains: BTreeSet<String>,
    addresses: BTreeSet<String>,
    aliases: BTreeMap<String, String>,
    max_recipients: usize,
    max_per_session: Option<usize>,
}

/// Lower-cased (comparisons ignore case).
fn lowercase(list: Vec<String>) -> BTreeSet<String> {
    list.iter().map(|s| s.to_ascii_lowercase()).collect()
}

impl Recipients {
    fn accepts(&self, address: &str) -> bool {
        let domain = address.rsplit_once('@').map(|(_, domain)| domain);
        address.eq_ignore_ascii_case("postmaster")
            || self.addresses.contains(address)
            || domain.is_some_and(|d| self.domains.contains(d))
    }
}

impl Plugin for Recipients {
    fn init(config: &Config) -> Result<(Self, Hooks), String> {
        let settings: Settings = config.parse()?;
        let plugin = Recipients {
            domains: lowercase(settings.domains),
            addresses: lowercase(settings.addresses),
            aliases: settings
                .aliases
                .into_iter()
                .map(|(from, to)| (from.to_ascii_lowercase(), to.to_ascii_lowercase()))
                .collect(),
            max_recipients: settings
                .max_recipients
                .map_or(usize::MAX, NonZeroUsize::get),
            max_per_session: settings.max_per_session.map(NonZeroUsize::get),
        };
        Ok((plugin, Hooks::RCPT | Hooks::SHAREABLE))
    }

    fn rcpt(
        &mut self,
        _session: &Session,
        envelope: &Envelope,
        recipient: &str,
        _params: &[Param],
    ) -> PathOutcome {
        if envelope.recipient_count() >= self.max_recipients {
            return Verdict::tempfail(452, "4.5.3", "Too many recipients for one message").into();
        }
        if let Some(limit) = self.max_per_session
            && session_store::incr(PER_SESSION_KEY, 0) >= limit as i64
        {
            return Verdict::tempfail(452, "4.5.3", "Too many recipients for this session").into();
        }
        let address = recipient.to_ascii_lowercase();
        let alias = self.aliases.get(&address).cloned();
        if !self.accepts(alias.as_deref().unwrap_or(&address)) {
            return Verdict::reject(
                550,
                "5.1.1",
                format!("<{recipient}>: Recipient address rejected: not accepted here"),
            )
            .into();
        }
        if self.max_per_session.is_some() {
            session_store::incr(PER_SESSION_KEY, 1);
        }
        match alias {
            Some(target) => PathOutcome::rewrite(target),
            None => PathOutcome::default(),
        }
    }
}

/// The session store's key for the recipients let through so far in the session.
const PER_SESSION_KEY: &str = "recipients";

portcullis_sdk::export!(Recipients);

#[cfg(test)]
mod tests {
    use portcullis_sdk::{Hooks, Verdict, testing::Harness};

    use super::Recipients;

    const CONFIG: &str = r#"
        domains = ["example.com", "Example.ORG"]
        addresses = ["partner@elsewhere.test"]
        max_recipients = 3
        [aliases]
        "sales@example.com" = "alice@example.org"
        "info@example.com" = "someone@outside.test"
    "#;

    fn code(verdict: &Verdict) -> u16 {
        match verdict {
            Verdict::Reject(reply) | Verdict::Tempfail(reply) => reply.code,
            _ => 250,
        }
    }

    #[test]
    fn accepts_configured_domains_and_addresses() {
        let mut harness = Harness::<Recipients>::new(CONFIG).unwrap();
        harness.mail("sender@origin.test");
        let cases = [
            ("bob@example.com", 250),
            ("BOB@EXAMPLE.ORG", 250),
            ("partner@elsewhere.test", 250),
            ("other@elsewhere.test", 550),
            ("Postmaster", 250),
        ];
        for (recipient, expected) in cases {
            harness.mail("sender@origin.test");
            assert_eq!(
                code(&harness.rcpt(recipient).verdict),
                expected,
                "{recipient}"
            );
        }
    }

    #[test]
    fn aliases_rewrite_and_are_checked_after_rewriting() {
        let mut harness = Harness::<Recipients>::new(CONFIG).unwrap();
        harness.mail("sender@origin.test");
        let outcome = harness.rcpt("Sales@Example.com");
        assert_eq!(
            outcome.rewrite_address.as_deref(),
            Some("alice@example.org")
        );
        assert_eq!(harness.envelope().recipients(), ["alice@example.org"]);
        let outcome = harness.rcpt("info@example.com");
        assert_eq!(
            code(&outcome.verdict),
            550,
            "an alias to a foreign address is not an open relay"
        );
    }

    #[test]
    fn caps_recipients_per_message() {
        let mut harness = Harness::<Recipients>::new(CONFIG).unwrap();
        harness.mail("sender@origin.test");
        for n in 0..3 {
            assert_eq!(
                code(&harness.rcpt(&format!("r{n}@example.com")).verdict),
                250
            );
        }
        let outcome = harness.rcpt("r4@example.com");
        assert_eq!(
            outcome.verdict,
            Verdict::tempfail(452, "4.5.3", "Too many recipients for one message")
        );
        harness.mail("sender@origin.test");
        assert_eq!(
            code(&harness.rcpt("r5@example.com").verdict),
            250,
            "a new transaction starts from zero"
        );
    }

    #[test]
    fn caps_recipients_per_session_across_transactions_in_the_session_store() {
        let config = "domains = [\"example.com\"]\nmax_per_session = 3";
        let mut harness = Harness::<Recipients>::new(config).unwrap();
        assert!(
            harness.hooks().contains(Hooks::SHAREABLE),
            "the count is in the session store, not the instance"
        );
        harness.mail("sender@origin.test");
        assert_eq!(code(&harness.rcpt("r0@example.com").verdict), 250);
        assert_eq!(code(&harness.rcpt("nobody@elsewhere.test").verdict), 550);
        assert_eq!(code(&harness.rcpt("r1@example.com").verdict), 250);
        harness.mail("sender@origin.test");
        assert_eq!(code(&harness.rcpt("r2@example.com").verdict), 250);
        assert_eq!(
            harness.rcpt("r3@example.com").verdict,
            Verdict::tempfail(452, "4.5.3", "Too many recipients for this session"),
            "the count goes on over transactions; refused recipients do not count"
        );
        harness.next_session("second", "192.0.2.7");
        harness.mail("sender@origin.test");
        assert_eq!(
            code(&harness.rcpt("r0@example.com").verdict),
            250,
            "a new session starts from zero"
        );
    }

    #[test]
    fn one_shared_instance_serves_sessions_alike() {
        let mut harness = Harness::<Recipients>::new(CONFIG).unwrap();
        assert!(harness.hooks().contains(Hooks::SHAREABLE));
        harness.mail("sender@origin.test");
        for n in 0..3 {
            harness.rcpt(&format!("r{n}@example.com"));
        }
        harness.next_session("second", "192.0.2.7");
        harness.mail("sender@origin.test");
        assert_eq!(
            code(&harness.rcpt("r0@example.com").verdict),
            250,
            "the cap counts this session's message, not the last session's"
        );
        assert_eq!(code(&harness.rcpt("x@elsewhere.test").verdict), 550);
    }

    #[test]
    fn bad_configuration_is_refused_naming_the_key() {
        let cases = [
            ("domains = 3", "domains"),
            ("max_recipients = 0", "max_recipients"),
            ("[aliases]\na = 1", "a = 1"),
            ("domainz = [\"example.com\"]", "unknown field `domainz`"),
        ];
        for (config, named) in cases {
            let error = Harness::<Recipients>::new(config).err().unwrap();
            assert!(error.contains(named), "{config}: {error}");
        }
    }
}
