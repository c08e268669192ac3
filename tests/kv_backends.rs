//! The key-value store's promises, held against both backends by one suite: the
//! memory store, and a real redis-server. Then what only a shared store has: two
//! proxies' stores see the same keys under one prefix and none under another, and an
//! outage of Redis is an error for each call (within the timeout), after which the
//! store works again by itself.

mod common;

use std::{num::NonZeroUsize, sync::Arc, time::Duration};

use common::redis::{RedisCluster, RedisServer};
use portcullis::{
    config::{KvBackend, KvConfig, RedisConfig},
    kv::{KvError, KvStore},
};

fn memory() -> KvStore {
    KvStore::new(&KvConfig::default()).unwrap()
}

fn redis(server: &RedisServer, prefix: &str) -> KvStore {
    KvStore::new(&KvConfig {
        max_entries: NonZeroUsize::new(1).unwrap(),
        backend: KvBackend::Redis(RedisConfig {
            url: server.url(),
            cluster: Vec::new(),
            prefix: prefix.into(),
            timeout: Duration::from_millis(500),
        }),
    })
    .unwrap()
}

/// What every backend must do alike.
async fn suite(store: Arc<KvStore>) {
    assert_eq!(store.get("missing").await, Ok(None));
    // Values are bytes, keys may hold anything a plugin key does.
    let value = vec![0, 255, b'\n', 0xc3];
    store
        .set("plugin\0bytes", value.clone(), None)
        .await
        .unwrap();
    assert_eq!(store.get("plugin\0bytes").await, Ok(Some(value)));
    store
        .set("plugin\0bytes", b"changed".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        store.get("plugin\0bytes").await,
        Ok(Some(b"changed".to_vec()))
    );
    // Expiry.
    store.set("short", b"v".to_vec(), Some(100)).await.unwrap();
    assert_eq!(store.get("short").await, Ok(Some(b"v".to_vec())));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(store.get("short").await, Ok(None));
    // Counters: a new key gets the TTL; a live one keeps its own.
    assert_eq!(store.incr("n", 2, Some(150)).await, Ok(2));
    assert_eq!(store.incr("n", -5, Some(60_000)).await, Ok(-3));
    assert_eq!(store.get("n").await, Ok(Some(b"-3".to_vec())));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.get("n").await, Ok(None), "the first TTL held");
    assert_eq!(
        store.incr("n", 1, None).await,
        Ok(1),
        "an expired counter restarts"
    );
    // A value that is not a number counts from 0.
    store
        .set("text", b"not a number".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(store.incr("text", 4, None).await, Ok(4));
    assert_eq!(
        store.incr("big", i64::MAX - 1, None).await,
        Ok(i64::MAX - 1)
    );
    assert_eq!(
        store.incr("big", 1, None).await,
        Ok(i64::MAX),
        "exact at the top"
    );
    // Delete.
    assert_eq!(store.delete("text").await, Ok(true));
    assert_eq!(store.delete("text").await, Ok(false));
    store.set("gone", b"v".to_vec(), Some(50)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        store.delete("gone").await,
        Ok(false),
        "an expired key is no key"
    );
    // Increments are atomic: 50 at once give 50 distinct results and the sum.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let store = store.clone();
        calls.spawn(async move { store.incr("race", 1, Some(60_000)).await });
    }
    let mut seen: Vec<i64> = calls
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    assert_eq!(store.get("race").await, Ok(Some(b"50".to_vec())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_the_promises() {
    suite(Arc::new(memory())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_keeps_the_same_promises() {
    let Some(server) = RedisServer::start() else {
        eprintln!("skipped: redis-server is not installed");
        return;
    };
    suite(Arc::new(redis(&server, "suite:"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_keeps_the_same_promises() {
    let Some(cluster) = RedisCluster::start() else {
        eprintln!("skipped: redis-server or redis-cli is not installed");
        return;
    };
    let store = KvStore::new(&KvConfig {
        max_entries: NonZeroUsize::new(1).unwrap(),
        backend: KvBackend::Redis(RedisConfig {
            url: String::new(),
            cluster: cluster.urls()[..1].to_vec(),
            prefix: "cluster:".into(),
            timeout: Duration::from_secs(2),
        }),
    })
    .unwrap();
    suite(Arc::new(store)).await;
}

#[tokio::test]
async fn proxies_share_keys_under_one_prefix_and_only_there() {
    let Some(server) = RedisServer::start() else {
        eprintln!("skipped: redis-server is not installed");
        return;
    };
    let (first, second, other) = (
        redis(&server, "site:"),
        redis(&server, "site:"),
        redis(&server, "elsewhere:"),
    );
    assert_eq!(
        first.incr("rate\0client/192.0.2.1", 1, Some(60_000)).await,
        Ok(1)
    );
    assert_eq!(
        second.incr("rate\0client/192.0.2.1", 1, Some(60_000)).await,
        Ok(2)
    );
    assert_eq!(other.get("rate\0client/192.0.2.1").await, Ok(None));
}

#[tokio::test]
async fn an_outage_is_an_error_per_call_and_the_store_recovers_by_itself() {
    let Some(mut server) = RedisServer::start() else {
        eprintln!("skipped: redis-server is not installed");
        return;
    };
    let store = redis(&server, "outage:");
    assert_eq!(store.incr("k", 1, None).await, Ok(1));
    server.stop();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let failed = store.incr("k", 1, None).await;
        assert!(
            matches!(failed, Err(KvError::Unavailable(_) | KvError::Timeout(_))),
            "{failed:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "bounded by the timeout"
        );
    }
    server.resume();
    // The server came back empty (no persistence); the store reconnects by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match store.incr("k", 1, None).await {
            Ok(count) => {
                assert_eq!(count, 1);
                break;
            }
            Err(error) => {
                assert!(std::time::Instant::now() < deadline, "no recovery: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
