//! Micro-benchmarks of the plugin host with criterion: creating a session's instance
//! of a plugin (Store + instance from the pre-instantiated component, which starts
//! from the snapshot taken after `init` at load), one hook call on a warm instance
//! (with warm CPU caches, and with caches another 32 MiB of memory traffic has
//! flushed), and one on an instance lent by a shareable plugin.
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
    plugin_host::{Capacity, LoadedPlugin, PluginRuntime, abi},
};

fn load(runtime: &tokio::runtime::Runtime, crate_name: &str, config: &str) -> Arc<LoadedPlugin> {
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
            Default::default(),
        )
        .unwrap()
        .load(crate_name, &config)
        .await
        .unwrap()
    })
}

fn session() -> abi::Session {
    abi::Session {
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
    let envelope = abi::Envelope {
        sender: "alice@example.org".into(),
        mail_params: Vec::new(),
        recipients: vec!["carol@example.com".into()],
    };
    let mut instance = runtime.block_on(recipients.instantiate("bench")).unwrap();
    c.bench_function("rcpt hook call (recipients)", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    black_box(
                        instance
                            .rcpt(&session, &envelope, "bob@example.com", &[])
                            .await
                            .unwrap(),
                    );
                }
                start.elapsed()
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
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    black_box(instance.connect(&session).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    // A shareable plugin's call as a session makes it: borrow an idle instance, call,
    // give it back. Two sessions alternate, so every call is from a session other
    // than the last one the instance served (the plugin fetches the session again).
    let other = abi::Session {
        id: "bench-2".into(),
        client_ip: "192.0.2.2".into(),
        ..session.clone()
    };
    assert!(recipients.is_shared());
    c.bench_function(
        "rcpt hook call on a lent instance, sessions alternating (recipients)",
        |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for n in 0..iterations {
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
                    }
                    start.elapsed()
                })
            })
        },
    );
    let mut limiter = runtime.block_on(rate_limit.instantiate("bench")).unwrap();
    c.bench_function("mail hook call (rate-limit, one kv increment)", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    black_box(
                        limiter
                            .mail(&session, "alice@example.org", &[])
                            .await
                            .unwrap(),
                    );
                }
                start.elapsed()
            })
        })
    });
}

criterion_group!(benches, plugin_calls);
criterion_main!(benches);
