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
