//! Telling the upstream who the client is: XCLIENT, the Received field, PROXY headers.

use super::*;

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
