//! Running plugins: the only module that names wasmtime and the bindings generated
//! from the WIT file ([`view`] is what the rest of the proxy sees of them).
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
mod error;
mod host;
mod instance;
mod known_envelope;
mod loaded;
mod session_store;
mod snapshot;
mod ticker;
pub mod view;

use std::{path::Path, sync::Arc, time::Duration};

use wasmtime::component::Component;

pub use crate::kv::KvStore;
use crate::{config::PluginConfig, dns::Resolver};
pub use engine::Capacity;
use engine::{Backend, CompiledFunctions, Pool};
pub use error::{LoadError, PluginError};
pub use host::MessageResource;
pub use instance::PluginInstance;
pub use loaded::LoadedPlugin;
use loaded::Settings;
pub use session_store::SessionStore;
use ticker::Ticker;

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
            "portcullis:plugin/kv": async | trappable,
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

/// The generated types: only the plugin host names them; [`view`] is what others see.
use generated::portcullis::plugin::types as abi;
use generated::{Plugin, PluginPre};

/// The engines and the services plugins call.
pub struct PluginRuntime {
    /// Start-up work and instances past the pool.
    on_demand: Backend,
    /// The first instances alive at once, if the pool is not empty.
    pool: Option<Pool>,
    services: host::Services,
    /// Instrumented components compiled so far, by file contents: entries of one
    /// file with different configurations snapshot the same instrumented component.
    instrumented: std::sync::Mutex<std::collections::HashMap<SourceDigest, Component>>,
    /// Components made ready so far, by file contents and configuration: entries that
    /// share both share the pre-initialised component.
    prepared: std::sync::Mutex<std::collections::HashMap<(SourceDigest, String), Prepared>>,
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
    ) -> Result<Arc<Self>, LoadError> {
        let compiled = Arc::new(CompiledFunctions::default());
        let pool = Pool::new(&compiled, capacity)?;
        let runtime = Arc::new(PluginRuntime {
            on_demand: Backend::new(&compiled, None)?,
            pool,
            services: host::Services {
                kv,
                dns: Arc::new(std::sync::RwLock::new(dns)),
            },
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
                ticker.run(|| {
                    let Some(engine) = on_demand.upgrade() else {
                        return false;
                    };
                    engine.increment_epoch();
                    if let Some(engine) = pooled.as_ref().and_then(|pooled| pooled.upgrade()) {
                        engine.increment_epoch();
                    }
                    true
                })
            })
            .map_err(|error| LoadError::Engine(format!("no epoch thread: {error}")))?;
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
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let settings = Settings {
            name: name.into(),
            path: config.path.clone(),
            runtime: self.clone(),
            config_text: toml::to_string(&config.config).map_err(LoadError::Config)?,
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
            memory: config.memory_mb.saturating_mul(1024 * 1024) as usize,
        };
        let bytes = std::fs::read(&config.path).map_err(|source| LoadError::Read {
            path: config.path.clone(),
            source,
        })?;
        let source = SourceDigest::of(&bytes);
        let key = (source, settings.config_text.clone());
        let cached = self
            .prepared
            .lock()
            .expect("lock poisoned")
            .get(&key)
            .cloned();
        let prepared = match cached {
            Some(prepared) => prepared,
            None => {
                let prepared = self.prepare(&settings, &bytes, source).await?;
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
                    .map_err(|error| settings.error(&error))?,
            ),
            _ => None,
        };
        let mut loaded = LoadedPlugin {
            name: settings.name.clone(),
            pre: self
                .on_demand
                .pre_instantiate(&component.on_demand)
                .map_err(|error| settings.error(&error))?,
            pooled,
            settings,
            on_error: config.on_error,
            shadow: config.mode == crate::config::PluginMode::Shadow,
            hooks: hooks.unwrap_or(view::Hooks::empty()),
            init_per_instance: hooks.is_none(),
            shared: None,
            source,
            meters: crate::telemetry::PluginMeters::new(name.into()),
        };
        // One instance now: a plugin that cannot start within its limits (or whose
        // `init` refuses its configuration) stops start-up, not a session.
        let first = loaded.instantiate("(start-up)").await?;
        loaded.hooks = first.hooks & !view::Hooks::SHAREABLE;
        if first.hooks.contains(view::Hooks::SHAREABLE) && config.share_instances {
            loaded.shared = Some(std::sync::Mutex::new(Vec::new()));
            loaded.give_back(first);
        }
        Ok(Arc::new(loaded))
    }

    /// Pre-initialises a plugin's component with its configuration, or, if the
    /// pre-initialiser cannot handle the component, compiles it as it is.
    async fn prepare(
        &self,
        plugin: &Settings,
        bytes: &[u8],
        source: SourceDigest,
    ) -> Result<Prepared, LoadError> {
        let (context, instrumented) = match snapshot::instrument(bytes) {
            Ok(instrumented) => instrumented,
            Err(error) => {
                let reason = error::describe(&error);
                tracing::warn!(plugin = &*plugin.name, %reason,
                    "cannot pre-initialise this plugin: it will run init in every session");
                let component = self.compile(bytes).map_err(|error| plugin.error(&error))?;
                return Ok(Prepared::AsIs(component));
            }
        };
        let component = self
            .compile_instrumented(source, &instrumented)
            .map_err(|error| plugin.error(&error))?;
        let pre = self
            .on_demand
            .pre_instantiate(&component)
            .map_err(|error| plugin.error(&error))?;
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
            .map_err(|error| plugin.error(&error))?;
        let component = self
            .compile(&initialised)
            .map_err(|error| plugin.error(&error))?;
        Ok(Prepared::Initialised { component, hooks })
    }

    /// Compiles a component for each engine (the second from the first's cached code).
    fn compile(&self, bytes: &[u8]) -> wasmtime::Result<Compiled> {
        let compile = |backend: &Backend| Component::new(&backend.engine, bytes);
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
        hooks: view::Hooks,
    },
    /// The pre-initialiser could not handle it: instances run `init` themselves.
    AsIs(Compiled),
}

impl PluginRuntime {
    /// Compiles the instrumented component of one file's contents, once per contents.
    fn compile_instrumented(
        &self,
        source: SourceDigest,
        bytes: &[u8],
    ) -> wasmtime::Result<Component> {
        if let Some(component) = self
            .instrumented
            .lock()
            .expect("lock poisoned")
            .get(&source)
        {
            return Ok(component.clone());
        }
        let component = Component::new(&self.on_demand.engine, bytes)?;
        self.instrumented
            .lock()
            .expect("lock poisoned")
            .insert(source, component.clone());
        Ok(component)
    }

    /// Makes plugins look names up through `dns` from now on (a reload read new
    /// resolver settings).
    pub fn use_resolver(&self, dns: Arc<Resolver>) {
        *self.services.dns.write().expect("lock poisoned") = dns;
    }

    /// Drops what loading kept to share between entries of one configuration: a
    /// reload loads only what changed, and would otherwise keep every old version's
    /// compiled code.
    pub fn forget_loaded_sources(&self) {
        self.instrumented.lock().expect("lock poisoned").clear();
        self.prepared.lock().expect("lock poisoned").clear();
    }
}

/// The SHA-256 of a plugin file's contents: what tells a reload that a `.wasm` file
/// changed, whatever its path and modification time say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceDigest([u8; 32]);

impl SourceDigest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(bytes).into())
    }

    /// The digest of the file at `path`.
    pub fn of_file(path: &Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::of(&bytes))
    }
}
