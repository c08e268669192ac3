//! Portcullis: an SMTP proxy that stands in front of an existing MTA and relays every
//! session to it in lock step.
//!
//! `server` runs what [`startup`] prepared: `listener` admits connections, and a
//! `session` (the only place that decides) drives each one — the protocol as data in
//! [`smtp`] (no I/O), the client side of the relay in `upstream`, AUTH at the edge in
//! [`auth`], the plugin chains in [`hooks`], which run [`plugin_host`] (the only module
//! naming wasmtime or the bindings generated from the WIT file; the others speak
//! [`plugin_host::view`]) and [`milter`] (the milters a chain calls beside its plugins,
//! through the Sendmail milter protocol). [`message`] is the spooled message of the
//! DATA hook and its edits; [`replay`] runs a chain offline (over a message, or over
//! the records of the [`audit`] trail, which sessions write one per message);
//! [`config`] is the validated configuration, plain data; `client` is who is connected,
//! as the session and the upstream both see it; `connection` is the shared bytes ↔
//! lines plumbing; [`dns`] the resolver that plugins and the client-name lookup share;
//! [`kv`] the key-value store of the plugins and the AUTH throttle (in memory, or Redis
//! shared by several proxies); `devupstream` is the built-in development upstream for
//! trying things out; `service` talks to systemd; [`control`] is the socket `portcullis
//! reload` asks through (`server` keeps a *generation* — everything one configuration
//! made — and a reload swaps in the next); `fuzzing` holds the fuzz targets' bodies
//! (`fuzz/`).
//!
//! Each word keeps one meaning: a *session* is one client connection (`session`);
//! it may have an *upstream session* (`upstream`), holds its *session hooks* (the
//! plugin instances it uses) and tells plugins its *session info*. A *stage* is a
//! point of the client's session where plugins run, a *step* one exchange with the
//! upstream. A plugin gives a *verdict* ([`plugin_host::view::Verdict`]); the chain's
//! *decision* for the stage follows from the verdicts ([`hooks::Decision`]); after
//! each command the session's *flow* goes on or closes. A password check ends in a
//! *check* ([`auth::Check`]).
//!
//! Dependencies point one way. Each module imports only from those listed after it
//! (a unit test below reads this list and the sources and holds them to it):
//!
//! - `server` → startup, listener, session, upstream, audit, auth, client_limits, control, devupstream, dns, exporter, kv, plugin_host, telemetry, log_limit, service, config
//! - `fuzzing` → auth, proxy_protocol, smtp
//! - `replay` → startup, hooks, plugin_host, message, audit, dns, smtp, config
//! - `startup` → session, hooks, milter, plugin_host, auth, control, dns, kv, telemetry, tls, config
//! - `listener` → session, client, client_limits, log_limit, proxy_protocol, smtp, telemetry, config
//! - `session` → hooks, plugin_host, upstream, audit, auth, message, client, connection, dns, telemetry, tls, log_limit, smtp, config
//! - `hooks` → milter, plugin_host, auth, message, smtp, telemetry, config
//! - `milter` → message, telemetry, config
//! - `plugin_host` → message, dns, kv, telemetry, config
//! - `upstream` → client, connection, dns, telemetry, tls, smtp, config
//! - `auth` → kv, log_limit, smtp, config
//! - `devupstream` → connection, smtp
//! - `message` → smtp
//! - `client_limits` → config
//! - `audit` → log_limit, config
//! - `dns` → config
//! - `kv` → telemetry, config
//! - `client` → dns, tls
//! - `tls` → config
//! - `connection` → smtp
//! - `config` → smtp
//! - `log_limit` →
//! - `service` →
//! - `exporter` →
//! - `control` →
//! - `telemetry` → smtp
//! - `proxy_protocol` →
//! - `smtp` →

#![forbid(unsafe_code)]
// The library's API is what the binary, the benchmarks, the fuzz targets and the
// integration tests use; everything else is `pub(crate)`, and this lint keeps it so.
#![warn(unreachable_pub)]

pub mod audit;
pub mod auth;
mod client;
mod client_limits;
pub mod config;
mod connection;
pub mod control;
mod devupstream;
pub mod dns;
mod exporter;
#[doc(hidden)]
pub mod fuzzing;
pub mod hooks;
pub mod kv;
mod listener;
mod log_limit;
pub mod message;
pub mod milter;
pub mod plugin_host;
mod proxy_protocol;
pub mod replay;
mod server;
mod service;
mod session;
pub mod smtp;
pub mod startup;
mod telemetry;
pub mod tls;
mod upstream;

pub use config::Config;
pub use server::run;

#[cfg(test)]
mod layering {
    //! Holds the sources to the dependency list in this file's documentation.

    use std::{collections::BTreeMap, fs, path::Path};

    /// `module → modules it may import`, read from the list in `lib.rs`.
    fn allowed() -> BTreeMap<String, Vec<String>> {
        let lib = include_str!("lib.rs");
        lib.lines()
            .filter_map(|line| line.strip_prefix("//! - `"))
            .map(|rule| {
                let (module, imports) = rule.split_once("` →").expect("a rule has an arrow");
                let imports = imports
                    .split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect();
                (module.to_string(), imports)
            })
            .collect()
    }

    /// The top-level modules a source file names through `crate::`, its test module
    /// (`#[cfg(test)] mod …`, last in a file) left out.
    fn imports(source: &str, modules: &[String]) -> Vec<String> {
        let code = source
            .split("#[cfg(test)]\nmod ")
            .next()
            .unwrap_or_default();
        let code: String = code
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut found = Vec::new();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a::x, b, c::{y, z}}`: the first segment of each top-level item.
                let mut depth = 1;
                let end = group
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '{' => 1,
                            '}' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(group.len(), |(i, _)| i);
                let mut items = Vec::new();
                let (mut depth, mut start) = (0, 0);
                for (i, c) in group[..end].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            items.push(&group[start..i]);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                items.push(&group[start..end]);
                items
            } else {
                vec![rest]
            };
            for name in names {
                let name: String = name
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) && !found.contains(&name) {
                    found.push(name);
                }
            }
        }
        found
    }

    fn sources(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in fs::read_dir(dir).expect("source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                sources(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }

    #[test]
    fn no_module_imports_from_a_layer_above_it() {
        let allowed = allowed();
        let modules: Vec<String> = allowed.keys().cloned().collect();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        let mut wrong = Vec::new();
        for file in files {
            let relative = file.strip_prefix(&root).expect("under src");
            let first = relative.components().next().expect("a component");
            let module = first.as_os_str().to_string_lossy();
            let module = module.trim_end_matches(".rs");
            if module == "lib" || module == "main" || relative.ends_with("tests.rs") {
                continue;
            }
            let rules = allowed
                .get(module)
                .unwrap_or_else(|| panic!("module {module} is missing from the list in lib.rs"));
            let source = fs::read_to_string(&file).expect("readable source");
            for import in imports(&source, &modules) {
                if import != module && !rules.contains(&import) {
                    wrong.push(format!("{} imports {import}", relative.display()));
                }
            }
        }
        assert!(wrong.is_empty(), "imports against the layering: {wrong:#?}");
    }

    #[test]
    fn the_import_reader_sees_grouped_and_plain_paths() {
        let modules = ["smtp", "config", "tls"].map(String::from);
        let source = "use crate::{\n    smtp::{a, b},\n    config::X,\n};\nfn f() { crate::tls::g() }\n// crate::hooks\n";
        assert_eq!(imports(source, &modules), ["smtp", "config", "tls"]);
    }
}
