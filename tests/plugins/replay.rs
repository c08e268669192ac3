//! `portcullis replay`: a chain run offline over a recorded transaction.

use super::*;

#[test]
fn replay_runs_a_chain_offline_and_prints_verdicts_envelope_and_message() {
    let dns = common::dns::DnsServer::start(vec![("1.2.0.192.bl.test", "A", "127.0.0.2")], "none");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("replay.toml");
    std::fs::write(
        &config,
        format!(
            r#"[[listener]]
name = "mx"
address = "127.0.0.1:0"
plugins = ["dnsbl", "recipients", "headers", "tag"]

[upstream]
address = "127.0.0.1:1"
client_address = "none"

[dns]
nameservers = ["{}"]

[plugins.dnsbl]
path = "{}"
config = {{ zones = ["bl.test"] }}

[plugins.recipients]
path = "{}"
config = {{ domains = ["example.com"], aliases = {{ "info@example.com" = "bob@example.com" }} }}

[plugins.headers]
path = "{}"
config = {{ remove = ["Authentication-Results"], subject_tags = [{{ tag = "[EXTERNAL]", sender_domain_not_in = ["example.com"] }}] }}

[plugins.tag]
path = "{}"
config = {{ mode = "quarantine", stage = "data" }}

# Another listener's chain is not compiled by a replay of "mx".
[[listener]]
name = "other"
address = "127.0.0.1:0"
plugins = ["missing"]

[plugins.missing]
path = "no/such/plugin.wasm"
"#,
            dns.address,
            component("dnsbl").display(),
            component("recipients").display(),
            component("headers").display(),
            component("fault-plugin").display()
        ),
    )
    .unwrap();
    let message = dir.path().join("message.eml");
    std::fs::write(
        &message,
        "From: eve@outside.test\nSubject: hello\nAuthentication-Results: forged\n\n.dot line\nbye\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["replay", "--config"])
        .arg(&config)
        .args([
            "--listener",
            "mx",
            "--from",
            "eve@outside.test",
            "--to",
            "info@example.com",
            "--to",
            "x@elsewhere.test",
        ])
        .arg(&message)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected_lines = [
        "connect                  dnsbl            continue",
        "rcpt <info@example.com>  recipients       continue; rewrote it to RCPT TO:<bob@example.com>",
        "rcpt <info@example.com>  rewritten to <bob@example.com>",
        "rcpt <x@elsewhere.test>  recipients       reject 550 5.1.1 <x@elsewhere.test>: Recipient address rejected: not accepted here",
        "data                     headers          continue; edits: remove every Authentication-Results header; change header Subject #0 to [EXTERNAL] hello",
        "data                     tag              continue; edits: quarantine (looks suspicious)",
        "  MAIL FROM:<eve@outside.test>",
        "  RCPT TO:<bob@example.com>",
    ];
    for line in expected_lines {
        assert!(
            report.lines().any(|l| l == line),
            "missing {line:?} in\n{report}"
        );
    }
    assert!(
        report.ends_with(
            "message:\nFrom: eve@outside.test\r\nSubject: [EXTERNAL] hello\r\n\
             X-Portcullis-Quarantine: looks suspicious\r\n\r\n.dot line\r\nbye\r\n"
        ),
        "{report}"
    );
    assert!(!report.contains("RCPT TO:<x@elsewhere.test>"), "{report}");
    assert!(
        dns.queries().is_empty(),
        "replay must not use the network: {:?}",
        dns.queries()
    );
}
