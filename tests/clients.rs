//! Real SMTP clients through the proxy: Python's smtplib and swaks.

mod common;

use std::process::Command;

use common::{Proxy, RecordingUpstream, require_program};

/// Runs swaks against the proxy; returns whether it succeeded and its transcript.
fn swaks(proxy: &Proxy, to: &str, extra: &[&str]) -> (bool, String) {
    let output = Command::new("swaks")
        .args([
            "--server",
            &proxy.address.to_string(),
            "--from",
            "dave@example.org",
            "--to",
            to,
        ])
        .args(extra)
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), transcript)
}

#[test]
fn python_smtplib_sends_through_the_proxy() {
    if !require_program("python3") {
        return;
    }
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(&upstream.address(), "");
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
message = EmailMessage()
message["From"] = "alice@example.org"
message["To"] = "bob@example.com, carol@example.com"
message["Subject"] = "smtplib through portcullis"
message.set_content(".leading dot\nsecond line\n")
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as smtp:
    smtp.ehlo("python.test")
    assert smtp.has_extn("pipelining") and smtp.has_extn("8bitmime"), smtp.esmtp_features
    refused = smtp.send_message(message)
    assert refused == {}, refused
    print(smtp.noop()[0])
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(proxy.address.port().to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "250");
    let message = String::from_utf8(upstream.wait_messages(1).remove(0)).unwrap();
    assert!(
        message.contains("Subject: smtplib through portcullis\r\n"),
        "{message}"
    );
    assert!(
        message.contains("\r\n..leading dot\r\nsecond line\r\n"),
        "dot-stuffed once on the wire: {message}"
    );
    let session = &upstream.sessions()[0];
    assert!(
        session
            .commands
            .contains(&"RCPT TO:<carol@example.com>".to_string())
    );
}

#[test]
fn swaks_sends_through_the_proxy_with_pipelining() {
    if !require_program("swaks") {
        return;
    }
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start(&upstream.address(), "");
    let (success, transcript) = swaks(
        &proxy,
        "erin@example.com",
        &[
            "--helo",
            "swaks.test",
            "--pipeline",
            "--header",
            "Subject: swaks through portcullis",
            "--body",
            "hello from swaks",
        ],
    );
    assert!(success, "{transcript}");
    assert!(
        transcript.contains("250 2.0.0 Ok: queued as Q1"),
        "{transcript}"
    );
    let message = String::from_utf8(upstream.wait_messages(1).remove(0)).unwrap();
    assert!(
        message.contains("Subject: swaks through portcullis")
            && message.contains("hello from swaks"),
        "{message}"
    );
}

#[test]
fn swaks_sees_a_rejection_from_the_upstream() {
    if !require_program("swaks") {
        return;
    }
    let upstream = RecordingUpstream::scripted(
        common::FULL_EHLO,
        std::sync::Arc::new(|line| {
            if line.starts_with("RCPT") {
                common::Action::Reply("550 5.1.1 No such user here".into())
            } else {
                common::Action::Default
            }
        }),
    );
    let proxy = Proxy::start(&upstream.address(), "");
    let (success, transcript) = swaks(&proxy, "ghost@example.com", &[]);
    assert!(!success, "{transcript}");
    assert!(
        transcript.contains("550 5.1.1 No such user here"),
        "{transcript}"
    );
}
