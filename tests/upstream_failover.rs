//! Several upstream servers (`upstream.servers`): a server that fails before the
//! client heard anything — at connect, at its greeting — is passed over for
//! `down_for` and the session goes to the next; round robin spreads sessions; the
//! upstream's answer to the client's own greeting is its policy, relayed, not a
//! failure; a server passed over takes sessions again once `down_for` is over; a
//! listener relays to the upstream it names (`[upstreams.NAME]`).

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{
    Action, Client, FULL_EHLO, Proxy, RecordingUpstream, closed_port, config::TestConfig,
};

fn proxy(servers: &[String], extra: &[(&str, &str)]) -> Proxy {
    let mut config = TestConfig::new()
        .set("upstream.servers", servers.to_vec())
        .set("upstream.client_address", "none");
    for (key, value) in extra {
        config = config.set(key, *value);
    }
    config.start()
}

/// One session with one message; the reply to its final dot.
fn deliver(proxy: &Proxy, id: &str) -> u16 {
    let mut client = proxy.client();
    client.expect("EHLO client.example", 250);
    let wire = format!("Message-ID: <{id}>\r\n\r\nbody\r\n.\r\n");
    let code = client
        .send_message("a@example.org", &["b@example.com"], wire.as_bytes())
        .code;
    client.expect("QUIT", 221);
    code
}

fn downs(proxy: &Proxy) -> usize {
    proxy
        .logs()
        .iter()
        .filter(|line| line.contains("upstream server down"))
        .count()
}

#[test]
fn a_server_that_is_down_is_passed_over_before_the_client_hears_anything() {
    let up = RecordingUpstream::start();
    let proxy = proxy(
        &[closed_port(), up.address()],
        &[("metrics.address", "127.0.0.1:0")],
    );
    // The start-up probe meets the closed port first and marks it down.
    proxy.wait_for_log("learned the upstream's extensions");
    for n in 0..3 {
        assert_eq!(deliver(&proxy, &format!("m{n}@test")), 250);
    }
    assert_eq!(up.wait_messages(3).len(), 3);
    assert_eq!(downs(&proxy), 1, "marked down once, then passed over");
    let metrics = proxy.metrics();
    for line in [
        "portcullis_upstream_server_up{upstream=\"default\",server=\"1\"} 0",
        "portcullis_upstream_server_up{upstream=\"default\",server=\"2\"} 1",
        "portcullis_upstream_server_failures_total{upstream=\"default\",server=\"1\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[test]
fn a_server_refusing_at_its_greeting_is_passed_over() {
    let busy = RecordingUpstream::scripted(
        FULL_EHLO,
        Arc::new(|line| match line {
            "<connect>" => Action::Reply("554 5.3.2 busy".into()),
            _ => Action::Default,
        }),
    );
    let up = RecordingUpstream::start();
    let proxy = proxy(&[busy.address(), up.address()], &[]);
    assert_eq!(deliver(&proxy, "via-backup@test"), 250);
    assert_eq!(up.wait_messages(1).len(), 1);
    assert!(busy.messages().is_empty());
}

#[test]
fn round_robin_spreads_sessions_over_the_servers() {
    let (a, b) = (RecordingUpstream::start(), RecordingUpstream::start());
    let proxy = proxy(
        &[a.address(), b.address()],
        &[("upstream.balance", "round_robin")],
    );
    // The start-up probe takes a turn too: let it go first.
    proxy.wait_for_log("learned the upstream's extensions");
    for n in 0..4 {
        assert_eq!(deliver(&proxy, &format!("rr{n}@test")), 250);
    }
    common::wait_until("four messages", || {
        a.messages().len() + b.messages().len() == 4
    });
    assert_eq!((a.messages().len(), b.messages().len()), (2, 2));
}

#[test]
fn the_upstreams_answer_to_the_clients_greeting_is_relayed_not_failed_over() {
    let strict = RecordingUpstream::scripted(
        FULL_EHLO,
        Arc::new(|line| {
            if line.starts_with("EHLO bad.example") {
                Action::Reply("550 5.7.1 no such host".into())
            } else {
                Action::Default
            }
        }),
    );
    let other = RecordingUpstream::start();
    let proxy = proxy(&[strict.address(), other.address()], &[]);
    let mut client = proxy.client();
    client.expect("EHLO bad.example", 250);
    let reply = client.command("MAIL FROM:<a@example.org>");
    assert_eq!(reply.code, 550, "{reply:?}");
    assert!(other.messages().is_empty());
    assert!(
        !other.all_commands().iter().any(|c| c.starts_with("MAIL")),
        "the other server never saw the transaction"
    );
    assert_eq!(downs(&proxy), 0);
}

#[test]
fn a_server_passed_over_takes_sessions_again_after_down_for() {
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    let flaky = RecordingUpstream::scripted(
        FULL_EHLO,
        Arc::new(move |line| match line {
            "<connect>" if seen.fetch_add(1, Ordering::SeqCst) == 0 => {
                Action::Reply("421 4.3.2 restarting".into())
            }
            _ => Action::Default,
        }),
    );
    let backup = RecordingUpstream::start();
    let proxy = proxy(
        &[flaky.address(), backup.address()],
        &[("upstream.down_for", "300ms")],
    );
    // The capability probe at start-up tries the primary first: refused, so it is
    // passed over and the probe learns the backup's extensions. Sessions go to the
    // backup until down_for is over.
    proxy.wait_for_log("learned the upstream's extensions");
    assert_eq!(deliver(&proxy, "first@test"), 250);
    assert_eq!(deliver(&proxy, "second@test"), 250);
    assert_eq!(backup.wait_messages(2).len(), 2);
    assert!(flaky.messages().is_empty());
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(deliver(&proxy, "third@test"), 250);
    assert_eq!(flaky.wait_messages(1).len(), 1, "the primary again");
    proxy.wait_for_log("upstream server up again");
}

#[test]
fn each_listener_relays_to_the_upstream_it_names() {
    let (mx, submission) = (RecordingUpstream::start(), RecordingUpstream::start());
    let proxy = TestConfig::new()
        .set("upstream.address", mx.address())
        .set("upstream.client_address", "none")
        .set("upstreams.submission.servers", vec![submission.address()])
        .set("upstreams.submission.client_address", "none")
        .listener("submission")
        .set_on("submission", "upstream", "submission")
        .start();
    assert_eq!(deliver(&proxy, "to-mx@test"), 250);
    let mut client = Client::connect(proxy.listener("submission"));
    assert_eq!(client.read_reply().code, 220);
    client.expect("EHLO client.example", 250);
    let wire = b"Message-ID: <to-submission@test>\r\n\r\nbody\r\n.\r\n";
    let code = client
        .send_message("a@example.org", &["b@example.com"], wire)
        .code;
    assert_eq!(code, 250);
    let to_mx = mx.wait_messages(1);
    let to_submission = submission.wait_messages(1);
    assert!(String::from_utf8_lossy(&to_mx[0]).contains("to-mx@test"));
    assert!(String::from_utf8_lossy(&to_submission[0]).contains("to-submission@test"));
    assert_eq!((mx.messages().len(), submission.messages().len()), (1, 1));
}
