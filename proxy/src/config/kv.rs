//! `[kv]`: where the key-value store plugins share lives — this process's memory, or
//! a Redis server (or cluster) that several proxies share.

use std::{num::NonZeroUsize, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, DEFAULT_MAX_ENTRIES, validate::LineOf};

/// `[kv]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct KvConfig {
    /// Most keys the memory store holds at once. When it is reached and a sweep finds
    /// nothing expired, new keys are not stored (existing ones still change) and a
    /// warning is logged.
    pub max_entries: NonZeroUsize,
    /// Where the keys are.
    pub backend: KvBackend,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            backend: KvBackend::Memory,
        }
    }
}

/// Where the keys are.
#[derive(Debug, Clone, PartialEq)]
pub enum KvBackend {
    /// In this process's memory: each proxy has its own.
    Memory,
    /// In Redis, shared by every proxy with the same server and prefix.
    Redis(RedisConfig),
}

/// The Redis server or cluster of `backend = "redis"`.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` of one server (no TLS yet).
    pub url: String,
    /// The nodes of a Redis Cluster instead (any of them; the rest are found).
    pub cluster: Vec<String>,
    /// Put before every key, so deployments can share a server.
    pub prefix: String,
    /// Longest time one call may take, connecting included.
    pub timeout: Duration,
}

/// `[kv]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKv {
    #[serde(default)]
    backend: Option<Spanned<String>>,
    #[serde(default)]
    max_entries: Option<NonZeroUsize>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    cluster: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

const DEFAULT_PREFIX: &str = "portcullis:";
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// Checks `[kv]` (starting on the line at `offset`): a Redis backend needs `url` or
/// `cluster`, and the memory store takes none of the Redis keys.
pub(super) fn validate(
    raw: Option<Spanned<RawKv>>,
    line_of: LineOf,
) -> Result<KvConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(KvConfig::default());
    };
    let table_line = line_of(raw.span().start);
    let raw = raw.into_inner();
    let error = |key: &str, line: usize, message: &str| ConfigError {
        key: format!("kv.{key}"),
        line: Some(line),
        message: message.into(),
    };
    let backend_name = raw
        .backend
        .as_ref()
        .map_or("memory", |backend| backend.get_ref().as_str());
    let backend_line = raw
        .backend
        .as_ref()
        .map_or(table_line, |backend| line_of(backend.span().start));
    let backend = match backend_name {
        "memory" => {
            let redis_key = [
                ("url", raw.url.is_some()),
                ("cluster", raw.cluster.is_some()),
                ("prefix", raw.prefix.is_some()),
                ("timeout", raw.timeout.is_some()),
            ]
            .into_iter()
            .find(|(_, set)| *set);
            if let Some((key, _)) = redis_key {
                return Err(error(
                    key,
                    table_line,
                    "only for backend = \"redis\" (the memory store is this process's own)",
                ));
            }
            KvBackend::Memory
        }
        "redis" => {
            let url = raw
                .url
                .map(|url| (line_of(url.span().start), url.into_inner()));
            let cluster = raw
                .cluster
                .map(|nodes| (line_of(nodes.span().start), nodes.into_inner()));
            let (url, cluster) = match (url, cluster) {
                (Some(_), Some((line, _))) => {
                    return Err(error(
                        "cluster",
                        line,
                        "give either url (one server) or cluster (its nodes), not both",
                    ));
                }
                (None, None) => {
                    return Err(error(
                        "url",
                        backend_line,
                        "backend = \"redis\" needs url = \"redis://host:port\" (or cluster = [...])",
                    ));
                }
                (Some((line, url)), None) => {
                    check_url(&url).map_err(|message| error("url", line, &message))?;
                    (url, Vec::new())
                }
                (None, Some((line, nodes))) => {
                    if nodes.is_empty() {
                        return Err(error("cluster", line, "name at least one node"));
                    }
                    for node in &nodes {
                        check_url(node).map_err(|message| error("cluster", line, &message))?;
                    }
                    (String::new(), nodes)
                }
            };
            if raw.max_entries.is_some() {
                return Err(error(
                    "max_entries",
                    table_line,
                    "only for backend = \"memory\"; bound Redis with its own maxmemory",
                ));
            }
            let timeout = raw.timeout.unwrap_or(DEFAULT_TIMEOUT);
            if timeout.is_zero() {
                return Err(error("timeout", table_line, "must be more than 0"));
            }
            KvBackend::Redis(RedisConfig {
                url,
                cluster,
                prefix: raw.prefix.unwrap_or_else(|| DEFAULT_PREFIX.into()),
                timeout,
            })
        }
        other => {
            return Err(error(
                "backend",
                backend_line,
                &format!("\"{other}\" is not a backend: \"memory\" or \"redis\""),
            ));
        }
    };
    Ok(KvConfig {
        max_entries: raw.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES),
        backend,
    })
}

/// A Redis URL as the client will read it (host, port, database, credentials).
fn check_url(url: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    match url.split_once("://") {
        Some(("rediss", _)) => Err(format!(
            "{url:?}: TLS to Redis (rediss://) is not supported yet; use redis:// to a Redis on this host or a private network, or a TLS tunnel"
        )),
        Some(("redis" | "redis+unix" | "unix", rest)) if !rest.is_empty() => url
            .into_connection_info()
            .map(|_| ())
            .map_err(|error| format!("{url:?} is not a usable Redis URL: {error}")),
        _ => Err(format!(
            "{url:?} is not a Redis URL (redis://[user:password@]host:port[/db])"
        )),
    }
}
