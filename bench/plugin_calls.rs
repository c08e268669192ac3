//! Micro-benchmarks of the plugin host with criterion: creating a session's instance
//! of a plugin (Store + instance from the pre-instantiated component, which starts
//! from the snapshot taken after `init` at load), one hook call on a warm instance
//! (with warm CPU caches, and with caches another 32 MiB of memory traffic has
//! flushed), one on an instance lent by a shareable plugin, and a whole 10 KiB
//! message through recipients, headers and rate-limit (hooks, spool, edits, bytes
//! for the upstream), in sessions that carry many messages or one each.
//! Uses the example plugins' release `.wasm` (built by `./scripts/test` or
//! `bench/plugins.sh`). Instances come from the pool, as the proxy's first do by
//! default; `ON_DEMAND=1` measures instances mapped on demand (the pool's overflow).
//!
//!   cargo bench -p portcullis --bench plugin_calls
//!   ON_DEMAND=1 cargo bench -p portcullis --bench plugin_calls

use std::{hint::black_box, path::PathBuf, sync::Arc, time::Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::{
    config::PluginConfig,
    dns::Resolver,
    hooks::{Chain, Decision, Member, SessionHooks},
    message::{Message, SpoolWriter},
    plugin_host::{Capacity, LoadedPlugin, PluginRuntime, view},
    smtp::{Command, capabilities::Capabilities, command, data::DotStuffer},
};

fn load(runtime: &tokio::runtime::Runtime, crate_name: &str, config: &str) -> Arc<LoadedPlugin> {
    load_with(runtime, crate_name, config, Default::default())
}

/// [`load`] with the plugins' key-value store `kv`.
fn load_with(
    runtime: &tokio::runtime::Runtime,
    crate_name: &str,
    config: &str,
    kv: Arc<portcullis::kv::KvStore>,
) -> Arc<LoadedPlugin> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm/wasm32-wasip2/plugin")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first",
        path.display()
    );
    let config: PluginConfig = toml::from_str(&format!(
        "path = {:?}\nconfig = {config}",
        path.display().to_string()
    ))
    .unwrap();
    runtime.block_on(async {
        PluginRuntime::new(
            Arc::new(Resolver::offline()),
            Capacity {
                pooled: if std::env::var_os("ON_DEMAND").is_some() {
                    0
                } else {
                    1000
                },
                max_memory: 32 << 20,
            },
            kv,
        )
        .unwrap()
        .load(crate_name, &config)
        .await
        .unwrap()
    })
}

/// Runs `call` for iterations 0..`iterations` on `runtime` and returns the time taken
/// (for criterion's `iter_custom`).
fn timed(
    runtime: &tokio::runtime::Runtime,
    iterations: u64,
    mut call: impl AsyncFnMut(u64),
) -> std::time::Duration {
    runtime.block_on(async {
        let start = Instant::now();
        for n in 0..iterations {
            call(n).await;
        }
        start.elapsed()
    })
}

fn session() -> view::SessionInfo {
    view::SessionInfo {
        id: "bench".into(),
        listener: "bench".into(),
        client_ip: "192.0.2.1".into(),
        client_port: 40000,
        helo: Some("client.example".into()),
        tls: false,
        login: None,
    }
}

fn plugin_calls(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let recipients = load(
        &runtime,
        "recipients",
        r#"{ domains = ["example.com"], max_recipients = 50 }"#,
    );
    let rate_limit = load(
        &runtime,
        "rate-limit",
        "{ per_client = { messages = 1000000000, window_seconds = 3600 } }",
    );
    c.bench_function("instance per session (recipients)", |b| {
        b.to_async(&runtime)
            .iter(|| async { recipients.instantiate("bench").await.unwrap() })
    });
    let session = session();
    let envelope = view::Envelope {
        sender: "alice@example.org".into(),
        mail_params: Vec::new(),
        recipients: vec!["carol@example.com".into()],
    };
    let mut instance = runtime.block_on(recipients.instantiate("bench")).unwrap();
    c.bench_function("rcpt hook call (recipients)", |b| {
        b.iter_custom(|iterations| {
            timed(&runtime, iterations, async |_| {
                black_box(
                    instance
                        .rcpt(&session, &envelope, "bob@example.com", &[])
                        .await
                        .unwrap(),
                );
            })
        })
    });
    // The same call as a busy proxy makes it: between two calls the session's network
    // work has pushed the plugin's code and data out of the CPU caches. 32 MiB of
    // other memory traffic stands for that; only the call itself is timed.
    let mut traffic = vec![0u8; 32 << 20];
    c.bench_function("rcpt hook call with cold caches (recipients)", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut timed = std::time::Duration::ZERO;
                for n in 0..iterations {
                    for line in traffic.chunks_mut(64) {
                        line[0] = line[0].wrapping_add(n as u8);
                    }
                    black_box(&traffic);
                    let start = Instant::now();
                    black_box(
                        instance
                            .rcpt(&session, &envelope, "bob@example.com", &[])
                            .await
                            .unwrap(),
                    );
                    timed += start.elapsed();
                }
                timed
            })
        })
    });
    c.bench_function("connect hook call (recipients, default continue)", |b| {
        b.iter_custom(|iterations| {
            timed(&runtime, iterations, async |_| {
                black_box(instance.connect(&session).await.unwrap());
            })
        })
    });
    // A shareable plugin's call as a session makes it: borrow an idle instance, call,
    // give it back. Two sessions alternate, so every call is from a session other
    // than the last one the instance served (the plugin fetches the session again).
    let other = view::SessionInfo {
        id: "bench-2".into(),
        client_ip: "192.0.2.2".into(),
        ..session.clone()
    };
    assert!(recipients.is_shared());
    c.bench_function(
        "rcpt hook call on a lent instance, sessions alternating (recipients)",
        |b| {
            b.iter_custom(|iterations| {
                timed(&runtime, iterations, async |n| {
                    let (id, session) = if n % 2 == 0 {
                        ("bench", &session)
                    } else {
                        ("bench-2", &other)
                    };
                    let mut lent = recipients.lend(id).await.unwrap();
                    black_box(
                        lent.rcpt(session, &envelope, "bob@example.com", &[])
                            .await
                            .unwrap(),
                    );
                    recipients.give_back(lent);
                })
            })
        },
    );
    let mut limiter = runtime.block_on(rate_limit.instantiate("bench")).unwrap();
    bench_mail(
        c,
        "mail hook call (rate-limit, one kv increment)",
        &runtime,
        &mut limiter,
        &session,
    );
    // With REDIS_URL (bench/kv.sh starts a redis-server): the same call, its
    // increment a round trip to Redis.
    let Ok(url) = std::env::var("REDIS_URL") else {
        return;
    };
    // The connection manager starts its task on the runtime it is made in.
    let _in_runtime = runtime.enter();
    let kv = portcullis::kv::KvStore::new(&portcullis::config::KvConfig {
        max_entries: portcullis::kv::DEFAULT_MAX_ENTRIES,
        backend: portcullis::config::KvBackend::Redis(portcullis::config::RedisConfig {
            url,
            cluster: Vec::new(),
            prefix: "bench:".into(),
            timeout: std::time::Duration::from_secs(1),
        }),
    })
    .unwrap();
    let on_redis = load_with(
        &runtime,
        "rate-limit",
        "{ per_client = { messages = 1000000000, window_seconds = 3600 } }",
        Arc::new(kv),
    );
    let mut limiter = runtime.block_on(on_redis.instantiate("bench")).unwrap();
    bench_mail(
        c,
        "mail hook call (rate-limit, one kv increment through Redis)",
        &runtime,
        &mut limiter,
        &session,
    );
    // Criterion gives the typical time; the tail needs every call's own.
    let mut each: Vec<std::time::Duration> = (0..10_000)
        .map(|_| {
            runtime.block_on(async {
                let started = Instant::now();
                black_box(
                    limiter
                        .mail(&session, "alice@example.org", &[])
                        .await
                        .unwrap(),
                );
                started.elapsed()
            })
        })
        .collect();
    each.sort_unstable();
    eprintln!(
        "rate-limit mail hook through Redis, 10,000 calls one at a time: p50 {:?}, p99 {:?}, max {:?}",
        each[each.len() / 2],
        each[each.len() * 99 / 100],
        each[each.len() - 1]
    );
}

/// A criterion row `name` of one MAIL hook call on `instance`.
fn bench_mail(
    c: &mut Criterion,
    name: &str,
    runtime: &tokio::runtime::Runtime,
    instance: &mut portcullis::plugin_host::PluginInstance,
    session: &view::SessionInfo,
) {
    c.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            timed(runtime, iterations, async |_| {
                black_box(
                    instance
                        .mail(session, "alice@example.org", &[])
                        .await
                        .unwrap(),
                );
            })
        })
    });
}

/// A 10 KiB message as `smtp-source -l 10240` sends it (seen in an smtp-sink dump):
/// From, To, Date and Message-Id, no Subject, then 78-character lines, each a digit
/// (the line number's last) and X's.
fn ten_kib_message() -> Vec<u8> {
    let mut message = b"From: <from@bench.test>\r\nTo: <to@bench.test>\r\n\
        Date: Fri,  4 Dec 2026 07:00:00 +0000 (UTC)\r\n\
        Message-Id: <4fde.0003.0000@bench.test>\r\n\r\n"
        .to_vec();
    let body_start = message.len();
    for line in 1.. {
        if message.len() - body_start >= 10 * 1024 {
            break;
        }
        message.push(b'0' + (line % 10) as u8);
        message.extend_from_slice(&[b'X'; 77]);
        message.extend_from_slice(b"\r\n");
    }
    message
}

/// What the three plugins of `bench/plugins.sh` add to one message, in-process and
/// without the network: the MAIL and RCPT hooks (recipients, rate-limit), spooling
/// the message, the DATA hook (headers) with its edits, and the header block and
/// dot-stuffed body made ready for the upstream. Ten sessions take turns, as with
/// `smtp-source -s 10`, so every call borrows an instance another session used last.
fn message_through_the_chain(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let chain = Arc::new(Chain {
        listener: "bench".into(),
        members: [
            load(
                runtime,
                "recipients",
                r#"{ domains = ["bench.test"], max_recipients = 100 }"#,
            ),
            load(
                runtime,
                "headers",
                r#"{ remove = ["Authentication-Results"], add = [{ name = "X-Checked", value = "{listener} {client_ip}" }], subject_tags = [{ tag = "[EXTERNAL]", sender_domain_not_in = ["example.com"] }] }"#,
            ),
            load(
                runtime,
                "rate-limit",
                "{ per_client = { messages = 1000000000, window_seconds = 3600 } }",
            ),
        ]
        .into_iter()
        .map(Member::Plugin)
        .collect(),
    });
    let mut sessions: Vec<(view::SessionInfo, SessionHooks)> = (0..10)
        .map(|n| {
            let id = format!("bench-{n}");
            let session = view::SessionInfo {
                id: id.clone(),
                client_ip: format!("192.0.2.{n}"),
                ..session()
            };
            (session, SessionHooks::new(chain.clone(), &id))
        })
        .collect();
    let message = ten_kib_message();
    c.bench_function(
        "a 10 KiB message through recipients, headers and rate-limit (MAIL, RCPT, spool, DATA, bytes for upstream)",
        |b| {
            b.iter_custom(|iterations| {
                timed(runtime, iterations, async |n| {
                    let (session, hooks) = &mut sessions[n as usize % 10];
                    black_box(one_message(session, hooks, &message).await);
                })
            })
        },
    );
    c.bench_function(
        "the same with a new session for every message (as smtp-source without -d)",
        |b| {
            b.iter_custom(|iterations| {
                timed(runtime, iterations, async |n| {
                    let id = format!("new-{n}");
                    let session = view::SessionInfo {
                        id: id.clone(),
                        ..sessions[n as usize % 10].0.clone()
                    };
                    let mut hooks = SessionHooks::new(chain.clone(), &id);
                    black_box(one_message(&session, &mut hooks, &message).await);
                    hooks.session_end(&session).await;
                })
            })
        },
    );
}

/// One message's plugin work; returns the octets that would go upstream.
async fn one_message(
    session: &view::SessionInfo,
    hooks: &mut SessionHooks,
    content: &[u8],
) -> usize {
    let Ok(Command::Mail(mail)) = command::parse(b"MAIL FROM:<from@bench.test>") else {
        unreachable!()
    };
    let Ok(Command::Rcpt(rcpt)) = command::parse(b"RCPT TO:<to@bench.test>") else {
        unreachable!()
    };
    let offered = Capabilities::relayable();
    let (decision, mail) = hooks.mail(session, mail, &offered).await;
    assert_eq!(decision, Decision::Continue);
    let mut envelope = view::Envelope {
        sender: mail.reverse_path.mailbox().to_string(),
        mail_params: Vec::new(),
        recipients: Vec::new(),
    };
    let (decision, rcpt) = hooks.rcpt(session, &envelope, rcpt, &offered).await;
    assert_eq!(decision, Decision::Continue);
    envelope
        .recipients
        .push(rcpt.forward_path.mailbox().to_string());
    let mut writer = SpoolWriter::new(1 << 20, None);
    for chunk in content.chunks(8192) {
        writer.write(chunk).await.unwrap();
    }
    let spooled = writer.finish().await.unwrap();
    let mut message = Message::new(spooled, envelope.recipients.clone());
    assert_eq!(
        hooks.data(session, &envelope, &mut message, &offered).await,
        Decision::Continue
    );
    let mut stuffer = DotStuffer::default();
    let mut wire = Vec::new();
    stuffer.stuff(&message.header_block(), &mut wire);
    stuffer.stuff(
        &message.body.chunk_at(0, usize::MAX).await.unwrap(),
        &mut wire,
    );
    stuffer.finish(&mut wire);
    wire.len()
}

fn chain(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    message_through_the_chain(c, &runtime);
}

criterion_group!(benches, plugin_calls, chain);
criterion_main!(benches);
