//! The audit trail: one record per message in the log and the rotated file, and
//! `portcullis replay --record` checking a changed rule against the records.

use std::process::Command;

use portcullis::audit::Record;

use super::*;

fn config(upstream: &RecordingUpstream, domains: &str) -> String {
    format!(
        r#"plugins = ["recipients", "recipients-next", "headers"]

[upstream]
address = "{upstream}"
client_address = "none"

[audit]
path = "audit.jsonl"

[plugins.recipients]
path = "{recipients}"
config = {{ domains = [{domains}], aliases = {{ "sales@example.com" = "bob@example.com" }} }}

[plugins.recipients-next]
path = "{recipients}"
mode = "shadow"
config = {{ domains = ["example.net"] }}

[plugins.headers]
path = "{headers}"
config = {{ add = [{{ name = "X-Checked", value = "yes" }}] }}
"#,
        upstream = upstream.address(),
        recipients = component("recipients").display(),
        headers = component("headers").display(),
    )
}

/// `portcullis replay` with `args` and the listener config `rest`; its exit status
/// and output.
fn replay(dir: &std::path::Path, rest: &str, args: &[&str]) -> (i32, String) {
    let config = dir.join("replay.toml");
    std::fs::write(
        &config,
        format!("[[listener]]\nname = \"test\"\naddress = \"127.0.0.1:0\"\n\n{rest}"),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["replay", "--config"])
        .arg(&config)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn each_message_leaves_one_record_and_replay_shows_what_a_changed_rule_would_change() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&config(&upstream, "\"example.com\""));
    let mut client = proxy.client();
    client.expect("EHLO client.test", 250);
    client.expect("MAIL FROM:<a@origin.test>", 250);
    client.expect("RCPT TO:<someone@elsewhere.test>", 550);
    client.expect("RCPT TO:<Sales@example.com>", 250);
    client.expect("DATA", 354);
    client.send(b"Subject: audited\r\n\r\nhi\r\n.\r\n");
    assert_eq!(client.read_reply().code, 250);
    // A transaction refused before DATA leaves no record of its own.
    client.expect("MAIL FROM:<b@origin.test>", 250);
    client.expect("RCPT TO:<nobody@elsewhere.test>", 550);
    client.expect("RSET", 250);
    client.expect("QUIT", 221);

    let event = proxy.wait_for_log("\"message\":\"audit\"");
    let path = proxy.dir().join("audit.jsonl");
    common::wait_until("the record is in the file", || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() == 1)
    });
    let text = std::fs::read_to_string(&path).unwrap();
    let record: Record = serde_json::from_str(text.trim()).unwrap();
    assert!(event.contains(&record.session), "{event}");
    assert_eq!(record.listener, "test");
    assert_eq!(record.client.helo.as_deref(), Some("client.test"));
    assert_eq!(record.received.from, "a@origin.test");
    assert_eq!(
        record.received.to,
        ["someone@elsewhere.test", "Sales@example.com"]
    );
    let sent = record.sent.as_ref().expect("it went upstream");
    assert_eq!(
        (sent.from.as_str(), &sent.to[..]),
        ("a@origin.test", &["bob@example.com".to_string()][..])
    );
    assert_eq!(record.outcome, "delivered");
    assert!(
        record.reply.starts_with("250 2.0.0 Ok: queued as Q"),
        "{}",
        record.reply
    );
    assert_eq!(
        record.queue_id.as_deref(),
        record.reply.rsplit(' ').next(),
        "{record:?}"
    );
    let said = |stage: &str, member: &str| -> Vec<&str> {
        record
            .chain
            .iter()
            .filter(|v| v.stage == stage && v.member == member)
            .map(|v| v.outcome.as_str())
            .collect()
    };
    let recipients = said("rcpt", "recipients");
    assert_eq!(recipients.len(), 2, "{record:?}");
    assert!(recipients[0].starts_with("reject 550"), "{recipients:?}");
    assert!(
        recipients[1].contains("rewrote it to RCPT TO:<bob@example.com>"),
        "{recipients:?}"
    );
    let shadow = said("rcpt", "recipients-next");
    assert!(
        shadow
            .iter()
            .all(|o| o.starts_with("shadow, would have: reject 550")),
        "{shadow:?}"
    );
    assert!(
        said("data", "headers")[0].contains("add header X-Checked: yes"),
        "{record:?}"
    );
    // The refused transaction after it is not in this record.
    assert!(!text.contains("nobody@elsewhere.test"));

    // The same rule: the same verdicts.
    let (status, out) = replay(
        &proxy.dir(),
        &config(&upstream, "\"example.com\""),
        &["--record", "audit.jsonl"],
    );
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("same verdicts"), "{out}");
    // A changed rule: replay says which verdict changes, and exits 1.
    let (status, out) = replay(
        &proxy.dir(),
        &config(&upstream, "\"example.org\""),
        &["--record", "audit.jsonl"],
    );
    assert_eq!(status, 1, "{out}");
    assert!(out.contains("2 difference(s)"), "{out}");
    assert!(out.contains("now: reject 550"), "{out}");
    // The enforcing entry now refuses the recipient first, so the shadow entry after
    // it is not asked: that is a difference too.
    assert!(
        out.contains("recipients-next") && out.contains("not asked now"),
        "{out}"
    );
    assert!(
        out.contains("1 record(s) replayed, 1 with verdicts that differ now"),
        "{out}"
    );
}
