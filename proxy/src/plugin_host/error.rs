//! What goes wrong with plugins: loading them at start-up ([`LoadError`]) apart from
//! calling them in a session ([`PluginError`], to which `on_error` applies).

use std::path::PathBuf;

use wasmtime::Trap;

/// Why a plugin cannot be loaded. Start-up only: a plugin that fails here stops the
/// proxy from starting (`portcullis check` says why), never a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The engines, their linker or the epoch thread cannot be set up.
    #[error("the plugin engine cannot start: {0}")]
    Engine(String),
    /// The component file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The component's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The plugin's `config` table cannot be written as the TOML text `init` takes.
    #[error("its config table cannot be handed to init: {0}")]
    Config(#[source] toml::ser::Error),
    /// The component does not compile, does not link against this host's ABI, or
    /// cannot be pre-initialised.
    #[error("cannot load {path}: {reason}")]
    Component {
        /// The component's path.
        path: PathBuf,
        /// What wasmtime (or the ABI check) says.
        reason: String,
    },
    /// Its first instance failed: `init` refused the configuration, or it ran into
    /// its limits, trapped or panicked.
    #[error(transparent)]
    Start(#[from] PluginError),
}

/// wasmtime's error with its chain of causes, for a [`LoadError`].
pub(super) fn describe(error: &wasmtime::Error) -> String {
    format!("{error:#}")
}

/// Why a plugin call failed; the session applies the plugin's `on_error` policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
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
    /// Its kind, as `portcullis_plugin_faults_total` counts it.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Init(_) => "init",
            PluginError::Timeout(_) => "timeout",
            PluginError::MemoryLimit(_) => "memory",
            PluginError::Panic(_) | PluginError::Trap { .. } => "trap",
            PluginError::Invalid(_) => "invalid",
        }
    }

    /// The wasm backtrace of a trap, if there is one (logged at debug level).
    pub fn backtrace(&self) -> Option<&str> {
        match self {
            PluginError::Trap { backtrace, .. } => backtrace.as_deref(),
            _ => None,
        }
    }
}

/// A failure outside a hook call (instantiation, `init`): a timeout or a trap.
pub(super) fn trap(error: wasmtime::Error) -> PluginError {
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
