//! A proxy configuration built from typed values rather than concatenated TOML: a test
//! says what it sets (`.set("smtp.max_errors", 3)`, `.plugin(...)`), and the file the
//! binary reads is rendered by the `toml` crate, so quoting and table order cannot go
//! wrong.

use std::path::Path;

use toml::{Table, Value};

use super::Proxy;

/// A configuration with one listener, `test`, on port 0.
#[derive(Debug, Clone)]
pub struct TestConfig {
    root: Table,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TestConfig {
    /// Only the `test` listener: the upstream is the test's to set.
    pub fn new() -> Self {
        let mut config = Self { root: Table::new() };
        config
            .root
            .insert("listener".into(), Value::Array(Vec::new()));
        config.listener("test")
    }

    /// Relaying to `upstream` with `client_address = "none"` (the recording upstream
    /// offers no XCLIENT).
    pub fn relaying_to(upstream: &str) -> Self {
        Self::new()
            .set("upstream.address", upstream)
            .set("upstream.client_address", "none")
    }

    /// Sets `key`, a dotted path of tables (`"smtp.max_errors"`,
    /// `"upstream.timeouts.connect"`), creating the tables on the way.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let (tables, last) = key.rsplit_once('.').map_or(("", key), |(t, l)| (t, l));
        let mut table = &mut self.root;
        for name in tables.split('.').filter(|name| !name.is_empty()) {
            table = table
                .entry(name)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{key}: {name} is not a table"));
        }
        table.insert(last.into(), value.into());
        self
    }

    /// Adds a listener on port 0 named `name`.
    pub fn listener(mut self, name: &str) -> Self {
        let mut listener = Table::new();
        listener.insert("name".into(), name.into());
        listener.insert("address".into(), "127.0.0.1:0".into());
        self.listeners().push(Value::Table(listener));
        self
    }

    /// Sets `key` on the listener `name`.
    pub fn set_on(mut self, name: &str, key: &str, value: impl Into<Value>) -> Self {
        self.listener_table(name).insert(key.into(), value.into());
        self
    }

    /// Declares the plugin `name` (its component at `path`, its `config` table and
    /// the `[plugins.NAME]` keys in `settings`) and appends it to the chain of the
    /// listener `on`.
    pub fn plugin(mut self, on: &str, name: &str, path: &Path, settings: Table) -> Self {
        let mut plugin = settings;
        plugin.insert("path".into(), path.display().to_string().into());
        let plugins = self
            .root
            .entry("plugins")
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("plugins is a table");
        plugins.insert(name.into(), Value::Table(plugin));
        let chain = self
            .listener_table(on)
            .entry("plugins")
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("a listener's plugins is an array");
        chain.push(name.into());
        self
    }

    /// Adds a listener `name` whose chain is the recipients example plugin taking
    /// mail for `domains`.
    pub fn recipients_listener(self, name: &str, domains: &[&str]) -> Self {
        let settings = table([(
            "config",
            table([("domains", domains.to_vec().into())]).into(),
        )]);
        self.listener(name).plugin(
            name,
            "recipients",
            &super::component("recipients"),
            settings,
        )
    }

    /// The file the binary reads.
    pub fn render(&self) -> String {
        toml::to_string(&self.root).expect("a table renders")
    }

    /// Starts the proxy with this configuration.
    pub fn start(&self) -> Proxy {
        Proxy::start_file(&self.render())
    }

    fn listeners(&mut self) -> &mut Vec<Value> {
        self.root
            .get_mut("listener")
            .and_then(Value::as_array_mut)
            .expect("listener is an array")
    }

    fn listener_table(&mut self, name: &str) -> &mut Table {
        self.listeners()
            .iter_mut()
            .filter_map(Value::as_table_mut)
            .find(|listener| listener.get("name").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no listener {name}"))
    }
}

/// A TOML table from `(key, value)` pairs: `table([("timeout_ms", 300.into())])`.
pub fn table<const N: usize>(pairs: [(&str, Value); N]) -> Table {
    pairs
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
}
