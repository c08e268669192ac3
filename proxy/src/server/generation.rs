//! A generation: everything a session starts with, made from one configuration — its
//! listeners with their chains and AUTH files, the upstream, the limits. A reload
//! builds the next generation beside the running one (plugins compiled and
//! initialised off the accept path) and only then puts it in place; a session keeps
//! the generation it started in to its end.
//!
//! What outlives a generation is carried over, not rebuilt: the plugins whose entry
//! and file did not change, the engines, the counts of the client and AUTH limits,
//! the key-value store, the upstream's idle sessions and extensions while the
//! upstream stays the same. Building changes nothing in use; what must change
//! outside the generation waits for [`Generation::take_effect`].

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::Semaphore;

use crate::{
    auth::{checks::PasswordChecks, throttle::AuthThrottle},
    client_limits::ClientLimits,
    config::{Config, UpstreamTarget},
    devupstream,
    dns::Resolver,
    kv::KvStore,
    listener::{Admission, Serving},
    plugin_host::LoadedPlugin,
    session::{ListenerContext, SessionContext, Shutdown},
    startup::{self, Engines, Prepared, StartError, UpstreamConnectors},
    upstream::{Upstream, capability_cache::CapabilityCache, pool::SessionPool},
};

/// What every generation shares: the process's own state.
pub(super) struct Lasting {
    pub(super) signals: Shutdown,
    /// Places under `server.max_connections`, over all generations.
    pub(super) permits: Arc<Semaphore>,
    pub(super) kv: Arc<KvStore>,
}

/// Everything sessions that start now are served with.
pub(crate) struct Generation {
    /// 1 for the configuration the proxy started with, one more for each reload.
    pub(super) number: u64,
    pub(super) config: Arc<Config>,
    /// What the sessions of each upstream share: `[upstream]`'s under `None`, each
    /// `[upstreams.NAME]`'s under its name.
    groups: BTreeMap<Option<String>, Upstreams>,
    /// Each listener, in configuration order.
    pub(super) listeners: Vec<Serving>,
    /// Which listener (index in `listeners`) each socket (by id) serves; set when
    /// the sockets are assigned, before the generation is put in place.
    pub(super) sockets: Vec<(u64, usize)>,
    /// The plugins by name.
    pub(super) plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    engines: Option<Engines>,
    /// The global client limits, and the own limits of listeners by name.
    shared_limits: Arc<ClientLimits>,
    own_limits: BTreeMap<String, Arc<ClientLimits>>,
}

impl Generation {
    /// Makes a generation of `config`, keeping from `previous` what did not change.
    /// Fails, having changed nothing in use, when any part of it cannot be made.
    pub(super) async fn build(
        config: Config,
        lasting: &Lasting,
        previous: Option<&Generation>,
    ) -> Result<Generation, StartError> {
        // Read anew: the system's resolver settings and the hosts file may have changed.
        let dns = Arc::new(Resolver::new(&config.dns));
        let Prepared {
            plugins,
            server_tls,
            upstream_tls,
            listeners,
            engines,
        } = match previous {
            // At start-up nothing is served yet: no worker to keep free.
            None => startup::prepare(&config, dns.clone(), lasting.kv.clone()).await?,
            Some(previous) => {
                prepare_off_the_workers(
                    config.clone(),
                    dns.clone(),
                    lasting.kv.clone(),
                    previous.engines.clone(),
                )
                .await?
            }
        };
        let throttle = match previous {
            Some(previous) => previous
                .context()
                .throttle
                .reconfigured(config.auth_throttle.clone()),
            None => AuthThrottle::new(config.auth_throttle.clone(), &lasting.kv),
        };
        let checks = match previous {
            Some(previous)
                if previous.config.auth_throttle.concurrent_checks
                    == config.auth_throttle.concurrent_checks
                    && previous.config.auth_throttle.check_timeout
                        == config.auth_throttle.check_timeout =>
            {
                previous.context().checks.clone()
            }
            _ => Arc::new(PasswordChecks::new(
                config.auth_throttle.concurrent_checks,
                config.auth_throttle.check_timeout,
            )),
        };
        // The same trail keeps its file across a reload.
        let audit = match (&config.audit, previous) {
            (None, _) => None,
            (Some(wanted), Some(previous)) if previous.config.audit.as_ref() == Some(wanted) => {
                previous.context().audit.clone()
            }
            (Some(wanted), _) => Some(Arc::new(
                crate::audit::Auditor::open(wanted).map_err(StartError::Audit)?,
            )),
        };
        let limits = |kept: Option<&Arc<ClientLimits>>, wanted| match kept {
            Some(kept) => kept.reconfigured(wanted),
            None => ClientLimits::new(wanted),
        };
        let shared_limits = limits(
            previous.map(|p| &p.shared_limits),
            config.client_limits.clone(),
        );
        let mut own_limits = BTreeMap::new();
        for listener in &config.listeners {
            if let Some(own) = &listener.client_limits {
                let kept = previous.and_then(|p| p.own_limits.get(&listener.name));
                own_limits.insert(listener.name.clone(), limits(kept, own.clone()));
            }
        }
        let config = Arc::new(config);
        // One context per upstream: `[upstream]` (None), then each named one.
        let names = std::iter::once(None).chain(config.upstreams.keys().cloned().map(Some));
        let mut groups = BTreeMap::new();
        for name in names {
            let group = Group::build(
                &config,
                name.as_deref(),
                &upstream_tls,
                lasting,
                previous.and_then(|p| p.groups.get(&name)),
                previous.map(|p| &p.config),
            )
            .await?;
            let context = Arc::new(SessionContext {
                config: config.clone(),
                upstream: group.upstream,
                capabilities: group.capabilities,
                pool: group.pool,
                shutdown: lasting.signals.clone(),
                server_tls: server_tls.clone(),
                throttle: throttle.clone(),
                checks: checks.clone(),
                dns: dns.clone(),
                audit: audit.clone(),
            });
            groups.insert(
                name,
                Upstreams {
                    servers: group.servers,
                    context,
                },
            );
        }
        let listeners = listeners
            .into_iter()
            .map(|listener: Arc<ListenerContext>| {
                let clients = own_limits
                    .get(&listener.config.name)
                    .unwrap_or(&shared_limits)
                    .clone();
                let context = groups[&listener.config.upstream].context.clone();
                Serving {
                    listener,
                    context,
                    admission: Admission::new(lasting.permits.clone(), clients),
                }
            })
            .collect();
        Ok(Generation {
            number: previous.map_or(1, |p| p.number + 1),
            sockets: Vec::new(),
            plugins,
            config,
            groups,
            listeners,
            engines,
            shared_limits,
            own_limits,
        })
    }

    /// What must change outside the generation once it is put in place: the
    /// store sizes and the resolver the (kept) plugin engines use.
    pub(super) fn take_effect(&self, lasting: &Lasting) {
        if let Some(memory) = lasting.kv.in_memory() {
            memory.set_max_entries(self.config.kv.max_entries);
        }
        let context = self.context();
        context.throttle.take_effect();
        if let Some(engines) = &self.engines {
            engines.runtime.use_resolver(context.dns.clone());
        }
    }

    /// What `[upstream]`'s sessions share (and what all share: throttle, checks, the
    /// resolver, the certificates).
    pub(super) fn context(&self) -> &Arc<SessionContext> {
        &self.groups[&None].context
    }

    /// What the sessions of each upstream share.
    pub(super) fn contexts(&self) -> impl Iterator<Item = &Arc<SessionContext>> {
        self.groups.values().map(|group| &group.context)
    }

    /// What connections on the socket `id` are served with, if a listener of this
    /// generation uses it.
    pub(super) fn serving(&self, id: u64) -> Option<Serving> {
        let (_, index) = self.sockets.iter().find(|(socket, _)| *socket == id)?;
        Some(self.listeners[*index].clone())
    }

    /// Every set of client limits in use, for the sweeps of ended rate windows.
    pub(super) fn client_limits(&self) -> impl Iterator<Item = &Arc<ClientLimits>> {
        std::iter::once(&self.shared_limits).chain(self.own_limits.values())
    }
}

/// Loads what `config` names on a blocking thread: compiling a plugin takes a core
/// for 50–200 ms, which on a runtime worker would stall every session scheduled
/// there (and the accept loops). The future still uses the proxy's runtime for its
/// timers and I/O.
async fn prepare_off_the_workers(
    config: Config,
    dns: Arc<Resolver>,
    kv: Arc<KvStore>,
    previous: Option<Engines>,
) -> Result<Prepared, StartError> {
    let runtime = tokio::runtime::Handle::current();
    let loading = tokio::task::spawn_blocking(move || {
        runtime.block_on(startup::prepare_reusing(
            &config,
            dns,
            kv,
            previous.as_ref(),
        ))
    });
    match loading.await {
        Ok(prepared) => prepared,
        Err(failed) => std::panic::resume_unwind(failed.into_panic()),
    }
}

/// One upstream's part of a generation.
struct Upstreams {
    /// Where its servers are (the development upstream's address when it is that).
    servers: Vec<String>,
    context: Arc<SessionContext>,
}

/// What one upstream's sessions are served with, before the context is made.
struct Group {
    servers: Vec<String>,
    upstream: Arc<Upstream>,
    capabilities: Arc<CapabilityCache>,
    pool: Arc<SessionPool>,
}

impl Group {
    /// The upstream `name` (`None`: `[upstream]`), keeping from `previous` (the
    /// same upstream in the generation before, configured as `was`) its known
    /// extensions while its servers stay, and its kept sessions while its settings
    /// stay too. The development upstream is started here when it is new.
    async fn build(
        config: &Config,
        name: Option<&str>,
        connectors: &UpstreamConnectors,
        lasting: &Lasting,
        previous: Option<&Upstreams>,
        was: Option<&Arc<Config>>,
    ) -> Result<Group, StartError> {
        let settings = match name {
            Some(name) => &config.upstreams[name],
            None => &config.upstream,
        };
        let old_settings = was.and_then(|was| match name {
            Some(name) => was.upstreams.get(name),
            None => Some(&was.upstream),
        });
        let servers = match (&settings.target, previous) {
            (UpstreamTarget::Servers(servers), _) => servers.clone(),
            (UpstreamTarget::Development(_), Some(previous))
                if old_settings.is_some_and(|old| old.target == settings.target) =>
            {
                previous.servers.clone()
            }
            (UpstreamTarget::Development(folder), _) => vec![
                devupstream::start(
                    folder.clone(),
                    &config.server.hostname,
                    lasting.signals.abort.clone(),
                )
                .await
                .map_err(StartError::DevelopmentUpstream)?
                .to_string(),
            ],
        };
        let same_servers = previous.filter(|p| p.servers == servers);
        let capabilities = match same_servers {
            Some(previous) => previous.context.capabilities.clone(),
            None => Arc::default(),
        };
        let pool = match same_servers {
            Some(previous) if old_settings == Some(settings) => previous.context.pool.clone(),
            _ => Arc::new(SessionPool::new(settings.reuse.clone())),
        };
        let connector = match name {
            Some(name) => connectors.groups.get(name).cloned().flatten(),
            None => connectors.default.clone(),
        };
        Ok(Group {
            upstream: Arc::new(Upstream::new(
                name.unwrap_or("default"),
                servers.clone(),
                settings.clone(),
                connector,
            )),
            servers,
            capabilities,
            pool,
        })
    }
}
