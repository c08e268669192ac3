//! The proxy tried as an attacker would, with nothing but connections: bursts of
//! password guesses, one address holding every slot, commands that move no mail, a
//! flood of refused connections, a full throttle. Each test drives the real binary
//! from chosen loopback addresses (127.0.0.x) and checks what the clients heard, the
//! logs, and the process (its memory and its threads).

mod common;

use std::{
    io::Write,
    process::{Command, Stdio},
    sync::{Arc, Barrier},
    thread,
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use common::{
    Client, ClientReply, Proxy, RecordingUpstream, check_config,
    config::{TestConfig, table},
    wait_until,
};

const PASSWORD: &str = "correct horse battery";

/// A credentials file: alice with Argon2id (`portcullis hash-password`), bob with
/// SHA-512-crypt (`openssl passwd -6`).
struct Users {
    dir: tempfile::TempDir,
}

impl Users {
    fn new() -> Users {
        let dir = tempfile::tempdir().unwrap();
        let argon = common::hash_password(PASSWORD);
        let sha512 = output_of(
            Command::new("openssl").args(["passwd", "-6", "-stdin"]),
            PASSWORD,
        );
        std::fs::write(
            dir.path().join("users"),
            format!("alice:{}\nbob:{}\n", argon.trim(), sha512.trim()),
        )
        .unwrap();
        Users { dir }
    }

    /// `[listener.auth]` for edge AUTH over plaintext (these tests are not about TLS).
    fn auth(&self) -> String {
        format!(
            "[listener.auth]\nmode = \"edge\"\nallow_plaintext = true\ncredentials = {:?}\n",
            self.dir.path().join("users")
        )
    }
}

fn output_of(command: &mut Command, input: &str) -> String {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{input}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

fn auth_plain(login: &str, password: &str) -> String {
    format!(
        "AUTH PLAIN {}",
        STANDARD.encode(format!("\0{login}\0{password}"))
    )
}

fn proxy_with_auth(users: &Users, upstream: &RecordingUpstream, extra: &str) -> Proxy {
    Proxy::start_with(&format!(
        "{}\n{extra}\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        users.auth(),
        upstream.address()
    ))
}

/// `clients` sessions from the given addresses, each sending one AUTH at the same
/// moment; the first reply each got.
fn simultaneous_auth(proxy: &Proxy, sources: &[String], line: &str) -> Vec<ClientReply> {
    let barrier = Arc::new(Barrier::new(sources.len()));
    let handles: Vec<_> = sources
        .iter()
        .map(|source| {
            let (barrier, source, line, address) = (
                barrier.clone(),
                source.clone(),
                line.to_string(),
                proxy.address,
            );
            thread::spawn(move || {
                let mut client = Client::connect_from(&source, address);
                client.expect("EHLO guesser.example", 250);
                barrier.wait();
                client.command(&line)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn count_logs(proxy: &Proxy, needle: &str) -> usize {
    proxy.logs().iter().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_burst_of_guesses_gets_exactly_max_failures_checks() {
    let users = Users::new();
    let upstream = RecordingUpstream::start();
    let proxy = proxy_with_auth(
        &users,
        &upstream,
        "[auth_throttle]\nmax_failures = 10\ndelay = \"10ms\"\nmax_delay = \"50ms\"\nwindow = \"1m\"",
    );
    let sources = vec!["127.0.0.2".to_string(); 40];
    let replies = simultaneous_auth(&proxy, &sources, &auth_plain("alice", "guess"));
    let refused = replies.iter().filter(|r| r.code == 535).count();
    let cut_off = replies.iter().filter(|r| r.code == 421).count();
    assert_eq!((refused, cut_off), (10, 30), "{replies:?}");
    assert!(
        replies
            .iter()
            .all(|r| r.code != 421 || r.text().contains("4.7.0"))
    );
    wait_until("every check is logged", || {
        count_logs(&proxy, "password checked") >= 10
    });
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        count_logs(&proxy, "password checked"),
        10,
        "exactly max_failures verifications"
    );
    // The address stays blocked, even with the right password; another is not.
    let mut again = Client::connect_from("127.0.0.2", proxy.address);
    again.expect("EHLO guesser.example", 250);
    assert_eq!(again.command(&auth_plain("alice", PASSWORD)).code, 421);
    let mut other = Client::connect_from("127.0.0.3", proxy.address);
    other.expect("EHLO other.example", 250);
    other.expect(&auth_plain("alice", PASSWORD), 235);
}

#[test]
fn simultaneous_checks_are_bounded_and_the_proxy_keeps_answering() {
    let users = Users::new();
    let upstream = RecordingUpstream::start();
    let proxy = proxy_with_auth(
        &users,
        &upstream,
        "[auth_throttle]\nmax_failures = 100\nconcurrent_checks = 2\ndelay = \"1ms\"\nmax_delay = \"1ms\"",
    );
    // 60 attempts from 20 addresses at once, each needing an Argon2 check (19 MiB).
    let sources: Vec<String> = (0..60).map(|n| format!("127.0.1.{}", n % 20 + 1)).collect();
    let burst = {
        let (address, sources) = (proxy.address, sources.clone());
        thread::spawn(move || {
            let barrier = Arc::new(Barrier::new(sources.len()));
            let handles: Vec<_> = sources
                .into_iter()
                .map(|source| {
                    let barrier = barrier.clone();
                    thread::spawn(move || {
                        let mut client = Client::connect_from(&source, address);
                        client.expect("EHLO guesser.example", 250);
                        barrier.wait();
                        client.command(&auth_plain("alice", "guess")).code
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    };
    // Meanwhile another client is served.
    wait_until("the burst has started", || {
        count_logs(&proxy, "password checked") >= 2
    });
    let mut bystander = Client::connect_from("127.0.0.99", proxy.address);
    bystander.expect("EHLO bystander.example", 250);
    bystander.expect("NOOP", 250);
    let codes = burst.join().unwrap();
    assert!(codes.iter().all(|&code| code == 535), "{codes:?}");
    // Every check was logged (the log reader may lag the replies).
    wait_until("sixty checks logged", || {
        count_logs(&proxy, "password checked") >= 60
    });
    assert_eq!(count_logs(&proxy, "password checked"), 60);
    // Two checks at a time: two working memories, not sixty (which took ~1.2 GiB).
    let peak_mib = proxy.peak_rss_kib() / 1024;
    assert!(peak_mib < 200, "peak RSS {peak_mib} MiB");
}

#[test]
fn a_full_throttle_refuses_auth_instead_of_forgetting() {
    let users = Users::new();
    let upstream = RecordingUpstream::start();
    let proxy = proxy_with_auth(
        &users,
        &upstream,
        "[auth_throttle]\nmax_clients = 2\ndelay = \"1ms\"\nmax_delay = \"1ms\"",
    );
    for source in ["127.0.0.2", "127.0.0.3"] {
        let mut client = Client::connect_from(source, proxy.address);
        client.expect("EHLO guesser.example", 250);
        client.expect(&auth_plain("bob", "guess"), 535);
    }
    let mut client = Client::connect_from("127.0.0.4", proxy.address);
    client.expect("EHLO guesser.example", 250);
    let reply = client.expect(&auth_plain("bob", PASSWORD), 454);
    assert!(reply.text().contains("4.7.0"), "{reply:?}");
    // Known addresses are still counted, and may still log in.
    let mut known = Client::connect_from("127.0.0.2", proxy.address);
    known.expect("EHLO guesser.example", 250);
    known.expect(&auth_plain("bob", PASSWORD), 235);
    proxy.wait_for_log("the throttle's store is full");
}

#[test]
fn one_address_cannot_hold_every_session() {
    let upstream = RecordingUpstream::start();
    let proxy = TestConfig::relaying_to(&upstream.address())
        .set("server.max_connections", 10)
        .set("client_limits.max_sessions", 3)
        .start();
    let mut held: Vec<Client> = (0..3)
        .map(|_| Client::connect_from("127.0.0.2", proxy.address))
        .collect();
    let mut fourth = Client::connect_from_unread("127.0.0.2", proxy.address);
    let reply = fourth.read_reply();
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(reply.text().contains("4.7.0"), "{reply:?}");
    assert!(fourth.is_closed());
    let mut other = Client::connect_from("127.0.0.3", proxy.address);
    other.expect("EHLO other.example", 250);
    // A session that ends frees its slot.
    held[0].expect("QUIT", 221);
    held.remove(0);
    wait_until("the slot is free again", || {
        let mut client = Client::connect_from_unread("127.0.0.2", proxy.address);
        client.read_reply().code == 220
    });
}

#[test]
fn a_listener_with_limits_of_its_own_counts_its_clients_by_network() {
    let upstream = RecordingUpstream::start();
    let own = table([("max_sessions", 1.into()), ("ipv4_prefix", 24.into())]);
    let proxy = TestConfig::relaying_to(&upstream.address())
        .listener("strict")
        .set_on("strict", "client_limits", own)
        .start();
    let strict = proxy.listener("strict");
    let _held = Client::connect_from("127.0.0.2", strict);
    // 127.0.0.3 is in the same /24: the same client for this listener.
    let reply = Client::connect_from_unread("127.0.0.3", strict).read_reply();
    assert_eq!(reply.code, 421, "{reply:?}");
    // The other listener counts by the global [client_limits] (50 per address).
    for source in ["127.0.0.2", "127.0.0.3"] {
        Client::connect_from(source, proxy.address).expect("QUIT", 221);
    }
}

#[test]
fn new_sessions_per_address_are_limited_per_window() {
    let upstream = RecordingUpstream::start();
    let proxy = TestConfig::relaying_to(&upstream.address())
        .set("client_limits.max_new_sessions", 4)
        .set("client_limits.window", "1m")
        .start();
    for _ in 0..4 {
        Client::connect_from("127.0.0.2", proxy.address).expect("QUIT", 221);
    }
    let reply = Client::connect_from_unread("127.0.0.2", proxy.address).read_reply();
    assert_eq!(reply.code, 421, "{reply:?}");
    Client::connect_from("127.0.0.3", proxy.address).expect("QUIT", 221);
}

#[test]
fn refused_connections_do_not_flood_the_log() {
    let upstream = RecordingUpstream::start();
    let proxy = TestConfig::relaying_to(&upstream.address())
        .set("client_limits.max_sessions", 1)
        .start();
    let _held = Client::connect_from("127.0.0.2", proxy.address);
    for _ in 0..200 {
        let reply = Client::connect_from_unread("127.0.0.2", proxy.address).read_reply();
        assert_eq!(reply.code, 421);
    }
    let lines = count_logs(&proxy, "connection refused");
    assert!((1..=2).contains(&lines), "{lines} lines for 200 refusals");
}

#[test]
fn commands_that_move_no_mail_are_limited_between_messages() {
    let upstream = RecordingUpstream::start();
    let proxy = TestConfig::relaying_to(&upstream.address())
        .set("smtp.max_junk_commands", 5)
        .start();
    let mut client = proxy.client();
    client.expect("EHLO idler.example", 250);
    for command in ["NOOP", "RSET", "HELP"] {
        assert!(client.command(command).code < 300);
    }
    client.expect("VRFY someone", 252);
    client.send_message(
        "a@example.org",
        &["b@example.com"],
        b"Subject: x\r\n\r\nhello\r\n.\r\n",
    );
    // The message accepted started the count again: five more are allowed.
    for _ in 0..5 {
        client.expect("NOOP", 250);
    }
    let reply = client.command("NOOP");
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(reply.text().contains("4.7.0"), "{reply:?}");
    assert!(client.is_closed());
}

#[test]
fn the_epoch_thread_sleeps_while_no_plugin_runs() {
    let upstream = RecordingUpstream::start();
    let proxy = TestConfig::relaying_to(&upstream.address())
        .recipients_listener("plugins", &["example.com"])
        .start();
    let task = std::fs::read_dir(format!("/proc/{}/task", proxy.pid()))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|task| {
            std::fs::read_to_string(task.join("comm")).is_ok_and(|c| c.trim() == "plugin-epoch")
        })
        .expect("a plugin-epoch thread");
    let switches = || -> u64 {
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("voluntary_ctxt_switches"))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    // After the start-up's own calls (each plugin's init) the clock ticks on for a
    // moment (about 100 ms), in case more calls follow.
    thread::sleep(Duration::from_millis(500));
    let before = switches();
    thread::sleep(Duration::from_secs(1));
    let idle = switches() - before;
    // Ticking every 2 ms would be some 500 wakeups.
    assert!(idle <= 3, "{idle} wakeups in an idle second");
    // Plugin calls still run (and are timed) when they come.
    let mut client = Client::connect(proxy.listener("plugins"));
    assert_eq!(client.read_reply().code, 220);
    client.expect("EHLO client.example", 250);
    client.expect("MAIL FROM:<a@example.org>", 250);
    client.expect("RCPT TO:<b@example.com>", 250);
    client.expect("RCPT TO:<b@elsewhere.test>", 550);
}

#[test]
fn check_warns_when_the_upstream_sees_only_the_proxy() {
    let (passed, output) = check_config(
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\n\n[upstream]\naddress = \"127.0.0.1:10025\"\nclient_address = \"none\"\n",
    );
    assert!(passed);
    assert!(
        output.contains("warning: line 7: upstream.client_address")
            && output.contains("relays mail for anyone"),
        "{output}"
    );
    // The default in front of a real MTA is XCLIENT: nothing to warn about.
    let (passed, output) = check_config(
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\n\n[upstream]\naddress = \"127.0.0.1:10025\"\n",
    );
    assert!(passed);
    assert!(!output.contains("warning"), "{output}");
}
