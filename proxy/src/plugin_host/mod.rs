//! Running plugins: the only module that names wasmtime.
//!
//! At start-up every configured component runs its `init` once with its
//! configuration, its memory is snapshotted into a new component (see `snapshot.rs`),
//! and that is compiled and pre-instantiated ([`LoadedPlugin`]). A session gets one
//! [`PluginInstance`] per plugin, created at that plugin's first wanted hook from
//! that snapshot (or, for a plugin that declares itself `shareable`, borrows one of
//! a few shared instances for each call: [`LoadedPlugin::lend`]), each in its own
//! `Store` with a memory cap
//! (`memory_mb`) and a deadline on every call (`timeout_ms`, enforced by epoch
//! interruption: an endless loop yields to the runtime every tick and traps once its
//! time is up). A trap, a timeout or a memory bomb ends that one call with a
//! [`PluginError`]; the instance is then dropped, and the caller applies the
//! plugin's `on_error` policy. The first instances alive at once take their memory
//! and stack from a pool reserved at start-up, the rest get them on demand
//! ([`Capacity`], `server.plugin_pool_size`). Plugins see no WASI except the hash seed
//! std's `HashMap` asks for.

mod engine;
mod host;
mod snapshot;

use std::{path::Path, sync::Arc, time::Duration};

use tokio::time::Instant;
use wasmtime::{
    Engine, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline,
    component::{Component, Instance, Resource},
};

pub use crate::kv::KvStore;
use crate::{
    config::{OnError, PluginConfig},
    dns::Resolver,
};
pub use engine::Capacity;
use engine::{Backend, CompiledFunctions, Pool, PoolSlot};
pub use host::MessageResource;

/// The bindings generated from the SDK's WIT file (the one ABI).
#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        path: "../plugin-sdk/wit",
        world: "plugin",
        // Only imports that wait are async: a synchronous host function costs ~0.1 µs
        // less per call (bench/plugin_calls.rs). A key-value backend that waits on the
        // network (Redis) makes `portcullis:plugin/kv` async here; plugins do not see
        // the difference.
        imports: {
            "portcullis:plugin/dns": async | trappable,
            "portcullis:plugin/types.[method]message.read-body": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        additional_derives: [PartialEq],
        with: {
            "portcullis:plugin/types.message": crate::plugin_host::host::MessageResource,
        },
    });
}

pub use generated::portcullis::plugin::types as abi;
use generated::{Plugin, PluginPre};

/// How often the epoch advances while a call runs; plugin deadlines are checked at
/// this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The thread that advances the engines' epochs. It ticks only while a plugin call
/// (or an instantiation) runs and sleeps otherwise, so an idle proxy costs no
/// wakeups: deadlines are wall-clock times checked at each tick, so a pause between
/// calls loses nothing.
#[derive(Debug, Default)]
struct Ticker {
    running: std::sync::atomic::AtomicUsize,
    thread: std::sync::OnceLock<std::thread::Thread>,
    stopped: std::sync::atomic::AtomicBool,
}

impl Ticker {
    /// Marks a call as running until the guard is dropped (also when the call's
    /// future is dropped half-way).
    fn enter(self: &Arc<Self>) -> Running {
        if self
            .running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 0
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
        Running(self.clone())
    }

    fn idle(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::SeqCst) == 0
    }
}

/// A plugin call in progress, keeping the epoch ticking.
#[must_use]
struct Running(Arc<Ticker>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Why a plugin call failed; the session applies the plugin's `on_error` policy.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The component could not be read or compiled.
    #[error("cannot load {path}: {reason}")]
    Load {
        /// The component's path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// `init` refused the configuration.
    #[error("init refused the configuration: {0}")]
    Init(String),
    /// The call ran past `timeout_ms`.
    #[error("timed out after {0} ms (timeout_ms)")]
    Timeout(u128),
    /// The instance needed more memory than `memory_mb` allows.
    #[error("memory limit of {0} MiB reached (memory_mb)")]
    MemoryLimit(usize),
    /// The plugin panicked: "panicked at PLACE: MESSAGE", as the SDK reported it.
    #[error("{0}")]
    Panic(String),
    /// The plugin trapped (out of bounds, unreachable, ...).
    #[error("trapped: {message}")]
    Trap {
        /// What wasmtime says.
        message: String,
        /// The wasm backtrace, with function names where the component kept them.
        backtrace: Option<String>,
    },
    /// The plugin returned something the proxy must not use.
    #[error("invalid result: {0}")]
    Invalid(String),
}

impl PluginError {
    /// The wasm backtrace of a trap, if there is one (logged at debug level).
    pub fn backtrace(&self) -> Option<&str> {
        match self {
            PluginError::Trap { backtrace, .. } => backtrace.as_deref(),
            _ => None,
        }
    }
}

/// A failure outside a hook call (instantiation, `init`): a timeout or a trap.
fn trap(error: wasmtime::Error) -> PluginError {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Trap {
            message: "interrupted: it ran past timeout_ms".into(),
            backtrace: None,
        },
        _ => PluginError::Trap {
            message: error.root_cause().to_string(),
            backtrace: error
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .map(|backtrace| backtrace.to_string()),
        },
    }
}

/// The engines and the services plugins call.
pub struct PluginRuntime {
    /// Start-up work and instances past the pool.
    on_demand: Backend,
    /// The first instances alive at once, if the pool is not empty.
    pool: Option<Pool>,
    services: host::Services,
    /// Instrumented components compiled so far, by path: entries of one file with
    /// different configurations snapshot the same instrumented component.
    instrumented: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, Component>>,
    /// Components made ready so far, by path and configuration: entries that share
    /// both share the pre-initialised component.
    prepared: std::sync::Mutex<std::collections::HashMap<(std::path::PathBuf, String), Prepared>>,
    ticker: Arc<Ticker>,
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker
            .stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.ticker.thread.get() {
            thread.unpark();
        }
    }
}

impl PluginRuntime {
    /// The engines (on demand, and pooled as `capacity` says), a thread that
    /// advances their epochs, and the services plugins call (key-value store `kv`, DNS
    /// through `dns`, which may be [`Resolver::offline`] for running plugins without
    /// network).
    pub fn new(
        dns: Arc<Resolver>,
        capacity: Capacity,
        kv: Arc<KvStore>,
    ) -> Result<Arc<Self>, PluginError> {
        let compiled = Arc::new(CompiledFunctions::default());
        let pool = Pool::new(&compiled, capacity)?;
        let runtime = Arc::new(PluginRuntime {
            on_demand: Backend::new(&compiled, None)?,
            pool,
            services: host::Services { kv, dns },
            instrumented: Default::default(),
            prepared: Default::default(),
            ticker: Arc::default(),
        });
        let on_demand = runtime.on_demand.engine.weak();
        let pooled = runtime.pool.as_ref().map(|pool| pool.backend.engine.weak());
        let ticker = runtime.ticker.clone();
        let thread = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !ticker.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    if ticker.idle() {
                        std::thread::park();
                        continue;
                    }
                    let Some(engine) = on_demand.upgrade() else {
                        return;
                    };
                    engine.increment_epoch();
                    if let Some(engine) = pooled.as_ref().and_then(|pooled| pooled.upgrade()) {
                        engine.increment_epoch();
                    }
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|error| PluginError::Load {
                path: "(epoch thread)".into(),
                reason: error.to_string(),
            })?;
        let _ = runtime.ticker.thread.set(thread.thread().clone());
        Ok(runtime)
    }

    /// Compiles and pre-instantiates one plugin, and runs its `init` once with its
    /// configuration: that checks the configuration, tells the plugin's hooks, and
    /// leaves the state every session's instance then starts from (see
    /// `snapshot.rs`). A component the pre-initialiser cannot handle is loaded as it
    /// is, and then runs `init` in every session's instance instead (with a warning).
    pub async fn load(
        self: &Arc<Self>,
        name: &str,
        config: &PluginConfig,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let settings = Settings {
            name: name.into(),
            path: config.path.clone(),
            runtime: self.clone(),
            config_text: toml::to_string(&config.config).map_err(|error| PluginError::Load {
                path: config.path.display().to_string(),
                reason: error.to_string(),
            })?,
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
            memory: config.memory_mb.saturating_mul(1024 * 1024) as usize,
        };
        let key = (config.path.clone(), settings.config_text.clone());
        let cached = self
            .prepared
            .lock()
            .expect("lock poisoned")
            .get(&key)
            .cloned();
        let prepared = match cached {
            Some(prepared) => prepared,
            None => {
                let prepared = self.prepare(&settings).await?;
                let mut all = self.prepared.lock().expect("lock poisoned");
                all.insert(key, prepared.clone());
                prepared
            }
        };
        let (component, hooks) = match prepared {
            Prepared::Initialised { component, hooks } => (component, Some(hooks)),
            Prepared::AsIs(component) => (component, None),
        };
        let pooled = match (&self.pool, &component.pooled) {
            (Some(pool), Some(pooled)) => Some(
                pool.backend
                    .pre_instantiate(pooled)
                    .map_err(|reason| settings.error(reason))?,
            ),
            _ => None,
        };
        let mut loaded = LoadedPlugin {
            name: settings.name.clone(),
            pre: self
                .on_demand
                .pre_instantiate(&component.on_demand)
                .map_err(|reason| settings.error(reason))?,
            pooled,
            settings,
            on_error: config.on_error,
            hooks: hooks.unwrap_or(abi::Hooks::empty()),
            init_per_instance: hooks.is_none(),
            shared: None,
        };
        // One instance now: a plugin that cannot start within its limits (or whose
        // `init` refuses its configuration) stops start-up, not a session.
        let first = loaded.instantiate("(start-up)").await?;
        loaded.hooks = first.hooks & !abi::Hooks::SHAREABLE;
        if first.hooks.contains(abi::Hooks::SHAREABLE) && config.share_instances {
            loaded.shared = Some(std::sync::Mutex::new(Vec::new()));
            loaded.give_back(first);
        }
        Ok(Arc::new(loaded))
    }

    /// Pre-initialises a plugin's component with its configuration, or, if the
    /// pre-initialiser cannot handle the component, compiles it as it is.
    async fn prepare(&self, plugin: &Settings) -> Result<Prepared, PluginError> {
        let path = &plugin.path;
        let bytes = std::fs::read(path).map_err(|error| plugin.error(error.to_string()))?;
        let (context, instrumented) = match snapshot::instrument(&bytes) {
            Ok(instrumented) => instrumented,
            Err(reason) => {
                tracing::warn!(plugin = &*plugin.name, %reason,
                    "cannot pre-initialise this plugin: it will run init in every session");
                let component = self
                    .compile(&bytes)
                    .map_err(|reason| plugin.error(reason))?;
                return Ok(Prepared::AsIs(component));
            }
        };
        let component = self
            .compile_instrumented(path, &instrumented)
            .map_err(|reason| plugin.error(reason))?;
        let pre = self
            .on_demand
            .pre_instantiate(&component)
            .map_err(|reason| plugin.error(reason))?;
        let mut instance = plugin.new_instance(&self.on_demand.engine, "(start-up)", None);
        let _running = instance.arm();
        let raw = pre
            .instance_pre()
            .instantiate_async(&mut instance.store)
            .await;
        let raw = raw.map_err(|error| instance.failure(error))?;
        let hooks = plugin.init(&mut instance, &raw).await?;
        let _running = instance.arm();
        let initialised = snapshot::take(&context, &mut instance.store, raw)
            .await
            .map_err(|reason| plugin.error(reason))?;
        let component = self
            .compile(&initialised)
            .map_err(|reason| plugin.error(reason))?;
        Ok(Prepared::Initialised { component, hooks })
    }

    /// Compiles a component for each engine (the second from the first's cached code).
    fn compile(&self, bytes: &[u8]) -> Result<Compiled, String> {
        let compile = |backend: &Backend| {
            Component::new(&backend.engine, bytes).map_err(|error| format!("{error:#}"))
        };
        Ok(Compiled {
            on_demand: compile(&self.on_demand)?,
            pooled: self
                .pool
                .as_ref()
                .map(|pool| compile(&pool.backend))
                .transpose()?,
        })
    }
}

/// One component compiled for each engine.
#[derive(Clone)]
struct Compiled {
    on_demand: Component,
    pooled: Option<Component>,
}

/// What start-up made of one plugin file with one configuration.
#[derive(Clone)]
enum Prepared {
    /// Pre-initialised: instances start as `init` left the plugin.
    Initialised {
        component: Compiled,
        hooks: abi::Hooks,
    },
    /// The pre-initialiser could not handle it: instances run `init` themselves.
    AsIs(Compiled),
}

impl PluginRuntime {
    /// Compiles the instrumented component of the file at `path`, once per file.
    fn compile_instrumented(&self, path: &Path, bytes: &[u8]) -> Result<Component, String> {
        if let Some(component) = self.instrumented.lock().expect("lock poisoned").get(path) {
            return Ok(component.clone());
        }
        let component =
            Component::new(&self.on_demand.engine, bytes).map_err(|error| format!("{error:#}"))?;
        self.instrumented
            .lock()
            .expect("lock poisoned")
            .insert(path.to_path_buf(), component.clone());
        Ok(component)
    }
}

/// A compiled, pre-instantiated plugin and its settings.
pub struct LoadedPlugin {
    /// The plugin's name in the configuration.
    pub name: Arc<str>,
    settings: Settings,
    /// The component for the on-demand engine.
    pre: PluginPre<host::PluginState>,
    /// The component for the pooled engine, if there is a pool.
    pooled: Option<PluginPre<host::PluginState>>,
    /// What the session gets when this plugin fails.
    pub on_error: OnError,
    /// The hooks the plugin asked for.
    pub hooks: abi::Hooks,
    /// The component could not be pre-initialised: each instance runs `init` itself.
    init_per_instance: bool,
    /// The idle instances sessions borrow one call at a time, if the plugin is
    /// shareable and the operator allows it; `None` means one instance per session.
    shared: Option<std::sync::Mutex<Vec<PluginInstance>>>,
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
struct Settings {
    name: Arc<str>,
    path: std::path::PathBuf,
    runtime: Arc<PluginRuntime>,
    /// The plugin's configuration table, as TOML text for `init`.
    config_text: String,
    timeout: Duration,
    memory: usize,
}

impl Settings {
    /// A start-up error about this plugin's component.
    fn error(&self, reason: String) -> PluginError {
        PluginError::Load {
            path: self.path.display().to_string(),
            reason,
        }
    }

    /// Runs `init` with the plugin's configuration in a fresh `raw` instance, which
    /// is then ready for hook calls; returns the hooks the plugin asked for.
    async fn init(
        &self,
        instance: &mut PluginInstance,
        raw: &Instance,
    ) -> Result<abi::Hooks, PluginError> {
        let bindings = Plugin::new(&mut instance.store, raw).map_err(trap)?;
        let _running = instance.arm();
        let result = bindings
            .call_init(&mut instance.store, &self.config_text)
            .await;
        instance.hooks = result
            .map_err(|error| instance.failure(error))?
            .map_err(PluginError::Init)?;
        instance.bindings = Some(bindings);
        Ok(instance.hooks)
    }

    /// A store of `engine` for one session's instance, with this plugin's limits;
    /// `slot` is its place in the pool, if it is pooled.
    fn new_instance(
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
        PluginInstance {
            store,
            bindings: None,
            timeout: self.timeout,
            memory: self.memory,
            ticker: self.runtime.ticker.clone(),
            hooks: abi::Hooks::empty(),
            _slot: slot,
        }
    }
}

/// One plugin's instance: a session's own, or lent to it for one call if the plugin
/// is shared.
pub struct PluginInstance {
    store: Store<host::PluginState>,
    bindings: Option<Plugin>,
    timeout: Duration,
    /// The memory cap in bytes.
    memory: usize,
    ticker: Arc<Ticker>,
    /// The hooks the plugin asked for.
    pub hooks: abi::Hooks,
    /// The pool slot of a pooled instance: given back after the store (declared
    /// first) is dropped.
    _slot: Option<PoolSlot>,
}

impl PluginInstance {
    /// Sets the deadline for the next call, and keeps the epoch ticking while the
    /// returned guard lives.
    fn arm(&mut self) -> Running {
        let state = self.store.data_mut();
        state.deadline = Instant::now() + self.timeout;
        state.panic = None;
        state.limits.memory_refused = false;
        self.store.set_epoch_deadline(1);
        self.ticker.enter()
    }

    /// Why the call that just returned `error` failed, in the plugin author's terms:
    /// its own panic message, its memory or time limit, or wasmtime's trap.
    fn failure(&mut self, error: wasmtime::Error) -> PluginError {
        let state = self.store.data_mut();
        if let Some(message) = state.panic.take() {
            return PluginError::Panic(message);
        }
        if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
            return PluginError::Timeout(self.timeout.as_millis());
        }
        if state.limits.memory_refused {
            return PluginError::MemoryLimit(self.memory >> 20);
        }
        trap(error)
    }

    /// The bindings, the store and the session's version, ready for a call that
    /// runs while the guard lives.
    fn parts(
        &mut self,
        session: &abi::Session,
    ) -> (&Plugin, &mut Store<host::PluginState>, u32, Running) {
        let running = self.arm();
        let version = self.store.data_mut().session_version(session);
        (
            self.bindings.as_ref().expect("instantiated"),
            &mut self.store,
            version,
            running,
        )
    }

    /// The connect hook.
    pub async fn connect(&mut self, session: &abi::Session) -> Result<abi::Verdict, PluginError> {
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings.call_on_connect(store, version).await;
        result.map_err(|error| self.failure(error))
    }

    /// The HELO hook.
    pub async fn helo(
        &mut self,
        session: &abi::Session,
        name: &str,
    ) -> Result<abi::HeloOutcome, PluginError> {
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings.call_on_helo(store, version, name).await;
        result.map_err(|error| self.failure(error))
    }

    /// The MAIL hook.
    pub async fn mail(
        &mut self,
        session: &abi::Session,
        sender: &str,
        params: &[abi::Param],
    ) -> Result<abi::PathOutcome, PluginError> {
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings.call_on_mail(store, version, sender, params).await;
        result.map_err(|error| self.failure(error))
    }

    /// The RCPT hook.
    pub async fn rcpt(
        &mut self,
        session: &abi::Session,
        envelope: &abi::Envelope,
        recipient: &str,
        params: &[abi::Param],
    ) -> Result<abi::PathOutcome, PluginError> {
        let envelope = self.store.data_mut().envelope_ref(envelope);
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings
            .call_on_rcpt(store, version, envelope, recipient, params)
            .await;
        result.map_err(|error| self.failure(error))
    }

    /// The DATA hook. The message is lent to the plugin for this call only.
    pub async fn data(
        &mut self,
        session: &abi::Session,
        envelope: &abi::Envelope,
        message: MessageResource,
    ) -> Result<abi::DataOutcome, PluginError> {
        let owned = self
            .store
            .data_mut()
            .table()
            .push(message)
            .map_err(|error| PluginError::Trap {
                message: error.to_string(),
                backtrace: None,
            })?;
        let borrowed = Resource::new_borrow(owned.rep());
        let envelope = self.store.data_mut().envelope_ref(envelope);
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings
            .call_on_data(&mut *store, version, envelope, borrowed)
            .await;
        let _ = store.data_mut().table().delete(owned);
        result.map_err(|error| self.failure(error))
    }

    /// The AUTH hook.
    pub async fn auth(
        &mut self,
        session: &abi::Session,
        mechanism: &str,
        login: &str,
    ) -> Result<abi::Verdict, PluginError> {
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings
            .call_on_auth(store, version, mechanism, login)
            .await;
        result.map_err(|error| self.failure(error))
    }

    /// A verifier's password check. The password goes to this plugin only.
    pub async fn verify_login(
        &mut self,
        session: &abi::Session,
        mechanism: &str,
        login: &str,
        password: &str,
    ) -> Result<abi::LoginCheck, PluginError> {
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings
            .call_verify_login(store, version, mechanism, login, password)
            .await;
        result.map_err(|error| self.failure(error))
    }

    /// The session-end hook.
    pub async fn session_end(&mut self, session: &abi::Session) -> Result<(), PluginError> {
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings.call_on_session_end(store, version).await;
        result.map_err(|error| self.failure(error))
    }
}
