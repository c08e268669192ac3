//! The metrics endpoint: `/metrics` counts what happened (sessions, replies, messages,
//! the upstream, the plugins) under Prometheus' naming rules and passes Prometheus' own
//! `promtool check metrics`; `/health` and `/ready` answer; anything else is 404.

mod common;

use std::{
    io::Write,
    process::{Command, Stdio},
};

use common::{
    Client, RecordingUpstream, config::TestConfig, http_get, require_program, wait_until,
};

/// The value of the sample of `name` whose labels include each of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        let (series, value) = rest.rsplit_once(' ')?;
        labels
            .iter()
            .all(|label| series.contains(label))
            .then(|| value.parse().ok())?
    })
}

#[test]
fn the_endpoint_counts_sessions_messages_the_upstream_and_plugins() {
    let upstream = RecordingUpstream::start();
    let proxy = TestConfig::relaying_to(&upstream.address())
        .set("metrics.address", "127.0.0.1:0")
        .recipients_listener("plugins", &["example.com"])
        .start();
    let address = proxy.metrics_address();
    assert_eq!(http_get(address, "/health"), (200, "ok\n".into()));
    wait_until("ready once the upstream answered its probe", || {
        http_get(address, "/ready").0 == 200
    });
    assert_eq!(http_get(address, "/nothing").0, 404);

    let mut client = proxy.client();
    client.expect("EHLO client.example", 250);
    let reply = client.send_message(
        "a@example.org",
        &["b@example.com"],
        b"Subject: counted\r\n\r\nhello\r\n.\r\n",
    );
    assert_eq!(reply.code, 250);
    client.expect("QUIT", 221);
    let mut filtered = Client::connect(proxy.listener("plugins"));
    assert_eq!(filtered.read_reply().code, 220);
    filtered.expect("EHLO client.example", 250);
    filtered.expect("MAIL FROM:<a@example.org>", 250);
    filtered.expect("RCPT TO:<b@elsewhere.test>", 550);
    filtered.expect("QUIT", 221);
    upstream.wait_messages(1);

    wait_until("the sessions have ended", || {
        let metrics = http_get(address, "/metrics").1;
        sample(&metrics, "portcullis_sessions_open", &["listener=\"test\""]) == Some(0.0)
            && sample(
                &metrics,
                "portcullis_sessions_open",
                &["listener=\"plugins\""],
            ) == Some(0.0)
    });
    let metrics = http_get(address, "/metrics").1;
    let expect = |name: &str, labels: &[&str], value: f64| {
        assert_eq!(
            sample(&metrics, name, labels),
            Some(value),
            "{name} {labels:?} in\n{metrics}"
        );
    };
    expect("portcullis_sessions_total", &["listener=\"test\""], 1.0);
    expect("portcullis_sessions_total", &["listener=\"plugins\""], 1.0);
    expect(
        "portcullis_messages_total",
        &["listener=\"test\"", "outcome=\"accepted\""],
        1.0,
    );
    expect(
        "portcullis_replies_total",
        &["stage=\"rcpt\"", "class=\"5xx\""],
        1.0,
    );
    expect(
        "portcullis_plugin_calls_total",
        &[
            "plugin=\"recipients\"",
            "hook=\"rcpt\"",
            "verdict=\"reject\"",
        ],
        1.0,
    );
    assert!(
        sample(
            &metrics,
            "portcullis_upstream_connects_total",
            &["outcome=\"ok\""]
        )
        .is_some_and(|connects| connects >= 1.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "portcullis_message_bytes_total",
            &["listener=\"test\""]
        )
        .is_some_and(|bytes| bytes >= 26.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE portcullis_upstream_reply_seconds histogram"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_plugin_call_seconds_bucket{"),
        "{metrics}"
    );
    for line in metrics.lines().filter(|line| !line.starts_with('#')) {
        assert!(!line.contains("127.0.0.1"), "an address as a label: {line}");
    }

    if require_program("promtool") {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
        let output = check.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics:\n{}{}\n{metrics}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn without_a_metrics_table_no_endpoint_listens() {
    let upstream = RecordingUpstream::start();
    let proxy = TestConfig::relaying_to(&upstream.address()).start();
    let mut client = proxy.client();
    client.expect("EHLO client.example", 250);
    client.expect("QUIT", 221);
    assert!(
        !proxy
            .logs()
            .iter()
            .any(|line| line.contains("metrics listening")),
        "an endpoint nobody asked for"
    );
}
