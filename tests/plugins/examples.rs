//! The example plugins that use the host's services: DNS lists, the key-value store.

use super::*;

#[test]
fn dnsbl_refuses_listed_clients_against_a_local_dns_server() {
    let dns = common::dns::DnsServer::start(
        vec![
            ("1.0.0.127.bl.test", "A", "127.0.0.2"),
            (
                "1.0.0.127.bl.test",
                "TXT",
                "Listed for testing, see https://bl.test/127.0.0.1",
            ),
        ],
        "slow.test",
    );
    let upstream = RecordingUpstream::start();
    let dnsbl = component("dnsbl");
    let proxy = Proxy::start_with(&format!(
        r#"plugins = ["dnsbl"]

[[listener]]
name = "strict"
address = "127.0.0.1:0"
plugins = ["dnsbl-silent-zone"]

[upstream]
address = "{}"
client_address = "none"

[dns]
nameservers = ["{}"]
timeout = "300ms"

[plugins.dnsbl]
path = "{}"
timeout_ms = 2000
config = {{ zones = ["bl.test"] }}

[plugins.dnsbl-silent-zone]
path = "{}"
config = {{ zones = ["slow.test"], on_dns_error = "tempfail" }}
"#,
        upstream.address(),
        dns.address,
        dnsbl.display(),
        dnsbl.display()
    ));
    for _ in 0..3 {
        let mut listed = common::Client::connect_from_unread("127.0.0.1", proxy.address);
        assert_eq!(
            listed.read_reply().lines,
            [
                "554 5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test; Listed for testing, see https://bl.test/127.0.0.1"
            ]
        );
        assert!(listed.is_closed());
    }
    let mut clean = common::Client::connect_from("127.0.0.2", proxy.address);
    clean.expect("EHLO clean.test", 250);
    assert_eq!(
        clean
            .send_message(
                "a@example.org",
                &["b@example.com"],
                b"Subject: clean\r\n\r\nhi\r\n.\r\n"
            )
            .code,
        250
    );
    let lookups = |name: &str| dns.queries().iter().filter(|q| q.ends_with(name)).count();
    assert_eq!(
        lookups("1.0.0.127.bl.test."),
        2,
        "A and TXT once, then the cache: {:?}",
        dns.queries()
    );
    assert_eq!(lookups("2.0.0.127.bl.test."), 1);
    let mut unanswered = common::Client::connect_from_unread("127.0.0.2", proxy.listener("strict"));
    let reply = unanswered.read_reply();
    assert_eq!(
        reply.lines,
        ["451 4.7.1 Cannot check [127.0.0.2] against slow.test; try again later"]
    );
    assert_eq!(lookups("2.0.0.127.slow.test."), 1, "{:?}", dns.queries());
}

#[test]
fn rate_limit_counts_across_concurrent_sessions() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "plugins = [\"rate-limit\"]\n\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n\n[plugins.rate-limit]\npath = \"{}\"\n\
         config = {{ per_client = {{ messages = 5, window_seconds = 600 }} }}\n",
        upstream.address(),
        component("rate-limit").display()
    ));
    let address = proxy.address;
    let sessions: Vec<_> = (0..20)
        .map(|n| {
            thread::spawn(move || {
                let mut client = common::Client::connect_from("127.0.0.2", address);
                client.expect("EHLO busy.test", 250);
                let reply = client.command("MAIL FROM:<a@example.org>");
                if reply.code == 250 {
                    client.expect("RCPT TO:<b@example.com>", 250);
                    client.expect("DATA", 354);
                    client.send(format!("Subject: {n}\r\n\r\nhi\r\n.\r\n").as_bytes());
                    assert_eq!(client.read_reply().code, 250);
                }
                reply
            })
        })
        .collect();
    let replies: Vec<_> = sessions.into_iter().map(|s| s.join().unwrap()).collect();
    let accepted = replies.iter().filter(|r| r.code == 250).count();
    assert_eq!(accepted, 5, "{replies:?}");
    for refused in replies.iter().filter(|r| r.code != 250) {
        assert_eq!(
            refused.lines,
            ["450 4.7.1 Rate limit reached for client [127.0.0.2], try again later"]
        );
    }
    assert_eq!(upstream.wait_messages(5).len(), 5);
    let mut other = common::Client::connect_from("127.0.0.3", address);
    other.expect("EHLO other.test", 250);
    other.expect("MAIL FROM:<a@example.org>", 250);
}

#[test]
fn a_full_key_value_store_keeps_its_counters_and_stores_no_new_ones() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "plugins = [\"rate-limit\"]\n\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n\n[plugins.rate-limit]\npath = \"{}\"\n\
         config = {{ per_client = {{ messages = 1, window_seconds = 600 }} }}\n\n[kv]\nmax_entries = 1\n",
        upstream.address(),
        component("rate-limit").display()
    ));
    let mail_from = |client: &str| {
        let mut session = common::Client::connect_from(client, proxy.address);
        session.expect("EHLO kv.test", 250);
        session.command("MAIL FROM:<a@example.org>").code
    };
    // The first client's counter takes the one place and keeps counting.
    assert_eq!(mail_from("127.0.0.2"), 250);
    assert_eq!(mail_from("127.0.0.2"), 450);
    // A second client's counter finds no room: it is not kept, so every message is
    // its first, and the proxy says why.
    assert_eq!(mail_from("127.0.0.3"), 250);
    assert_eq!(mail_from("127.0.0.3"), 250);
    proxy.wait_for_log("the key-value store is full of live keys");
    assert_eq!(mail_from("127.0.0.2"), 450, "the kept counter still holds");
}
