//! Plugins that misbehave are contained: traps, timeouts, memory, bad results, a
//! component built for another ABI.

use super::*;

#[test]
fn misbehaving_plugins_are_contained_while_other_sessions_deliver() {
    let fault = component("fault-plugin");
    let upstream = RecordingUpstream::start();
    // One listener per fault and policy, plus a clean one for the bystanders.
    let mut config = format!(
        "[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n\n[[listener]]\nname = \"clean\"\naddress = \"127.0.0.1:0\"\n",
        upstream.address()
    );
    for stage in STAGES {
        for (policy, _) in POLICIES {
            for mode in FAULTS {
                let name = format!("{mode}-{policy}-{stage}");
                config.push_str(&format!(
                    "\n[[listener]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\nplugins = [\"{name}\"]\n\n\
                     [plugins.{name}]\npath = \"{}\"\ntimeout_ms = 300\nmemory_mb = 16\non_error = \"{policy}\"\n\
                     config = {{ mode = \"{mode}\", stage = \"{stage}\" }}\n",
                    fault.display()
                ));
            }
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
    for stage in STAGES {
        for (policy, code) in POLICIES {
            for mode in FAULTS {
                let name = format!("{mode}-{policy}-{stage}");
                let mut client = common::Client::connect(proxy.listener(&name));
                client.read_reply();
                client.expect("EHLO faulty.test", 250);
                let reply = client.command("MAIL FROM:<a@example.org>");
                let at_mail = if stage == "mail" { code } else { 250 };
                assert_eq!(reply.code, at_mail, "{name}: {reply:?}");
                if at_mail == 250 {
                    client.expect("RCPT TO:<b@example.com>", 250);
                    client.expect("DATA", 354);
                    client.send(b"Subject: past a failed plugin\r\n\r\nx\r\n.\r\n");
                    let reply = client.read_reply();
                    assert_eq!(reply.code, code, "{name}: {reply:?}");
                    if code == 250 {
                        expected_delivered += 1;
                    }
                }
                // The same session goes on: the failed instance was replaced.
                client.expect("NOOP", 250);
                proxy.wait_for_log(&format!("\"plugin\":\"{name}\""));
            }
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
        assert!(!String::from_utf8_lossy(&session.raw).contains("evil"));
    }
}

#[test]
fn a_plugin_built_for_another_abi_version_is_refused_by_name() {
    // The fault plugin with its ABI version changed everywhere it is written (import
    // names and embedded types; same length, so the component stays valid): what a
    // plugin built with an older SDK looks like to the proxy.
    let wit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugin-sdk/wit/portcullis.wit"
    ))
    .unwrap();
    let ours = wit
        .lines()
        .find_map(|l| l.strip_prefix("package portcullis:plugin@"))
        .unwrap()
        .trim_end_matches(';');
    let other = if ours == "9.9.9" { "9.9.8" } else { "9.9.9" };
    assert_eq!(ours.len(), other.len(), "the test patches in place");
    let bytes = std::fs::read(component("fault-plugin")).unwrap();
    let (from, to) = (format!("@{ours}"), format!("@{other}"));
    let mut patched = Vec::with_capacity(bytes.len());
    let mut rest = &bytes[..];
    while let Some(at) = rest.windows(from.len()).position(|w| w == from.as_bytes()) {
        patched.extend_from_slice(&rest[..at]);
        patched.extend_from_slice(to.as_bytes());
        rest = &rest[at + from.len()..];
    }
    patched.extend_from_slice(rest);
    assert_ne!(patched, bytes);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.wasm"), &patched).unwrap();
    std::fs::write(
        dir.path().join("portcullis.toml"),
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\nplugins = [\"old\"]\n\n\
         [upstream]\naddress = \"127.0.0.1:25\"\nclient_address = \"none\"\n\n\
         [plugins.old]\npath = \"old.wasm\"\nconfig = { mode = \"count\" }\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config", "portcullis.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "built for the ABI portcullis:plugin@{other}, this proxy speaks portcullis:plugin@{ours}"
        )),
        "{stderr}"
    );
}
