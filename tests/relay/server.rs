//! The server around the sessions: the connection limit, shutdown, logs, `check`
//! and the development upstream.

use super::*;

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
