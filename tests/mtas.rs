//! Portcullis in front of Exim 4.96 and OpenSMTPD 6.8, the real daemons from Debian's
//! packages. Both packages provide the system MTA and conflict with Postfix, so
//! `scripts/test` unpacks them into `target/mta` instead of installing them; each test
//! runs a private instance on loopback with its own configuration, spool and log
//! (OpenSMTPD, whose queue and control socket paths are fixed, in a mount namespace of
//! its own). The client connects from 127.0.0.2, which the MTAs let talk to them
//! directly, so each check compares what a client hears directly with what it hears
//! through the proxy.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use common::{Client, ClientReply, Proxy, closed_port, wait_until};

/// Where `scripts/test` unpacked the packages.
fn unpacked() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mta")
}

/// True if the unpacked program is there; under CI a missing one fails the test.
fn require(program: &Path) -> bool {
    if program.exists() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "{} is missing (scripts/test unpacks it)",
        program.display()
    );
    eprintln!("skipping: {} is missing", program.display());
    false
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}");
}

fn port() -> u16 {
    closed_port().rsplit_once(':').unwrap().1.parse().unwrap()
}

/// A running MTA; stopped on drop.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// A private Exim: queue only (messages stay in its spool, where the tests read them),
/// PROXY headers required from 127.0.0.1 (the proxy) and not from other addresses, and
/// the HELO check of a common configuration at RCPT: a name without a dot is refused.
struct Exim {
    daemon: Daemon,
    port: u16,
}

impl Exim {
    fn start() -> Option<Exim> {
        let binary = unpacked().join("usr/sbin/exim4");
        if !require(&binary) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for folder in ["spool", "log"] {
            std::fs::create_dir(root.join(folder)).unwrap();
            run(
                "chown",
                &["Debian-exim", root.join(folder).to_str().unwrap()],
            );
        }
        run("chmod", &["755", root.to_str().unwrap()]);
        let r = root.display();
        std::fs::write(
            root.join("exim.conf"),
            format!(
                r"exim_user = Debian-exim
exim_group = Debian-exim
spool_directory = {r}/spool
log_file_path = {r}/log/%slog
primary_hostname = exim.test
qualify_domain = exim.test
domainlist local_domains = example.test
hosts_proxy = 127.0.0.1
queue_only = true
keep_environment =
tls_advertise_hosts =
acl_smtp_rcpt = acl_check_rcpt
begin acl
acl_check_rcpt:
  deny message = HELO name $sender_helo_name is not a domain
       condition = ${{if match{{$sender_helo_name}}{{\N^[^.]+$\N}}}}
  accept domains = +local_domains
  deny message = Relay access denied
begin routers
begin transports
"
            ),
        )
        .unwrap();
        let port = port();
        let child = Command::new(&binary)
            .arg("-C")
            .arg(root.join("exim.conf"))
            .args(["-bdf", "-oX", &format!("127.0.0.1:{port}"), "-oP"])
            .arg(root.join("exim.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("exim accepts connections", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(Exim {
            daemon: Daemon { child, dir },
            port,
        })
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The header sections of the messages in the spool.
    fn queued(&self) -> Vec<String> {
        let input = self.daemon.dir.path().join("spool/input");
        let Ok(entries) = std::fs::read_dir(input) else {
            return Vec::new();
        };
        entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with("-H"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

/// A private OpenSMTPD with a plain listener and one expecting PROXY v2 headers, the
/// HELO check at RCPT (a filter), and every message for example.test appended to one
/// mbox file.
struct OpenSmtpd {
    daemon: Daemon,
    direct: u16,
    proxied: u16,
}

impl OpenSmtpd {
    fn start() -> Option<OpenSmtpd> {
        let binary = unpacked().join("usr/sbin/smtpd");
        if !require(&binary) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for folder in ["spool", "run", "empty", "mail"] {
            std::fs::create_dir(root.join(folder)).unwrap();
        }
        run("chmod", &["755", root.to_str().unwrap()]);
        run("chmod", &["711", root.join("spool").to_str().unwrap()]);
        run("chmod", &["777", root.join("mail").to_str().unwrap()]);
        let (direct, proxied) = (port(), port());
        let mbox = root.join("mail/mbox");
        std::fs::write(
            root.join("smtpd.conf"),
            format!(
                r#"table fqdn {{ "[.]" }}
filter helofqdn phase rcpt-to match !helo regex <fqdn> reject "550 5.7.1 HELO name is not a domain"
listen on 127.0.0.1 port {direct} hostname opensmtpd.test filter helofqdn
listen on 127.0.0.1 port {proxied} hostname opensmtpd.test proxy-v2 filter helofqdn
table vusers {{ "@example.test" = "nobody" }}
action "keep" mda "/usr/bin/tee -a {}" virtual <vusers>
match from any for domain "example.test" action "keep"
"#,
                mbox.display()
            ),
        )
        .unwrap();
        // Its queue, control socket, chroot and delivery helpers live at fixed paths:
        // the instance gets private ones in a mount namespace of its own.
        let r = root.display();
        let libexec = unpacked().join("usr/libexec/opensmtpd");
        let script = format!(
            "mount --bind {r}/spool /var/spool/smtpd && mount --bind {r}/run /run && \
             mount --bind {r}/empty /var/lib/opensmtpd/empty && \
             mount --bind {} /usr/libexec/opensmtpd && exec {} -d -f {r}/smtpd.conf",
            libexec.display(),
            binary.display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("opensmtpd accepts connections", || {
            std::net::TcpStream::connect(("127.0.0.1", proxied)).is_ok()
        });
        Some(OpenSmtpd {
            daemon: Daemon { child, dir },
            direct,
            proxied,
        })
    }

    fn mbox(&self) -> String {
        std::fs::read_to_string(self.daemon.dir.path().join("mail/mbox")).unwrap_or_default()
    }
}

/// A proxy in front of `upstream` with `client_address = mode`.
fn proxy(upstream: SocketAddr, mode: &str) -> Proxy {
    Proxy::start(
        &upstream.to_string(),
        &format!("client_address = \"{mode}\"\n[server]\nhostname = \"portcullis.test\"\n"),
    )
}

/// The RCPT reply a client at 127.0.0.2 greeting with `greeting` gets through a
/// session at `address`.
fn rcpt_after(address: SocketAddr, greeting: &str) -> ClientReply {
    let mut client = Client::connect_from("127.0.0.2", address);
    client.expect(greeting, 250);
    client.expect("MAIL FROM:<sender@origin.test>", 250);
    let reply = client.command("RCPT TO:<user@example.test>");
    client.expect("QUIT", 221);
    reply
}

/// Sends one message from 127.0.0.2 greeting as `greeting`.
fn deliver(address: SocketAddr, greeting: &str, subject: &str) {
    let mut client = Client::connect_from("127.0.0.2", address);
    client.expect(greeting, 250);
    let body = format!("Subject: {subject}\r\n\r\nHello.\r\n.\r\n");
    let reply = client.send_message(
        "sender@origin.test",
        &["user@example.test"],
        body.as_bytes(),
    );
    assert_eq!(reply.code, 250, "{subject}: {reply:?}");
    client.expect("QUIT", 221);
}

/// The first client after the proxy started gets the upstream's extensions: the
/// capability probe (with its PROXY header) was accepted.
fn first_ehlo_has(proxy: &Proxy, extension: &str) {
    let mut client = Client::connect_from("127.0.0.2", proxy.address);
    let ehlo = client.expect("EHLO client.test", 250);
    assert!(
        ehlo.lines.iter().any(|line| line.ends_with(extension)),
        "{ehlo:?}"
    );
    assert!(
        !proxy
            .logs()
            .iter()
            .any(|line| line.contains("capability probe failed")),
        "{:?}",
        proxy.logs()
    );
}

#[test]
fn exim_judges_the_clients_own_helo_name_through_both_proxy_protocol_versions() {
    let Some(exim) = Exim::start() else {
        return;
    };
    let direct = rcpt_after(exim.address(), "EHLO single");
    assert_eq!(direct.lines, ["550 HELO name single is not a domain"]);
    for mode in ["proxy-v1", "proxy-v2"] {
        let proxy = proxy(exim.address(), mode);
        first_ehlo_has(&proxy, "8BITMIME");
        assert_eq!(
            rcpt_after(proxy.address, "EHLO single").lines,
            direct.lines,
            "{mode}"
        );
        // Exim checks HELO syntax when it is given; through the proxy its verdict is
        // the answer to MAIL, the first command that reaches it.
        let mut client = Client::connect_from("127.0.0.2", proxy.address);
        client.expect("EHLO bad!host", 250);
        let refused = client.command("MAIL FROM:<sender@origin.test>");
        assert_eq!(
            refused.lines,
            ["501 Syntactically invalid EHLO argument(s)"],
            "{mode}"
        );
        deliver(proxy.address, &format!("EHLO {mode}.client.test"), mode);
    }
    wait_until("both messages are queued", || exim.queued().len() == 2);
    for mode in ["proxy-v1", "proxy-v2"] {
        let header = exim
            .queued()
            .into_iter()
            .find(|h| h.contains(&format!("Subject: {mode}")))
            .unwrap();
        assert!(
            header.contains("[127.0.0.2]") && header.contains(&format!("helo={mode}.client.test")),
            "{header}"
        );
    }
}

#[test]
fn opensmtpd_judges_the_clients_own_helo_name_through_proxy_protocol_v2() {
    let Some(smtpd) = OpenSmtpd::start() else {
        return;
    };
    let direct_address = SocketAddr::from(([127, 0, 0, 1], smtpd.direct));
    let direct = rcpt_after(direct_address, "EHLO single");
    assert_eq!(direct.lines, ["550 5.7.1 HELO name is not a domain"]);
    let proxy = proxy(
        SocketAddr::from(([127, 0, 0, 1], smtpd.proxied)),
        "proxy-v2",
    );
    first_ehlo_has(&proxy, "DSN");
    assert_eq!(rcpt_after(proxy.address, "EHLO single").lines, direct.lines);
    deliver(proxy.address, "EHLO proxied.client.test", "proxy-v2");
    wait_until("the message is delivered", || {
        smtpd.mbox().contains("Subject: proxy-v2")
    });
    let mbox = smtpd.mbox();
    assert!(
        mbox.contains("Received: from proxied.client.test (<unknown> [127.0.0.2])"),
        "{mbox}"
    );
}
