//! Start-up, shared by `portcullis run` and `portcullis check` so both refuse the
//! same configurations: every plugin compiled, pre-instantiated and initialised, the
//! certificates read, and each listener's chain, credentials and sender map prepared.
//! Every failure is a [`StartError`] that names the key (and the line, where the
//! configuration has it). Nothing here listens or serves.

use std::{collections::BTreeMap, sync::Arc};

use tracing::info;

use crate::{
    auth::{
        PolicyFileError, credentials::CredentialsFile, read_policy_file,
        sender_logins::SenderLogins,
    },
    config::{Config, MilterConfig, PluginConfig, TlsMode},
    dns::Resolver,
    hooks::{Chain, Member},
    kv::KvStore,
    milter::Milter,
    plugin_host::{
        Capacity, LoadError, LoadedPlugin, PluginError, PluginRuntime, SourceDigest, view,
    },
    session::ListenerContext,
    telemetry::ListenerMeters,
    tls::{
        TlsError,
        client::{Trust, UpstreamTls},
        server::ServerTls,
    },
};

/// Why the proxy cannot start (or `check` refuses a configuration).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The plugin engines could not be set up.
    #[error("the plugin runtime cannot start: {0}")]
    Runtime(#[source] LoadError),
    /// A plugin cannot be loaded or initialised; `key` is `line N: plugins.NAME`.
    #[error("{key}: {source}")]
    Plugin {
        /// Where the plugin is configured.
        key: String,
        /// What went wrong.
        #[source]
        source: LoadError,
    },
    /// A plugin's `memory_mb` is below what its instance needs to start.
    #[error("{key}.memory_mb: too little for this plugin to start: {source}")]
    PluginMemory {
        /// Where the plugin is configured.
        key: String,
        /// The memory limit reached.
        #[source]
        source: PluginError,
    },
    /// The certificates cannot be read.
    #[error("tls.certificate: {0}")]
    Certificates(#[source] TlsError),
    /// The trust anchors for TLS toward the upstream cannot be read.
    #[error("{key}: {source}")]
    UpstreamTls {
        /// `upstream.tls_ca` (or `upstream.tls` for the system's roots), with its line.
        key: String,
        /// What went wrong.
        #[source]
        source: TlsError,
    },
    /// A listener's credentials file or sender-login map cannot be used.
    #[error("{key}: {source}")]
    PolicyFile {
        /// The listener's key, e.g. `listener[1].auth.credentials`.
        key: String,
        /// Which file and line.
        #[source]
        source: PolicyFileError,
    },
    /// A listener names a verifier plugin that cannot check logins.
    #[error("{key}: {message}")]
    Verifier {
        /// The listener's key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A listener's address cannot be bound.
    #[error("cannot listen on {address} (listener {listener}): {source}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// Its address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key-value store cannot be set up (the error names the key).
    #[error("{0}")]
    Kv(#[source] crate::kv::KvError),
    /// The control socket cannot be bound.
    #[error("server.control_socket: {0}")]
    ControlSocket(#[source] crate::control::ControlError),
    /// The development upstream cannot start.
    #[error("the development upstream cannot start: {0}")]
    DevelopmentUpstream(#[source] std::io::Error),
    /// The metrics recorder cannot be installed.
    #[error("metrics: {0}")]
    Metrics(String),
    /// The audit file cannot be opened (the message names `audit.path`).
    #[error("{0}")]
    Audit(String),
}

/// What start-up made of a configuration.
pub struct Prepared {
    /// Every configured plugin, loaded, by name.
    pub plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    /// The engines they run on, and what they were set up for.
    pub(crate) engines: Option<Engines>,
    /// The certificates for client TLS, if any listener uses TLS.
    pub server_tls: Option<ServerTls>,
    /// The connectors for TLS toward the upstreams that ask for it.
    pub upstream_tls: UpstreamConnectors,
    /// Each listener with its chain and AUTH files, in configuration order.
    pub listeners: Vec<Arc<ListenerContext>>,
}

/// The plugin engines of one configuration, kept so that a reload can load its
/// plugins into them and keep the plugins that did not change.
#[derive(Clone)]
pub(crate) struct Engines {
    pub(crate) runtime: Arc<PluginRuntime>,
    capacity: Capacity,
    plugins: BTreeMap<String, (PluginConfig, Arc<LoadedPlugin>)>,
}

/// Loads everything `config` needs before the proxy can serve it.
pub async fn prepare(
    config: &Config,
    dns: Arc<Resolver>,
    kv: Arc<KvStore>,
) -> Result<Prepared, StartError> {
    prepare_reusing(config, dns, kv, None).await
}

/// [`prepare`], for a reload: plugins whose entry and file did not change since
/// `previous` are kept as they are (not compiled or initialised again) as long as
/// the engines can stay (same capacity). Reused engines go on with the resolver
/// they have until the caller, once the whole reload succeeded, gives them `dns`
/// ([`PluginRuntime::use_resolver`]).
pub(crate) async fn prepare_reusing(
    config: &Config,
    dns: Arc<Resolver>,
    kv: Arc<KvStore>,
    previous: Option<&Engines>,
) -> Result<Prepared, StartError> {
    let (plugins, engines) = load_plugins_reusing(config, dns, kv, previous).await?;
    let server_tls = server_tls(config)?;
    let upstream_tls = upstream_tls(config)?;
    let listeners = prepare_listeners(config, &plugins)?;
    Ok(Prepared {
        plugins,
        engines,
        server_tls,
        upstream_tls,
        listeners,
    })
}

/// The certificates for client TLS, if any listener uses TLS.
fn server_tls(config: &Config) -> Result<Option<ServerTls>, StartError> {
    if config.listeners.iter().all(|l| l.tls == TlsMode::None) {
        return Ok(None);
    }
    ServerTls::load(&config.tls.certificate)
        .map(Some)
        .map_err(StartError::Certificates)
}

/// The connectors for TLS toward the upstreams (`[upstream]`, then each
/// `[upstreams.NAME]`), with their trust anchors read.
fn upstream_tls(config: &Config) -> Result<UpstreamConnectors, StartError> {
    let mut groups = BTreeMap::new();
    for (name, upstream) in &config.upstreams {
        groups.insert(
            name.clone(),
            connector(&upstream.tls, &format!("upstreams.{name}"))?,
        );
    }
    Ok(UpstreamConnectors {
        default: connector(&config.upstream.tls, "upstream")?,
        groups,
    })
}

/// The TLS connectors of the upstreams: `None` where an upstream uses no TLS.
#[derive(Clone, Default)]
pub struct UpstreamConnectors {
    /// `[upstream]`'s.
    pub default: Option<UpstreamTls>,
    /// Each `[upstreams.NAME]`'s, by name.
    pub groups: BTreeMap<String, Option<UpstreamTls>>,
}

fn connector(
    tls: &crate::config::UpstreamTlsConfig,
    prefix: &str,
) -> Result<Option<UpstreamTls>, StartError> {
    if tls.mode == TlsMode::None {
        return Ok(None);
    }
    UpstreamTls::new(&tls.trust, &tls.server_name)
        .map(Some)
        .map_err(|source| {
            let key = match tls.trust {
                Trust::CaFile(_) => format!("{prefix}.tls_ca"),
                _ => format!("{prefix}.tls"),
            };
            StartError::UpstreamTls {
                key: match tls.line {
                    Some(line) => format!("line {line}: {key}"),
                    None => key.to_string(),
                },
                source,
            }
        })
}

/// Each listener with its chain and the files its AUTH policy reads.
fn prepare_listeners(
    config: &Config,
    plugins: &BTreeMap<String, Arc<LoadedPlugin>>,
) -> Result<Vec<Arc<ListenerContext>>, StartError> {
    let mut prepared = Vec::new();
    for (index, listener) in config.listeners.iter().enumerate() {
        let auth = &listener.auth;
        let key = |name: &str| format!("listener[{index}].auth.{name}");
        let policy_file = |name: &str| {
            let key = key(name);
            move |source| StartError::PolicyFile { key, source }
        };
        let credentials = auth
            .credentials
            .as_deref()
            .map(|path| read_policy_file(path, CredentialsFile::parse).map(Arc::new))
            .transpose()
            .map_err(policy_file("credentials"))?;
        let sender_logins = auth
            .sender_logins
            .as_deref()
            .map(|path| read_policy_file(path, SenderLogins::parse).map(Arc::new))
            .transpose()
            .map_err(policy_file("sender_logins"))?;
        let verifier = match &auth.verifier {
            Some(name) => {
                let verifier_error = |message: String| StartError::Verifier {
                    key: key("verifier"),
                    message,
                };
                let plugin = plugins
                    .get(name)
                    .ok_or_else(|| verifier_error(format!("plugin {name} is not loaded")))?;
                if !plugin.hooks.contains(view::Hooks::VERIFY_LOGIN) {
                    return Err(verifier_error(format!(
                        "plugin {name} does not check logins (its init did not ask for verify-login)"
                    )));
                }
                Some(plugin.clone())
            }
            None => None,
        };
        prepared.push(Arc::new(ListenerContext {
            config: listener.clone(),
            chain: Arc::new(Chain {
                listener: listener.name.clone(),
                members: chain_members(&listener.plugins, plugins, &config.milters),
            }),
            credentials,
            verifier,
            sender_logins,
            meters: ListenerMeters::new(&listener.name),
        }));
    }
    Ok(prepared)
}

/// A listener's chain: each name is a loaded plugin or a configured milter (the
/// configuration was checked for that).
pub(crate) fn chain_members(
    names: &[String],
    plugins: &BTreeMap<String, Arc<LoadedPlugin>>,
    milters: &BTreeMap<String, MilterConfig>,
) -> Vec<Member> {
    names
        .iter()
        .map(|name| match plugins.get(name) {
            Some(plugin) => Member::Plugin(plugin.clone()),
            None => Member::Milter(Arc::new(Milter::new(name, milters[name].clone()))),
        })
        .collect()
}

/// Compiles, pre-instantiates and initialises every configured plugin. The plugins
/// look names up through `dns` ([`Resolver::offline`] to run them without network).
pub async fn load_plugins(
    config: &Config,
    dns: Arc<Resolver>,
    kv: Arc<KvStore>,
) -> Result<BTreeMap<String, Arc<LoadedPlugin>>, StartError> {
    Ok(load_plugins_reusing(config, dns, kv, None).await?.0)
}

async fn load_plugins_reusing(
    config: &Config,
    dns: Arc<Resolver>,
    kv: Arc<KvStore>,
    previous: Option<&Engines>,
) -> Result<(BTreeMap<String, Arc<LoadedPlugin>>, Option<Engines>), StartError> {
    let mut loaded = BTreeMap::new();
    if config.plugins.is_empty() {
        return Ok((loaded, None));
    }
    let longest_chain = config.listeners.iter().map(|l| l.plugins.len()).max();
    let sessions = config.server.max_connections + 64;
    let needed = u32::try_from(sessions * longest_chain.unwrap_or(0) + config.plugins.len())
        .unwrap_or(u32::MAX);
    let capacity = Capacity {
        pooled: config.server.plugin_pool_size.min(needed),
        max_memory: config
            .plugins
            .values()
            .map(|p| p.memory_mb as usize * 1024 * 1024)
            .max()
            .unwrap_or(0),
    };
    let previous = previous.filter(|p| p.capacity == capacity);
    let runtime = match previous {
        Some(previous) => previous.runtime.clone(),
        None => PluginRuntime::new(dns, capacity, kv).map_err(StartError::Runtime)?,
    };
    let mut engines = Engines {
        runtime: runtime.clone(),
        capacity,
        plugins: BTreeMap::new(),
    };
    let loaded_all = load_each(config, previous, &mut engines, &mut loaded).await;
    // Kept or not, what this load compiled is in the plugins now, or not needed.
    runtime.forget_loaded_sources();
    loaded_all?;
    Ok((loaded, Some(engines)))
}

/// Loads each plugin of `config` into `engines` (or keeps it from `previous`).
async fn load_each(
    config: &Config,
    previous: Option<&Engines>,
    engines: &mut Engines,
    loaded: &mut BTreeMap<String, Arc<LoadedPlugin>>,
) -> Result<(), StartError> {
    let runtime = engines.runtime.clone();
    for (name, entry) in &config.plugins {
        let key = match entry.line {
            Some(line) => format!("line {line}: plugins.{name}"),
            None => format!("plugins.{name}"),
        };
        if let Some(kept) = previous.and_then(|p| unchanged(p, name, entry)) {
            engines
                .plugins
                .insert(name.clone(), (entry.clone(), kept.clone()));
            loaded.insert(name.clone(), kept);
            continue;
        }
        let plugin = match runtime.load(name, entry).await {
            Ok(plugin) => plugin,
            Err(LoadError::Start(source @ PluginError::MemoryLimit(_))) => {
                return Err(StartError::PluginMemory { key, source });
            }
            Err(source) => return Err(StartError::Plugin { key, source }),
        };
        info!(plugin = %name, hooks = ?plugin.hooks, shared = plugin.is_shared(), "plugin loaded");
        engines
            .plugins
            .insert(name.clone(), (entry.clone(), plugin.clone()));
        loaded.insert(name.clone(), plugin);
    }
    Ok(())
}

/// The plugin `previous` loaded for `name`, if its entry is the same (apart from
/// the line it is on) and its file still has the same contents.
fn unchanged(previous: &Engines, name: &str, entry: &PluginConfig) -> Option<Arc<LoadedPlugin>> {
    let (was, plugin) = previous.plugins.get(name)?;
    let same_entry = PluginConfig {
        line: entry.line,
        ..was.clone()
    } == *entry;
    let same_file = SourceDigest::of_file(&entry.path).ok()? == plugin.source();
    (same_entry && same_file).then(|| plugin.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parsing reads no file; start-up reads the upstream's CA bundle and names the
    /// key and its line when it cannot.
    #[tokio::test]
    async fn an_unreadable_upstream_ca_stops_start_up_naming_key_and_line() {
        let text = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n\n[upstream]\naddress = \"127.0.0.1:10025\"\ntls = \"starttls\"\ntls_ca = \"/nonexistent/ca.pem\"\n";
        let config = Config::parse(text).expect("parsing reads no file");
        let Err(error) = prepare(&config, Arc::new(Resolver::offline()), Arc::default()).await
        else {
            panic!("start-up accepted a CA file that does not exist");
        };
        assert!(matches!(error, StartError::UpstreamTls { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.starts_with("line 8: upstream.tls_ca: /nonexistent/ca.pem"),
            "{message}"
        );
    }
}
