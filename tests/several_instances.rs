//! Several proxies sharing one Redis (Debian's redis-server), behind real HAProxy
//! (round robin, PROXY v2), in front of one upstream: a per-client rate limit and
//! the AUTH throttle hold across both, whichever takes a connection; with Redis
//! stopped the configured choices apply, and both recover when it is back.

mod common;

use std::net::SocketAddr;

use base64::{Engine, engine::general_purpose::STANDARD};
use common::{
    Client, Proxy, RecordingUpstream, component,
    config::{TestConfig, table},
    haproxy::Haproxy,
    redis::RedisServer,
    require_program, wait_until,
};
use toml::Value;

const PASSWORD: &str = "correct horse battery";
const LIMIT: i64 = 3;

/// A credentials file with alice.
fn users() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let hash = common::hash_password(PASSWORD);
    std::fs::write(dir.path().join("users"), format!("alice:{hash}\n")).unwrap();
    dir
}

/// One proxy: behind the balancer, the store in `redis`, rate-limit on its chain
/// with `on_store_error`, edge AUTH with the throttle's `on_store_error`.
fn instance(
    upstream: &RecordingUpstream,
    redis: &RedisServer,
    users: &tempfile::TempDir,
    rate_limit_on_error: &str,
    throttle_on_error: &str,
) -> Proxy {
    let mut rate = toml::Table::new();
    rate.insert(
        "per_client".into(),
        Value::Table(table([
            ("messages", LIMIT.into()),
            ("window_seconds", 600.into()),
        ])),
    );
    rate.insert("on_store_error".into(), rate_limit_on_error.into());
    let mut auth = toml::Table::new();
    auth.insert("mode".into(), "edge".into());
    auth.insert("allow_plaintext".into(), true.into());
    auth.insert(
        "credentials".into(),
        users.path().join("users").display().to_string().into(),
    );
    TestConfig::relaying_to(&upstream.address())
        .set("kv.backend", "redis")
        .set("kv.url", redis.url())
        .set("kv.prefix", "shared-test:")
        .set("kv.timeout", "200ms")
        .set("auth_throttle.max_failures", 3)
        .set("auth_throttle.delay", "1ms")
        .set("auth_throttle.max_delay", "1ms")
        .set("auth_throttle.on_store_error", throttle_on_error)
        .set_on("test", "proxy_protocol", "v2")
        .set_on("test", "proxy_trusted", vec!["127.0.0.1/32"])
        .set_on("test", "auth", Value::Table(auth))
        .plugin(
            "test",
            "rate-limit",
            &component("rate-limit"),
            table([("config", Value::Table(rate))]),
        )
        .start()
}

/// One session through the balancer with one message: the reply to MAIL FROM (or
/// to the final dot when MAIL was accepted).
fn send(front: SocketAddr, id: &str) -> u16 {
    let mut client = Client::connect(front);
    assert_eq!(client.read_reply().code, 220);
    client.expect("EHLO client.example", 250);
    let mail = client.command("MAIL FROM:<a@example.org>");
    if mail.code != 250 {
        return mail.code;
    }
    client.expect("RCPT TO:<b@example.com>", 250);
    client.expect("DATA", 354);
    client.send(format!("Message-ID: <{id}>\r\n\r\nbody\r\n.\r\n").as_bytes());
    client.read_reply().code
}

/// One session through the balancer trying alice's login with `password`.
fn login(front: SocketAddr, password: &str) -> u16 {
    let mut client = Client::connect(front);
    assert_eq!(client.read_reply().code, 220);
    client.expect("EHLO client.example", 250);
    let line = format!(
        "AUTH PLAIN {}",
        STANDARD.encode(format!("\0alice\0{password}"))
    );
    client.command(&line).code
}

/// Two proxies behind HAProxy (round robin, PROXY v2) sharing one redis-server, in
/// front of one upstream, with these `on_store_error` choices for rate-limit and the
/// AUTH throttle; `None` when a program is missing outside CI.
struct Deployment {
    redis: RedisServer,
    upstream: RecordingUpstream,
    first: Proxy,
    second: Proxy,
    front: SocketAddr,
    _haproxy: Haproxy,
    _users: tempfile::TempDir,
}

impl Deployment {
    fn start(rate_limit_on_error: &str, throttle_on_error: &str) -> Option<Deployment> {
        if !require_program("haproxy") {
            return None;
        }
        let redis = RedisServer::start()?;
        let upstream = RecordingUpstream::start();
        let users = users();
        let [first, second] = [(); 2].map(|()| {
            instance(
                &upstream,
                &redis,
                &users,
                rate_limit_on_error,
                throttle_on_error,
            )
        });
        let haproxy = Haproxy::round_robin(&[first.address, second.address], "send-proxy-v2");
        Some(Deployment {
            front: haproxy.frontends[0],
            redis,
            upstream,
            first,
            second,
            _haproxy: haproxy,
            _users: users,
        })
    }
}

/// How many sessions each proxy has served.
fn sessions(proxy: &Proxy) -> usize {
    proxy
        .logs()
        .iter()
        .filter(|line| line.contains("\"message\":\"connected\""))
        .count()
}

#[test]
fn limits_hold_across_instances_and_the_configured_choices_apply_when_redis_is_down() {
    let Some(mut deployment) = Deployment::start("tempfail", "tempfail") else {
        return;
    };
    let Deployment {
        redis,
        upstream,
        first,
        second,
        front,
        ..
    } = &mut deployment;
    let front = *front;

    // The limit is per client across both: message LIMIT + 1 is tempfailed by
    // whichever instance takes it.
    let codes: Vec<u16> = (0..=LIMIT)
        .map(|n| send(front, &format!("m{n}@test")))
        .collect();
    assert_eq!(
        codes,
        [250, 250, 250, 450],
        "the 4th message, across instances"
    );
    assert_eq!(send(front, "m-again@test"), 450);
    wait_until("both instances served sessions", || {
        sessions(first) >= 2 && sessions(second) >= 2
    });
    assert_eq!(upstream.messages().len(), LIMIT as usize);

    // The AUTH throttle counts failures made on both: after three wrong passwords
    // (spread over the instances; the third is answered 535, then 421 and closed)
    // even the right one is refused, by either instance.
    for _ in 0..3 {
        assert_eq!(login(front, "wrong"), 535);
    }
    assert_eq!(login(front, PASSWORD), 421, "blocked on one instance");
    assert_eq!(login(front, PASSWORD), 421, "and on the other");

    // Redis stops: with on_store_error = "tempfail" both answer 4xx, nothing passes
    // uncounted, and no message is lost (the client was never told 250).
    redis.stop();
    let before = upstream.messages().len();
    assert_eq!(send(front, "down-1@test"), 451);
    assert_eq!(send(front, "down-2@test"), 451);
    assert_eq!(login(front, PASSWORD), 454);
    assert_eq!(upstream.messages().len(), before);

    // Back (empty: no persistence): both count again from zero.
    redis.resume();
    wait_until("the store answers again", || {
        send(front, "probe@test") == 250
    });
    assert_eq!(login(front, PASSWORD), 235);
}

#[test]
fn failing_open_lets_mail_and_logins_through_while_redis_is_down() {
    let Some(mut deployment) = Deployment::start("continue", "local") else {
        return;
    };
    let Deployment {
        redis,
        upstream,
        front,
        ..
    } = &mut deployment;
    let front = *front;
    redis.stop();
    // Uncounted but delivered: a store outage does not stop mail.
    for n in 0..=LIMIT {
        assert_eq!(send(front, &format!("open-{n}@test")), 250);
    }
    assert_eq!(upstream.messages().len(), LIMIT as usize + 1);
    // Logins are checked, the failures counted by each instance itself meanwhile:
    // three wrong ones on each (six in all, alternating) before both refuse.
    assert_eq!(login(front, PASSWORD), 235);
    for _ in 0..6 {
        assert_eq!(login(front, "wrong"), 535);
    }
    assert_eq!(login(front, PASSWORD), 421);
    assert_eq!(login(front, PASSWORD), 421);
}
