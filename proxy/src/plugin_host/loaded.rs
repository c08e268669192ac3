//! A loaded plugin: its pre-instantiated component and settings, and the instances
//! sessions get from it (their own, or lent for one call if it is shared).

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use wasmtime::{
    Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline, component::Instance,
};

use super::{
    LoadError, Plugin, PluginError, PluginInstance, PluginPre, PluginRuntime,
    engine::PoolSlot,
    error::{describe, trap},
    host, view,
};
use metrics::gauge;

use crate::{config::OnError, telemetry};

/// A compiled, pre-instantiated plugin and its settings.
pub struct LoadedPlugin {
    /// The plugin's name in the configuration.
    pub name: Arc<str>,
    pub(super) settings: Settings,
    /// The component for the on-demand engine.
    pub(super) pre: PluginPre<host::PluginState>,
    /// The component for the pooled engine, if there is a pool.
    pub(super) pooled: Option<PluginPre<host::PluginState>>,
    /// What the session gets when this plugin fails.
    pub on_error: OnError,
    /// In shadow: called, its verdicts and edits logged and counted, never applied.
    pub shadow: bool,
    /// The hooks the plugin asked for.
    pub hooks: view::Hooks,
    /// The component could not be pre-initialised: each instance runs `init` itself.
    pub(super) init_per_instance: bool,
    /// The idle instances sessions borrow one call at a time, if the plugin is
    /// shareable and the operator allows it; `None` means one instance per session.
    pub(super) shared: Option<std::sync::Mutex<Vec<PluginInstance>>>,
    /// The contents of the file it was loaded from.
    pub(super) source: super::SourceDigest,
    /// Its calls, counted.
    pub(crate) meters: telemetry::PluginMeters,
}

/// Idle instances a shared plugin keeps for the next calls. More than this are only
/// alive while calls that wait (on DNS, say) overlap, and dropped after them.
const SHARED_IDLE_LIMIT: usize = 64;

impl LoadedPlugin {
    /// True if sessions borrow this plugin's instances for one call at a time instead
    /// of each keeping its own (the plugin says `shareable`, and the operator did not
    /// set `share_instances = false`).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The contents of the file it was loaded from.
    pub fn source(&self) -> super::SourceDigest {
        self.source
    }

    /// An instance for one call in session `session_id`: for a shared plugin an idle
    /// one if there is one, otherwise a new one. Hand it back with
    /// [`Self::give_back`] once the call went well.
    pub async fn lend(&self, session_id: &str) -> Result<PluginInstance, PluginError> {
        let idle = self
            .shared
            .as_ref()
            .and_then(|shared| shared.lock().expect("lock poisoned").pop());
        match idle {
            Some(mut instance) => {
                instance.store.data_mut().serve(session_id);
                Ok(instance)
            }
            None => self.instantiate(session_id).await,
        }
    }

    /// Takes back an instance from [`Self::lend`] after a call that went well. A
    /// shared plugin keeps it for the next call (up to a limit of idle ones); any
    /// other instance is dropped. An instance whose call failed, or was cancelled with
    /// its session half-way, must be dropped instead, never given back.
    pub fn give_back(&self, instance: PluginInstance) {
        if let Some(shared) = &self.shared {
            let mut idle = shared.lock().expect("lock poisoned");
            if idle.len() < SHARED_IDLE_LIMIT {
                idle.push(instance);
            }
        }
    }

    /// Asks this verifier plugin whether `login` and `password` match, in an instance
    /// lent for this call only: the password reaches no other plugin, and no instance
    /// a session keeps.
    pub async fn verify_login(
        &self,
        session_id: &str,
        session: &view::SessionInfo,
        mechanism: &str,
        login: &str,
        password: &str,
    ) -> Result<view::LoginCheck, PluginError> {
        let mut instance = self.lend(session_id).await?;
        let result = instance
            .verify_login(session, mechanism, login, password)
            .await;
        if result.is_ok() {
            self.give_back(instance);
        }
        result
    }

    /// A fresh instance for one session, in the state `init` left (from the
    /// pre-initialised image, or by running `init` in it): from the pool while it has
    /// room, on demand past it.
    pub async fn instantiate(&self, session_id: &str) -> Result<PluginInstance, PluginError> {
        let runtime = &self.settings.runtime;
        if let (Some(pool), Some(pre)) = (&runtime.pool, &self.pooled)
            && let Some(slot) = pool.take()
        {
            let instance = self
                .settings
                .new_instance(&pool.backend.engine, session_id, Some(slot));
            match self.start(instance, pre).await {
                Ok(instance) => return Ok(instance),
                Err(NotStarted::Failed(error)) => return Err(error),
                // The pool's slot count is an estimate of what components need; a
                // component that needs more than its share is made on demand.
                Err(NotStarted::PoolFull) => {}
            }
        }
        let instance = self
            .settings
            .new_instance(&runtime.on_demand.engine, session_id, None);
        self.start(instance, &self.pre)
            .await
            .map_err(|error| match error {
                NotStarted::Failed(error) => error,
                NotStarted::PoolFull => unreachable!("an on-demand instance takes no pool slot"),
            })
    }

    /// Instantiates `pre` in `instance`'s store and brings it to the state `init` left.
    async fn start(
        &self,
        mut instance: PluginInstance,
        pre: &PluginPre<host::PluginState>,
    ) -> Result<PluginInstance, NotStarted> {
        let _running = instance.arm();
        let instantiated = if self.init_per_instance {
            match pre
                .instance_pre()
                .instantiate_async(&mut instance.store)
                .await
            {
                Ok(raw) => {
                    let hooks = self.settings.init(&mut instance, &raw).await;
                    return hooks.map(|_| instance).map_err(NotStarted::Failed);
                }
                Err(error) => error,
            }
        } else {
            match pre.instantiate_async(&mut instance.store).await {
                Ok(bindings) => {
                    instance.bindings = Some(bindings);
                    instance.hooks = self.hooks;
                    return Ok(instance);
                }
                Err(error) => error,
            }
        };
        if instantiated.is::<wasmtime::PoolConcurrencyLimitError>() {
            return Err(NotStarted::PoolFull);
        }
        Err(NotStarted::Failed(instance.failure(instantiated)))
    }
}

/// Why [`LoadedPlugin::start`] made no instance.
enum NotStarted {
    /// The pool has no room for this component; make it on demand.
    PoolFull,
    /// It failed (its memory limit, a trap in `init`, ...).
    Failed(PluginError),
}

/// What a plugin's instances need besides the component.
pub(super) struct Settings {
    pub(super) name: Arc<str>,
    pub(super) path: std::path::PathBuf,
    pub(super) runtime: Arc<PluginRuntime>,
    /// The plugin's configuration table, as TOML text for `init`.
    pub(super) config_text: String,
    pub(super) timeout: Duration,
    pub(super) memory: usize,
}

impl Settings {
    /// A start-up error about this plugin's component.
    pub(super) fn error(&self, error: &wasmtime::Error) -> LoadError {
        LoadError::Component {
            path: self.path.clone(),
            reason: describe(error),
        }
    }

    /// Runs `init` with the plugin's configuration in a fresh `raw` instance, which
    /// is then ready for hook calls; returns the hooks the plugin asked for.
    pub(super) async fn init(
        &self,
        instance: &mut PluginInstance,
        raw: &Instance,
    ) -> Result<view::Hooks, PluginError> {
        let bindings = Plugin::new(&mut instance.store, raw).map_err(trap)?;
        let _running = instance.arm();
        let result = bindings
            .call_init(&mut instance.store, &self.config_text)
            .await;
        instance.hooks = result
            .map_err(|error| instance.failure(error))?
            .map_err(PluginError::Init)?
            .into();
        instance.bindings = Some(bindings);
        Ok(instance.hooks)
    }

    /// A store of `engine` for one session's instance, with this plugin's limits;
    /// `slot` is its place in the pool, if it is pooled.
    pub(super) fn new_instance(
        &self,
        engine: &Engine,
        session_id: &str,
        slot: Option<PoolSlot>,
    ) -> PluginInstance {
        let limits: StoreLimits = StoreLimitsBuilder::new()
            .memory_size(self.memory)
            .instances(32)
            .build();
        let state = host::PluginState::new(
            self.name.clone(),
            session_id,
            limits,
            self.runtime.services.clone(),
        );
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|context| {
            if Instant::now() >= context.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        if telemetry::on() {
            gauge!(telemetry::PLUGIN_INSTANCES).increment(1.0);
        }
        PluginInstance {
            store,
            bindings: None,
            timeout: self.timeout,
            memory: self.memory,
            ticker: self.runtime.ticker.clone(),
            hooks: view::Hooks::empty(),
            _slot: slot,
        }
    }
}
