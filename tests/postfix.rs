//! Portcullis in front of a real Postfix (Debian's package), run as a private instance
//! on loopback with its own configuration, queue and mailbox folders. The client
//! connects from 127.0.0.2 so that the address Postfix sees tells whether XCLIENT or
//! the PROXY header carried the real client (the proxy itself connects from 127.0.0.1).

mod common;

use std::{path::PathBuf, process::Command, thread, time::Duration};

use common::{Client, Proxy, closed_port, require_program, wait_until};

/// A private Postfix instance; stopped on drop.
struct Postfix {
    dir: tempfile::TempDir,
    /// Plain smtpd, trusting the proxy for XCLIENT.
    xclient_port: String,
    /// smtpd expecting a PROXY protocol header.
    proxy_protocol_port: String,
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
        let xclient_port = closed_port().rsplit_once(':').unwrap().1.to_string();
        let proxy_protocol_port = closed_port().rsplit_once(':').unwrap().1.to_string();
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
    assert_eq!(postfix.wait_delivered(2).len(), 2);
    // One upstream connection carried both clients: once the proxy stops and QUITs
    // its kept session, Postfix logs that connection's command counts.
    proxy.terminate();
    let reused = "ehlo=1 mail=2 rcpt=2 data=2 quit=1";
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
