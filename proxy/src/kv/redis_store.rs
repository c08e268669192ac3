//! The store in Redis: one multiplexed connection that reconnects by itself (redis-rs'
//! connection manager), or a Redis Cluster connection; every key under the
//! deployment's prefix; every call bounded by `kv.timeout`. `incr` is one script
//! run by Redis, so it is atomic across every proxy sharing the server.

use std::time::Duration;

use redis::{AsyncCommands, Script, aio::ConnectionManager, cluster_async::ClusterConnection};
use tokio::sync::OnceCell;

use super::KvError;
use crate::config::RedisConfig;

/// `incr` in one round trip: a new key is created at 0 with its TTL, then increased;
/// a value that is not a decimal number (or would overflow) is counted from 0 and
/// keeps its TTL, as in the memory store. The result is read back as text, so every
/// i64 comes back exact (Lua's numbers would round past 2^53).
const INCR: &str = r"
local key, delta, ttl = KEYS[1], ARGV[1], ARGV[2]
if redis.call('SET', key, '0', 'NX') and ttl ~= '' then
  redis.call('PEXPIRE', key, ttl)
end
if not pcall(redis.call, 'INCRBY', key, delta) then
  redis.call('SET', key, delta, 'KEEPTTL')
end
return redis.call('GET', key)
";

/// Connections to Redis, made when first needed.
pub(super) struct RedisStore {
    connection: Connection,
    prefix: String,
    timeout: Duration,
    incr: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

enum Connection {
    /// One server: connects on first use, reconnects after a failure.
    Single(ConnectionManager),
    /// A cluster.
    Cluster(Box<Cluster>),
}

/// A cluster's nodes, and the connection once one was made.
struct Cluster {
    client: redis::cluster::ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

fn unavailable(error: redis::RedisError) -> KvError {
    KvError::Unavailable(error.to_string())
}

impl RedisStore {
    /// Checks the URLs; connects on first use.
    pub(super) fn new(config: &RedisConfig) -> Result<Self, KvError> {
        let setup = |key: &str, error: redis::RedisError| KvError::Setup(format!("{key}: {error}"));
        let connection = if config.cluster.is_empty() {
            let client =
                redis::Client::open(config.url.as_str()).map_err(|error| setup("kv.url", error))?;
            let settings = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout))
                .set_number_of_retries(1);
            Connection::Single(
                client
                    .get_connection_manager_lazy(settings)
                    .map_err(|error| setup("kv.url", error))?,
            )
        } else {
            let client =
                redis::cluster::ClusterClient::builder(config.cluster.iter().map(String::as_str))
                    .connection_timeout(config.timeout)
                    .response_timeout(config.timeout)
                    .build()
                    .map_err(|error| setup("kv.cluster", error))?;
            Connection::Cluster(Box::new(Cluster {
                client,
                connection: OnceCell::new(),
            }))
        };
        Ok(Self {
            connection,
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            incr: Script::new(INCR),
        })
    }

    fn key(&self, key: &str) -> Vec<u8> {
        let mut stored = Vec::with_capacity(self.prefix.len() + key.len());
        stored.extend_from_slice(self.prefix.as_bytes());
        stored.extend_from_slice(key.as_bytes());
        stored
    }

    /// Runs `call` on a connection within the timeout.
    async fn call<T, F>(&self, call: impl FnOnce(Handle) -> F) -> Result<T, KvError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let handle = match &self.connection {
                Connection::Single(manager) => Handle::Single(manager.clone()),
                Connection::Cluster(cluster) => Handle::Cluster(
                    cluster
                        .connection
                        .get_or_try_init(|| cluster.client.get_async_connection())
                        .await
                        .map_err(unavailable)?
                        .clone(),
                ),
            };
            call(handle).await.map_err(unavailable)
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| KvError::Timeout(self.timeout))?
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let key = self.key(key);
        self.call(|mut c| async move { c.get(key).await }).await
    }

    pub(super) async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), KvError> {
        let key = self.key(key);
        self.call(|mut c| async move {
            match ttl_ms {
                Some(ttl) => c.pset_ex(key, value, ttl.max(1)).await,
                None => c.set(key, value).await,
            }
        })
        .await
    }

    pub(super) async fn incr(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, KvError> {
        let key = self.key(key);
        let ttl = ttl_ms.map(|ttl| ttl.max(1).to_string()).unwrap_or_default();
        let script = &self.incr;
        let text: String = self
            .call(|mut c| async move {
                let mut invocation = script.key(key);
                invocation.arg(delta).arg(ttl);
                c.invoke(&invocation).await
            })
            .await?;
        text.parse()
            .map_err(|_| KvError::Unavailable(format!("Redis returned {text:?} for a counter")))
    }

    pub(super) async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let key = self.key(key);
        let removed: i64 = self.call(|mut c| async move { c.del(key).await }).await?;
        Ok(removed > 0)
    }
}

/// A connection for one call (both kinds are cheap handles to one multiplexed
/// connection).
enum Handle {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Handle {
    async fn get(&mut self, key: Vec<u8>) -> redis::RedisResult<Option<Vec<u8>>> {
        match self {
            Handle::Single(c) => c.get(key).await,
            Handle::Cluster(c) => c.get(key).await,
        }
    }

    async fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> redis::RedisResult<()> {
        match self {
            Handle::Single(c) => c.set(key, value).await,
            Handle::Cluster(c) => c.set(key, value).await,
        }
    }

    async fn pset_ex(&mut self, key: Vec<u8>, value: Vec<u8>, ttl: u64) -> redis::RedisResult<()> {
        match self {
            Handle::Single(c) => c.pset_ex(key, value, ttl).await,
            Handle::Cluster(c) => c.pset_ex(key, value, ttl).await,
        }
    }

    async fn del(&mut self, key: Vec<u8>) -> redis::RedisResult<i64> {
        match self {
            Handle::Single(c) => c.del(key).await,
            Handle::Cluster(c) => c.del(key).await,
        }
    }

    async fn invoke(&mut self, script: &redis::ScriptInvocation<'_>) -> redis::RedisResult<String> {
        match self {
            Handle::Single(c) => script.invoke_async(c).await,
            Handle::Cluster(c) => script.invoke_async(c).await,
        }
    }
}
