//! AUTH at the edge and in passthrough, with real clients (smtplib, swaks): every
//! reply code, the throttle, verifier plugins, and no password in any log.

use super::*;

#[test]
fn smtplib_starttls_then_login_delivers_and_the_upstream_learns_the_login() {
    if !require_program("python3") {
        return;
    }
    let files = Files::new();
    let upstream = RecordingUpstream::scripted(XCLIENT_EHLO, Arc::new(|_| Action::Default));
    let proxy = submission(&files, &upstream, "received_header = true\n");
    let script = r#"
import smtplib, ssl, sys
host, port, ca, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = smtplib.SMTP(host, port, timeout=20)
s.ehlo("client.example")
assert s.has_extn("starttls"), s.esmtp_features
assert not s.has_extn("auth"), "AUTH offered before TLS"
code, text = s.mail("alice@example.org")
assert code == 530 and b"5.7.0" in text, (code, text)
s._host = "mail.example.test"
code, _ = s.starttls(context=ssl.create_default_context(cafile=ca))
assert code == 220, code
assert not s.has_extn("starttls")
s.ehlo("client.example")
assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"], s.esmtp_features
code, text = s.login("alice", password)
assert code == 235 and b"2.7.0" in text, (code, text)
s.sendmail("alice@example.org", ["user@example.com"], b"Subject: submitted\r\n\r\nHello.\r\n")
try:
    s.sendmail("bob@example.org", ["user@example.com"], b"Subject: spoofed\r\n\r\nNo.\r\n")
    raise SystemExit("a sender alice does not own was accepted")
except smtplib.SMTPSenderRefused as refused:
    assert refused.smtp_code == 553 and b"5.7.1" in refused.smtp_error, refused
s.quit()
print("ok")
"#;
    let (ok, output) = python(
        script,
        &[
            "127.0.0.1",
            &proxy.address.port().to_string(),
            files.pki.ca.to_str().unwrap(),
            ALICE_PASSWORD,
        ],
    );
    assert!(ok, "{output}\n{:#?}", proxy.logs());
    let messages = upstream.wait_messages(1);
    assert_eq!(messages.len(), 1);
    let message = String::from_utf8_lossy(&messages[0]);
    assert!(message.contains("Subject: submitted"));
    // Encrypted and authenticated (RFC 3848).
    assert!(
        message.starts_with("Received: from client.example ("),
        "{message}"
    );
    assert!(
        message.contains(" (Portcullis) with ESMTPSA id "),
        "{message}"
    );
    let session = &upstream.sessions()[0];
    let xclient = session.command_starting("XCLIENT");
    assert!(xclient.split(' ').any(|w| w == "LOGIN=alice"), "{xclient}");
    let summary = proxy.wait_for_log("\"message\":\"message\"");
    assert!(
        summary.contains("\"login\":\"alice\"") && summary.contains("\"tls\":\"TLSv1.3\""),
        "{summary}"
    );
    assert!(
        !session
            .commands
            .iter()
            .any(|c| c.contains("bob@example.org")),
        "{:?}",
        session.commands
    );
}

#[test]
fn swaks_authenticates_with_plain_and_login_over_starttls_and_implicit_tls() {
    if !require_program("swaks") {
        return;
    }
    let files = Files::new();
    let upstream = RecordingUpstream::scripted(XCLIENT_EHLO, Arc::new(|_| Action::Default));
    let proxy = submission(
        &files,
        &upstream,
        &format!(
            "[[listener]]\nname = \"smtps\"\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\n{}",
            files.edge_auth("required = true\n")
        ),
    );
    let smtps = proxy.listener("smtps");
    let runs: [(&str, &str, std::net::SocketAddr); 3] = [
        ("PLAIN", "--tls", proxy.address),
        ("LOGIN", "--tls", proxy.address),
        ("PLAIN", "--tls-on-connect", smtps),
    ];
    for (mechanism, tls, address) in runs {
        let output = Command::new("swaks")
            .args(["--server", &address.to_string(), tls])
            .args(["--auth", mechanism, "--auth-user", "bob"])
            .args(["--auth-password", BOB_PASSWORD])
            .args(["--from", "bob@example.net", "--to", "user@example.com"])
            .args(["--header", &format!("Subject: swaks {mechanism} {tls}")])
            .output()
            .unwrap();
        let transcript = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{transcript}");
        assert!(transcript.contains("235 2.7.0"), "{transcript}");
    }
    let messages = upstream.wait_messages(3);
    for (mechanism, tls, _) in runs {
        let subject = format!("Subject: swaks {mechanism} {tls}");
        assert!(
            messages
                .iter()
                .any(|m| String::from_utf8_lossy(m).contains(&subject)),
            "{subject}"
        );
    }
    for session in upstream.sessions() {
        assert!(
            session
                .commands
                .iter()
                .any(|c| c.starts_with("XCLIENT") && c.split(' ').any(|w| w == "LOGIN=bob")),
            "{:?}",
            session.commands
        );
    }
}

#[test]
fn every_auth_reply_code() {
    let files = Files::new();
    let mut extensions = XCLIENT_EHLO.to_vec();
    extensions.push("AUTH PLAIN");
    let upstream = RecordingUpstream::scripted(&extensions, Arc::new(|_| Action::Default));
    // "test": plaintext AUTH allowed, PLAIN only, AUTH required, sender map.
    // "strict": STARTTLS, no plaintext AUTH. "open": AUTH optional, both mechanisms.
    let proxy = Proxy::start_with(&format!(
        "{}\n[[listener]]\nname = \"strict\"\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n{}\n[[listener]]\nname = \"open\"\naddress = \"127.0.0.1:0\"\n{}\n{}\n[upstream]\naddress = \"{}\"\nclient_address = \"xclient\"\n",
        files.edge_auth("allow_plaintext = true\nrequired = true\nmechanisms = [\"PLAIN\"]\n"),
        files.edge_auth(""),
        files.edge_auth("allow_plaintext = true\n"),
        files.certificates(),
        upstream.address()
    ));
    let mut client = proxy.client();
    let expect = |client: &mut Client, line: &str, code: u16, enhanced: &str| {
        let reply = client.command(line);
        assert_eq!(reply.code, code, "{line}: {reply:?}");
        assert!(reply.text().contains(enhanced), "{line}: {reply:?}");
    };
    expect(
        &mut client,
        &format!("AUTH PLAIN {}", plain("alice", ALICE_PASSWORD)),
        503,
        "5.5.1",
    );
    let ehlo = client.expect("EHLO client.example", 250);
    assert!(
        ehlo.lines.iter().any(|l| l.ends_with("AUTH PLAIN")),
        "{ehlo:?}"
    );
    expect(&mut client, "MAIL FROM:<alice@example.org>", 530, "5.7.0");
    expect(&mut client, "AUTH CRAM-MD5", 504, "5.5.4");
    expect(&mut client, "AUTH LOGIN", 534, "5.7.9");
    expect(&mut client, "AUTH PLAIN not*base64!", 501, "5.5.2");
    expect(&mut client, "AUTH PLAIN", 334, "");
    expect(&mut client, "*", 501, "5.0.0");
    expect(
        &mut client,
        &format!("AUTH PLAIN {}", plain("alice", "wrong")),
        535,
        "5.7.8",
    );
    expect(
        &mut client,
        &format!("AUTH PLAIN {}", plain("nobody", "x")),
        535,
        "5.7.8",
    );
    expect(&mut client, "AUTH PLAIN", 334, "");
    expect(&mut client, &plain("alice", ALICE_PASSWORD), 235, "2.7.0");
    expect(
        &mut client,
        &format!("AUTH PLAIN {}", plain("alice", ALICE_PASSWORD)),
        503,
        "5.5.1",
    );
    expect(&mut client, "MAIL FROM:<mallory@example.org>", 553, "5.7.1");
    expect(
        &mut client,
        "MAIL FROM:<alice@example.org> AUTH=<>",
        250,
        "",
    );
    expect(&mut client, "RCPT TO:<user@example.com>", 250, "");
    expect(&mut client, "RSET", 250, "");
    expect(&mut client, "MAIL FROM:<> AUTH=bad=value", 501, "5.5.4");
    client.expect("QUIT", 221);
    // RFC 4954 §5: an authenticated client's AUTH= goes on as given.
    let session = upstream.sessions().remove(0);
    assert!(
        session
            .commands
            .contains(&"MAIL FROM:<alice@example.org> AUTH=<>".to_string()),
        "{:?}",
        session.commands
    );

    // AUTH before TLS where plaintext AUTH is not allowed.
    let mut strict = Client::connect(proxy.listener("strict"));
    strict.read_reply();
    let ehlo = strict.expect("EHLO client.example", 250);
    assert!(
        ehlo.text().contains("STARTTLS") && !ehlo.text().contains("AUTH"),
        "{ehlo:?}"
    );
    expect(
        &mut strict,
        &format!("AUTH PLAIN {}", plain("alice", ALICE_PASSWORD)),
        538,
        "5.7.11",
    );

    // AUTH inside a transaction; LOGIN step by step; mallory may not use alice's address.
    let mut open = Client::connect(proxy.listener("open"));
    open.read_reply();
    open.expect("EHLO client.example", 250);
    expect(
        &mut open,
        "MAIL FROM:<someone@elsewhere.example> AUTH=alice+40example.org",
        250,
        "",
    );
    expect(
        &mut open,
        &format!("AUTH PLAIN {}", plain("alice", ALICE_PASSWORD)),
        503,
        "5.5.1",
    );
    expect(&mut open, "RSET", 250, "");
    expect(&mut open, "MAIL FROM:<alice@example.org>", 553, "5.7.1");
    expect(&mut open, "RSET", 250, "");
    let challenge = open.command("AUTH LOGIN");
    assert_eq!(challenge.lines, ["334 VXNlcm5hbWU6"]);
    let challenge = open.command(&b64("mallory"));
    assert_eq!(challenge.lines, ["334 UGFzc3dvcmQ6"]);
    expect(&mut open, &b64(BOB_PASSWORD), 235, "2.7.0");
    expect(&mut open, "MAIL FROM:<alice@example.org>", 553, "5.7.1");
    expect(&mut open, "MAIL FROM:<mallory@example.org>", 250, "");
    open.expect("QUIT", 221);
    // A client that did not authenticate is taken as AUTH=<>, whatever it claimed.
    let commands: Vec<String> = upstream.all_commands();
    assert!(
        commands.contains(&"MAIL FROM:<someone@elsewhere.example> AUTH=<>".to_string()),
        "{commands:?}"
    );
}

#[test]
fn failed_logins_are_throttled_across_sessions() {
    let files = Files::new();
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "{}\n[auth_throttle]\nmax_failures = 3\ndelay = \"300ms\"\nmax_delay = \"2s\"\nwindow = \"1m\"\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        files.edge_auth("allow_plaintext = true\n"),
        upstream.address()
    ));
    let wrong = format!("AUTH PLAIN {}", plain("alice", "guess"));
    let mut waits = Vec::new();
    for attempt in 1..=3 {
        let mut client = proxy.client();
        client.expect("EHLO attacker.example", 250);
        let started = Instant::now();
        let reply = client.command(&wrong);
        waits.push(started.elapsed());
        assert_eq!(reply.code, 535, "attempt {attempt}: {reply:?}");
        if attempt == 3 {
            let reply = client.read_reply();
            assert_eq!(reply.code, 421, "{reply:?}");
            assert!(reply.text().contains("4.7.0"), "{reply:?}");
            assert!(client.is_closed());
        }
    }
    // Growing delays: 300 ms after the first failure, 600 ms after the second.
    assert!(waits[0] >= Duration::from_millis(300), "{waits:?}");
    assert!(waits[1] >= Duration::from_millis(600), "{waits:?}");
    // A new session from the same address is turned away, even with the right password.
    let mut client = proxy.client();
    client.expect("EHLO attacker.example", 250);
    let reply = client.command(&format!("AUTH PLAIN {}", plain("alice", ALICE_PASSWORD)));
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(client.is_closed());
    // Another address is not affected.
    let mut other = Client::connect_from("127.0.0.3", proxy.address);
    other.expect("EHLO other.example", 250);
    let reply = other.command(&format!("AUTH PLAIN {}", plain("alice", ALICE_PASSWORD)));
    assert_eq!(reply.code, 235, "{reply:?}");
}

#[test]
fn no_password_reaches_the_logs_at_trace_level() {
    let files = Files::new();
    let upstream = RecordingUpstream::scripted(XCLIENT_EHLO, Arc::new(|_| Action::Default));
    let proxy = Proxy::start_logging(
        &format!(
            "{}\n[upstream]\naddress = \"{}\"\nclient_address = \"xclient\"\n",
            files.edge_auth("allow_plaintext = true\n"),
            upstream.address()
        ),
        "trace",
    );
    let mut client = proxy.client();
    client.expect("EHLO client.example", 250);
    client.expect(
        &format!("AUTH PLAIN {}", plain("alice", "wrong-Secret-1")),
        535,
    );
    client.expect("AUTH LOGIN", 334);
    client.expect(&b64("alice"), 334);
    client.expect(&b64("wrong-Secret-2"), 535);
    client.expect("AUTH PLAIN", 334);
    client.expect(&plain("alice", ALICE_PASSWORD), 235);
    client.send_message(
        "alice@example.org",
        &["user@example.com"],
        b"Subject: x\r\n\r\nx\r\n.\r\n",
    );
    client.expect("QUIT", 221);
    upstream.wait_messages(1);
    proxy.wait_for_log("disconnected");
    let logs = proxy.logs().join("\n");
    assert!(
        logs.contains("\"level\":\"DEBUG\""),
        "verbose logging is on"
    );
    assert!(logs.contains("authenticated"), "{logs}");
    for secret in [ALICE_PASSWORD, "wrong-Secret-1", "wrong-Secret-2"] {
        for form in [
            secret.to_string(),
            b64(secret),
            plain("alice", secret),
            b64(&format!("alice\0{secret}")),
        ] {
            assert!(!logs.contains(&form), "{form:?} appears in the logs");
        }
    }
}

#[test]
fn a_verifier_plugin_checks_passwords_and_the_auth_hook_has_the_last_word() {
    // Once with an instance per call (verifier) and per session (AUTH hook), once with
    // both plugins shareable, so every call borrows the one idle instance.
    for shareable in [false, true] {
        verifier_and_auth_hook(shareable);
    }
}

#[test]
fn passthrough_relays_the_exchange_to_the_upstream() {
    // The upstream accepts dave/pw in PLAIN (initial response) and LOGIN (two steps).
    let step = Arc::new(Mutex::new(0));
    let state = step.clone();
    let script: common::Script = Arc::new(move |line: &str| {
        let mut step = state.lock().unwrap();
        let reply = |text: &str| Action::Reply(text.into());
        if line == format!("AUTH PLAIN {}", plain("dave", "pw")) {
            return reply("235 2.7.0 Upstream says welcome");
        }
        if line.starts_with("AUTH PLAIN ") {
            return reply("535 5.7.8 Upstream says no");
        }
        if line == "AUTH LOGIN" {
            *step = 1;
            return reply("334 VXNlcm5hbWU6");
        }
        match *step {
            1 => {
                *step = 2;
                reply("334 UGFzc3dvcmQ6")
            }
            2 => {
                *step = 0;
                if line == b64("pw") {
                    reply("235 2.7.0 Upstream says welcome")
                } else {
                    reply("535 5.7.8 Upstream says no")
                }
            }
            _ => Action::Default,
        }
    });
    let mut extensions = common::FULL_EHLO.to_vec();
    extensions.push("AUTH PLAIN LOGIN CRAM-MD5");
    let upstream = RecordingUpstream::scripted(&extensions, script);
    let proxy = Proxy::start_with(&format!(
        "[listener.auth]\nmode = \"passthrough\"\nallow_plaintext = true\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        upstream.address()
    ));
    let mut client = proxy.client();
    let ehlo = client.expect("EHLO client.example", 250);
    assert!(
        ehlo.lines.iter().any(|l| l.ends_with("AUTH PLAIN LOGIN")),
        "{ehlo:?}"
    );
    let no = client.expect(&format!("AUTH PLAIN {}", plain("dave", "bad")), 535);
    assert_eq!(no.lines, ["535 5.7.8 Upstream says no"]);
    client.expect("AUTH LOGIN", 334);
    client.expect(&b64("dave"), 334);
    let welcome = client.expect(&b64("pw"), 235);
    assert_eq!(welcome.lines, ["235 2.7.0 Upstream says welcome"]);
    let reply = client.command("MAIL FROM:<dave@example.org> AUTH=dave+40example.org");
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("RCPT TO:<user@example.com>", 250);
    client.expect("QUIT", 221);
    let commands: Vec<String> = upstream.all_commands();
    assert!(
        commands.contains(&"MAIL FROM:<dave@example.org> AUTH=dave+40example.org".to_string()),
        "{commands:?}"
    );
    assert!(
        commands.contains(&b64("dave")) && commands.contains(&b64("pw")),
        "{commands:?}"
    );
    let logs = proxy.logs().join("\n");
    for secret in [plain("dave", "bad"), b64("pw"), "\\u0000dave\\u0000".into()] {
        assert!(!logs.contains(&secret), "{secret:?} in the logs");
    }
    drop(upstream);

    // Upstream gone: 454, never a login.
    let down_proxy = Proxy::start_with(&format!(
        "[listener.auth]\nmode = \"passthrough\"\nallow_plaintext = true\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        closed_port()
    ));
    let mut client = down_proxy.client();
    client.expect("EHLO client.example", 250);
    let reply = client.command(&format!("AUTH PLAIN {}", plain("dave", "pw")));
    assert_eq!(reply.code, 454, "{reply:?}");
    assert!(reply.text().contains("4.7.0"), "{reply:?}");
}

#[test]
fn replay_runs_the_auth_hook_for_a_login() {
    let fault = component("fault-plugin");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("replay.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"sub\"\naddress = \"127.0.0.1:0\"\nplugins = [\"guard\"]\n[upstream]\naddress = \"127.0.0.1:1\"\nclient_address = \"none\"\n[plugins.guard]\npath = {fault:?}\nconfig = {{ mode = \"refuse-login\" }}\n"
        ),
    )
    .unwrap();
    let message = dir.path().join("m.eml");
    std::fs::write(&message, "Subject: hi\n\nhello\n").unwrap();
    let replay = |login: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["replay", "--config"])
            .arg(&config)
            .args(["--listener", "sub", "--login", login])
            .args(["--from", "a@example.org", "--to", "b@example.com"])
            .arg(&message)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let refused = replay("mallory");
    assert!(
        refused.lines().any(|l| l
            == "auth                     guard            reject 554 5.7.1 Not from here, not now"),
        "{refused}"
    );
    assert!(!refused.contains("MAIL FROM"), "{refused}");
    let accepted = replay("alice");
    assert!(
        accepted
            .lines()
            .any(|l| l == "auth                     guard            continue"),
        "{accepted}"
    );
    assert!(
        accepted.contains("  MAIL FROM:<a@example.org>"),
        "{accepted}"
    );
}
