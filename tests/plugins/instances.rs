//! Instances: init once, pooled and on-demand slots, shared instances lent per call,
//! and the per-session store.

use super::*;

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
