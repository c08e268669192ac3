//! The wasmtime engines plugins run on: one that maps instances on demand and one
//! whose first instances come from a pool reserved at start-up ([`Capacity`]), both
//! with epoch interruption, the host's imports linked, and one shared cache of
//! compiled functions.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use wasmtime::{
    Engine,
    component::{Component, HasSelf, Linker, ResourceType},
};

use super::{LoadError, Plugin, PluginPre, error::describe, host};

/// How plugin instances get memory and stacks: the first `pooled` instances alive at
/// once from a pool reserved at start-up (creating one maps nothing, about three times
/// as fast as mapping), any beyond that on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Instances the pool holds; 0 for none (every instance on demand).
    pub pooled: u32,
    /// The largest `memory_mb` of any plugin, in bytes.
    pub max_memory: usize,
}

/// Core instances, memories and tables one plugin component may have (a Rust
/// component for wasm32-wasip2 has a few core instances, one memory, a few tables).
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;
const KEEP_RESIDENT: usize = 256 * 1024;

impl Capacity {
    /// The pooling allocator for the pooled engine. Both engines keep wasmtime's
    /// default memory reservation, so they compile the same code (each pool slot
    /// reserves address space, not memory).
    fn pool(self) -> wasmtime::PoolingAllocationConfig {
        let memory = self.max_memory.max(1 << 20).next_multiple_of(64 * 1024);
        let instances = self.pooled;
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .total_core_instances(instances.saturating_mul(4))
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .total_memories(instances)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
            // A store keeps the stack of its first call: one stack per instance.
            .total_stacks(instances)
            .max_memory_size(memory)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            // Linux 6.7+: reset only the pages an instance wrote, found with the
            // PAGEMAP_SCAN ioctl, instead of copying back the whole kept-resident part.
            .pagemap_scan(wasmtime::Enabled::Auto);
        pool
    }
}

/// A wasmtime engine and the host's imports linked for it.
pub(super) struct Backend {
    pub(super) engine: Engine,
    linker: Linker<host::PluginState>,
}

impl Backend {
    /// An engine with epoch interruption, sharing `compiled` (so a component compiled
    /// for one engine compiles for the other from cache), pooled when `pool` is given.
    pub(super) fn new(
        compiled: &Arc<CompiledFunctions>,
        pool: Option<wasmtime::PoolingAllocationConfig>,
    ) -> Result<Self, LoadError> {
        let failed = |what: &str, error: wasmtime::Error| {
            LoadError::Engine(format!("{what}: {}", describe(&error)))
        };
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config
            .enable_incremental_compilation(compiled.clone())
            .map_err(|error| failed("incremental compilation", error))?;
        if let Some(pool) = pool {
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config).map_err(|error| failed("engine", error))?;
        let mut linker = Linker::new(&engine);
        Plugin::add_to_linker::<host::PluginState, HasSelf<host::PluginState>>(
            &mut linker,
            |state| state,
        )
        // The world's `use types.{message}` is also a root-level import of the same
        // resource; define it so it is not taken for an unknown import below.
        .and_then(|()| {
            linker.root().resource(
                "message",
                ResourceType::host::<host::MessageResource>(),
                |_, _| Ok(()),
            )
        })
        .map_err(|error| failed("linker", error))?;
        Ok(Backend { engine, linker })
    }

    /// Links a component against the host's imports, ready to instantiate.
    pub(super) fn pre_instantiate(
        &self,
        component: &Component,
    ) -> wasmtime::Result<PluginPre<host::PluginState>> {
        let component_type = component.component_type();
        let imports = component_type.imports(&self.engine).map(|(name, _)| name);
        if let Some(mismatch) = abi_mismatch(imports, abi_package()) {
            return Err(wasmtime::Error::msg(mismatch));
        }
        let mut linker = self.linker.clone();
        provide_hash_seeds(&mut linker, component, &self.engine)
            .and_then(|()| linker.define_unknown_imports_as_traps(component))
            .and_then(|()| linker.instantiate_pre(component))
            .and_then(PluginPre::new)
    }
}

/// The pooled engine and how many of its slots are taken.
pub(super) struct Pool {
    pub(super) backend: Backend,
    capacity: u32,
    taken: Arc<AtomicU32>,
    /// Whether the pool has been found full yet (that is logged once).
    filled: std::sync::atomic::AtomicBool,
}

impl Pool {
    /// The pooled engine for `capacity`, or `None` when the pool is empty.
    pub(super) fn new(
        compiled: &Arc<CompiledFunctions>,
        capacity: Capacity,
    ) -> Result<Option<Pool>, LoadError> {
        if capacity.pooled == 0 {
            return Ok(None);
        }
        Ok(Some(Pool {
            backend: Backend::new(compiled, Some(capacity.pool()))?,
            capacity: capacity.pooled,
            taken: Arc::default(),
            filled: Default::default(),
        }))
    }

    /// Takes a slot if one is free; it is given back when the slot is dropped.
    pub(super) fn take(&self) -> Option<PoolSlot> {
        let taken = self
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < self.capacity).then_some(taken + 1)
            });
        if taken.is_err() && !self.filled.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                pool = self.capacity,
                "plugin instance pool full: further instances are mapped on demand \
                 (slower to create; see server.plugin_pool_size)"
            );
        }
        taken.ok().map(|_| PoolSlot(self.taken.clone()))
    }
}

/// One instance's place in the pool, given back on drop.
pub(super) struct PoolSlot(Arc<AtomicU32>);

impl Drop for PoolSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Cranelift's machine code per function, kept for the life of the process. A
/// pre-initialised component has the code of the component it was made from (only its
/// data differs), so compiling it finds every function here instead of compiling it
/// again; several entries of one plugin with different configurations share it too.
#[derive(Debug, Default)]
pub(super) struct CompiledFunctions(std::sync::Mutex<std::collections::HashMap<Vec<u8>, Vec<u8>>>);

impl wasmtime::CacheStore for CompiledFunctions {
    fn get(&self, key: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
        let functions = self.0.lock().expect("lock poisoned");
        functions.get(key).map(|code| code.clone().into())
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let mut functions = self.0.lock().expect("lock poisoned");
        functions.insert(key.to_vec(), value);
        true
    }
}

/// Rust's std `HashMap` asks WASI for a hash seed (`wasi:random/insecure-seed`) the
/// first time one is made; provide that one function so plugins can use std's
/// collections. The rest of WASI stays out: any other WASI call traps.
fn provide_hash_seeds(
    linker: &mut Linker<host::PluginState>,
    component: &Component,
    engine: &Engine,
) -> wasmtime::Result<()> {
    let seed_interfaces: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|name| name.starts_with("wasi:random/insecure-seed@"))
        .collect();
    for name in seed_interfaces {
        linker
            .instance(&name)?
            .func_wrap("insecure-seed", |_, (): ()| {
                use std::hash::BuildHasher;
                let state = std::collections::hash_map::RandomState::new();
                Ok(((state.hash_one(1u8), state.hash_one(2u8)),))
            })?;
    }
    Ok(())
}

/// The WIT file both the host and the SDK are generated from.
const ABI_WIT: &str = include_str!("../../../plugin-sdk/wit/portcullis.wit");

/// The ABI package this proxy speaks, as the WIT file names it
/// (`portcullis:plugin@VERSION`).
pub(super) fn abi_package() -> &'static str {
    ABI_WIT
        .lines()
        .find_map(|line| line.strip_prefix("package "))
        .map(|package| package.trim_end_matches(';').trim())
        .expect("the WIT file names its package")
}

/// Why a component cannot be linked if it was built for another version of the ABI
/// `ours` than this proxy's: a plain message instead of wasmtime's type mismatch.
fn abi_mismatch<'a>(imports: impl Iterator<Item = &'a str>, ours: &str) -> Option<String> {
    let (package, version) = ours.split_once('@')?;
    let theirs = imports
        .filter_map(|import| import.strip_prefix(package)?.strip_prefix('/'))
        .filter_map(|interface| interface.rsplit_once('@').map(|(_, version)| version))
        .find(|theirs| *theirs != version)?;
    Some(format!(
        "the plugin was built for the ABI {package}@{theirs}, this proxy speaks {ours}: \
         rebuild it with the portcullis-sdk of this version"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_abi_package_comes_from_the_wit_file() {
        let package = abi_package();
        assert!(package.starts_with("portcullis:plugin@"), "{package}");
        assert!(ABI_WIT.contains(&format!("package {package};")));
    }

    #[test]
    fn a_component_of_another_abi_version_is_named_as_such() {
        let ours = "portcullis:plugin@0.5.0";
        let cases: &[(&[&str], bool)] = &[
            (
                &[
                    "portcullis:plugin/types@0.5.0",
                    "portcullis:plugin/kv@0.5.0",
                ],
                false,
            ),
            (
                &[
                    "wasi:random/insecure-seed@0.2.4",
                    "portcullis:plugin/types@0.5.0",
                ],
                false,
            ),
            (&["portcullis:plugin/types@0.4.0"], true),
            (
                &[
                    "portcullis:plugin/types@0.5.0",
                    "portcullis:plugin/kv@0.6.0",
                ],
                true,
            ),
            (&[], false),
        ];
        for (imports, mismatch) in cases {
            let found = abi_mismatch(imports.iter().copied(), ours);
            assert_eq!(found.is_some(), *mismatch, "{imports:?}: {found:?}");
        }
        let text = abi_mismatch(["portcullis:plugin/types@0.4.0"].into_iter(), ours).unwrap();
        assert!(
            text.contains("portcullis:plugin@0.4.0") && text.contains(ours),
            "{text}"
        );
    }
}
