//! Portcullis in front of a real Postfix (Debian's package), run as a private instance
//! on loopback with its own configuration, queue and mailbox folders. The client
//! connects from 127.0.0.2 so that the address Postfix sees tells whether XCLIENT or
//! the PROXY header carried the real client (the proxy itself connects from 127.0.0.1).

mod common;

use std::{path::PathBuf, process::Command, thread, time::Duration};

use common::{Client, ClientReply, Proxy, closed_ports, require_program, tls::Pki, wait_until};

/// A private Postfix instance; stopped on drop.
struct Postfix {
    dir: tempfile::TempDir,
    /// Plain smtpd, trusting the proxy for XCLIENT.
    xclient_port: String,
    /// smtpd expecting a PROXY protocol header.
    proxy_protocol_port: String,
    /// smtpd offering STARTTLS with a certificate for postfix.test.
    starttls_port: String,
    /// smtpd with TLS from the first byte (wrapper mode).
    smtps_port: String,
    /// smtpd offering SASL AUTH (Cyrus, sasldb), for passthrough AUTH.
    sasl_port: String,
    /// XCLIENT smtpd refusing clients without a forward-confirmed host name.
    known_name_port: String,
    /// XCLIENT smtpd refusing clients without a PTR record.
    known_reverse_port: String,
    /// XCLIENT smtpd with HELO restrictions (applied at RCPT, smtpd_delay_reject).
    helo_xclient_port: String,
    /// smtpd expecting a PROXY header, with the same HELO restrictions.
    helo_proxy_port: String,
    /// The CA that signed Postfix's certificate.
    ca: PathBuf,
}

impl Postfix {
    fn start() -> Option<Postfix> {
        if !require_program("postfix") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        for folder in ["etc", "queue", "data", "mail"] {
            std::fs::create_dir(root.join(folder)).unwrap();
        }
        run("chmod", &["755", root.to_str().unwrap()]);
        run("chmod", &["777", root.join("mail").to_str().unwrap()]);
        run("chown", &["postfix", root.join("data").to_str().unwrap()]);
        let mut ports = closed_ports(9).into_iter().map(|port| port.to_string());
        let mut port = || ports.next().unwrap();
        let (xclient_port, proxy_protocol_port) = (port(), port());
        let (starttls_port, smtps_port, sasl_port) = (port(), port(), port());
        let (known_name_port, known_reverse_port) = (port(), port());
        let (helo_xclient_port, helo_proxy_port) = (port(), port());
        let helo_checks =
            "-o smtpd_helo_restrictions=reject_invalid_helo_hostname,reject_non_fqdn_helo_hostname";
        let pki = Pki::new(&root.join("etc"));
        let certificate = pki.server("postfix", &["postfix.test"]);
        let (cert, key) = (certificate.cert.display(), certificate.key.display());
        let sasl = sasl_database(&root);
        let r = root.display();
        std::fs::write(
            root.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {r}/queue
data_directory = {r}/data
maillog_file = {r}/maillog
maillog_file_prefixes = {r}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = test
myorigin = postfix.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
smtpd_authorized_xclient_hosts = 127.0.0.1/32
virtual_mailbox_domains = example.test
virtual_mailbox_maps = texthash:{r}/etc/vmailbox
virtual_mailbox_base = {r}/mail
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
alias_maps =
alias_database =
default_transport = error:no delivery outside the test
relay_transport = error:no relay in the test
smtpd_banner = $myhostname ESMTP test instance
smtpd_sasl_authenticated_header = yes
smtpd_tls_received_header = yes
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
cyrus_sasl_config_path = {r}/etc/sasl
smtpd_sasl_local_domain = postfix.test
"
            ),
        )
        .unwrap();
        std::fs::write(root.join("etc/vmailbox"), "user@example.test user/\n").unwrap();
        std::fs::write(
            root.join("etc/master.cf"),
            format!(
                "127.0.0.1:{xclient_port} inet n - n - - smtpd
127.0.0.1:{proxy_protocol_port} inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy
127.0.0.1:{starttls_port} inet n - n - - smtpd -o smtpd_tls_security_level=may
127.0.0.1:{smtps_port} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt
127.0.0.1:{sasl_port} inet n - n - - smtpd -o smtpd_sasl_auth_enable={sasl} -o smtpd_sasl_type=cyrus -o smtpd_sasl_path=smtpd
127.0.0.1:{known_name_port} inet n - n - - smtpd -o smtpd_client_restrictions=reject_unknown_client_hostname
127.0.0.1:{known_reverse_port} inet n - n - - smtpd -o smtpd_client_restrictions=reject_unknown_reverse_client_hostname
127.0.0.1:{helo_xclient_port} inet n - n - - smtpd {helo_checks}
127.0.0.1:{helo_proxy_port} inet n - n - - smtpd {helo_checks} -o smtpd_upstream_proxy_protocol=haproxy
tlsmgr unix - - n 1000? 1 tlsmgr
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
proxymap unix - - n - - proxymap
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"
            ),
        )
        .unwrap();
        let postfix = Postfix {
            dir,
            xclient_port,
            proxy_protocol_port,
            starttls_port,
            smtps_port,
            sasl_port,
            known_name_port,
            known_reverse_port,
            helo_xclient_port,
            helo_proxy_port,
            ca: pki.ca.clone(),
        };
        let status = Command::new("postfix")
            .args(["-c", &postfix.etc(), "start"])
            .status()
            .unwrap();
        assert!(status.success(), "postfix did not start: {}", postfix.log());
        wait_until("postfix accepts connections", || {
            std::net::TcpStream::connect(postfix.address(&postfix.xclient_port)).is_ok()
        });
        Some(postfix)
    }

    fn etc(&self) -> String {
        self.dir.path().join("etc").display().to_string()
    }

    fn address(&self, port: &str) -> String {
        format!("127.0.0.1:{port}")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// The messages delivered to user@example.test.
    fn delivered(&self) -> Vec<String> {
        let folder: PathBuf = self.dir.path().join("mail/user/new");
        let Ok(entries) = std::fs::read_dir(folder) else {
            return Vec::new();
        };
        entries
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect()
    }

    fn wait_delivered(&self, count: usize) -> Vec<String> {
        wait_until("postfix delivered the message", || {
            self.delivered().len() >= count
        });
        self.delivered()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .args(["-c", &self.etc(), "stop"])
            .status();
        // master exits asynchronously; give it a moment before the folder goes away.
        thread::sleep(Duration::from_millis(300));
    }
}

/// The Cyrus SASL set-up of the SASL smtpd: dave / dave-password in a sasldb made by
/// saslpasswd2. Returns "yes" if it could be made (saslpasswd2 installed).
fn sasl_database(root: &std::path::Path) -> &'static str {
    if !require_program("saslpasswd2") {
        return "no";
    }
    let database = root.join("etc/sasldb2");
    std::fs::create_dir(root.join("etc/sasl")).unwrap();
    std::fs::write(
        root.join("etc/sasl/smtpd.conf"),
        format!(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {}\n",
            database.display()
        ),
    )
    .unwrap();
    let mut child = Command::new("saslpasswd2")
        .args([
            "-f",
            database.to_str().unwrap(),
            "-p",
            "-c",
            "-u",
            "postfix.test",
            "dave",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"dave-password").unwrap();
    assert!(child.wait().unwrap().success(), "saslpasswd2 failed");
    run("chmod", &["644", database.to_str().unwrap()]);
    "yes"
}

fn run(program: &str, args: &[&str]) {
    assert!(
        Command::new(program).args(args).status().unwrap().success(),
        "{program} {args:?}"
    );
}

fn proxy_in_front(postfix: &Postfix, port: &str, mode: &str) -> Proxy {
    proxy_with(postfix, port, &format!("client_address = \"{mode}\"\n"))
}

/// A proxy in front of `port` with these `[upstream]` keys.
fn proxy_with(postfix: &Postfix, port: &str, upstream_keys: &str) -> Proxy {
    Proxy::start(
        &postfix.address(port),
        &format!("{upstream_keys}\n[server]\nhostname = \"portcullis.test\"\n"),
    )
}

#[test]
fn postfix_rejections_reach_the_client_unchanged() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let proxy = proxy_in_front(&postfix, &postfix.xclient_port, "xclient");
    let mut client = Client::connect_from("127.0.0.2", proxy.address);
    client.expect("EHLO client.test", 250);
    client.expect("MAIL FROM:<sender@origin.test>", 250);
    let reply = client.expect("RCPT TO:<nobody@example.test>", 550);
    assert_eq!(
        reply.lines,
        [
            "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in virtual mailbox table"
        ]
    );
    // Postfix judges the real client (127.0.0.2), which is not in its mynetworks: no
    // relaying. Had it seen the proxy's 127.0.0.1, it would have relayed.
    let reply = client.expect("RCPT TO:<someone@elsewhere.test>", 454);
    assert!(reply.lines[0].contains("Relay access denied"), "{reply:?}");
}

/// The RCPT replies a client at 127.0.0.2 gets for addresses outside Postfix's
/// domains, through a session at `address`.
fn relay_attempts(address: std::net::SocketAddr) -> Vec<ClientReply> {
    let mut client = Client::connect_from("127.0.0.2", address);
    client.expect("EHLO client.test", 250);
    client.expect("MAIL FROM:<sender@origin.test>", 250);
    let replies = [
        "someone@elsewhere.test",
        "@postfix.test:someone@elsewhere.test",
    ]
    .map(|rcpt| client.command(&format!("RCPT TO:<{rcpt}>")));
    client.expect("QUIT", 221);
    replies.to_vec()
}

#[test]
fn the_default_does_not_make_postfix_an_open_relay() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let postfix_address = postfix.address(&postfix.xclient_port);
    // Postfix trusts the proxy's 127.0.0.1 (mynetworks), not 127.0.0.2.
    let direct = relay_attempts(postfix_address.parse().unwrap());
    for reply in &direct {
        assert!(reply.code >= 400, "{reply:?}");
        assert!(reply.text().contains("Relay access denied"), "{reply:?}");
    }
    // A configuration that does not say how the client reaches Postfix: XCLIENT.
    let proxy = Proxy::start_with(&format!("[upstream]\naddress = \"{postfix_address}\"\n"));
    let through = relay_attempts(proxy.address);
    assert_eq!(
        through.iter().map(|r| &r.lines).collect::<Vec<_>>(),
        direct.iter().map(|r| &r.lines).collect::<Vec<_>>(),
        "the same refusals as directly"
    );
    // What the old default did: Postfix sees 127.0.0.1 and lets anyone relay (this
    // test instance then refuses the address only because it delivers nowhere
    // outside its domain). The proxy says so when it starts.
    let open = Proxy::start_with(&format!(
        "[upstream]\naddress = \"{postfix_address}\"\nclient_address = \"none\"\n"
    ));
    open.wait_for_log("relays mail for anyone");
    for reply in relay_attempts(open.address) {
        assert!(!reply.text().contains("Relay access denied"), "{reply:?}");
        assert!(
            reply.text().contains("no delivery outside the test"),
            "{reply:?}"
        );
    }
}

#[test]
fn postfix_sees_the_real_client_through_xclient() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let proxy = proxy_in_front(&postfix, &postfix.xclient_port, "xclient");
    let mut client = Client::connect_from("127.0.0.2", proxy.address);
    client.expect("EHLO client.test", 250);
    let reply = client.send_message(
        "sender@origin.test",
        &["user@example.test"],
        b"Subject: via portcullis\r\n\r\nHello Postfix.\r\n..dot\r\n.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    assert!(
        reply.lines[0].starts_with("250 2.0.0 Ok: queued as "),
        "Postfix's own reply: {reply:?}"
    );
    client.expect("QUIT", 221);
    let message = &postfix.wait_delivered(1)[0];
    assert!(
        message.contains("Received: from client.test (unknown [127.0.0.2])"),
        "{message}"
    );
    assert!(
        message.contains("Subject: via portcullis") && message.contains("\n.dot\n"),
        "{message}"
    );
}

/// Sends one message from `from` with the HELO name `helo`; returns the RCPT reply,
/// and the end-of-data reply if RCPT was accepted.
fn send_from(proxy: &Proxy, from: &str, helo: &str) -> (ClientReply, Option<ClientReply>) {
    let mut client = Client::connect_from(from, proxy.address);
    client.expect(&format!("EHLO {helo}"), 250);
    client.expect("MAIL FROM:<sender@origin.test>", 250);
    let rcpt = client.command("RCPT TO:<user@example.test>");
    if rcpt.code != 250 {
        return (rcpt, None);
    }
    client.expect("DATA", 354);
    client.send(format!("Subject: from {from}\r\n\r\nHi.\r\n.\r\n").as_bytes());
    (rcpt, Some(client.read_reply()))
}

#[test]
fn postfix_applies_its_host_name_rules_to_the_real_client() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    // Loopback addresses have names (RFC 6761's "localhost", or /etc/hosts), and only
    // 127.0.0.1's resolves back to it: 127.0.0.2 has a reverse name but no
    // forward-confirmed one, as a client with a mismatched PTR record would.
    let strict = proxy_in_front(&postfix, &postfix.known_name_port, "xclient");
    let (rcpt, _) = send_from(&strict, "127.0.0.2", "client.test");
    assert_eq!(rcpt.code, 450, "{rcpt:?}");
    assert!(
        rcpt.lines[0].contains("Client host rejected: cannot find your hostname, [127.0.0.2]"),
        "Postfix's own words: {rcpt:?}"
    );
    let (rcpt, end) = send_from(&strict, "127.0.0.1", "client.test");
    assert_eq!(rcpt.code, 250, "{rcpt:?}\n{}", postfix.log());
    assert_eq!(end.unwrap().code, 250);
    let reverse_only = proxy_in_front(&postfix, &postfix.known_reverse_port, "xclient");
    let (rcpt, end) = send_from(&reverse_only, "127.0.0.2", "client.test");
    assert_eq!(rcpt.code, 250, "{rcpt:?}\n{}", postfix.log());
    assert_eq!(end.unwrap().code, 250);
    // Without the lookup every client is unknown to Postfix.
    let blind = proxy_with(
        &postfix,
        &postfix.known_reverse_port,
        "client_address = \"xclient\"\nclient_name_lookup = false\n",
    );
    let (rcpt, _) = send_from(&blind, "127.0.0.1", "client.test");
    assert_eq!(rcpt.code, 450, "{rcpt:?}");
    assert!(
        rcpt.lines[0].contains("cannot find your reverse hostname"),
        "{rcpt:?}"
    );
    // Postfix names the verified client in its Received header.
    let messages = postfix.wait_delivered(2);
    let from_localhost = messages
        .iter()
        .find(|m| m.contains("Subject: from 127.0.0.1"))
        .expect("the message from 127.0.0.1");
    let received = from_localhost
        .lines()
        .find(|l| l.starts_with("Received: from client.test ("))
        .expect("Postfix's Received header");
    assert!(received.ends_with(" [127.0.0.1])"), "{received}");
    assert!(!received.contains("unknown"), "{received}");
}

#[test]
fn a_helo_name_too_long_for_xclient_still_reaches_postfix() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    // 299 octets: Postfix refuses an XCLIENT HELO over 255 with 501.
    let helo = vec!["h".repeat(59); 5].join(".");
    let proxy = proxy_in_front(&postfix, &postfix.xclient_port, "xclient");
    let (rcpt, end) = send_from(&proxy, "127.0.0.2", &helo);
    assert_eq!(rcpt.code, 250, "{rcpt:?}\n{}", postfix.log());
    let end = end.unwrap();
    assert!(
        end.lines[0].starts_with("250 2.0.0 Ok: queued as "),
        "{end:?}"
    );
    assert_eq!(postfix.wait_delivered(1).len(), 1);
}

#[test]
fn postfix_sees_the_real_client_through_the_proxy_protocol() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let proxy = proxy_in_front(&postfix, &postfix.proxy_protocol_port, "proxy-v2");
    let mut client = Client::connect_from("127.0.0.2", proxy.address);
    client.expect("EHLO client.test", 250);
    let reply = client.send_message(
        "sender@origin.test",
        &["user@example.test"],
        b"Subject: proxy v2\r\n\r\nHello.\r\n.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}\n{}", postfix.log());
    let message = &postfix.wait_delivered(1)[0];
    assert!(message.contains("[127.0.0.2])"), "{message}");
}

#[test]
fn a_kept_postfix_session_serves_the_next_client() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let proxy = proxy_with(
        &postfix,
        &postfix.xclient_port,
        "reuse = { idle_timeout = \"10s\" }\n",
    );
    for helo in ["first.test", "second.test"] {
        let mut client = proxy.client();
        client.expect(&format!("EHLO {helo}"), 250);
        let body = format!("Subject: from {helo}\r\n\r\nHi.\r\n.\r\n");
        let reply = client.send_message(
            "sender@origin.test",
            &["user@example.test"],
            body.as_bytes(),
        );
        assert_eq!(reply.code, 250, "{reply:?}\n{}", postfix.log());
        client.expect("QUIT", 221);
    }
    let messages = postfix.wait_delivered(2);
    assert_eq!(messages.len(), 2);
    // Each client's own greeting reached Postfix before its mail.
    for helo in ["first.test", "second.test"] {
        assert!(
            messages
                .iter()
                .any(|m| m.contains(&format!("Received: from {helo} ("))),
            "{helo}: {messages:?}"
        );
    }
    // One upstream connection carried both clients, greeted once for each: once the
    // proxy stops and QUITs its kept session, Postfix logs that connection's counts.
    proxy.terminate();
    let reused = "ehlo=2 mail=2 rcpt=2 data=2 quit=1";
    let deadline = std::time::Instant::now() + common::WAIT;
    while !postfix.log().contains(reused) {
        assert!(
            std::time::Instant::now() < deadline,
            "no connection with {reused}:\n{}",
            postfix.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_upstream_leg_is_encrypted_and_verified() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let ca = postfix.ca.display().to_string();
    let cases = [
        (
            &postfix.starttls_port,
            format!("tls = \"starttls\"\ntls_ca = {ca:?}\ntls_server_name = \"postfix.test\"\n"),
        ),
        (
            &postfix.smtps_port,
            format!("tls = \"implicit\"\ntls_ca = {ca:?}\ntls_server_name = \"postfix.test\"\n"),
        ),
        (
            &postfix.starttls_port,
            "tls = \"starttls\"\ntls_insecure = true\n".to_string(),
        ),
    ];
    for (index, (port, keys)) in cases.iter().enumerate() {
        let proxy = proxy_with(&postfix, port, keys);
        let mut client = proxy.client();
        client.expect("EHLO client.test", 250);
        let body = format!("Subject: over TLS {index}\r\n\r\nHi.\r\n.\r\n");
        let reply = client.send_message(
            "sender@origin.test",
            &["user@example.test"],
            body.as_bytes(),
        );
        assert_eq!(reply.code, 250, "{keys}: {reply:?}\n{}", postfix.log());
        client.expect("QUIT", 221);
        let delivered = postfix.wait_delivered(index + 1);
        let message = delivered
            .iter()
            .find(|m| m.contains(&format!("Subject: over TLS {index}")))
            .expect("delivered");
        // smtpd_tls_received_header: Postfix notes the TLS version of the session.
        assert!(message.contains("(using TLSv1."), "{keys}: {message}");
    }
    // A certificate signed by another CA is refused: the client gets 451, nothing is sent.
    let stranger = tempfile::tempdir().unwrap();
    let other_ca = Pki::new(stranger.path()).ca.display().to_string();
    let proxy = proxy_with(
        &postfix,
        &postfix.starttls_port,
        &format!("tls = \"starttls\"\ntls_ca = {other_ca:?}\ntls_server_name = \"postfix.test\"\n"),
    );
    let mut client = proxy.client();
    client.expect("EHLO client.test", 250);
    let reply = client.expect("MAIL FROM:<sender@origin.test>", 451);
    assert!(reply.text().contains("4.4.1"), "{reply:?}");
    proxy.wait_for_log("TLS with the upstream failed");
}

#[test]
fn an_edge_login_reaches_postfix_through_xclient() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let hash = Command::new("openssl")
        .args(["passwd", "-6", "alice-password"])
        .output()
        .unwrap();
    std::fs::write(
        &users,
        format!("alice:{}", String::from_utf8_lossy(&hash.stdout)),
    )
    .unwrap();
    let proxy = Proxy::start_with(&format!(
        "[listener.auth]\nmode = \"edge\"\nallow_plaintext = true\nrequired = true\ncredentials = {:?}\n[upstream]\naddress = \"{}\"\nclient_address = \"xclient\"\n",
        users.display().to_string(),
        postfix.address(&postfix.xclient_port)
    ));
    let mut client = Client::connect_from("127.0.0.2", proxy.address);
    client.expect("EHLO client.test", 250);
    let credentials = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "\0alice\0alice-password",
    );
    client.expect(&format!("AUTH PLAIN {credentials}"), 235);
    let reply = client.send_message(
        "alice@origin.test",
        &["user@example.test"],
        b"Subject: edge login\r\n\r\nHi.\r\n.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}\n{}", postfix.log());
    let message = &postfix.wait_delivered(1)[0];
    assert!(
        message.contains("(Authenticated sender: alice)"),
        "{message}\n{}",
        postfix.log()
    );
    assert!(message.contains("[127.0.0.2]"), "{message}");
}

#[test]
fn passthrough_auth_is_checked_by_postfix_sasl() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    if !require_program("saslpasswd2") {
        return;
    }
    let proxy = Proxy::start_with(&format!(
        "[listener.auth]\nmode = \"passthrough\"\nallow_plaintext = true\nrequired = true\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        postfix.address(&postfix.sasl_port)
    ));
    let encode =
        |text: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text);
    let mut client = proxy.client();
    let ehlo = client.expect("EHLO client.test", 250);
    assert!(
        ehlo.lines.iter().any(|l| l.ends_with("AUTH PLAIN LOGIN")),
        "{ehlo:?}\n{}",
        postfix.log()
    );
    let refused = client.expect(&format!("AUTH PLAIN {}", encode("\0dave\0wrong")), 535);
    assert!(refused.text().contains("5.7.8"), "{refused:?}");
    client.expect("AUTH LOGIN", 334);
    client.expect(&encode("dave"), 334);
    client.expect(&encode("dave-password"), 235);
    // Cyrus qualifies the login with smtpd_sasl_local_domain.
    let reply = client.send_message(
        "dave@origin.test",
        &["user@example.test"],
        b"Subject: passthrough\r\n\r\nHi.\r\n.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}\n{}", postfix.log());
    let message = &postfix.wait_delivered(1)[0];
    assert!(
        message.contains("(Authenticated sender: dave@postfix.test)"),
        "{message}"
    );
    wait_until("postfix logged the SASL login", || {
        postfix.log().contains("sasl_username=dave@postfix.test")
    });
}

#[test]
fn plugins_rewrite_and_edit_what_postfix_delivers() {
    // recipients (RCPT: alias rewrite) and headers (DATA: the spooled path) on the
    // chain, XCLIENT to Postfix: Postfix gets the rewritten recipient and the edited
    // message, still judges the real client, and its own refusals still reach the
    // client unchanged.
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let proxy = Proxy::start_with(&format!(
        r#"plugins = ["recipients", "headers"]

[server]
hostname = "portcullis.test"

[upstream]
address = "{}"
client_address = "xclient"

[plugins.recipients]
path = "{}"
config = {{ domains = ["example.test"], aliases = {{ "sales@example.test" = "user@example.test" }} }}

[plugins.headers]
path = "{}"
config = {{ remove = ["Authentication-Results"], add = [{{ name = "X-Checked-By", value = "portcullis {{client_ip}}" }}] }}
"#,
        postfix.address(&postfix.xclient_port),
        common::component("recipients").display(),
        common::component("headers").display(),
    ));
    let mut client = Client::connect_from("127.0.0.2", proxy.address);
    client.expect("EHLO client.test", 250);
    client.expect("MAIL FROM:<sender@origin.test>", 250);
    let reply = client.expect("RCPT TO:<elsewhere@other.test>", 550);
    assert!(reply.lines[0].contains("not accepted here"), "{reply:?}");
    let reply = client.expect("RCPT TO:<nobody@example.test>", 550);
    assert!(
        reply.lines[0].contains("User unknown in virtual mailbox table"),
        "Postfix's own refusal: {reply:?}"
    );
    client.expect("RCPT TO:<sales@example.test>", 250);
    client.expect("DATA", 354);
    client.send(
        b"Authentication-Results: forged.example; spf=pass\r\nSubject: edited\r\n\r\nHello.\r\n.\r\n",
    );
    let reply = client.read_reply();
    assert!(
        reply.lines[0].starts_with("250 2.0.0 Ok: queued as "),
        "Postfix's own reply: {reply:?}\n{}",
        postfix.log()
    );
    client.expect("QUIT", 221);
    let message = &postfix.wait_delivered(1)[0];
    assert!(
        message.contains("Received: from client.test (unknown [127.0.0.2])"),
        "{message}"
    );
    assert!(message.contains("for <user@example.test>"), "{message}");
    assert!(
        message.contains("X-Checked-By: portcullis 127.0.0.2"),
        "{message}"
    );
    assert!(!message.contains("forged.example"), "{message}");
    assert!(message.contains("Subject: edited"), "{message}");
}

/// The RCPT reply a client at 127.0.0.2 greeting with `greeting` gets, through a session
/// at `address`.
fn rcpt_after(address: std::net::SocketAddr, greeting: &str) -> ClientReply {
    let mut client = Client::connect_from("127.0.0.2", address);
    client.expect(greeting, 250);
    client.expect("MAIL FROM:<sender@origin.test>", 250);
    let reply = client.command("RCPT TO:<user@example.test>");
    client.expect("QUIT", 221);
    reply
}

#[test]
fn postfix_judges_the_clients_own_helo_name_in_every_mode() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let xclient = proxy_in_front(&postfix, &postfix.helo_xclient_port, "xclient");
    let v1 = proxy_in_front(&postfix, &postfix.helo_proxy_port, "proxy-v1");
    let v2 = proxy_in_front(&postfix, &postfix.helo_proxy_port, "proxy-v2");
    // Opened as the client connects, before its HELO name is known.
    let at_connect = |port, mode| {
        proxy_with(
            &postfix,
            port,
            &format!("client_address = \"{mode}\"\nopen = \"connect\"\n"),
        )
    };
    let xclient_early = at_connect(&postfix.helo_xclient_port, "xclient");
    let v2_early = at_connect(&postfix.helo_proxy_port, "proxy-v2");
    let direct: std::net::SocketAddr = postfix.address(&postfix.helo_xclient_port).parse().unwrap();
    for name in ["single", "bad!host", "my_pc", "client.test"] {
        let greeting = format!("EHLO {name}");
        let expected = rcpt_after(direct, &greeting);
        if name == "single" {
            assert!(
                expected.text().contains("Helo command rejected"),
                "{expected:?}"
            );
        }
        let proxies = [
            ("xclient", &xclient),
            ("proxy-v1", &v1),
            ("proxy-v2", &v2),
            ("xclient, open at connect", &xclient_early),
            ("proxy-v2, open at connect", &v2_early),
        ];
        for (mode, proxy) in proxies {
            let through = rcpt_after(proxy.address, &greeting);
            assert_eq!(
                through.lines,
                expected.lines,
                "{name} through {mode}\n{}",
                postfix.log()
            );
        }
    }
    // A HELO client is recorded as one (PROTO), and Postfix's Received field names
    // the client's own HELO name in every mode.
    for (mode, proxy) in [("xclient", &xclient), ("proxy-v1", &v1), ("proxy-v2", &v2)] {
        let mut client = Client::connect_from("127.0.0.2", proxy.address);
        client.expect(&format!("HELO {mode}.client.test"), 250);
        let reply = client.send_message(
            "sender@origin.test",
            &["user@example.test"],
            format!("Subject: {mode}\r\n\r\nHello.\r\n.\r\n").as_bytes(),
        );
        assert_eq!(reply.code, 250, "{reply:?}\n{}", postfix.log());
        client.expect("QUIT", 221);
    }
    let messages = postfix.wait_delivered(3);
    for mode in ["xclient", "proxy-v1", "proxy-v2"] {
        let message = messages
            .iter()
            .find(|m| m.contains(&format!("Subject: {mode}\n")))
            .unwrap_or_else(|| panic!("{mode}: {messages:?}"));
        let received = format!("Received: from {mode}.client.test (");
        assert!(message.contains(&received), "{mode}: {message}");
        assert!(message.contains("with SMTP id"), "{mode}: {message}");
    }
}

#[test]
fn postfix_takes_the_proxy_protocol_probes_and_the_first_client_gets_its_extensions() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    for (index, mode) in ["proxy-v1", "proxy-v2"].into_iter().enumerate() {
        let proxy = proxy_in_front(&postfix, &postfix.helo_proxy_port, mode);
        let mut client = Client::connect_from("127.0.0.2", proxy.address);
        let ehlo = client.expect("EHLO client.test", 250);
        assert!(
            ehlo.lines.iter().any(|l| l.ends_with("8BITMIME")),
            "{mode}: {ehlo:?}"
        );
        assert!(
            !proxy
                .logs()
                .iter()
                .any(|l| l.contains("capability probe failed")),
            "{mode}"
        );
        // The upstream session opened at EHLO for a client that leaves ends with
        // QUIT too (Postfix knows the client by the PROXY header).
        client.expect("QUIT", 221);
        wait_until("the client's upstream session ended with QUIT", || {
            let log = postfix.log();
            let ended = log.lines().filter(|l| {
                l.contains("disconnect from unknown[127.0.0.2]") && l.contains("quit=1")
            });
            ended.count() == index + 1
        });
    }
    let log = postfix.log();
    assert!(
        !log.contains("haproxy") || !log.contains("warning"),
        "{log}"
    );
}

/// Two Postfix instances behind one proxy (`upstream.servers`, round robin); one is
/// killed (`postfix abort`) and started again while clients send without pause.
/// Every message a client was told 250 for arrives exactly once, on one of the two;
/// sessions that start while one is down go to the other.
#[test]
fn with_two_postfix_servers_one_killed_and_restarted_under_load_nothing_is_lost() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let (Some(first), Some(second)) = (Postfix::start(), Postfix::start()) else {
        return;
    };
    let servers = vec![
        first.address(&first.xclient_port),
        second.address(&second.xclient_port),
    ];
    let proxy = common::config::TestConfig::new()
        .set("upstream.servers", servers)
        .set("upstream.balance", "round_robin")
        .set("upstream.down_for", "1s")
        .set("server.hostname", "portcullis.test")
        .start();
    let address = proxy.address;
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..3)
        .map(|sender| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut outcomes = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("failover-{sender}-{n}@origin.test");
                    n += 1;
                    let mut client = Client::connect_from_unread("127.0.0.2", address);
                    if client.try_read_reply().is_none_or(|r| r.code != 220) {
                        outcomes.push((id, 0));
                        continue;
                    }
                    let wire = format!("Message-ID: <{id}>\r\nSubject: x\r\n\r\nbody\r\n.\r\n");
                    // Each step's reply, to the first that is not the expected one
                    // (a session caught by the kill mid-transaction gets 451).
                    let steps = [
                        ("EHLO client.test\r\n".to_string(), 250),
                        ("MAIL FROM:<sender@origin.test>\r\n".to_string(), 250),
                        ("RCPT TO:<user@example.test>\r\n".to_string(), 250),
                        ("DATA\r\n".to_string(), 354),
                        (wire, 250),
                    ];
                    let mut code = 0;
                    for (line, expected) in steps {
                        code = match client.try_send(line.as_bytes()) {
                            true => client.try_read_reply().map_or(0, |reply| reply.code),
                            false => 0,
                        };
                        if code != expected {
                            break;
                        }
                    }
                    let _ = client.try_send(b"QUIT\r\n");
                    outcomes.push((id, code));
                }
                outcomes
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(800));
    run("postfix", &["-c", &first.etc(), "abort"]);
    thread::sleep(Duration::from_millis(1500));
    // The killed master may still hold its lock for a moment.
    wait_until("the killed postfix starts again", || {
        Command::new("postfix")
            .args(["-c", &first.etc(), "start"])
            .status()
            .is_ok_and(|status| status.success())
    });
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let outcomes: Vec<(String, u16)> = senders
        .into_iter()
        .flat_map(|sender| sender.join().unwrap())
        .collect();
    let accepted: Vec<&String> = outcomes
        .iter()
        .filter(|(_, code)| *code == 250)
        .map(|(id, _)| id)
        .collect();
    let refused: Vec<&(String, u16)> = outcomes.iter().filter(|(_, code)| *code != 250).collect();
    // Only sessions caught mid-transaction by the kill may fail (451, try later).
    assert!(
        refused.len() <= 3 && refused.iter().all(|(_, code)| *code == 451),
        "{refused:?} of {}",
        outcomes.len()
    );
    assert!(accepted.len() >= 20, "too little load: {}", accepted.len());
    wait_until("both delivered every accepted message", || {
        first.delivered().len() + second.delivered().len() >= accepted.len()
    });
    let delivered: Vec<String> = first
        .delivered()
        .into_iter()
        .chain(second.delivered())
        .collect();
    for id in &accepted {
        let copies: Vec<&String> = delivered
            .iter()
            .filter(|message| message.contains(&format!("Message-ID: <{id}>")))
            .collect();
        assert!(!copies.is_empty(), "{id} was accepted but never arrived");
        // One SMTP transaction per message told 250: every copy carries the queue id
        // of the one Postfix that took it. (A Postfix killed between writing a
        // mailbox file and finishing its queue file delivers that file again when it
        // starts: the same queue id twice is its own crash recovery, not a second
        // transaction.)
        let transactions: std::collections::BTreeSet<String> =
            copies.iter().map(|copy| postfix_queue_id(copy)).collect();
        assert_eq!(
            transactions.len(),
            1,
            "{id} reached Postfix in {} transactions: {transactions:?}",
            transactions.len()
        );
        if copies.len() > 1 {
            eprintln!(
                "{id}: {} copies of one Postfix transaction {transactions:?} (its redelivery after the kill)",
                copies.len()
            );
        }
    }
    proxy.wait_for_log("upstream server down");
    assert!(
        !second.delivered().is_empty() && !first.delivered().is_empty(),
        "both servers took sessions"
    );
}

/// The queue id Postfix gave a delivered message (its Received field's `id`).
fn postfix_queue_id(message: &str) -> String {
    let received = message
        .split("\nReceived: ")
        .chain(message.strip_prefix("Received: "))
        .find(|field| field.contains("by postfix.test"))
        .unwrap_or_else(|| panic!("no Received field of Postfix: {message}"));
    let unfolded = received
        .replace("\r\n\t", " ")
        .replace("\n\t", " ")
        .replace("\r\n ", " ")
        .replace("\n ", " ");
    let id = unfolded
        .split_whitespace()
        .skip_while(|word| *word != "id")
        .nth(1)
        .unwrap_or_else(|| panic!("no queue id in: {received}"))
        .trim_end_matches(';')
        .to_string();
    assert!(
        id.len() >= 6 && id.chars().all(|c| c.is_ascii_alphanumeric()),
        "not a Postfix queue id: {id:?} in {received}"
    );
    id
}
