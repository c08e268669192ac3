//! Plugins in the real binary: the compiled `.wasm` components (built by the test
//! command into target/wasm) loaded by the proxy, with mail flowing through them to
//! the recording upstream, and misbehaving plugins contained to their own call.

mod audit;
mod chain;
#[path = "../common/mod.rs"]
mod common;
mod containment;
mod examples;
mod instances;
mod message;
mod replay;

use std::{sync::Arc, thread};

use common::{Proxy, RecordingUpstream, component};

/// What the client gets at MAIL from a failing plugin under each policy.
const POLICIES: [(&str, u16); 3] = [("tempfail", 451), ("reject", 550), ("continue", 250)];
const FAULTS: [&str; 7] = [
    "trap",
    "panic",
    "loop",
    "memory",
    "bad-code",
    "crlf",
    "bad-rewrite",
];

/// The hooks the fault plugin misbehaves in.
const STAGES: [&str; 2] = ["mail", "data"];

/// The `X-Message-In-Session` value of each delivered message, by its subject.
fn counts_by_subject(messages: &[Vec<u8>]) -> std::collections::HashMap<String, u32> {
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_string())
    };
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .filter_map(|text| {
            let subject = field(&text, "Subject:")?;
            let count = field(&text, "X-Message-In-Session:")?.parse().ok()?;
            Some((subject, count))
        })
        .collect()
}

fn data_edits_reach_the_upstream(pipelining: bool) {
    let fault = component("fault-plugin");
    let extensions: Vec<&str> = common::FULL_EHLO
        .iter()
        .copied()
        .filter(|e| pipelining || *e != "PIPELINING")
        .collect();
    let upstream = RecordingUpstream::scripted(&extensions, Arc::new(|_| common::Action::Default));
    let mut config = format!(
        "[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n\n[quarantine]\nredirect = \"quarantine@example.com\"\n",
        upstream.address()
    );
    let actions = [
        ("discard", ""),
        ("quarantine", ""),
        ("add-recipient", ", recipient = \"added@example.com\""),
        ("remove-recipient", ", recipient = \"C@example.com\""),
        ("replace-body", ", body = \"replaced\\n.leading dot\""),
    ];
    for (mode, extra) in actions {
        config.push_str(&format!(
            "\n[[listener]]\nname = \"{mode}\"\naddress = \"127.0.0.1:0\"\nplugins = [\"{mode}\"]\n\n\
             [plugins.{mode}]\npath = \"{}\"\nconfig = {{ mode = \"{mode}\", stage = \"data\"{extra} }}\n",
            fault.display()
        ));
    }
    let proxy = Proxy::start_with(&config);
    let mut outcomes = Vec::new();
    for (mode, _) in actions {
        let mut client = common::Client::connect(proxy.listener(mode));
        client.read_reply();
        client.expect("EHLO client.test", 250);
        let wire = format!("Subject: {mode}\r\n\r\nbody\r\n.\r\n");
        let reply = client.send_message(
            "a@example.org",
            &["b@example.com", "c@example.com"],
            wire.as_bytes(),
        );
        assert_eq!(reply.code, 250, "{mode}: {reply:?}");
        client.expect("QUIT", 221);
        let session = upstream.sessions().pop().unwrap();
        outcomes.push((mode, session));
    }
    let envelope = |commands: &[String]| -> Vec<String> {
        commands
            .iter()
            .filter(|c| !c.starts_with("EHLO") && !c.starts_with("QUIT"))
            .cloned()
            .collect()
    };
    let original = [
        "MAIL FROM:<a@example.org>",
        "RCPT TO:<b@example.com>",
        "RCPT TO:<c@example.com>",
    ];
    for (mode, session) in outcomes {
        let commands = envelope(&session.commands);
        let message = session
            .messages
            .first()
            .map(|m| String::from_utf8_lossy(m).into_owned());
        let (expected_commands, expected_message): (Vec<&str>, Option<String>) = match mode {
            "discard" => ([&original[..], &["RSET"]].concat(), None),
            "quarantine" => (
                [&original[..], &["RSET", "MAIL FROM:<a@example.org>", "RCPT TO:<quarantine@example.com>", "DATA"]].concat(),
                Some("Subject: quarantine\r\nX-Portcullis-Quarantine: looks suspicious\r\n\r\nbody\r\n.\r\n".into()),
            ),
            "add-recipient" => (
                [&original[..], &["RCPT TO:<added@example.com>", "DATA"]].concat(),
                Some("Subject: add-recipient\r\n\r\nbody\r\n.\r\n".into()),
            ),
            "remove-recipient" => (
                [&original[..], &["RSET", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com>", "DATA"]].concat(),
                Some("Subject: remove-recipient\r\n\r\nbody\r\n.\r\n".into()),
            ),
            _ => (
                [&original[..], &["DATA"]].concat(),
                Some("Subject: replace-body\r\n\r\nreplaced\r\n..leading dot\r\n.\r\n".into()),
            ),
        };
        assert_eq!(commands, expected_commands, "{mode}");
        assert_eq!(message, expected_message, "{mode}");
        if matches!(mode, "quarantine" | "remove-recipient") {
            // RSET, MAIL and the kept recipients start the transaction over: what had
            // arrived when the upstream answered that second MAIL shows how they came.
            let restart = &session.arrived_before_mail_reply[1];
            let grouped = !restart.is_empty();
            assert_eq!(grouped, pipelining, "{mode}: {restart:?}");
        }
    }
    proxy.wait_for_log("message discarded by a plugin");
    proxy.wait_for_log("message quarantined");
}

/// Sends, with Python's email package and smtplib, a message carrying `attachment`
/// (as a plain attachment, or inside a forwarded message when `forwarded`), and
/// returns the server's reply to the end of data as "CODE TEXT".
fn send_with_attachment(port: u16, attachment: &str, forwarded: bool) -> String {
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
name, forwarded = sys.argv[2], sys.argv[3] == "1"
inner = EmailMessage()
inner["Subject"] = "files"
inner.set_content("See the attachment.")
inner.add_attachment(b"MZ\x90\x00 not really a program", maintype="application",
                     subtype="octet-stream", filename=name)
if forwarded:
    outer = EmailMessage()
    outer["Subject"] = "Fwd: files"
    outer.set_content("Forwarding this.")
    outer.add_attachment(inner)
    inner = outer
inner["From"] = "alice@example.org"
inner["To"] = "bob@example.com"
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as smtp:
    try:
        smtp.send_message(inner)
        print("250 accepted")
    except smtplib.SMTPDataError as error:
        print(error.smtp_code, error.smtp_error.decode())
"#;
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args([
            port.to_string(),
            attachment.to_string(),
            (forwarded as u8).to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}
