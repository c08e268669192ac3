//! The relay end to end: the real binary between a test client and a recording
//! upstream, checking exact bytes, ordering, every upstream failure, the DATA rules
//! and each limit.

mod common;

use std::{sync::Arc, thread, time::Duration};

use common::{Action, Client, FULL_EHLO, Proxy, RecordingUpstream, closed_port};

fn ehlo(client: &mut Client) -> common::ClientReply {
    client.expect("EHLO client.test", 250)
}

/// Dot-stuffs content the way a client must, and appends the terminator.
fn stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

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
    // One summary line per message.
    let summaries = proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("\"message\":\"message\""))
        .count();
    assert_eq!(summaries, 5);
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
    let reply = client.send_message("a@example.org", &["b@example.com"], &wire);
    assert_eq!(reply.code, 250, "{reply:?}");
    assert_eq!(upstream.wait_messages(1)[0], wire);
    // Streamed, not held: the proxy's peak memory stays far below the message size.
    let peak = proxy.peak_rss_kib();
    assert!(peak < 16 * 1024, "peak RSS {peak} KiB for a 25 MB message");
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

fn upstream_failing(trigger: &'static str, action: Action) -> RecordingUpstream {
    RecordingUpstream::scripted(
        FULL_EHLO,
        Arc::new(move |line| {
            if line.starts_with(trigger) {
                action.clone()
            } else {
                Action::Default
            }
        }),
    )
}

/// Runs a transaction against a failing upstream; returns the reply codes the client
/// got for MAIL, RCPT, DATA, and the final dot (0 where the step was not reached).
fn transaction_codes(proxy: &Proxy) -> Vec<u16> {
    let mut client = proxy.client();
    ehlo(&mut client);
    let mut codes = vec![client.command("MAIL FROM:<a@example.org>").code];
    if codes[0] != 250 {
        return codes;
    }
    codes.push(client.command("RCPT TO:<b@example.com>").code);
    if codes[1] != 250 {
        return codes;
    }
    codes.push(client.command("DATA").code);
    if codes[2] != 354 {
        return codes;
    }
    client.send(b"Subject: x\r\n\r\n");
    client.send(&b"body line\r\n".repeat(20_000));
    client.send(b".\r\n");
    codes.push(client.try_read_reply().map_or(0, |r| r.code));
    codes
}

const SHORT_TIMEOUTS: &str = "[upstream.timeouts]\nconnect = \"1s\"\ngreeting = \"1s\"\ncommand = \"1s\"\ndata_init = \"1s\"\ndata_block = \"1s\"\ndata_termination = \"1s\"\n";
/// Longer than every timeout in SHORT_TIMEOUTS, with a wide margin.
const TOO_SLOW: Duration = Duration::from_secs(3);

/// Which DATA path a failure case runs on.
#[derive(Clone, Copy, PartialEq)]
enum DataPath {
    /// No plugin wants DATA: the message streams through after the upstream's 354.
    Streamed,
    /// A DATA plugin is on the chain: the proxy answers 354 itself, spools the
    /// message, runs the hook, and only then sends DATA upstream.
    Spooled,
}

/// Every way the upstream can fail, and the codes the client must get on `path` for
/// MAIL, RCPT, DATA and the final dot: never a 2xx for the message.
fn failure_cases(path: DataPath) -> Vec<(&'static str, &'static str, Action, Vec<u16>)> {
    // Upstream failures at or after its DATA: on the streamed path the client's DATA
    // gets the 451; on the spooled path the client already has the proxy's 354, and
    // the reply to its final dot is the 451.
    let at_data = match path {
        DataPath::Streamed => vec![250, 250, 451],
        DataPath::Spooled => vec![250, 250, 354, 451],
    };
    vec![
        (
            "greeting refused",
            "<connect>",
            Action::Reply("554 5.3.2 go away".into()),
            vec![451],
        ),
        ("greeting dropped", "<connect>", Action::Drop, vec![451]),
        (
            "greeting too slow",
            "<connect>",
            Action::Delay(TOO_SLOW),
            vec![451],
        ),
        ("EHLO dropped", "EHLO", Action::Drop, vec![451]),
        ("MAIL dropped", "MAIL", Action::Drop, vec![451]),
        ("MAIL too slow", "MAIL", Action::Delay(TOO_SLOW), vec![451]),
        (
            "MAIL answered with 354",
            "MAIL",
            Action::Reply("354 go on".into()),
            vec![451],
        ),
        ("RCPT dropped", "RCPT", Action::Drop, vec![250, 451]),
        (
            "RCPT answered with 354",
            "RCPT",
            Action::Reply("354 go on".into()),
            vec![250, 451],
        ),
        ("DATA dropped", "DATA", Action::Drop, at_data.clone()),
        (
            "DATA too slow",
            "DATA",
            Action::Delay(TOO_SLOW),
            at_data.clone(),
        ),
        (
            "DATA answered with 250, as if the message were taken",
            "DATA",
            Action::Reply("250 2.0.0 fine".into()),
            at_data,
        ),
        (
            "dropped mid-DATA",
            "<data>",
            Action::Drop,
            vec![250, 250, 354, 451],
        ),
        (
            "final reply dropped",
            ".",
            Action::Drop,
            vec![250, 250, 354, 451],
        ),
        (
            "final reply too slow",
            ".",
            Action::Delay(TOO_SLOW),
            vec![250, 250, 354, 451],
        ),
        (
            "final reply a 354",
            ".",
            Action::Reply("354 more, please".into()),
            vec![250, 250, 354, 451],
        ),
        (
            "final reply tempfail",
            ".",
            Action::Reply("451 4.3.0 try later".into()),
            vec![250, 250, 354, 451],
        ),
    ]
}

/// The proxy's config for `path`, in front of `upstream`, with short timeouts.
fn failing_proxy(upstream: &str, path: DataPath) -> Proxy {
    match path {
        DataPath::Streamed => Proxy::start(upstream, SHORT_TIMEOUTS),
        DataPath::Spooled => Proxy::start_with(&format!(
            "plugins = [\"headers\"]\n\n[upstream]\naddress = \"{upstream}\"\nclient_address = \"none\"\n{SHORT_TIMEOUTS}\n\
             [plugins.headers]\npath = \"{}\"\nconfig = {{ add = [{{ name = \"X-Test\", value = \"1\" }}] }}\n",
            common::component("headers").display()
        )),
    }
}

/// Runs every failure case on `path`, each in its own thread (they mostly wait).
fn every_failure_gives_a_4xx(path: DataPath) {
    let runs: Vec<_> = failure_cases(path)
        .into_iter()
        .map(|(name, trigger, action, expected)| {
            thread::spawn(move || {
                let upstream = upstream_failing(trigger, action);
                let proxy = failing_proxy(&upstream.address(), path);
                assert_eq!(transaction_codes(&proxy), expected, "{name}");
                if trigger != "." {
                    assert!(
                        upstream.messages().is_empty(),
                        "{name}: the upstream must not have a complete message"
                    );
                }
            })
        })
        .collect();
    for run in runs {
        run.join().unwrap();
    }
    let proxy = failing_proxy(&closed_port(), path);
    assert_eq!(transaction_codes(&proxy), [451], "upstream unreachable");
}

#[test]
fn every_upstream_failure_gives_the_client_a_4xx() {
    every_failure_gives_a_4xx(DataPath::Streamed);
}

#[test]
fn every_upstream_failure_gives_the_client_a_4xx_when_a_plugin_spools_the_message() {
    every_failure_gives_a_4xx(DataPath::Spooled);
}
#[test]
fn after_a_failure_the_next_transaction_opens_a_new_upstream_session() {
    let upstream = upstream_failing(".", Action::Drop);
    let proxy = Proxy::start(&upstream.address(), SHORT_TIMEOUTS);
    let mut client = proxy.client();
    ehlo(&mut client);
    assert_eq!(
        client
            .send_message("a@example.org", &["b@example.com"], b"x\r\n.\r\n")
            .code,
        451
    );
    assert_eq!(
        client
            .send_message("a@example.org", &["b@example.com"], b"x\r\n.\r\n")
            .code,
        451
    );
    assert_eq!(upstream.sessions().len(), 2);
}

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

/// The XCLIENT commands a proxy in front of a Postfix 3.7-like upstream sends for a
/// client connecting from `from`, and the commands that followed them.
fn xclient_for(proxy_config: &str, from: &str) -> (Vec<String>, Vec<String>) {
    let mut extensions = FULL_EHLO.to_vec();
    extensions.push("XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT");
    let upstream = RecordingUpstream::scripted(&extensions, Arc::new(|_| Action::Default));
    let proxy = Proxy::start(&upstream.address(), proxy_config);
    let mut client = Client::connect_from(from, proxy.address);
    client.expect("EHLO client.test", 250);
    let reply = client.send_message("a@example.org", &["b@example.com"], b"x\r\n.\r\n");
    assert_eq!(reply.code, 250, "{reply:?}");
    let commands = upstream.sessions()[0].commands.clone();
    let first = commands
        .iter()
        .position(|c| c.starts_with("XCLIENT"))
        .expect("XCLIENT sent");
    let after = commands[first..]
        .iter()
        .position(|c| !c.starts_with("XCLIENT"))
        .map_or(commands.len(), |n| first + n);
    (commands[first..after].to_vec(), commands[after..].to_vec())
}

/// The value of `attribute` in an XCLIENT command.
fn xclient_value<'a>(command: &'a str, attribute: &str) -> &'a str {
    let prefix = format!("{attribute}=");
    command
        .split(' ')
        .find_map(|word| word.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {attribute} in {command}"))
}

#[test]
fn xclient_tells_the_upstream_the_real_client_and_its_host_names() {
    let xclient = "client_address = \"xclient\"\n";
    for from in ["127.0.0.1", "127.0.0.2"] {
        let (commands, after) = xclient_for(xclient, from);
        assert_eq!(commands.len(), 1, "{commands:?}");
        let command = &commands[0];
        assert!(
            command
                .starts_with("XCLIENT HELO=client.test PROTO=ESMTP DESTADDR=127.0.0.1 DESTPORT="),
            "{command}"
        );
        assert!(
            command.contains(&format!(" ADDR={from} PORT=")),
            "{command}"
        );
        assert!(after[0].starts_with("EHLO "), "EHLO again after XCLIENT");
        assert!(after[1].starts_with("MAIL FROM:"), "{after:?}");
        // Loopback addresses have names on every machine ("localhost" by RFC 6761, or
        // /etc/hosts), and only 127.0.0.1's name resolves back to it. The outcomes for
        // other addresses are in tests/client_names.rs.
        let (reverse, name) = (
            xclient_value(command, "REVERSE_NAME"),
            xclient_value(command, "NAME"),
        );
        assert!(!reverse.starts_with('['), "{command}");
        if from == "127.0.0.1" {
            assert_eq!(name, reverse, "{command}");
        } else {
            assert_eq!(name, "[UNAVAILABLE]", "{command}");
        }
    }
    // Without the lookup the upstream is told the name is unknown.
    let (commands, _) = xclient_for(
        &format!("{xclient}client_name_lookup = false\n"),
        "127.0.0.1",
    );
    assert_eq!(xclient_value(&commands[0], "REVERSE_NAME"), "[UNAVAILABLE]");
    assert_eq!(xclient_value(&commands[0], "NAME"), "[UNAVAILABLE]");
}

#[test]
fn a_helo_name_postfix_would_refuse_in_xclient_is_sent_as_unavailable() {
    // Postfix answers an XCLIENT value over 255 octets with 501, which would fail
    // every session of such a client.
    let helo = vec!["h".repeat(59); 5].join(".");
    let mut extensions = FULL_EHLO.to_vec();
    extensions.push("XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT");
    let upstream = RecordingUpstream::scripted(&extensions, Arc::new(|_| Action::Default));
    let proxy = Proxy::start(&upstream.address(), "client_address = \"xclient\"\n");
    let mut client = proxy.client();
    client.expect(&format!("EHLO {helo}"), 250);
    client.expect("MAIL FROM:<a@example.org>", 250);
    let command = upstream.sessions()[0]
        .command_starting("XCLIENT")
        .to_string();
    assert_eq!(xclient_value(&command, "HELO"), "[UNAVAILABLE]");
}

#[test]
fn a_received_field_goes_first_when_configured() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(
        &upstream.address(),
        "received_header = true\n[server]\nhostname = \"proxy.test\"\n",
    );
    let mut client = Client::connect_from("127.0.0.2", proxy.address);
    ehlo(&mut client);
    let body = b"Subject: traced\r\n\r\n.dot\r\n";
    let reply = client.send_message("a@example.org", &["b@example.com"], &stuff(body));
    assert_eq!(reply.code, 250, "{reply:?}");
    let reply = client.send_message(
        "a@example.org",
        &["b@example.com", "c@example.com"],
        &stuff(body),
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let messages = upstream.wait_messages(2);
    let id = common::json_field(&proxy.wait_for_log("\"message\":\"message\""), "id").unwrap();
    for (message, recipient) in messages.iter().zip(["\r\n\tfor <b@example.com>", ""]) {
        let text = String::from_utf8_lossy(message);
        let (field, rest) = text.split_once(";\r\n\t").expect("a Received field");
        assert_eq!(
            field,
            format!(
                "Received: from client.test (unknown [127.0.0.2])\r\n\
                 \tby proxy.test (Portcullis) with ESMTP id {id}{recipient}"
            )
        );
        // The date line, then the client's message byte for byte (as it was on the
        // wire: dot-stuffed, with its terminator).
        let (date, content) = rest.split_once("\r\n").unwrap();
        assert!(date.ends_with(" +0000") && date.len() == 31, "{date:?}");
        assert_eq!(content.as_bytes(), stuff(body));
    }
}

#[test]
fn xclient_not_offered_fails_closed() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(&upstream.address(), "client_address = \"xclient\"\n");
    let mut client = proxy.client();
    ehlo(&mut client);
    client.expect("MAIL FROM:<a@example.org>", 451);
    assert!(upstream.sessions().is_empty());
    // The session the proxy opened for it still ends as SMTP sessions end.
    common::wait_until("the upstream session ends with QUIT", || {
        upstream.recorded().iter().any(|r| {
            r.commands.iter().any(|c| c == "EHLO localhost")
                && r.commands.last().is_some_and(|c| c == "QUIT")
        })
    });
}

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
fn proxy_protocol_headers_come_first() {
    for (mode, prefix) in [
        ("proxy-v1", b"PROXY TCP4 127.0.0.1 127.0.0.1 ".as_slice()),
        (
            "proxy-v2",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f\x00\x00\x01".as_slice(),
        ),
    ] {
        let upstream = RecordingUpstream::expecting_proxy_header();
        let proxy = Proxy::start(
            &upstream.address(),
            &format!("client_address = \"{mode}\"\n"),
        );
        let mut client = proxy.client();
        ehlo(&mut client);
        client.expect("MAIL FROM:<a@example.org>", 250);
        let sessions: Vec<_> = upstream
            .recorded()
            .into_iter()
            .filter(|r| r.raw.windows(4).any(|w| w == b"MAIL"))
            .collect();
        assert!(
            sessions[0].raw.starts_with(prefix),
            "{mode}: {:?}",
            String::from_utf8_lossy(&sessions[0].raw[..40])
        );
    }
}

#[test]
fn the_connection_limit_answers_421() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(&upstream.address(), "[server]\nmax_connections = 1\n");
    let mut first = proxy.client();
    let mut second = Client::connect(proxy.address);
    let reply = second.read_reply();
    assert!(reply.lines[0].starts_with("421 4.7.0"), "{reply:?}");
    assert!(second.is_closed());
    first.expect("QUIT", 221);
    thread::sleep(Duration::from_millis(200));
    proxy.client().expect("NOOP", 250);
}

#[test]
fn shutdown_lets_transactions_finish_and_closes_idle_sessions() {
    let upstream = RecordingUpstream::start();
    let mut proxy = Proxy::start(&upstream.address(), "[server]\ndrain_timeout = \"5s\"\n");
    let mut idle = proxy.client();
    let mut busy = proxy.client();
    ehlo(&mut busy);
    busy.expect("MAIL FROM:<a@example.org>", 250);
    busy.expect("RCPT TO:<b@example.com>", 250);
    proxy.terminate();
    let reply = idle.read_reply();
    assert!(reply.lines[0].starts_with("421 4.3.2"), "{reply:?}");
    busy.expect("DATA", 354);
    busy.send(b"Subject: in flight\r\n\r\nstill delivered\r\n.\r\n");
    assert_eq!(busy.read_reply().code, 250);
    let reply = busy.read_reply();
    assert!(reply.lines[0].starts_with("421 4.3.2"), "{reply:?}");
    assert!(proxy.wait_exit());
    assert_eq!(upstream.messages().len(), 1);
}

#[test]
fn shutdown_past_the_drain_time_closes_transactions_without_accepting() {
    let upstream = RecordingUpstream::start();
    let mut proxy = Proxy::start(&upstream.address(), "[server]\ndrain_timeout = \"300ms\"\n");
    let mut busy = proxy.client();
    ehlo(&mut busy);
    busy.expect("MAIL FROM:<a@example.org>", 250);
    busy.expect("RCPT TO:<b@example.com>", 250);
    busy.expect("DATA", 354);
    busy.send(b"Subject: slow\r\n\r\npart one\r\n");
    proxy.terminate();
    let reply = busy.read_reply();
    assert!(reply.lines[0].starts_with("421 4.3.2"), "{reply:?}");
    assert!(proxy.wait_exit());
    assert!(upstream.messages().is_empty());
}

#[test]
fn vrfy_and_expn_can_be_relayed() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(
        &upstream.address(),
        "[smtp]\nvrfy = \"relay\"\nexpn = \"refuse\"\n",
    );
    let mut client = proxy.client();
    ehlo(&mut client);
    assert_eq!(
        client.expect("VRFY postmaster", 252).lines,
        ["252 2.0.0 upstream says maybe"]
    );
    client.expect("EXPN staff", 502);
}

#[test]
fn text_logs_into_a_pipe_carry_no_colour_codes() {
    // An operator's log file or journald reads the proxy's stderr through a pipe.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"127.0.0.1:9\"\nclient_address = \"none\"\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["--log-format", "text", "run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let listening = loop {
        let line = received
            .recv_timeout(common::WAIT)
            .expect("a 'listening' line");
        if line.contains("listening") {
            break line;
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(listening.contains("INFO"), "{listening}");
    assert!(!listening.contains('\u{1b}'), "{listening:?}");
}

#[test]
fn check_names_the_key_and_line_of_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\n\n[upstream]\naddress = \"x:1\"\n\n[smtp]\nmax_recipients = -4\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 9") && stderr.contains("smtp.max_recipients"),
        "{stderr}"
    );
    let good = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../config/portcullis.toml"),
        ])
        // The example config names its plugin relative to the repository root.
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(
        String::from_utf8_lossy(&good.stdout)
            .contains("plugin recipients: hooks (RCPT), instances shared by sessions")
    );
    let version = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("portcullis "));
}

#[test]
fn the_development_upstream_writes_each_message_to_disk() {
    let proxy = Proxy::start_with("[upstream]\ndevelopment_folder = \"mail-out\"\n");
    let mut client = proxy.client();
    ehlo(&mut client);
    let reply = client.send_message(
        "a@example.org",
        &["b@example.com", "c@example.com"],
        b"Subject: hello\r\n\r\n..dot\r\n.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let files: Vec<_> = std::fs::read_dir(proxy.dir().join("mail-out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].extension().is_some_and(|e| e == "eml"));
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(
        text,
        "Return-Path: <a@example.org>\r\nX-Envelope-To: <b@example.com>, <c@example.com>\r\nSubject: hello\r\n\r\n.dot\r\n"
    );
}

#[test]
fn an_upstream_421_is_relayed_and_ends_the_client_session() {
    let upstream = upstream_failing(
        "RCPT",
        Action::Reply("421 4.3.2 upstream.test Service shutting down".into()),
    );
    let proxy = Proxy::start(&upstream.address(), "");
    let mut client = proxy.client();
    ehlo(&mut client);
    client.expect("MAIL FROM:<a@example.org>", 250);
    let reply = client.expect("RCPT TO:<b@example.com>", 421);
    assert_eq!(
        reply.lines,
        ["421 4.3.2 upstream.test Service shutting down"]
    );
    assert!(client.is_closed());
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
