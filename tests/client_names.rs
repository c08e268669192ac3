//! The client-name lookup behind XCLIENT NAME and REVERSE_NAME, against a DNS server on
//! loopback. The tests' clients all connect from loopback addresses, whose names the
//! resolver answers itself ("localhost", RFC 6761), so the outcomes for real client
//! addresses are checked here through the proxy's resolver directly; `relay/` and
//! `postfix.rs` check what reaches the upstream.

mod common;

use std::{net::IpAddr, time::Duration};

use common::dns::DnsServer;
use portcullis::{
    config::DnsConfig,
    dns::{ClientName, HostName, Resolver},
};

fn resolver(server: &DnsServer) -> Resolver {
    Resolver::new(&DnsConfig {
        nameservers: vec![server.address],
        timeout: Duration::from_millis(300),
        hosts_file: None,
    })
}

fn zone() -> DnsServer {
    DnsServer::start(
        vec![
            // Forward-confirmed.
            ("10.2.0.192.in-addr.arpa", "PTR", "mx.example.org."),
            ("mx.example.org", "A", "192.0.2.10"),
            // A PTR name that resolves elsewhere.
            ("11.2.0.192.in-addr.arpa", "PTR", "forged.example.org."),
            ("forged.example.org", "A", "198.51.100.1"),
            // Two PTR names; the second resolves back.
            ("12.2.0.192.in-addr.arpa", "PTR", "old.example.org."),
            ("12.2.0.192.in-addr.arpa", "PTR", "new.example.org."),
            ("new.example.org", "A", "192.0.2.12"),
            // A PTR name Postfix would refuse as a host name.
            ("13.2.0.192.in-addr.arpa", "PTR", "192.0.2.13."),
            // A PTR name whose address lookup is never answered.
            ("14.2.0.192.in-addr.arpa", "PTR", "slow.silent.test."),
            // IPv6, forward-confirmed by AAAA.
            (
                "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
                "PTR",
                "v6.example.org.",
            ),
            ("v6.example.org", "AAAA", "2001:db8::a"),
            // 192.0.2.20 has no PTR record.
        ],
        "silent.test",
    )
}

#[tokio::test]
async fn names_are_forward_confirmed_as_postfix_would() {
    let server = zone();
    let resolver = resolver(&server);
    let known = |name: &str| HostName::Known(name.into());
    let name = |reverse, verified| ClientName { reverse, verified };
    let cases = [
        (
            "192.0.2.10",
            name(known("mx.example.org"), known("mx.example.org")),
        ),
        (
            "192.0.2.11",
            name(known("forged.example.org"), HostName::Unavailable),
        ),
        (
            "192.0.2.12",
            name(known("old.example.org"), known("new.example.org")),
        ),
        ("192.0.2.13", ClientName::neither(HostName::Unavailable)),
        (
            "192.0.2.14",
            name(known("slow.silent.test"), HostName::TemporarilyUnavailable),
        ),
        ("192.0.2.20", ClientName::neither(HostName::Unavailable)),
        (
            "2001:db8::a",
            name(known("v6.example.org"), known("v6.example.org")),
        ),
        (
            "::ffff:192.0.2.10",
            name(known("mx.example.org"), known("mx.example.org")),
        ),
    ];
    for (address, expected) in cases {
        let ip: IpAddr = address.parse().unwrap();
        assert_eq!(resolver.client_name(ip).await, expected, "{address}");
    }
    let queries = server.queries();
    assert!(
        queries.contains(&"AAAA v6.example.org.".to_string()),
        "{queries:?}"
    );
}

#[tokio::test]
async fn loopback_clients_are_localhost_without_a_query() {
    let server = zone();
    let resolver = resolver(&server);
    let localhost = HostName::Known("localhost".into());
    assert_eq!(
        resolver.client_name("127.0.0.1".parse().unwrap()).await,
        ClientName::neither(localhost.clone())
    );
    assert_eq!(
        resolver.client_name("127.0.0.2".parse().unwrap()).await,
        ClientName {
            reverse: localhost,
            verified: HostName::Unavailable
        }
    );
    assert!(server.queries().is_empty(), "{:?}", server.queries());
}

#[tokio::test]
async fn an_unanswered_ptr_query_makes_both_names_temporarily_unavailable() {
    // Every name is "silent": the server never answers.
    let server = DnsServer::start(Vec::new(), "");
    let started = std::time::Instant::now();
    assert_eq!(
        resolver(&server)
            .client_name("192.0.2.10".parse().unwrap())
            .await,
        ClientName::neither(HostName::TemporarilyUnavailable)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.queries(), ["PTR 10.2.0.192.in-addr.arpa."]);
}

#[tokio::test]
async fn the_hosts_files_first_entry_names_an_address_at_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.2 first.test second.test third.test\n127.0.0.2 fourth.test\n",
    )
    .unwrap();
    let first = HostName::Known("first.test".into());
    for _ in 0..5 {
        let resolver = Resolver::new(&DnsConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_millis(300),
            hosts_file: Some(hosts.clone()),
        });
        let name = resolver
            .client_name("127.0.0.2".parse::<IpAddr>().unwrap())
            .await;
        assert_eq!(
            name,
            ClientName {
                reverse: first.clone(),
                verified: first.clone()
            }
        );
    }
}
