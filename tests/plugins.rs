//! Plugins in the real binary: the compiled `.wasm` components (built by the test
//! command into target/wasm) loaded by the proxy, with mail flowing through them to
//! the recording upstream, and misbehaving plugins contained to their own call.

mod common;

use std::{sync::Arc, thread};

use common::{Proxy, RecordingUpstream, component};

#[test]
fn mail_flows_through_the_recipients_plugin() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        r#"plugins = ["recipients"]

[upstream]
address = "{}"
client_address = "none"

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

/// The hooks the fault plugin misbehaves in.
const STAGES: [&str; 2] = ["mail", "data"];

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
fn init_runs_once_and_every_session_starts_from_the_state_it_left() {
    let upstream = RecordingUpstream::start();
    // Two entries with the same file and configuration, one with another: the first
    // two share one pre-initialised component.
    let mut config = format!(
        "[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        upstream.address()
    );
    for (name, stage) in [("counter", "data"), ("same", "data"), ("other", "mail")] {
        config.push_str(&format!(
            "\n[[listener]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\nplugins = [\"{name}\"]\n\n\
             [plugins.{name}]\npath = \"{}\"\nconfig = {{ mode = \"count\", stage = \"{stage}\" }}\n",
            component("fault-plugin").display()
        ));
    }
    let proxy = Proxy::start_with(&config);
    let counted = |messages: usize| -> Vec<String> {
        let mut client = common::Client::connect(proxy.listener("counter"));
        client.read_reply();
        client.expect("EHLO client.test", 250);
        for n in 0..messages {
            let wire = format!("Subject: {n}\r\n\r\nbody\r\n.\r\n");
            let reply = client.send_message("a@example.org", &["b@example.com"], wire.as_bytes());
            assert_eq!(reply.code, 250, "{reply:?}");
        }
        client.expect("QUIT", 221);
        let session = upstream.sessions().pop().unwrap();
        session
            .messages
            .iter()
            .map(|m| {
                String::from_utf8_lossy(m)
                    .lines()
                    .nth(1)
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    // Per-session state counts from where `init` left it in every session: a
    // session's messages never show in the next one's instance.
    for messages in [2, 1, 3] {
        let expected: Vec<String> = (1..=messages)
            .map(|n| format!("X-Message-In-Session: {n}"))
            .collect();
        assert_eq!(counted(messages), expected);
    }
    // `init` ran at start-up only: once for the two identical entries, once for the
    // other configuration, never in a session.
    let inits = proxy
        .logs()
        .iter()
        .filter(|line| line.contains("fault plugin init"))
        .count();
    assert_eq!(inits, 2, "{:#?}", proxy.logs());
}

#[test]
fn instances_past_the_pool_are_made_on_demand_and_reused_slots_start_clean() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "[server]\nplugin_pool_size = 2\n\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n\n\
         [[listener]]\nname = \"counter\"\naddress = \"127.0.0.1:0\"\nplugins = [\"counter\"]\n\n\
         [plugins.counter]\npath = \"{}\"\nconfig = {{ mode = \"count\", stage = \"data\" }}\n",
        upstream.address(),
        component("fault-plugin").display()
    ));
    let send = |client: &mut common::Client, n: usize| {
        let wire = format!("Subject: {n}\r\n\r\nbody\r\n.\r\n");
        let reply = client.send_message("a@example.org", &["b@example.com"], wire.as_bytes());
        assert_eq!(reply.code, 250, "{reply:?}");
    };
    // Five sessions at once, each holding an instance: two from the pool of two,
    // three made on demand; every one counts its own session's messages.
    let mut clients: Vec<common::Client> = (0..5)
        .map(|_| {
            let mut client = common::Client::connect(proxy.listener("counter"));
            client.read_reply();
            client.expect("EHLO client.test", 250);
            send(&mut client, 1);
            client
        })
        .collect();
    proxy.wait_for_log("plugin instance pool full");
    for client in &mut clients {
        send(client, 2);
        client.expect("QUIT", 221);
    }
    // Then one session at a time, each on a slot an earlier session used: the slot's
    // memory is reset, so the count starts from `init`'s state again.
    for _ in 0..3 {
        let mut client = common::Client::connect(proxy.listener("counter"));
        client.read_reply();
        client.expect("EHLO client.test", 250);
        send(&mut client, 1);
        send(&mut client, 2);
        client.expect("QUIT", 221);
    }
    assert_eq!(upstream.wait_messages(16).len(), 16);
    let counts: Vec<Vec<String>> = upstream
        .sessions()
        .iter()
        .map(|session| {
            session
                .messages
                .iter()
                .flat_map(|m| {
                    String::from_utf8_lossy(m)
                        .lines()
                        .filter(|line| line.starts_with("X-Message-In-Session:"))
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .collect();
    assert_eq!(counts.len(), 8, "{counts:?}");
    for count in counts {
        assert_eq!(
            count,
            ["X-Message-In-Session: 1", "X-Message-In-Session: 2"],
            "each session counts only its own messages"
        );
    }
}

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

#[test]
fn shareable_plugins_lend_instances_per_call_and_drop_one_that_failed() {
    let upstream = RecordingUpstream::start();
    // The same shareable plugin three times: shared, refused sharing by the operator,
    // and shared under concurrent sessions. `count` keeps a count in the instance, and
    // the first two panic when theirs reaches 3.
    let mut config = format!(
        "[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        upstream.address()
    );
    for (name, share, fail_at) in [("shared", true, 3), ("own", false, 3), ("busy", true, 0)] {
        config.push_str(&format!(
            "\n[[listener]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\nplugins = [\"{name}\"]\n\n\
             [plugins.{name}]\npath = \"{}\"\nshare_instances = {share}\n\
             config = {{ mode = \"count\", stage = \"data\", shareable = true, fail_at = {fail_at} }}\n",
            component("fault-plugin").display()
        ));
    }
    let proxy = Proxy::start_with(&config);
    let one_session = |listener: &str, subjects: &[String]| -> Vec<u16> {
        let mut client = common::Client::connect(proxy.listener(listener));
        client.read_reply();
        client.expect("EHLO client.test", 250);
        let codes = subjects
            .iter()
            .map(|subject| {
                let wire = format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n");
                client
                    .send_message("a@example.org", &["b@example.com"], wire.as_bytes())
                    .code
            })
            .collect();
        client.expect("QUIT", 221);
        codes
    };
    // Four sessions one after another, one message each. The shared instance counts
    // across sessions; the third call fails, so that instance is dropped and the
    // fourth session is served by a new one, starting from `init`'s state again.
    let mut codes = Vec::new();
    for n in 1..=4 {
        codes.extend(one_session("shared", &[format!("shared {n}")]));
        codes.extend(one_session("own", &[format!("own {n}")]));
    }
    assert_eq!(codes, [250, 250, 250, 250, 451, 250, 250, 250]);
    let failed = proxy.wait_for_log("plugin failed");
    assert!(failed.contains("\"plugin\":\"shared\""), "{failed}");
    assert!(
        proxy
            .logs()
            .iter()
            .any(|line| line.contains("\"plugin\":\"shared\"") && line.contains("\"shared\":true")),
        "the plugin was loaded as shared"
    );
    // Six concurrent sessions of five messages through one shareable plugin.
    let busy: Vec<_> = (0..6)
        .map(|session| {
            let address = proxy.listener("busy");
            let subjects: Vec<String> = (0..5).map(|n| format!("busy {session}.{n}")).collect();
            thread::spawn(move || {
                let mut client = common::Client::connect(address);
                client.read_reply();
                client.expect("EHLO client.test", 250);
                for subject in subjects {
                    let wire = format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n");
                    let reply =
                        client.send_message("a@example.org", &["b@example.com"], wire.as_bytes());
                    assert_eq!(reply.code, 250, "{reply:?}");
                }
                client.expect("QUIT", 221);
            })
        })
        .collect();
    for session in busy {
        session.join().unwrap();
    }
    let counts = counts_by_subject(&upstream.wait_messages(7 + 30));
    assert_eq!(counts.len(), 37, "every accepted message exactly once");
    let of = |subject: &str| counts[subject];
    assert_eq!(
        [of("shared 1"), of("shared 2"), of("shared 4")],
        [1, 2, 1],
        "one instance served the first sessions in turn; the failed one was replaced"
    );
    for n in 1..=4 {
        assert_eq!(
            of(&format!("own {n}")),
            1,
            "each session had its own instance"
        );
    }
    // Each busy instance counted the calls it served 1, 2, 3, ...: no call was lost
    // or counted twice, and no more instances were made than calls ran at once.
    let mut busy_counts: Vec<u32> = counts
        .iter()
        .filter(|(subject, _)| subject.starts_with("busy"))
        .map(|(_, &count)| count)
        .collect();
    busy_counts.sort();
    let instances = busy_counts.iter().filter(|&&c| c == 1).count();
    assert!((1..=6).contains(&instances), "{busy_counts:?}");
    for count in 2..=30 {
        let at = |c: u32| busy_counts.iter().filter(|&&x| x == c).count();
        assert!(at(count) <= at(count - 1), "{busy_counts:?}");
    }
}

#[test]
fn a_shared_instance_sees_each_session_as_it_is() {
    // `headers` is shareable: one instance serves these sessions in turn, and each
    // message must carry its own session's client and HELO name, never the last
    // session's (the plugin caches the session it last read).
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        r#"plugins = ["headers"]

[upstream]
address = "{}"
client_address = "none"

[plugins.headers]
path = "{}"
config = {{ add = [{{ name = "X-Seen", value = "{{client_ip}} {{helo}}" }}] }}
"#,
        upstream.address(),
        component("headers").display()
    ));
    let clients = [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.3",
        "127.0.0.2",
        "127.0.0.4",
    ];
    for (n, local) in clients.iter().enumerate() {
        let mut client = common::Client::connect_from(local, proxy.address);
        client.expect(&format!("EHLO host{n}.test"), 250);
        for message in 0..2 {
            let wire = format!("Subject: {n}.{message}\r\n\r\nbody\r\n.\r\n");
            let reply = client.send_message("a@example.org", &["b@example.com"], wire.as_bytes());
            assert_eq!(reply.code, 250, "{reply:?}");
        }
        client.expect("QUIT", 221);
    }
    let messages = upstream.wait_messages(clients.len() * 2);
    for (n, local) in clients.iter().enumerate() {
        for message in 0..2 {
            let subject = format!("Subject: {n}.{message}");
            let text = messages
                .iter()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .find(|text| text.contains(&subject))
                .unwrap_or_else(|| panic!("{subject} missing"));
            assert!(
                text.contains(&format!("X-Seen: {local} host{n}.test")),
                "{subject}: {text}"
            );
        }
    }
    assert!(
        proxy
            .logs()
            .iter()
            .any(|line| line.contains("plugin loaded") && line.contains("\"shared\":true"))
    );
}

#[test]
fn shared_instances_keep_each_sessions_store_apart_and_drop_it_with_the_session() {
    // `recipients` counts each session's recipients in its session store
    // (`max_per_session`) while one shared instance serves all the sessions in turn:
    // interleaved sessions must each count their own, and a session that ended must
    // leave nothing to the next one on the same instance.
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        r#"plugins = ["recipients"]

[upstream]
address = "{}"
client_address = "none"

[plugins.recipients]
path = "{}"
config = {{ domains = ["example.com"], max_per_session = 2 }}
"#,
        upstream.address(),
        component("recipients").display()
    ));
    let mut first = proxy.client();
    let mut second = proxy.client();
    for client in [&mut first, &mut second] {
        client.expect("EHLO client.test", 250);
        client.expect("MAIL FROM:<a@origin.test>", 250);
    }
    first.expect("RCPT TO:<one@example.com>", 250);
    second.expect("RCPT TO:<one@example.com>", 250);
    second.expect("RCPT TO:<two@example.com>", 250);
    let refused = second.expect("RCPT TO:<three@example.com>", 452);
    assert_eq!(
        refused.lines,
        ["452 4.5.3 Too many recipients for this session"]
    );
    first.expect("RCPT TO:<two@example.com>", 250);
    first.expect("RSET", 250);
    first.expect("MAIL FROM:<a@origin.test>", 250);
    first.expect("RCPT TO:<three@example.com>", 452);
    first.expect("QUIT", 221);
    second.expect("QUIT", 221);
    let mut third = proxy.client();
    third.expect("EHLO client.test", 250);
    third.expect("MAIL FROM:<a@origin.test>", 250);
    third.expect("RCPT TO:<one@example.com>", 250);
    third.expect("RCPT TO:<two@example.com>", 250);
    third.expect("QUIT", 221);
    assert!(
        proxy
            .logs()
            .iter()
            .any(|line| line.contains("plugin loaded") && line.contains("\"shared\":true"))
    );
}

#[test]
fn plugins_read_the_envelope_as_the_chain_made_it_in_every_transaction() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        r#"plugins = ["alias", "extra", "watch"]

[upstream]
address = "{}"
client_address = "none"

[plugins.alias]
path = "{}"
config = {{ domains = ["example.com", "example.org"], aliases = {{ "sales@example.com" = "alice@example.org" }} }}

[plugins.extra]
path = "{fault}"
config = {{ mode = "add-recipient", stage = "data", recipient = "added@example.com" }}

[plugins.watch]
path = "{fault}"
config = {{ mode = "envelope" }}
"#,
        upstream.address(),
        component("recipients").display(),
        fault = component("fault-plugin").display()
    ));
    let mut client = proxy.client();
    client.expect("EHLO client.test", 250);
    // `watch` reads the envelope at the first and the last RCPT only: the second read
    // must bring the two recipients it skipped and the alias's rewrite.
    let first = [
        "b@example.com",
        "quiet1@example.com",
        "quiet2@example.com",
        "sales@example.com",
    ];
    let reply = client.send_message("a@example.org", &first, b"Subject: 1\r\n\r\nbody\r\n.\r\n");
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("RSET", 250);
    let reply = client.send_message(
        "c@example.org",
        &["d@example.com"],
        b"Subject: 2\r\n\r\nbody\r\n.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("QUIT", 221);
    let seen: Vec<Vec<String>> = upstream
        .wait_messages(2)
        .iter()
        .map(|message| {
            String::from_utf8_lossy(message)
                .lines()
                .filter(|line| line.starts_with("X-Envelope-At-"))
                .map(str::to_string)
                .collect()
        })
        .collect();
    assert_eq!(
        seen,
        [
            vec![
                "X-Envelope-At-Rcpt: a@example.org -> [] | a@example.org -> \
                 [b@example.com,quiet1@example.com,quiet2@example.com]"
                    .to_string(),
                "X-Envelope-At-Data: a@example.org -> [b@example.com,quiet1@example.com,\
                 quiet2@example.com,alice@example.org,added@example.com]"
                    .to_string(),
            ],
            vec![
                "X-Envelope-At-Rcpt: c@example.org -> []".to_string(),
                "X-Envelope-At-Data: c@example.org -> [d@example.com,added@example.com]"
                    .to_string(),
            ],
        ]
    );
}

#[test]
fn a_connect_refusal_replaces_the_greeting() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "plugins = [\"gate\"]\n\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n\n[plugins.gate]\npath = \"{}\"\nconfig = {{ mode = \"refuse-connect\" }}\n",
        upstream.address(),
        component("fault-plugin").display()
    ));
    let mut client = common::Client::connect(proxy.address);
    assert_eq!(client.read_reply().lines, ["554 5.7.1 No service for you"]);
    assert!(client.is_closed());
    assert!(upstream.sessions().is_empty());
}

#[test]
fn data_plugins_edit_the_message_in_chain_order_and_large_bodies_spool_to_disk() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        r#"plugins = ["headers", "measure"]

[upstream]
address = "{}"
client_address = "none"

[spool]
memory_limit = 4096

[plugins.headers]
path = "{}"
config = {{ remove = ["Authentication-Results"], add = [{{ name = "X-Received-Via", value = "{{listener}} from {{client_ip}}" }}], subject_tags = [{{ tag = "[EXTERNAL]", sender_domain_not_in = ["example.com"] }}] }}

[plugins.measure]
path = "{}"
config = {{ mode = "measure-body", stage = "data" }}
"#,
        upstream.address(),
        component("headers").display(),
        component("fault-plugin").display()
    ));
    let mut body = Vec::new();
    for n in 0..20_000 {
        let line = if n % 7 == 0 {
            format!(".dot line {n}\r\n")
        } else {
            format!("line {n} \u{e9}t\u{e9} 8-bit text\r\n")
        };
        body.extend_from_slice(line.as_bytes());
    }
    let stuffed = String::from_utf8(body.clone())
        .unwrap()
        .replace("\r\n.", "\r\n..")
        .replacen('.', "..", 1);
    let head = "Subject: hello\r\nAuthentication-Results: forged\r\nFrom: a@outside.test\r\n\r\n";
    let mut wire = head.as_bytes().to_vec();
    wire.extend_from_slice(stuffed.as_bytes());
    wire.extend_from_slice(b".\r\n");
    let mut client = proxy.client();
    client.expect("EHLO client.test", 250);
    let reply = client.send_message("a@outside.test", &["b@example.com"], &wire);
    assert_eq!(reply.code, 250, "{reply:?}");
    let expected = format!(
        "Subject: [EXTERNAL] hello\r\nFrom: a@outside.test\r\nX-Received-Via: test from 127.0.0.1\r\n\
         X-Body-Size: {}\r\nX-Body-Lines: 20000\r\n\r\n{stuffed}.\r\n",
        body.len()
    );
    let messages = upstream.wait_messages(1);
    assert_eq!(String::from_utf8_lossy(&messages[0]), expected);
}

#[test]
fn the_received_field_goes_above_what_plugins_edited() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        r#"plugins = ["headers"]

[server]
hostname = "proxy.test"

[upstream]
address = "{}"
client_address = "none"
received_header = true

[plugins.headers]
path = "{}"
config = {{ add = [{{ name = "X-Checked", value = "yes" }}] }}
"#,
        upstream.address(),
        component("headers").display(),
    ));
    let mut client = proxy.client();
    client.expect("EHLO client.test", 250);
    let reply = client.send_message(
        "a@example.org",
        &["b@example.com"],
        b"Subject: hi\r\n\r\nbody\r\n.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let message = String::from_utf8(upstream.wait_messages(1).remove(0)).unwrap();
    // 127.0.0.1 has a verified name on every machine ("localhost", or /etc/hosts).
    let (from, rest) = message.split_once(" [127.0.0.1])\r\n").unwrap();
    assert!(
        from.starts_with("Received: from client.test ("),
        "{message}"
    );
    assert!(!from.contains("unknown"), "{message}");
    assert!(
        rest.starts_with("\tby proxy.test (Portcullis) with ESMTP id "),
        "{message}"
    );
    assert!(
        rest.contains("\r\n\tfor <b@example.com>;\r\n\t"),
        "{message}"
    );
    assert!(
        rest.ends_with(" +0000\r\nSubject: hi\r\nX-Checked: yes\r\n\r\nbody\r\n.\r\n"),
        "{message}"
    );
}

#[test]
fn data_verdicts_and_envelope_edits_reach_the_upstream() {
    // The recipients a plugin changed go upstream in one write where the upstream
    // offers PIPELINING, and one command at a time where it does not.
    for pipelining in [true, false] {
        data_edits_reach_the_upstream(pipelining);
    }
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

#[test]
fn attachments_refuses_blocked_types_in_real_multipart_messages() {
    if !common::require_program("python3") {
        return;
    }
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "plugins = [\"attachments\"]\n\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n\n[plugins.attachments]\npath = \"{}\"\n",
        upstream.address(),
        component("attachments").display()
    ));
    let port = proxy.address.port();
    let refused = "554 5.7.1 Attachment \"invoice.pdf.exe\" is of a blocked type; message refused";
    assert_eq!(
        send_with_attachment(port, "invoice.pdf.exe", false),
        refused
    );
    assert_eq!(send_with_attachment(port, "invoice.pdf.exe", true), refused);
    assert_eq!(
        send_with_attachment(port, "invoice.pdf", false),
        "250 accepted"
    );
    assert_eq!(
        send_with_attachment(port, "invoice.pdf", true),
        "250 accepted"
    );
    let messages = upstream.wait_messages(2);
    assert_eq!(messages.len(), 2);
    assert!(
        messages
            .iter()
            .all(|m| String::from_utf8_lossy(m).contains("invoice.pdf\""))
    );
}

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

#[test]
fn helo_hooks_refuse_and_rename_and_the_upstream_learns_the_new_name() {
    let mut extensions = common::FULL_EHLO.to_vec();
    extensions.push("XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN");
    let upstream = RecordingUpstream::scripted(
        &extensions,
        std::sync::Arc::new(|_| common::Action::Default),
    );
    let fault = component("fault-plugin");
    let proxy = Proxy::start_with(&format!(
        "plugins = [\"gate\", \"rename\"]\n\n[upstream]\naddress = \"{}\"\nclient_address = \"xclient\"\n\n\
         [plugins.gate]\npath = \"{}\"\nconfig = {{ mode = \"refuse-helo\", stage = \"helo\" }}\n\n\
         [plugins.rename]\npath = \"{}\"\nconfig = {{ mode = \"rename\", stage = \"helo\" }}\n",
        upstream.address(),
        fault.display(),
        fault.display()
    ));
    let mut client = proxy.client();
    let reply = client.expect("EHLO nodots", 550);
    assert_eq!(reply.lines, ["550 5.7.1 HELO name must be a domain"]);
    let reply = client.command("MAIL FROM:<a@example.org>");
    assert_eq!(
        reply.code, 503,
        "a refused EHLO leaves the client ungreeted: {reply:?}"
    );
    client.expect("EHLO client.test", 250);
    assert_eq!(
        client
            .send_message("a@example.org", &["b@example.com"], b"x\r\n.\r\n")
            .code,
        250
    );
    let session = &upstream.sessions()[0];
    let xclient = session.command_starting("XCLIENT");
    assert!(
        xclient
            .split(' ')
            .any(|word| word == "HELO=renamed.example"),
        "{xclient}"
    );
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
