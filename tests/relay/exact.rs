//! What the upstream gets and what the client hears: the exact bytes of each
//! message, the upstream's own replies, pipelining, and the extensions offered.

use super::*;

#[test]
fn messages_reach_the_upstream_byte_for_byte() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(&upstream.address(), "");
    let mut client = proxy.client();
    ehlo(&mut client);
    let long_line = [b"X".repeat(998), b"\r\n".to_vec()].concat();
    let bodies: Vec<Vec<u8>> = vec![
        b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmid.dle\r\n.\r\nend\r\n".to_vec(),
        [
            b"Subject: 8bit\r\n\r\n".to_vec(),
            (128u8..=255).collect(),
            b"\r\n\xc3\xa9t\xc3\xa9\r\n".to_vec(),
        ]
        .concat(),
        [
            b"Subject: long\r\n\r\n".to_vec(),
            long_line.clone(),
            long_line,
        ]
        .concat(),
        Vec::new(),
    ];
    for (index, body) in bodies.iter().enumerate() {
        let wire = stuff(body);
        let reply = client.send_message("sender@example.org", &["rcpt@example.com"], &wire);
        assert_eq!(reply.code, 250, "message {index}: {reply:?}");
        assert_eq!(
            reply.lines[0],
            format!("250 2.0.0 Ok: queued as Q{}", index + 1),
            "the upstream's own text"
        );
    }
    // SMTPUTF8 envelope and parameters pass unchanged.
    client.expect(
        "MAIL FROM:<sénder@exämple.org> SMTPUTF8 BODY=8BITMIME SIZE=100 RET=HDRS ENVID=abc+2Bdef",
        250,
    );
    client.expect(
        "RCPT TO:<réceiver@exämple.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;r+40x",
        250,
    );
    client.expect("DATA", 354);
    client.send(&stuff("Subject: ünïcode\r\n\r\nhi\r\n".as_bytes()));
    assert_eq!(client.read_reply().code, 250);
    client.expect("QUIT", 221);

    let messages = upstream.wait_messages(5);
    common::wait_until("the upstream got QUIT", || {
        upstream.sessions()[0]
            .commands
            .last()
            .is_some_and(|c| c == "QUIT")
    });
    for (index, body) in bodies.iter().enumerate() {
        assert_eq!(
            messages[index],
            stuff(body),
            "message {index} differs upstream"
        );
    }
    let session = &upstream.sessions()[0];
    assert!(session.commands.contains(&"MAIL FROM:<sénder@exämple.org> SMTPUTF8 BODY=8BITMIME SIZE=100 RET=HDRS ENVID=abc+2Bdef".to_string()));
    assert!(session.commands.contains(
        &"RCPT TO:<réceiver@exämple.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;r+40x".to_string()
    ));
    assert_eq!(
        session
            .commands
            .iter()
            .filter(|c| c.starts_with("EHLO"))
            .count(),
        1,
        "one upstream session reused for every message"
    );
    // One summary line per message (the log reader may lag the replies).
    let summaries = || {
        proxy
            .logs()
            .into_iter()
            .filter(|l| l.contains("\"message\":\"message\""))
            .count()
    };
    common::wait_until("five summary lines", || summaries() >= 5);
    assert_eq!(summaries(), 5);
}

#[test]
fn a_25_megabyte_message_streams_through_unchanged() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(&upstream.address(), "");
    let mut client = proxy.client();
    ehlo(&mut client);
    let line: Vec<u8> = (0..76)
        .map(|i| b'A' + (i % 26) as u8)
        .chain(*b"\r\n")
        .collect();
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    while body.len() < 25 * 1024 * 1024 {
        body.extend_from_slice(&line);
        body.extend_from_slice(b".dot line\r\n");
    }
    let wire = stuff(&body);
    let before = proxy.peak_rss_kib();
    let reply = client.send_message("a@example.org", &["b@example.com"], &wire);
    assert_eq!(reply.code, 250, "{reply:?}");
    assert_eq!(upstream.wait_messages(1)[0], wire);
    // Streamed, not held: the message raises the proxy's peak memory by far less
    // than its size (the peak before it depends on the build, not on the relay).
    let peak = proxy.peak_rss_kib();
    assert!(
        peak - before < 8 * 1024,
        "peak RSS {before} KiB before, {peak} KiB after a 25 MB message"
    );
}

#[test]
fn upstream_replies_are_relayed_exactly() {
    let upstream = RecordingUpstream::scripted(
        FULL_EHLO,
        Arc::new(|line| {
            match line {
            l if l.contains("unknown@") => Action::Reply("550-5.1.1 <unknown@example.com>: Recipient address rejected:\r\n550 5.1.1 User unknown in virtual mailbox table".into()),
            l if l.contains("full@") => Action::Reply("452 4.2.2 Mailbox full".into()),
            "." => Action::Reply("554 5.7.1 Message rejected: looks like spam".into()),
            _ => Action::Default,
        }
        }),
    );
    let proxy = Proxy::start(&upstream.address(), "");
    let mut client = proxy.client();
    ehlo(&mut client);
    client.expect("MAIL FROM:<a@example.org>", 250);
    let reply = client.expect("RCPT TO:<unknown@example.com>", 550);
    assert_eq!(
        reply.lines,
        [
            "550-5.1.1 <unknown@example.com>: Recipient address rejected:",
            "550 5.1.1 User unknown in virtual mailbox table"
        ]
    );
    assert_eq!(
        client.expect("RCPT TO:<full@example.com>", 452).lines,
        ["452 4.2.2 Mailbox full"]
    );
    client.expect("RCPT TO:<ok@example.com>", 250);
    client.expect("DATA", 354);
    client.send(b"Subject: x\r\n\r\nbuy now\r\n.\r\n");
    assert_eq!(
        client.read_reply().lines,
        ["554 5.7.1 Message rejected: looks like spam"]
    );
}

#[test]
fn pipelined_commands_are_answered_in_order_and_sent_in_one_round_trip() {
    let upstream = RecordingUpstream::scripted(
        FULL_EHLO,
        Arc::new(|line| {
            if line.contains("bad@") {
                Action::Reply("550 5.1.1 no such user".into())
            } else {
                Action::Default
            }
        }),
    );
    let proxy = Proxy::start(&upstream.address(), "");
    let mut client = proxy.client();
    let capabilities = ehlo(&mut client).text();
    assert!(capabilities.contains("PIPELINING"), "{capabilities}");
    client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<one@example.com>\r\nRCPT TO:<bad@example.com>\r\nRCPT TO:<two@example.com>\r\nRCPT TO:broken\r\nDATA\r\n");
    let codes: Vec<u16> = (0..6).map(|_| client.read_reply().code).collect();
    assert_eq!(codes, [250, 250, 550, 250, 501, 354]);
    client.send(b"Subject: p\r\n\r\nbody\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n");
    let codes: Vec<u16> = (0..4).map(|_| client.read_reply().code).collect();
    assert_eq!(codes, [250, 250, 250, 221]);
    let session = &upstream.sessions()[0];
    assert_eq!(
        session.arrived_before_mail_reply[0],
        [
            "RCPT TO:<one@example.com>",
            "RCPT TO:<bad@example.com>",
            "RCPT TO:<two@example.com>"
        ],
        "MAIL and its RCPTs must reach the upstream in one round trip"
    );
}

#[test]
fn pipelined_utf8_recipients_follow_their_mail_smtputf8() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(&upstream.address(), "");
    let mut client = proxy.client();
    ehlo(&mut client);
    client.send("MAIL FROM:<a@example.org> SMTPUTF8\r\nRCPT TO:<ü@example.com>\r\nRSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<ü@example.com>\r\n".as_bytes());
    let codes: Vec<u16> = (0..5).map(|_| client.read_reply().code).collect();
    assert_eq!(codes, [250, 250, 250, 250, 553]);
}

#[test]
fn without_upstream_pipelining_commands_go_one_by_one() {
    let extensions: Vec<&str> = FULL_EHLO
        .iter()
        .copied()
        .filter(|e| *e != "PIPELINING")
        .collect();
    let upstream = RecordingUpstream::scripted(&extensions, Arc::new(|_| Action::Default));
    let proxy = Proxy::start(&upstream.address(), "");
    let mut client = proxy.client();
    assert!(!ehlo(&mut client).text().contains("PIPELINING"));
    client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<one@example.com>\r\n");
    assert_eq!(
        (client.read_reply().code, client.read_reply().code),
        (250, 250)
    );
    assert!(upstream.sessions()[0].arrived_before_mail_reply[0].is_empty());
}

#[test]
fn capabilities_are_the_intersection_with_the_upstream() {
    let upstream = RecordingUpstream::scripted(
        &["SIZE 1000", "8BITMIME", "STARTTLS", "CHUNKING", "ETRN"],
        Arc::new(|_| Action::Default),
    );
    let proxy = Proxy::start(&upstream.address(), "[smtp]\nmax_message_size = 5000\n");
    let mut client = proxy.client();
    let reply = ehlo(&mut client);
    assert_eq!(reply.lines[1..], ["250-SIZE 1000", "250 8BITMIME"]);
    client.expect("MAIL FROM:<a@example.org> SMTPUTF8", 555);
    client.expect("MAIL FROM:<a@example.org> RET=FULL", 555);
    client.expect("MAIL FROM:<a@example.org> XFOO=1", 555);
    client.expect("MAIL FROM:<a@example.org> SIZE=1001", 552);
    client.expect("MAIL FROM:<a@example.org> SIZE=999 BODY=8BITMIME", 250);
    client.expect("RCPT TO:<b@example.com> NOTIFY=NEVER", 555);
}
