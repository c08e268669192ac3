//! TLS and SMTP AUTH at the edge, driven by real clients (Python's smtplib and ssl,
//! swaks, openssl s_client) against the real binary, with certificates the tests make
//! and a recording upstream that shows exactly what reached the MTA.

mod auth;
#[path = "../common/mod.rs"]
mod common;
mod tls;

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
