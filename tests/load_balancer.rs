//! Behind a load balancer: real HAProxy (Debian's package) in front of the proxy,
//! sending the PROXY protocol (`send-proxy`, `send-proxy-v2`). The address the header
//! names is the client's for the upstream (XCLIENT ADDR), also under implicit TLS,
//! whose handshake follows the header; a connection from an address not trusted, or
//! without a valid header in time, ends before any SMTP byte.

mod common;

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    Action, Client, Proxy, RecordingUpstream,
    config::{TestConfig, table},
    haproxy::Haproxy,
    require_program,
    tls::Pki,
};
use toml::Value;

/// The upstream offers XCLIENT, so it is told each client's address.
fn upstream() -> RecordingUpstream {
    RecordingUpstream::scripted(
        &[
            "PIPELINING",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT REVERSE_NAME",
        ],
        Arc::new(|_| Action::Default),
    )
}

/// The proxy in front of `upstream`, its `test` listener behind balancers on
/// loopback 127.0.0.1 only, taking `versions`.
fn behind_balancer(upstream: &RecordingUpstream, versions: &str) -> TestConfig {
    TestConfig::relaying_to(&upstream.address())
        .set("upstream.client_address", "xclient")
        .set("upstream.client_name_lookup", false)
        .set_on("test", "proxy_protocol", versions)
        .set_on("test", "proxy_trusted", vec!["127.0.0.1/32"])
        .set_on("test", "proxy_timeout", "1s")
}

/// The ADDR of the XCLIENT the upstream got in the session that carried `sender`.
fn xclient_address(upstream: &RecordingUpstream, sender: &str) -> String {
    let session = upstream
        .sessions()
        .into_iter()
        .find(|session| {
            session
                .commands
                .iter()
                .any(|c| c == &format!("MAIL FROM:<{sender}>"))
        })
        .unwrap_or_else(|| panic!("no session with {sender}"));
    let xclient = session.command_starting("XCLIENT");
    xclient
        .split(' ')
        .find_map(|word| word.strip_prefix("ADDR="))
        .unwrap_or_else(|| panic!("no ADDR in {xclient}"))
        .to_string()
}

fn send_one(client: &mut Client, sender: &str) {
    client.expect("EHLO client.example", 250);
    let reply = client.send_message(
        sender,
        &["b@example.com"],
        b"Subject: behind a balancer\r\n\r\nhello\r\n.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
}

#[test]
fn haproxy_tells_the_proxy_each_clients_address_in_v1_and_v2() {
    if !require_program("haproxy") {
        return;
    }
    let upstream = upstream();
    let proxy = behind_balancer(&upstream, "any").start();
    let haproxy = Haproxy::start(&[
        ("send-proxy", proxy.address),
        ("send-proxy-v2", proxy.address),
    ]);
    for (frontend, source, sender) in [
        (haproxy.frontends[0], "127.0.0.2", "v1@example.org"),
        (haproxy.frontends[1], "127.0.0.3", "v2@example.org"),
    ] {
        let mut client = Client::connect_from(source, frontend);
        send_one(&mut client, sender);
        upstream.wait_messages(if sender.starts_with("v1") { 1 } else { 2 });
        assert_eq!(xclient_address(&upstream, sender), source, "{sender}");
    }
    // The session log names the client, not the balancer.
    proxy.wait_for_log("\"client\":\"127.0.0.3:");
}

#[test]
fn the_tls_handshake_follows_the_header_on_an_implicit_tls_listener() {
    if !require_program("haproxy") || !require_program("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let cert = pki.server("mx", &["mx.test"]);
    let upstream = upstream();
    let certificate = table([
        ("cert", cert.cert.display().to_string().into()),
        ("key", cert.key.display().to_string().into()),
    ]);
    let proxy = behind_balancer(&upstream, "v2")
        .set_on("test", "tls", "implicit")
        .set("tls.certificate", Value::Array(vec![certificate.into()]))
        .start();
    let haproxy = Haproxy::start(&[("send-proxy-v2", proxy.address)]);
    let script = r#"
import smtplib, socket, ssl, sys

class Client(smtplib.SMTP_SSL):
    # Connects to HAProxy's address but verifies the proxy's certificate name.
    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout, self.source_address)
        return self.context.wrap_socket(sock, server_hostname="mx.test")

context = ssl.create_default_context(cafile=sys.argv[1])
port = int(sys.argv[2])
with Client("127.0.0.1", port, context=context, source_address=("127.0.0.4", 0),
            timeout=20) as smtp:
    smtp.ehlo("tls-client.example")
    smtp.sendmail("tls@example.org", ["b@example.com"], "Subject: tls\r\n\r\nhi\r\n")
print("sent")
"#;
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(&pki.ca)
        .arg(haproxy.frontends[0].port().to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    upstream.wait_messages(1);
    assert_eq!(xclient_address(&upstream, "tls@example.org"), "127.0.0.4");
}

#[test]
fn a_header_the_proxy_reads_itself_names_the_client() {
    let upstream = upstream();
    let proxy = behind_balancer(&upstream, "v1").start();
    let mut client = Client::connect_from_unread("127.0.0.1", proxy.address);
    client.send(b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 25\r\n");
    assert_eq!(client.read_reply().code, 220);
    send_one(&mut client, "written@example.org");
    upstream.wait_messages(1);
    assert_eq!(
        xclient_address(&upstream, "written@example.org"),
        "192.0.2.9"
    );
}

#[test]
fn connections_without_a_trusted_valid_header_end_before_any_smtp() {
    let upstream = upstream();
    let proxy = behind_balancer(&upstream, "v2").start();
    let v1 = b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 25\r\n".as_slice();
    let mut v2_from_untrusted = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2_from_untrusted.extend_from_slice(&[192, 0, 2, 9, 127, 0, 0, 1, 0x9c, 0x40, 0, 25]);
    let cases: &[(&str, &[u8], &str)] = &[
        ("127.0.0.2", &v2_from_untrusted, "not in proxy_trusted"),
        ("127.0.0.1", b"EHLO client.example\r\n", "no header"),
        ("127.0.0.1", v1, "a v1 header on a v2 listener"),
        (
            "127.0.0.1",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00",
            "a header cut short",
        ),
        ("127.0.0.1", b"", "no byte at all"),
    ];
    for (source, sent, case) in cases {
        let started = Instant::now();
        let mut client = Client::connect_from_unread(source, proxy.address);
        if !sent.is_empty() {
            client.send(sent);
        }
        assert!(client.is_closed(), "{case}: the proxy answered");
        // Closed at once, or once proxy_timeout (1 s) ran out; never left open.
        assert!(started.elapsed() < Duration::from_secs(5), "{case}");
    }
    assert!(upstream.sessions().is_empty());
    proxy.wait_for_log("not a trusted load balancer");
    proxy.wait_for_log("no PROXY protocol header");
}

#[test]
fn a_v2_local_header_keeps_the_balancers_own_address() {
    let upstream = upstream();
    let proxy: Proxy = behind_balancer(&upstream, "any").start();
    let mut client = Client::connect_from_unread("127.0.0.1", proxy.address);
    // LOCAL: the balancer's own connection (a health check), with no addresses.
    client.send(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00");
    assert_eq!(client.read_reply().code, 220);
    send_one(&mut client, "local@example.org");
    upstream.wait_messages(1);
    assert_eq!(xclient_address(&upstream, "local@example.org"), "127.0.0.1");
}
