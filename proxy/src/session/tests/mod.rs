//! Session tests over in-memory streams: here the upstream is unreachable, so these
//! cover everything the session answers by itself; `relay` puts the integration
//! tests' recording upstream behind the session.

mod relay;
/// The integration tests' scripted upstream (standard library only), one server for
/// both kinds of test.
#[path = "../../../../tests/common/upstream.rs"]
mod upstream;

use std::{sync::Arc, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use super::*;
use crate::{
    auth::throttle::AuthThrottle,
    config::Config,
    upstream::{capability_cache::CapabilityCache, pool::SessionPool},
};

fn context(extra: &str) -> Arc<SessionContext> {
    context_from(parse(extra))
}

fn parse(extra: &str) -> Config {
    parse_for("127.0.0.1:9", extra)
}

/// A configuration relaying to `upstream`, with `extra` after `[upstream]`'s keys.
fn parse_for(upstream: &str, extra: &str) -> Config {
    let text = format!(
        "[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"{upstream}\"\ntimeouts = {{ connect = \"200ms\" }}\n{extra}"
    );
    Config::parse(&text).unwrap()
}

fn context_from(config: Config) -> Arc<SessionContext> {
    let crate::config::UpstreamTarget::Servers(servers) = &config.upstream.target else {
        panic!("session tests relay to an address");
    };
    Arc::new(SessionContext {
        upstream: Arc::new(crate::upstream::Upstream::new(
            "default",
            servers.clone(),
            config.upstream.clone(),
            None,
        )),
        config: Arc::new(config),
        capabilities: Arc::new(CapabilityCache::default()),
        pool: Arc::new(SessionPool::new(Default::default())),
        shutdown: Shutdown::default(),
        server_tls: None,
        throttle: AuthThrottle::new(Default::default(), &Default::default()),
        checks: Arc::new(crate::auth::checks::PasswordChecks::new(
            1,
            Duration::from_secs(5),
        )),
        dns: Arc::new(crate::dns::Resolver::offline()),
        audit: None,
    })
}

/// Starts a session and returns the client's end of the stream.
fn start(context: Arc<SessionContext>) -> DuplexStream {
    let (client, server) = duplex(64 * 1024);
    let peer = Peer::new(
        "192.0.2.1:4000".parse().unwrap(),
        "127.0.0.1:25".parse().unwrap(),
    );
    let listener = Arc::new(ListenerContext::plain(context.config.listeners[0].clone()));
    tokio::spawn(Session::new(context, server, peer, listener).run());
    client
}

/// Sends `input`, then reads until the session closes or `replies` replies came; the
/// codes of the replies.
async fn converse(client: &mut DuplexStream, input: &[u8], replies: usize) -> Vec<String> {
    converse_lines(client, input, replies)
        .await
        .iter()
        .map(|line| line[..3].to_string())
        .collect()
}

/// Like [`converse`], but the last line of each reply, whole.
async fn converse_lines(client: &mut DuplexStream, input: &[u8], replies: usize) -> Vec<String> {
    client.write_all(input).await.unwrap();
    let mut text = String::new();
    let mut buffer = [0u8; 4096];
    while text
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .count()
        < replies
    {
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buffer))
            .await
            .expect("reply in time")
            .unwrap();
        if read == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    text.lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(str::to_string)
        .collect()
}

/// Sends each command and checks the code of its reply.
async fn expect_codes(client: &mut DuplexStream, cases: &[(&[u8], &str)]) {
    for (command, code) in cases {
        let codes = converse(client, command, 1).await;
        assert_eq!(codes, [*code], "{}", String::from_utf8_lossy(command));
    }
}

#[tokio::test]
async fn local_verbs_get_their_codes() {
    let mut client = start(context(""));
    assert_eq!(converse(&mut client, b"", 1).await, ["220"]);
    let cases: &[(&[u8], &str)] = &[
        (b"NOOP\r\n", "250"),
        (b"HELP\r\n", "214"),
        (b"VRFY someone\r\n", "252"),
        (b"EXPN staff\r\n", "502"),
        (b"SEND FROM:<a@b.c>\r\n", "502"),
        (b"SOML FROM:<a@b.c>\r\n", "502"),
        (b"SAML FROM:<a@b.c>\r\n", "502"),
        (b"TURN\r\n", "502"),
        (b"FROB\r\n", "500"),
        (b"MAIL FROM:<a@b.c>\r\n", "503"),
    ];
    expect_codes(&mut client, cases).await;
    assert_eq!(converse(&mut client, b"QUIT\r\n", 1).await, ["221"]);
}

#[tokio::test]
async fn commands_that_move_no_mail_are_counted() {
    let mut client = start(context("[smtp]\nmax_junk_commands = 4\n"));
    converse(&mut client, b"", 1).await;
    let cases: &[(&[u8], &str)] = &[
        (b"EHLO c.example\r\n", "250"),
        (b"NOOP\r\n", "250"),
        (b"RSET\r\n", "250"),
        (b"HELP\r\n", "214"),
        (b"FROB\r\n", "500"),
        (b"VRFY someone\r\n", "252"),
        (b"EXPN staff\r\n", "421"),
    ];
    expect_codes(&mut client, cases).await;
    assert!(converse(&mut client, b"", 1).await.is_empty(), "closed");
}

#[tokio::test]
async fn syntax_sequence_and_length_errors() {
    let mut client = start(context(""));
    converse(&mut client, b"", 1).await;
    let long = format!("NOOP {}\r\n", "x".repeat(600));
    let cases: &[(&[u8], &str)] = &[
        (b"HELO\r\n", "501"),
        (long.as_bytes(), "500"),
        (b"NOOP\n", "501"),
        (b"HELO client.example\r\n", "250"),
        (b"RCPT TO:<a@b.c>\r\n", "503"),
        (b"DATA\r\n", "503"),
        (b"MAIL FROM:<a@b.c> SIZE=10\r\n", "555"),
        ("MAIL FROM:<ü@b.c>\r\n".as_bytes(), "553"),
        (b"RSET\r\n", "250"),
    ];
    expect_codes(&mut client, cases).await;
}

#[tokio::test]
async fn unreachable_upstream_gives_451_to_mail() {
    let mut client = start(context(""));
    converse(&mut client, b"", 1).await;
    assert_eq!(
        converse(&mut client, b"EHLO c.example\r\n", 1).await,
        ["250"]
    );
    assert_eq!(
        converse(
            &mut client,
            b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n",
            3
        )
        .await,
        ["451", "503", "503"]
    );
}

#[tokio::test]
async fn commands_pipelined_behind_a_refused_mail_are_not_client_errors() {
    let mut client = start(context("[smtp]\nmax_errors = 3\n"));
    converse(&mut client, b"", 1).await;
    converse(&mut client, b"EHLO c.example\r\n", 1).await;
    // The upstream is down: each MAIL gets 451, what was pipelined behind it 503.
    let group = b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nRCPT TO:<g@e.f>\r\nDATA\r\n";
    for _ in 0..3 {
        assert_eq!(
            converse(&mut client, group, 4).await,
            ["451", "503", "503", "503"]
        );
    }
    // RCPT with no MAIL attempted since RSET is the client's own error.
    let stray = b"RSET\r\nRCPT TO:<d@e.f>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n";
    assert_eq!(
        converse(&mut client, stray, 5).await,
        ["250", "503", "503", "503", "421"]
    );
}

#[tokio::test]
async fn only_one_groups_worth_of_commands_behind_a_refused_mail_is_excused() {
    let mut client = start(context("[smtp]\nmax_errors = 2\nmax_recipients = 2\n"));
    converse(&mut client, b"", 1).await;
    converse(&mut client, b"EHLO c.example\r\n", 1).await;
    // Two RCPTs and a DATA are excused; the commands after them count.
    let flood = b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nDATA\r\nRCPT TO:<d@e.f>\r\n";
    assert_eq!(
        converse(&mut client, flood, 7).await,
        ["451", "503", "503", "503", "503", "503", "421"]
    );
}

#[tokio::test]
async fn each_refused_mail_excuses_its_own_group() {
    // Refused by the proxy itself (530: no STARTTLS yet), so the envelope stays as it
    // was: each MAIL still excuses the RCPTs and DATA pipelined behind it.
    let mut config = parse("[smtp]\nmax_errors = 2\nmax_recipients = 2\n");
    config.listeners[0].require_tls = true;
    let mut client = start(context_from(config));
    converse(&mut client, b"", 1).await;
    converse(&mut client, b"EHLO c.example\r\n", 1).await;
    let group = b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nRCPT TO:<g@e.f>\r\nDATA\r\n";
    for _ in 0..3 {
        assert_eq!(
            converse(&mut client, group, 4).await,
            ["530", "503", "503", "503"]
        );
    }
}

#[tokio::test]
async fn too_many_errors_disconnects() {
    let mut client = start(context("[smtp]\nmax_errors = 3\n"));
    converse(&mut client, b"", 1).await;
    assert_eq!(
        converse(&mut client, b"A\r\nB\r\nC\r\nD\r\n", 10).await,
        ["500", "500", "500", "421"]
    );
}

#[tokio::test]
async fn a_trickling_client_is_cut_off() {
    let mut client = start(context("[smtp]\ncommand_timeout = \"300ms\"\n"));
    converse(&mut client, b"", 1).await;
    let started = std::time::Instant::now();
    let mut reply = String::new();
    for byte in b"NOOP NOOP NOOP NOOP\r\n" {
        if client.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buffer = [0u8; 256];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), client.read(&mut buffer)).await
        {
            reply.push_str(&String::from_utf8_lossy(&buffer[..n]));
            if n == 0 || reply.contains("421") {
                break;
            }
        }
    }
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn idle_sessions_close_on_shutdown() {
    let context = context("");
    let mut client = start(context.clone());
    converse(&mut client, b"", 1).await;
    context.shutdown.stopping.cancel();
    assert_eq!(converse(&mut client, b"", 1).await, ["421"]);
}
