//! `[plugins.NAME]`: where each plugin's module is, what it is given, and its limits.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

/// What a session gets when a plugin fails (trap, timeout, memory, invalid result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// 451 4.3.0: try again later (the default: nothing is lost).
    #[default]
    Tempfail,
    /// Skip the plugin for this stage, as if it had said continue.
    Continue,
    /// 550 5.3.0: refuse.
    Reject,
}

/// Whether a plugin's verdicts and edits count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PluginMode {
    /// They apply.
    #[default]
    Enforce,
    /// The plugin is called as usual, and what it would have done is logged and
    /// counted, never applied: a new rule or version tried beside the enforcing one.
    Shadow,
}

/// One `[plugins.NAME]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The component (`.wasm`, built for wasm32-wasip2), relative to the working directory.
    pub path: PathBuf,
    /// Longest time one hook call may run: 1 ms to 10 minutes.
    #[serde(
        default = "default_plugin_timeout",
        deserialize_with = "plugin_timeout"
    )]
    pub timeout_ms: u64,
    /// Most linear memory one instance may grow to: 1 MiB to 4 GiB (wasm32's whole
    /// address space). Too little for the plugin to start is a start-up error.
    #[serde(default = "default_plugin_memory", deserialize_with = "plugin_memory")]
    pub memory_mb: u64,
    /// What the session gets when the plugin fails.
    #[serde(default)]
    pub on_error: OnError,
    /// Enforcing, or in shadow (logged and counted as "would have", never applied).
    #[serde(default)]
    pub mode: PluginMode,
    /// The plugin's own configuration, handed to its `init` as TOML text.
    #[serde(default)]
    pub config: toml::Table,
    /// Whether a plugin that declares itself shareable serves all sessions from a few
    /// shared instances (true) or gets an instance per session anyway (false).
    #[serde(default = "default_share_instances")]
    pub share_instances: bool,
    /// The line of its `[plugins.NAME]` table, for start-up errors about it.
    #[serde(skip)]
    pub line: Option<usize>,
}

fn plugin_timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    in_range(
        deserializer,
        1..=600_000,
        "1 ms to 10 minutes: 0 would fail every call",
    )
}

fn plugin_memory<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    in_range(
        deserializer,
        1..=4096,
        "1 to 4096 MiB (a WebAssembly memory's whole range)",
    )
}

fn in_range<'de, D: Deserializer<'de>>(
    deserializer: D,
    range: std::ops::RangeInclusive<u64>,
    why: &str,
) -> Result<u64, D::Error> {
    let value = u64::deserialize(deserializer)?;
    if !range.contains(&value) {
        return Err(serde::de::Error::custom(format!("must be {why}")));
    }
    Ok(value)
}

fn default_share_instances() -> bool {
    true
}

fn default_plugin_timeout() -> u64 {
    200
}

fn default_plugin_memory() -> u64 {
    32
}
