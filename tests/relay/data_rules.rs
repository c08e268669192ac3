//! The DATA rules and the limits: no smuggled terminator, no bare line ending, every
//! limit enforced, a trickling client cut off.

use super::*;

#[test]
fn smuggled_terminators_never_reach_the_upstream() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(&upstream.address(), "");
    let attempts: &[&[u8]] = &[
        b"Subject: a\r\n\r\nx\n.\nMAIL FROM:<evil@example.org>\r\n",
        b"Subject: a\r\n\r\nx\r.\rMAIL FROM:<evil@example.org>\r\n",
        b"Subject: a\r\n\r\nx\n.\r\nMAIL FROM:<evil@example.org>\r\n",
        b"Subject: a\r\n\r\nx\r\n.\nMAIL FROM:<evil@example.org>\r\n",
        b"Subject: a\r\n\r\nx\r\n.\rMAIL FROM:<evil@example.org>\r\n",
    ];
    for attempt in attempts {
        let mut client = proxy.client();
        ehlo(&mut client);
        client.expect("MAIL FROM:<a@example.org>", 250);
        client.expect("RCPT TO:<b@example.com>", 250);
        client.expect("DATA", 354);
        client.send(attempt);
        client.send(b"RCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n.\r\n");
        let reply = client.read_reply();
        assert_eq!(
            reply.lines,
            ["550 5.6.0 Message contains bare CR or LF; lines must end with CRLF"],
            "{attempt:?}"
        );
        client.expect("NOOP", 250);
    }
    thread::sleep(Duration::from_millis(200));
    assert!(upstream.messages().is_empty());
    for session in upstream.recorded() {
        assert!(
            !session
                .commands
                .iter()
                .any(|c| c.contains("evil") || c.contains("victim")),
            "{:?}",
            session.commands
        );
    }
}

#[test]
fn bare_line_endings_are_rejected_or_normalised_in_every_position() {
    let positions: &[(&[u8], &[u8])] = &[
        (b"\nstart\r\n", b"\r\nstart\r\n"),
        (b"\rstart\r\n", b"\r\nstart\r\n"),
        (b"mid\ndle\r\n", b"mid\r\ndle\r\n"),
        (b"mid\rdle\r\n", b"mid\r\ndle\r\n"),
        (b"end\n\r\n", b"end\r\n\r\n"),
        (b"end\r\r\n", b"end\r\n\r\n"),
        (b"last\n", b"last\r\n"),
        (b"last\r", b"last\r\n"),
    ];
    let reject_upstream = RecordingUpstream::start();
    let rejecting = Proxy::start(&reject_upstream.address(), "");
    let normalise_upstream = RecordingUpstream::start();
    let normalising = Proxy::start(
        &normalise_upstream.address(),
        "[smtp]\nbare_line_endings = \"normalize\"\n",
    );
    for (index, (content, normalised)) in positions.iter().enumerate() {
        let wire = [b"Subject: bare\r\n\r\n".as_slice(), content, b"\r\n.\r\n"].concat();
        let mut client = rejecting.client();
        ehlo(&mut client);
        assert_eq!(
            client
                .send_message("a@example.org", &["b@example.com"], &wire)
                .code,
            550,
            "{content:?}"
        );
        let mut client = normalising.client();
        ehlo(&mut client);
        assert_eq!(
            client
                .send_message("a@example.org", &["b@example.com"], &wire)
                .code,
            250,
            "{content:?}"
        );
        let received = &normalise_upstream.wait_messages(index + 1)[index];
        let expected = [
            b"Subject: bare\r\n\r\n".as_slice(),
            normalised,
            b"\r\n.\r\n",
        ]
        .concat();
        assert_eq!(
            String::from_utf8_lossy(received),
            String::from_utf8_lossy(&expected),
            "{content:?}"
        );
    }
    thread::sleep(Duration::from_millis(200));
    assert!(
        reject_upstream.messages().is_empty(),
        "a rejected message must not be completed upstream"
    );
}

#[test]
fn limits_are_enforced() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(
        &upstream.address(),
        "[smtp]\nmax_recipients = 3\nmax_message_size = 2000\ntext_line_limit = 1000\nmax_errors = 4\n",
    );
    let mut client = proxy.client();
    ehlo(&mut client);
    // Command line: 512 octets with CRLF is fine, 513 is not.
    client.expect(&format!("NOOP {}", "x".repeat(505)), 250);
    client.expect(&format!("NOOP {}", "x".repeat(506)), 500);
    client.expect("MAIL FROM:<a@example.org>", 250);
    for n in 0..3 {
        client.expect(&format!("RCPT TO:<r{n}@example.com>"), 250);
    }
    let reply = client.expect("RCPT TO:<r4@example.com>", 452);
    assert!(reply.lines[0].starts_with("452 4.5.3"), "{reply:?}");
    client.expect("DATA", 354);
    client.send(
        &[
            b"Subject: big\r\n\r\n".as_slice(),
            &[b"y".repeat(900), b"\r\n".to_vec()].concat().repeat(3),
            b".\r\n",
        ]
        .concat(),
    );
    let reply = client.read_reply();
    assert!(reply.lines[0].starts_with("552 5.3.4"), "{reply:?}");
    client.expect("MAIL FROM:<a@example.org>", 250);
    client.expect("RCPT TO:<b@example.com>", 250);
    client.expect("DATA", 354);
    client.send(
        &[
            b"Subject: wide\r\n\r\n".as_slice(),
            &b"w".repeat(999),
            b"\r\n.\r\n",
        ]
        .concat(),
    );
    assert_eq!(client.read_reply().code, 500);
    client.expect("MAIL FROM:<a@example.org> SIZE=2001", 552);
    // Errors: one was the long line; three more reach the limit of 4.
    client.expect("BOGUS", 500);
    client.expect("MAIL FROM:broken", 501);
    // A RCPT behind the refused MAIL (SIZE=2001) would be excused: RSET ends that.
    client.expect("RSET", 250);
    let reply = client.command("RCPT TO:<x@example.com>");
    assert_eq!(reply.code, 503);
    let last = client.read_reply();
    assert!(last.lines[0].starts_with("421 4.7.0"), "{last:?}");
    assert!(client.is_closed());
    thread::sleep(Duration::from_millis(200));
    assert!(upstream.messages().is_empty());
}

#[test]
fn a_slow_trickle_client_is_cut_off() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(
        &upstream.address(),
        "[smtp]\ncommand_timeout = \"1s\"\ndata_timeout = \"1s\"\n",
    );
    // A command that never completes, one byte every 100 ms.
    let mut client = proxy.client();
    let started = std::time::Instant::now();
    for byte in b"EHLO trickle.example.with.a.long.name.that.takes.a.while\r\n" {
        if !client.try_send(&[*byte]) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    let reply = client.read_reply();
    assert!(reply.lines[0].starts_with("421 4.4.2"), "{reply:?}");
    // The same during DATA: the whole phase is bounded.
    let mut client = proxy.client();
    ehlo(&mut client);
    client.expect("MAIL FROM:<a@example.org>", 250);
    client.expect("RCPT TO:<b@example.com>", 250);
    client.expect("DATA", 354);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        if !client.try_send(b"x") {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let reply = client.read_reply();
    assert!(reply.lines[0].starts_with("421 4.4.2"), "{reply:?}");
    assert!(upstream.messages().is_empty());
}
