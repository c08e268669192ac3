//! TLS on both legs: SNI, close_notify, STARTTLS injection, certificate reload, and
//! an upstream whose STARTTLS cannot be trusted.

use super::*;

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
    proxy.wait_for_log("\"message\":\"reloaded\"");
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
    proxy.wait_for_log("reload failed; nothing changed");
    let (ok, output) = python(
        "import smtplib, ssl, sys\ns = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=20)\ns._host = 'mail.example.test'\ns.starttls(context=ssl.create_default_context(cafile=sys.argv[2]))\ns.quit()\n",
        &[&port, ca],
    );
    assert!(ok, "{output}");
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
