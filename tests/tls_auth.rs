//! TLS and SMTP AUTH at the edge, driven by real clients (Python's smtplib and ssl,
//! swaks, openssl s_client) against the real binary, with certificates the tests make
//! and a recording upstream that shows exactly what reached the MTA.

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use common::tls::{Pki, ServerCert};
use common::{Action, Client, Proxy, RecordingUpstream, closed_port, component, require_program};

const ALICE_PASSWORD: &str = "correct horse battery";
const BOB_PASSWORD: &str = "Tr0ub4dor&3";
const XCLIENT_EHLO: &[&str] = &[
    "PIPELINING",
    "SIZE 104857600",
    "8BITMIME",
    "ENHANCEDSTATUSCODES",
    "XCLIENT NAME ADDR PROTO HELO PORT LOGIN",
];

/// Certificates, a credentials file (alice: Argon2id made by `portcullis
/// hash-password`; bob: SHA-512-crypt made by `openssl passwd -6`) and a sender-login
/// map, in a folder of their own.
struct Files {
    dir: tempfile::TempDir,
    pki: Pki,
    mail: ServerCert,
    other: ServerCert,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let mail = pki.server("mail", &["mail.example.test"]);
        let other = pki.server("other", &["smtp.example.net", "*.example.net"]);
        let argon = run_with_input(
            Command::new(env!("CARGO_BIN_EXE_portcullis")).arg("hash-password"),
            &format!("{ALICE_PASSWORD}\n"),
        );
        assert!(argon.starts_with("$argon2id$"), "{argon}");
        let sha512 = run_with_input(
            Command::new("openssl").args(["passwd", "-6", "-stdin"]),
            &format!("{BOB_PASSWORD}\n"),
        );
        assert!(sha512.starts_with("$6$"), "{sha512}");
        std::fs::write(
            dir.path().join("users"),
            format!(
                "# login:hash\nalice:{}\nbob:{}\nmallory:{}\n",
                argon.trim(),
                sha512.trim(),
                sha512.trim()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("senders"),
            "alice@example.org alice\n@example.net bob, alice\nmallory@example.org mallory\n",
        )
        .unwrap();
        Files {
            dir,
            pki,
            mail,
            other,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `[listener.auth]` for edge AUTH with the credentials file and sender map.
    fn edge_auth(&self, extra: &str) -> String {
        format!(
            "[listener.auth]\nmode = \"edge\"\ncredentials = {:?}\nsender_logins = {:?}\n{extra}",
            self.path("users"),
            self.path("senders")
        )
    }

    /// Both certificates, mail.example.test first (the default).
    fn certificates(&self) -> String {
        self.mail.toml() + &self.other.toml()
    }
}

fn run_with_input(command: &mut Command, input: &str) -> String {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a Python script with `args`; returns success and everything it printed.
fn python(script: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

fn b64(text: &str) -> String {
    STANDARD.encode(text)
}

fn plain(login: &str, password: &str) -> String {
    b64(&format!("\0{login}\0{password}"))
}

/// The submission listener: STARTTLS required, AUTH required, sender map.
fn submission(files: &Files, upstream: &RecordingUpstream, extra: &str) -> Proxy {
    Proxy::start_with(&format!(
        "tls = \"starttls\"\nrequire_tls = true\n{}\n{}\n[upstream]\naddress = \"{}\"\nclient_address = \"xclient\"\n{extra}",
        files.edge_auth("required = true\n"),
        files.certificates(),
        upstream.address()
    ))
}

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

/// Runs `openssl s_client` with `args`, feeding `input` once the session is up;
/// returns everything it printed.
fn s_client(args: &[&str], input: &str) -> String {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(args)
        .args(["-crlf", "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    thread::spawn(move || {
        for line in input.lines() {
            thread::sleep(Duration::from_millis(300));
            if stdin.write_all(format!("{line}\n").as_bytes()).is_err() {
                return;
            }
        }
    });
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[test]
fn openssl_implicit_tls_chooses_the_certificate_by_sni() {
    if !require_program("openssl") {
        return;
    }
    let files = Files::new();
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "tls = \"implicit\"\n{}\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        files.certificates(),
        upstream.address()
    ));
    let address = proxy.address.to_string();
    let ca = files.pki.ca.to_str().unwrap();
    for (sni, subject) in [
        ("mail.example.test", "CN = mail.example.test"),
        ("smtp.example.net", "CN = smtp.example.net"),
        ("mx.example.net", "CN = smtp.example.net"),
    ] {
        let output = s_client(
            &[
                "-connect",
                &address,
                "-servername",
                sni,
                "-verify_hostname",
                sni,
                "-CAfile",
                ca,
                "-verify_return_error",
            ],
            "EHLO client.example\nQUIT",
        );
        assert!(
            output.contains("Verify return code: 0 (ok)"),
            "{sni}: {output}"
        );
        assert!(
            output.contains(&format!("0 s:{subject}")),
            "{sni}: {output}"
        );
        assert!(output.contains("220 localhost ESMTP"), "{output}");
        assert!(
            output.contains("250-localhost Hello client.example"),
            "{output}"
        );
        assert!(output.contains("221 2.0.0"), "{output}");
    }
    // No SNI at all: the first certificate.
    let output = s_client(
        &["-connect", &address, "-noservername", "-CAfile", ca],
        "QUIT",
    );
    assert!(output.contains("0 s:CN = mail.example.test"), "{output}");
    // TLS below 1.2 is refused by the proxy (security level 0 lets OpenSSL's client
    // offer TLS 1.1 at all, so the refusal is the server's).
    assert!(
        !proxy
            .logs()
            .iter()
            .any(|l| l.contains("TLS handshake failed"))
    );
    let output = s_client(
        &[
            "-connect",
            &address,
            "-tls1_1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-noservername",
        ],
        "QUIT",
    );
    assert!(!output.contains("220 localhost"), "{output}");
    proxy.wait_for_log("TLS handshake failed");
}

#[test]
fn tls_sessions_end_with_close_notify() {
    if !require_program("openssl") {
        return;
    }
    let files = Files::new();
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "tls = \"starttls\"\n[[listener]]\nname = \"implicit\"\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\n{}\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        files.certificates(),
        upstream.address()
    ));
    let ca = files.pki.ca.to_str().unwrap().to_string();
    let starttls = proxy.address.to_string();
    let implicit = proxy.listener("implicit").to_string();
    for (name, mut args) in [
        ("starttls", vec!["-connect", &starttls, "-starttls", "smtp"]),
        ("implicit", vec!["-connect", &implicit]),
    ] {
        args.extend(["-servername", "mail.example.test", "-CAfile", &ca]);
        let output = s_client(&args, "EHLO client.example\nQUIT");
        assert!(output.contains("221 2.0.0"), "{name}: {output}");
        // Without close_notify (RFC 8446 §6.1) OpenSSL reports an unexpected EOF.
        assert!(!output.contains("unexpected eof"), "{name}: {output}");
    }
}

/// A man in the middle on the plaintext leg: forwards both ways and, when the client
/// sends STARTTLS, appends `injected` to the same packet — the CVE-2011-0411 attack.
fn injecting_relay(target: std::net::SocketAddr, injected: &'static str) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else {
            return;
        };
        let server = TcpStream::connect(target).unwrap();
        let (mut client_read, mut server_write) =
            (client.try_clone().unwrap(), server.try_clone().unwrap());
        let (mut server_read, mut client_write) = (server, client);
        thread::spawn(move || {
            let _ = std::io::copy(&mut server_read, &mut client_write);
            let _ = client_write.shutdown(std::net::Shutdown::Both);
        });
        let mut injected_once = false;
        let mut buffer = [0u8; 16384];
        while let Ok(count) = client_read.read(&mut buffer)
            && count > 0
        {
            let mut packet = buffer[..count].to_vec();
            if !injected_once
                && packet
                    .windows(10)
                    .any(|w| w.eq_ignore_ascii_case(b"STARTTLS\r\n"))
            {
                packet.extend_from_slice(injected.as_bytes());
                injected_once = true;
            }
            if server_write.write_all(&packet).is_err() {
                break;
            }
        }
        let _ = server_write.shutdown(std::net::Shutdown::Both);
    });
    address
}

#[test]
fn plaintext_injected_with_starttls_is_not_executed() {
    if !require_program("openssl") {
        return;
    }
    let files = Files::new();
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "tls = \"starttls\"\n{}\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        files.certificates(),
        upstream.address()
    ));
    let relay = injecting_relay(
        proxy.address,
        "MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.com>\r\n",
    );
    let output = s_client(
        &[
            "-connect",
            &relay.to_string(),
            "-starttls",
            "smtp",
            "-name",
            "client.example",
            "-servername",
            "mail.example.test",
            "-CAfile",
            files.pki.ca.to_str().unwrap(),
            "-verify_return_error",
        ],
        "EHLO client.example\nMAIL FROM:<good@client.example>\nRCPT TO:<user@example.com>\nQUIT",
    );
    assert!(output.contains("Verify return code: 0 (ok)"), "{output}");
    // Had the injected MAIL run, the client's own MAIL would get 503 (nested MAIL).
    assert!(output.contains("250 2.1.0 Sender ok"), "{output}");
    assert!(!output.lines().any(|l| l.starts_with("503")), "{output}");
    proxy.wait_for_log("discarding plaintext the client sent after STARTTLS");
    let commands: Vec<String> = upstream.all_commands();
    assert!(
        commands
            .iter()
            .any(|c| c == "MAIL FROM:<good@client.example>"),
        "{commands:?}"
    );
    assert!(
        !commands
            .iter()
            .any(|c| c.contains("evil") || c.contains("victim")),
        "{commands:?}"
    );
}

#[test]
fn second_starttls_and_starttls_where_not_offered() {
    if !require_program("python3") {
        return;
    }
    let files = Files::new();
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "tls = \"starttls\"\n{}\n[[listener]]\nname = \"plain\"\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        files.certificates(),
        upstream.address()
    ));
    let script = r#"
import smtplib, ssl, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s._host = "mail.example.test"
s.starttls(context=ssl.create_default_context(cafile=sys.argv[2]))
code, text = s.docmd("STARTTLS")
assert code == 503 and b"5.5.1" in text, (code, text)
code, _ = s.docmd("MAIL FROM:<a@example.org>")
assert code == 503, "MAIL before EHLO after STARTTLS must be refused: %d" % code
s.ehlo("again.example")
code, _ = s.docmd("MAIL FROM:<a@example.org>")
assert code == 250, code
s.quit()
p = smtplib.SMTP("127.0.0.1", int(sys.argv[3]), timeout=20)
p.ehlo("x.example")
assert not p.has_extn("starttls")
code, _ = p.docmd("STARTTLS")
assert code == 502, code
p.quit()
print("ok")
"#;
    let (ok, output) = python(
        script,
        &[
            &proxy.address.port().to_string(),
            files.pki.ca.to_str().unwrap(),
            &proxy.listener("plain").port().to_string(),
        ],
    );
    assert!(ok, "{output}");
}

#[test]
fn sighup_rereads_certificates_and_keeps_sessions() {
    if !require_program("python3") {
        return;
    }
    let files = Files::new();
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "tls = \"starttls\"\n{}\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        files.mail.toml(),
        upstream.address()
    ));
    // The script prints the certificate's fingerprint, then waits for a line on stdin
    // before going on in the same session.
    let script = r#"
import hashlib, smtplib, ssl, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s._host = "mail.example.test"
s.starttls(context=ssl.create_default_context(cafile=sys.argv[2]))
print(hashlib.sha256(s.sock.getpeercert(binary_form=True)).hexdigest(), flush=True)
sys.stdin.readline()
s.ehlo("still.example")
code, _ = s.noop()
assert code == 250, code
s.quit()
print("still ok", flush=True)
"#;
    let port = proxy.address.port().to_string();
    let ca = files.pki.ca.to_str().unwrap();
    let (mut first, mut first_out, before) = held_session(script, &port, ca);
    let renewed = files.pki.server("mail", &["mail.example.test"]);
    assert_eq!(renewed.cert, files.mail.cert);
    proxy.signal("HUP");
    proxy.wait_for_log("reloaded TLS certificates");
    // Its output is kept open: the script prints again before it ends.
    let (mut second, _second_out, after) = held_session(script, &port, ca);
    assert_ne!(
        before.trim(),
        after.trim(),
        "new sessions get the new certificate"
    );
    first.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    first_out.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("still ok"),
        "the session from before the reload went on"
    );
    assert!(first.wait().unwrap().success());
    second.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(second.wait().unwrap().success());
    // A broken file on reload keeps the certificate in use.
    std::fs::write(&files.mail.cert, "garbage").unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log("TLS reload failed");
    let (ok, output) = python(
        "import smtplib, ssl, sys\ns = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=20)\ns._host = 'mail.example.test'\ns.starttls(context=ssl.create_default_context(cafile=sys.argv[2]))\ns.quit()\n",
        &[&port, ca],
    );
    assert!(ok, "{output}");
}

/// Starts `script` (which prints the certificate's fingerprint, then waits for a line
/// on stdin) against the proxy; returns the child, its output and the fingerprint.
fn held_session(
    script: &str,
    port: &str,
    ca: &str,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
    String,
) {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args([port, ca])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut fingerprint = String::new();
    std::io::BufRead::read_line(&mut output, &mut fingerprint).unwrap();
    (child, output, fingerprint)
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

fn verifier_and_auth_hook(shareable: bool) {
    let upstream = RecordingUpstream::scripted(XCLIENT_EHLO, Arc::new(|_| Action::Default));
    let fault = component("fault-plugin");
    let proxy = Proxy::start_with(&format!(
        "plugins = [\"guard\"]\n[listener.auth]\nmode = \"edge\"\nverifier = \"checker\"\nallow_plaintext = true\n\n[plugins.checker]\npath = {fault:?}\nconfig = {{ mode = \"verifier\", shareable = {shareable} }}\n[plugins.guard]\npath = {fault:?}\nconfig = {{ mode = \"refuse-login\", shareable = {shareable} }}\n[upstream]\naddress = \"{}\"\nclient_address = \"xclient\"\n",
        upstream.address()
    ));
    let loaded_as_shared = proxy
        .logs()
        .iter()
        .filter(|line| line.contains("plugin loaded") && line.contains("\"shared\":true"))
        .count();
    assert_eq!(loaded_as_shared, if shareable { 2 } else { 0 });
    let mut client = proxy.client();
    client.expect("EHLO client.example", 250);
    client.expect(&format!("AUTH PLAIN {}", plain("carol", "nope")), 535);
    let down = client.expect(&format!("AUTH PLAIN {}", plain("backend-down", "x")), 454);
    assert!(down.text().contains("4.7.0"), "{down:?}");
    let refused = client.expect(
        &format!("AUTH PLAIN {}", plain("mallory", "mallory-secret")),
        554,
    );
    assert!(refused.text().contains("Not from here"), "{refused:?}");
    client.expect(
        &format!("AUTH PLAIN {}", plain("carol", "carol-secret")),
        235,
    );
    let reply = client.send_message(
        "carol@example.org",
        &["user@example.com"],
        b"Subject: v\r\n\r\nv\r\n.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let session = upstream.sessions().remove(0);
    assert!(
        session
            .commands
            .iter()
            .any(|c| c.starts_with("XCLIENT") && c.split(' ').any(|w| w == "LOGIN=carol")),
        "{:?}",
        session.commands
    );
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
fn the_upstream_leg_refuses_plaintext_after_its_starttls_reply_and_a_missing_starttls() {
    // An upstream (or a man in the middle) that sends a second reply in the same packet
    // as its 220 to STARTTLS: that reply was never encrypted and must not be read as
    // part of the TLS session.
    let mut extensions = common::FULL_EHLO.to_vec();
    extensions.push("STARTTLS");
    let injecting = RecordingUpstream::scripted(
        &extensions,
        Arc::new(|line: &str| match line {
            "STARTTLS" => {
                Action::Reply("220 2.0.0 Ready to start TLS\r\n250 2.1.0 Sender ok".into())
            }
            _ => Action::Default,
        }),
    );
    let without = RecordingUpstream::start();
    for (upstream, log) in [
        (&injecting, "upstream sent data after its STARTTLS reply"),
        (&without, "upstream does not offer STARTTLS"),
    ] {
        let proxy = Proxy::start(
            &upstream.address(),
            "tls = \"starttls\"\ntls_insecure = true\n",
        );
        let mut client = proxy.client();
        client.expect("EHLO client.example", 250);
        let reply = client.expect("MAIL FROM:<a@example.org>", 451);
        assert!(reply.text().contains("4.4.1"), "{reply:?}");
        proxy.wait_for_log(log);
        let commands: Vec<String> = upstream.all_commands();
        assert!(
            !commands.iter().any(|c| c.starts_with("MAIL")),
            "{commands:?}"
        );
    }
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
