//! The upstream sessions themselves: greeted, reused, replaced and ended with QUIT.

use super::*;

#[test]
fn every_upstream_session_the_proxy_gives_up_ends_with_quit() {
    // The upstream refuses the client's own greeting, and RSET.
    let upstream = RecordingUpstream::scripted(
        FULL_EHLO,
        Arc::new(|line| {
            if line.starts_with("EHLO refused.test") || line.starts_with("HELO refused.test") {
                Action::Reply("550 5.7.1 Your HELO name is not welcome here".into())
            } else if line == "RSET" {
                Action::Reply("500 5.5.1 No resets today".into())
            } else {
                Action::Default
            }
        }),
    );
    let proxy = Proxy::start(&upstream.address(), "");
    // The upstream's verdict on the client's HELO name is the client's answer.
    let mut client = proxy.client();
    client.expect("EHLO refused.test", 250);
    let reply = client.expect("MAIL FROM:<a@example.org>", 550);
    assert_eq!(
        reply.lines,
        ["550 5.7.1 Your HELO name is not welcome here"]
    );
    client.expect("QUIT", 221);
    // A session whose RSET was refused is closed.
    let mut client = proxy.client();
    client.expect("EHLO fine.test", 250);
    client.expect("MAIL FROM:<a@example.org>", 250);
    client.expect("RSET", 250);
    client.expect("QUIT", 221);
    common::wait_until("both upstream sessions end with QUIT", || {
        let ended: Vec<_> = upstream
            .recorded()
            .into_iter()
            .filter(|r| {
                r.commands
                    .iter()
                    .any(|c| c.starts_with("EHLO refused.test") || c == "RSET")
            })
            .filter(|r| r.commands.last().is_some_and(|c| c == "QUIT"))
            .collect();
        ended.len() == 2
    });
}

#[test]
fn ehlo_waits_for_a_silent_upstream_only_briefly() {
    // An upstream that takes connections and never greets: the capability probe
    // would wait its five-minute greeting timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let held = thread::spawn(move || {
        let mut streams = Vec::new();
        for stream in silent.incoming().take(4) {
            streams.push(stream);
        }
        streams
    });
    let proxy = Proxy::start(&address, "capabilities_wait = \"500ms\"\n");
    let mut client = proxy.client();
    let reply = client.expect("EHLO client.test", 250);
    assert!(
        !reply.lines.iter().any(|l| l.contains("PIPELINING")),
        "nothing the upstream offers is known: {reply:?}"
    );
    proxy.wait_for_log("the upstream's extensions are not known yet");
    drop(held);
}

#[test]
fn an_idle_upstream_session_that_timed_out_is_replaced() {
    // After the first message the upstream announces its idle timeout, as Postfix does.
    let upstream = upstream_failing(
        ".",
        Action::Reply(
            "250 2.0.0 Ok: queued as Q1\r\n421 4.4.2 upstream.test Error: timeout exceeded".into(),
        ),
    );
    let proxy = Proxy::start(&upstream.address(), "");
    let mut client = proxy.client();
    ehlo(&mut client);
    assert_eq!(
        client
            .send_message("a@example.org", &["b@example.com"], b"one\r\n.\r\n")
            .code,
        250
    );
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        client
            .send_message("a@example.org", &["b@example.com"], b"two\r\n.\r\n")
            .code,
        250
    );
    assert_eq!(
        upstream.sessions().len(),
        2,
        "a fresh upstream session for the second message"
    );
}

#[test]
fn idle_upstream_sessions_are_reused_when_configured() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(
        &upstream.address(),
        "reuse = { idle_timeout = \"1s\", max_uses = 2 }\n",
    );
    for name in ["first.test", "second.test", "third.test"] {
        let mut client = proxy.client();
        client.expect(&format!("EHLO {name}"), 250);
        assert_eq!(
            client
                .send_message("a@example.org", &["b@example.com"], b"x\r\n.\r\n")
                .code,
            250
        );
        client.expect("QUIT", 221);
        thread::sleep(Duration::from_millis(100));
    }
    let sessions = upstream.sessions();
    assert_eq!(
        sessions.len(),
        2,
        "max_uses = 2: two client sessions per upstream session"
    );
    let mails = sessions[0]
        .commands
        .iter()
        .filter(|c| c.starts_with("MAIL"))
        .count();
    assert_eq!(mails, 2, "{:?}", sessions[0].commands);
    common::wait_until("the session that reached max_uses is closed", || {
        upstream.sessions()[0]
            .commands
            .last()
            .is_some_and(|c| c == "QUIT")
    });
    // The third client's session is kept, then QUIT after the idle timeout.
    common::wait_until("the kept session is closed after idling", || {
        upstream.sessions()[1]
            .commands
            .last()
            .is_some_and(|c| c == "QUIT")
    });
}

#[test]
fn an_upstream_that_refuses_ehlo_gets_helo() {
    let upstream = upstream_failing(
        "EHLO",
        Action::Reply("502 5.5.2 Error: command not recognized".into()),
    );
    let proxy = Proxy::start(&upstream.address(), "");
    let mut client = proxy.client();
    let reply = ehlo(&mut client);
    assert_eq!(
        reply.lines.len(),
        1,
        "no extensions can be relayed: {reply:?}"
    );
    assert_eq!(
        client
            .send_message("a@example.org", &["b@example.com"], b"x\r\n.\r\n")
            .code,
        250
    );
    let commands = &upstream.sessions()[0].commands;
    assert!(
        commands[0].starts_with("EHLO ") && commands[1].starts_with("HELO "),
        "{commands:?}"
    );
}

/// The connections that greeted as this client (the capability probe greets as the
/// proxy).
fn client_sessions(upstream: &RecordingUpstream, name: &str) -> Vec<common::Recorded> {
    upstream
        .recorded()
        .into_iter()
        .filter(|r| r.commands.iter().any(|c| c == &format!("EHLO {name}")))
        .collect()
}

#[test]
fn the_upstream_session_opens_at_ehlo_by_default_and_at_mail_when_asked() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(&upstream.address(), "");
    let mut client = proxy.client();
    client.expect("EHLO early.test", 250);
    // Before any MAIL, the upstream has been greeted as the client.
    common::wait_until("the upstream session opened after EHLO", || {
        client_sessions(&upstream, "early.test").len() == 1
    });
    client.expect("MAIL FROM:<a@example.org>", 250);
    client.expect("RCPT TO:<b@example.com>", 250);
    client.expect("DATA", 354);
    client.send(b"Subject: early\r\n\r\nhi\r\n.\r\n");
    assert_eq!(client.read_reply().code, 250);
    client.expect("QUIT", 221);
    let sessions = client_sessions(&upstream, "early.test");
    assert_eq!(sessions.len(), 1, "one upstream session for the client");
    assert_eq!(sessions[0].messages.len(), 1);

    // A client that greets and leaves: the opened session ends with QUIT.
    let mut client = proxy.client();
    client.expect("EHLO leaving.test", 250);
    client.expect("QUIT", 221);
    common::wait_until("the unused upstream session ended with QUIT", || {
        client_sessions(&upstream, "leaving.test")
            .first()
            .is_some_and(|r| r.commands.last().is_some_and(|c| c == "QUIT"))
    });

    // open = "mail": nothing upstream until MAIL.
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(&upstream.address(), "open = \"mail\"\n");
    let mut client = proxy.client();
    client.expect("EHLO late.test", 250);
    thread::sleep(Duration::from_millis(300));
    assert!(client_sessions(&upstream, "late.test").is_empty());
    client.expect("MAIL FROM:<a@example.org>", 250);
    assert_eq!(client_sessions(&upstream, "late.test").len(), 1);
    client.expect("QUIT", 221);
}

#[test]
fn an_upstream_that_fails_while_opening_early_is_a_451_at_mail() {
    // Nothing listens upstream: EHLO still answers (offering what it can), the
    // session opened behind it fails, and MAIL hears so, as without the early open.
    let proxy = Proxy::start(&closed_port(), "capabilities_wait = \"100ms\"\n");
    let mut client = proxy.client();
    client.expect("EHLO early.test", 250);
    proxy.wait_for_log("opening the upstream session ahead of MAIL");
    let reply = client.expect("MAIL FROM:<a@example.org>", 451);
    assert!(reply.lines[0].starts_with("451 4."), "{reply:?}");
    client.expect("QUIT", 221);
}

#[test]
fn with_open_at_connect_the_upstream_is_connected_before_the_client_greets() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(&upstream.address(), "open = \"connect\"\n");
    common::wait_until("the capability probe ended", || {
        upstream
            .recorded()
            .first()
            .is_some_and(|r| r.commands.last().is_some_and(|c| c == "QUIT"))
    });
    let mut client = proxy.client();
    // Connected and greeted by the upstream, but told nothing before the client's
    // own greeting, which is the first thing it hears.
    common::wait_until("the upstream connection opened at connect", || {
        upstream.recorded().len() == 2
    });
    thread::sleep(Duration::from_millis(100));
    assert!(
        upstream.recorded()[1].commands.is_empty(),
        "{:?}",
        upstream.recorded()[1].commands
    );
    client.expect("EHLO prompt.test", 250);
    let wire = b"Subject: prompt\r\n\r\nhi\r\n.\r\n";
    let reply = client.send_message("a@example.org", &["b@example.com"], wire);
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("QUIT", 221);
    let sessions = upstream.recorded();
    assert_eq!(sessions.len(), 2, "one upstream session for the client");
    assert_eq!(sessions[1].commands[0], "EHLO prompt.test");
    assert_eq!(sessions[1].messages.len(), 1);

    // A client that leaves without greeting: its upstream connection hears QUIT only.
    let client = proxy.client();
    common::wait_until("the second client's upstream connection", || {
        upstream.recorded().len() == 3
    });
    drop(client);
    common::wait_until("the unused upstream connection ended with QUIT", || {
        upstream.recorded()[2].commands == ["QUIT"]
    });
}

#[test]
fn an_upstream_session_opened_at_connect_that_went_away_is_opened_anew() {
    // The connection opened at connect is gone when the client greets (as after the
    // upstream's idle timeout): the client's EHLO closes it the first time.
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let upstream = RecordingUpstream::scripted(
        FULL_EHLO,
        Arc::new(move |line| {
            if line == "EHLO slow.test" && !dropped.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                Action::Drop
            } else {
                Action::Default
            }
        }),
    );
    let proxy = Proxy::start(&upstream.address(), "open = \"connect\"\n");
    let mut client = proxy.client();
    client.expect("EHLO slow.test", 250);
    let wire = b"Subject: slow\r\n\r\nhi\r\n.\r\n";
    let reply = client.send_message("a@example.org", &["b@example.com"], wire);
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("QUIT", 221);
    let sessions = client_sessions(&upstream, "slow.test");
    assert_eq!(sessions.len(), 2, "the dropped one and the one opened anew");
    assert_eq!(sessions[1].messages.len(), 1);
}
