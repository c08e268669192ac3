//! Plugins in the real binary: the compiled `.wasm` components (built by the test
//! command into target/wasm) loaded by the proxy, with mail flowing through them to
//! the recording upstream, and misbehaving plugins contained to their own call.

mod common;

use std::{path::PathBuf, thread};

use common::{Proxy, RecordingUpstream};

/// A plugin component built by `./scripts/test`; missing is a failure, not a skip.
fn component(crate_name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm/wasm32-wasip2/plugin")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first (./scripts/test does: cargo build --profile plugin --target wasm32-wasip2 --target-dir target/wasm -p {crate_name})",
        path.display()
    );
    path
}

#[test]
fn mail_flows_through_the_recipients_plugin() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        r#"plugins = ["recipients"]

[upstream]
address = "{}"

[plugins.recipients]
path = "{}"
config = {{ domains = ["example.com"], max_recipients = 2, aliases = {{ "sales@example.com" = "bob@example.com" }} }}
"#,
        upstream.address(),
        component("recipients").display()
    ));
    let mut client = proxy.client();
    client.expect("EHLO client.test", 250);
    client.expect("MAIL FROM:<a@origin.test>", 250);
    let reply = client.expect("RCPT TO:<someone@elsewhere.test>", 550);
    assert_eq!(
        reply.lines,
        ["550 5.1.1 <someone@elsewhere.test>: Recipient address rejected: not accepted here"]
    );
    client.expect("RCPT TO:<Sales@example.com>", 250);
    client.expect("RCPT TO:<carol@example.com>", 250);
    let reply = client.expect("RCPT TO:<dave@example.com>", 452);
    assert!(reply.lines[0].starts_with("452 4.5.3"), "{reply:?}");
    client.expect("DATA", 354);
    client.send(b"Subject: through a plugin\r\n\r\nhi\r\n.\r\n");
    assert_eq!(client.read_reply().code, 250);
    let session = &upstream.sessions()[0];
    let rcpts: Vec<&String> = session
        .commands
        .iter()
        .filter(|c| c.starts_with("RCPT"))
        .collect();
    assert_eq!(
        rcpts,
        ["RCPT TO:<bob@example.com>", "RCPT TO:<carol@example.com>"],
        "the alias was rewritten, the refused never sent"
    );
}

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

#[test]
fn misbehaving_plugins_are_contained_while_other_sessions_deliver() {
    let fault = component("fault-plugin");
    let upstream = RecordingUpstream::start();
    // One listener per fault and policy, plus a clean one for the bystanders.
    let mut config = format!(
        "[upstream]\naddress = \"{}\"\n\n[[listener]]\nname = \"clean\"\naddress = \"127.0.0.1:0\"\n",
        upstream.address()
    );
    for (policy, _) in POLICIES {
        for mode in FAULTS {
            let name = format!("{mode}-{policy}");
            config.push_str(&format!(
                "\n[[listener]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\nplugins = [\"{name}\"]\n\n\
                 [plugins.{name}]\npath = \"{}\"\ntimeout_ms = 300\nmemory_mb = 16\non_error = \"{policy}\"\nconfig = {{ mode = \"{mode}\" }}\n",
                fault.display()
            ));
        }
    }
    let proxy = Proxy::start_with(&config);
    let clean = proxy.listener("clean");
    let bystanders = thread::spawn(move || {
        for n in 0..10 {
            let mut client = common::Client::connect(clean);
            client.read_reply();
            client.expect("EHLO bystander.test", 250);
            let body = format!("Subject: bystander {n}\r\n\r\nhello\r\n.\r\n");
            assert_eq!(
                client
                    .send_message("a@example.org", &["b@example.com"], body.as_bytes())
                    .code,
                250
            );
        }
    });
    let mut expected_delivered = 10;
    for (policy, code) in POLICIES {
        for mode in FAULTS {
            let address = proxy.listener(&format!("{mode}-{policy}"));
            let mut client = common::Client::connect(address);
            client.read_reply();
            client.expect("EHLO faulty.test", 250);
            let reply = client.command("MAIL FROM:<a@example.org>");
            assert_eq!(
                reply.code, code,
                "{mode} with on_error = {policy}: {reply:?}"
            );
            if code == 250 {
                client.expect("RCPT TO:<b@example.com>", 250);
                client.expect("DATA", 354);
                client.send(b"Subject: past a failed plugin\r\n\r\nx\r\n.\r\n");
                assert_eq!(client.read_reply().code, 250);
                expected_delivered += 1;
            }
            // The same session goes on: the failed instance was replaced.
            client.expect("NOOP", 250);
            proxy.wait_for_log(&format!("\"plugin\":\"{mode}-{policy}\""));
        }
    }
    bystanders.join().unwrap();
    let messages = upstream.wait_messages(expected_delivered);
    assert_eq!(
        messages.len(),
        expected_delivered,
        "every delivered message exactly once"
    );
    for n in 0..10 {
        let subject = format!("Subject: bystander {n}\r\n");
        assert_eq!(
            messages
                .iter()
                .filter(|m| m.windows(subject.len()).any(|w| w == subject.as_bytes()))
                .count(),
            1
        );
    }
    for session in upstream.recorded() {
        assert!(
            !session.commands.iter().any(|c| c.contains("victim")),
            "{:?}",
            session.commands
        );
    }
}

#[test]
fn a_connect_refusal_replaces_the_greeting() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "plugins = [\"gate\"]\n\n[upstream]\naddress = \"{}\"\n\n[plugins.gate]\npath = \"{}\"\nconfig = {{ mode = \"refuse-connect\" }}\n",
        upstream.address(),
        component("fault-plugin").display()
    ));
    let mut client = common::Client::connect(proxy.address);
    assert_eq!(client.read_reply().lines, ["554 5.7.1 No service for you"]);
    assert!(client.is_closed());
    assert!(upstream.sessions().is_empty());
}
