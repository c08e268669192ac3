//! Validation: turns the file as written ([`RawConfig`]) into a [`Config`] that
//! cannot hold an invalid combination, one section at a time; every error names the
//! key and its line.

use super::{
    client_limits,
    raw::{RawAuth, RawListener, RawUpstream},
    *,
};

/// Maps a byte offset of the config text to its line number.
pub(super) type LineOf<'a> = &'a dyn Fn(usize) -> usize;

/// An error at `key`, on the line of byte `offset`.
fn error_at(line_of: LineOf, key: &str, offset: usize, message: &str) -> ConfigError {
    ConfigError {
        key: key.into(),
        line: Some(line_of(offset)),
        message: message.into(),
    }
}

impl RawConfig {
    pub(super) fn validate(self, line_of: LineOf) -> Result<Config, ConfigError> {
        let mut plugins = std::collections::BTreeMap::new();
        for (name, plugin) in self.plugins {
            let line = line_of(plugin.span().start);
            let why = " (it names the plugin's keys, metrics and log lines)";
            check_name("plugins", &name, line, "a plugin's name", why)?;
            let mut plugin: PluginConfig = plugin.into_inner();
            plugin.line = Some(line);
            plugins.insert(name, plugin);
        }
        let mut milters = std::collections::BTreeMap::new();
        for (name, milter) in self.milters {
            let line = line_of(milter.span().start);
            check_name("milters", &name, line, "a milter's name", "")?;
            if plugins.contains_key(&name) {
                return Err(ConfigError {
                    key: format!("milters.{name}"),
                    line: Some(line),
                    message: format!(
                        "[plugins.{name}] has this name too: a chain names each member once"
                    ),
                });
            }
            let milter = super::milters::validate(&name, milter, line_of)?;
            milters.insert(name, milter);
        }
        if self.listener.is_empty() {
            return Err(ConfigError {
                key: "listener".into(),
                line: None,
                message: "at least one [[listener]] is required".into(),
            });
        }
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        let mut upstream_offsets = Vec::new();
        for (index, raw) in self.listener.into_iter().enumerate() {
            let listener = validate_listener(index, raw, &plugins, &milters, &self.tls, line_of)?;
            if listeners.iter().any(|l| l.name == listener.config.name) {
                return Err(error_at(
                    line_of,
                    &format!("listener[{index}].name"),
                    listener.name_offset,
                    "another listener has this name",
                ));
            }
            upstream_offsets.push(listener.upstream_offset);
            listeners.push(listener.config);
        }
        let mut warnings = Vec::new();
        let upstream = validate_upstream(self.upstream, "upstream", line_of, &mut warnings)?;
        let mut upstreams = std::collections::BTreeMap::new();
        for (name, raw) in self.upstreams {
            let prefix = format!("upstreams.{name}");
            let line = line_of(raw.span().start);
            check_name("upstreams", &name, line, "an upstream's name", "")?;
            let group = validate_upstream(raw, &prefix, line_of, &mut warnings)?;
            if matches!(group.target, UpstreamTarget::Development(_)) {
                return Err(ConfigError {
                    key: format!("{prefix}.development_folder"),
                    line: None,
                    message: "only [upstream] may be the development upstream".into(),
                });
            }
            upstreams.insert(name, group);
        }
        let quarantine = validate_quarantine(self.quarantine, line_of)?;
        let client_limits = client_limits::validate(self.client_limits, "client_limits", line_of)?
            .unwrap_or_default();
        for (index, (listener, offset)) in listeners.iter().zip(&upstream_offsets).enumerate() {
            if let (Some(name), Some(offset)) = (&listener.upstream, offset)
                && !upstreams.contains_key(name)
            {
                return Err(error_at(
                    line_of,
                    &format!("listener[{index}].upstream"),
                    *offset,
                    &format!("no [upstreams.{name}] is configured"),
                ));
            }
        }
        warn_about_edge_auth(&listeners, &upstream, &upstreams, &mut warnings);
        Ok(Config {
            server: self.server,
            smtp: self.smtp,
            plugins,
            milters,
            spool: self.spool,
            quarantine,
            dns: self.dns,
            listeners,
            upstream,
            upstreams,
            tls: self.tls,
            auth_throttle: self.auth_throttle,
            kv: super::kv::validate(self.kv, line_of)?,
            client_limits,
            metrics: self.metrics,
            audit: self.audit,
            warnings,
            source: None,
        })
    }
}

/// A listener's validated config, and where its name is (for the duplicate check).
struct ValidListener {
    config: ListenerConfig,
    name_offset: usize,
    /// Where its `upstream` names a group, checked once the groups are.
    upstream_offset: Option<usize>,
}

/// Checks `[[listener]]` number `index`: its name, that its plugins are configured,
/// that TLS has a certificate, and that TLS and AUTH requirements fit together.
fn validate_listener(
    index: usize,
    raw: RawListener,
    plugin_configs: &std::collections::BTreeMap<String, PluginConfig>,
    milter_configs: &std::collections::BTreeMap<String, MilterConfig>,
    tls_config: &TlsConfig,
    line_of: LineOf,
) -> Result<ValidListener, ConfigError> {
    let error = |key: &str, offset: usize, message: &str| {
        error_at(
            line_of,
            &format!("listener[{index}].{key}"),
            offset,
            message,
        )
    };
    let name_offset = raw.name.span().start;
    if raw.name.get_ref().is_empty() {
        return Err(error("name", name_offset, "must not be empty"));
    }
    let (plugins_offset, plugins) = raw
        .plugins
        .map(|p| (p.span().start, p.into_inner()))
        .unwrap_or_default();
    if let Some(missing) = plugins
        .iter()
        .find(|name| !plugin_configs.contains_key(*name) && !milter_configs.contains_key(*name))
    {
        return Err(error(
            "plugins",
            plugins_offset,
            &format!("no [plugins.{missing}] or [milters.{missing}] is configured"),
        ));
    }
    let (tls_offset, tls) = raw
        .tls
        .map(|t| (t.span().start, t.into_inner()))
        .unwrap_or_default();
    if tls != TlsMode::None && tls_config.certificate.is_empty() {
        return Err(error(
            "tls",
            tls_offset,
            "TLS needs a certificate: add a [[tls.certificate]] with cert and key",
        ));
    }
    let auth_offset = raw.auth.as_ref().map(|a| a.span().start);
    let auth_requires_tls = raw.auth.as_ref().is_some_and(|a| a.get_ref().require_tls);
    let (require_tls_key, require_tls) = match raw.require_tls {
        Some(r) => (
            "require_tls",
            Some((r.span().start, *r.get_ref() || auth_requires_tls)),
        ),
        None => (
            "auth.require_tls",
            auth_offset.map(|offset| (offset, auth_requires_tls)),
        ),
    };
    if let Some((offset, true)) = require_tls
        && tls == TlsMode::None
    {
        return Err(error(
            require_tls_key,
            offset,
            "TLS cannot be required on a listener with tls = \"none\"",
        ));
    }
    let auth = match raw.auth {
        Some(auth) => validate_auth(index, auth, plugin_configs, line_of)?,
        None => AuthConfig::default(),
    };
    if let Some(offset) = auth_offset
        && auth.mode != AuthMode::Off
        && tls == TlsMode::None
        && !auth.allow_plaintext
    {
        return Err(error(
            "auth.mode",
            offset,
            "AUTH is only offered over TLS and this listener has none: set tls, or allow_plaintext = true",
        ));
    }
    let proxy_protocol = super::proxy_protocol::RawProxyProtocol {
        proxy_protocol: raw.proxy_protocol,
        proxy_trusted: raw.proxy_trusted,
        proxy_timeout: raw.proxy_timeout,
    }
    .validate(error, name_offset)?;
    let client_limits = client_limits::validate(
        raw.client_limits,
        &format!("listener[{index}].client_limits"),
        line_of,
    )?;
    Ok(ValidListener {
        config: ListenerConfig {
            name: raw.name.into_inner(),
            address: raw.address,
            plugins,
            tls,
            require_tls: require_tls.is_some_and(|(_, r)| r),
            auth,
            proxy_protocol,
            client_limits,
            upstream: raw.upstream.as_ref().map(|name| name.get_ref().clone()),
        },
        upstream_offset: raw.upstream.as_ref().map(|name| name.span().start),
        name_offset,
    })
}

/// Checks `[upstream]`: exactly one of address and development_folder, reuse only
/// when no client is named, and its TLS settings. `client_address` defaults to
/// `xclient` in front of a real MTA, so the MTA never takes every client for the
/// proxy (and, trusting the proxy's address, relays for anyone); `none` is warned
/// about there.
fn validate_upstream(
    raw: Spanned<RawUpstream>,
    prefix: &str,
    line_of: LineOf,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<UpstreamConfig, ConfigError> {
    let error = |key: &str, offset: usize, message: &str| {
        let key = key.replacen("upstream", prefix, 1);
        error_at(line_of, &key, offset, message)
    };
    let upstream_offset = raw.span().start;
    let upstream = raw.into_inner();
    let host_port = |address: &str| {
        let (host, port) = address.rsplit_once(':').unwrap_or(("", ""));
        !host.is_empty() && port.parse::<u16>().is_ok()
    };
    let target = match (
        upstream.address.clone(),
        upstream.servers.clone(),
        upstream.development_folder.clone(),
    ) {
        (Some(address), None, None) => {
            if !host_port(address.get_ref()) {
                return Err(error(
                    "upstream.address",
                    address.span().start,
                    "expected host:port",
                ));
            }
            UpstreamTarget::Servers(vec![address.into_inner()])
        }
        (None, Some(servers), None) => {
            let offset = servers.span().start;
            let servers = servers.into_inner();
            if servers.is_empty() {
                return Err(error(
                    "upstream.servers",
                    offset,
                    "name at least one server",
                ));
            }
            if let Some(bad) = servers.iter().find(|server| !host_port(server)) {
                return Err(error(
                    "upstream.servers",
                    offset,
                    &format!("{bad:?}: expected host:port"),
                ));
            }
            UpstreamTarget::Servers(servers)
        }
        (None, None, Some(folder)) => UpstreamTarget::Development(folder.into_inner()),
        (None, None, None) => {
            return Err(error(
                "upstream",
                upstream_offset,
                "set address (a real MTA), servers (several) or development_folder (the built-in development upstream)",
            ));
        }
        (address, servers, _) => {
            let offset = address
                .map(|a| a.span().start)
                .or(servers.map(|s| s.span().start))
                .unwrap_or(upstream_offset);
            return Err(error(
                "upstream.address",
                offset,
                "set one of address, servers and development_folder",
            ));
        }
    };
    let client_address = match (&upstream.client_address, &target) {
        (Some(mode), _) => *mode.get_ref(),
        (None, UpstreamTarget::Servers(_)) => ClientAddressMode::Xclient,
        // The development upstream accepts everything and delivers nothing.
        (None, UpstreamTarget::Development(_)) => ClientAddressMode::None,
    };
    if let (Some(mode), UpstreamTarget::Servers(_)) = (&upstream.client_address, &target)
        && *mode.get_ref() == ClientAddressMode::None
    {
        warnings.push(ConfigWarning {
            key: format!("{prefix}.client_address"),
            line: Some(line_of(mode.span().start)),
            message: "\"none\": the upstream sees this proxy's address for every client. If it trusts that address (Postfix's default mynetworks includes it), it relays mail for anyone who connects here. Use \"xclient\" or a PROXY header, or make sure the upstream grants this address nothing it would not grant any client".into(),
        });
    }
    if let Some(reuse) = &upstream.reuse
        && client_address != ClientAddressMode::None
        && reuse.get_ref().enabled()
    {
        return Err(error(
            "upstream.reuse.idle_timeout",
            reuse.span().start,
            &format!(
                "upstream sessions are only reused with client_address = \"none\" (with \"{}\" an upstream session names one client)",
                client_address.name()
            ),
        ));
    }
    // The names go in XCLIENT and in the Received field; nowhere else.
    let names_used = client_address == ClientAddressMode::Xclient || upstream.received_header;
    let client_name_lookup = match &upstream.client_name_lookup {
        Some(lookup) if *lookup.get_ref() && !names_used => {
            return Err(error(
                "upstream.client_name_lookup",
                lookup.span().start,
                "the client's names are only sent with client_address = \"xclient\" or received_header = true (with the PROXY protocol the upstream looks them up itself)",
            ));
        }
        Some(lookup) => *lookup.get_ref(),
        None => names_used,
    };
    let tls = validate_upstream_tls(&upstream, &target, prefix, line_of)?;
    Ok(UpstreamConfig {
        target,
        client_address,
        client_name_lookup,
        received_header: upstream.received_header,
        timeouts: upstream.timeouts,
        capabilities_refresh: upstream.capabilities_refresh,
        capabilities_wait: upstream.capabilities_wait,
        reuse: upstream.reuse.map(Spanned::into_inner).unwrap_or_default(),
        balance: upstream.balance,
        down_for: upstream.down_for,
        tls,
        open: upstream.open,
    })
}

/// Checks `[quarantine]`: a valid header field name and redirect mailbox.
fn validate_quarantine(
    raw: Option<Spanned<QuarantineConfig>>,
    line_of: LineOf,
) -> Result<QuarantineConfig, ConfigError> {
    let (offset, quarantine) = raw
        .map(|q| (q.span().start, q.into_inner()))
        .unwrap_or_default();
    if portcullis_syntax::header::check_name(&quarantine.header).is_err() {
        return Err(error_at(
            line_of,
            "quarantine.header",
            offset,
            "not a valid header field name",
        ));
    }
    if let Some(redirect) = &quarantine.redirect
        && !matches!(
            crate::smtp::command::parse(format!("RCPT TO:<{redirect}>").as_bytes()),
            Ok(crate::smtp::Command::Rcpt(_))
        )
    {
        return Err(error_at(
            line_of,
            "quarantine.redirect",
            offset,
            "not a valid mailbox",
        ));
    }
    Ok(quarantine)
}

fn validate_auth(
    index: usize,
    raw: Spanned<RawAuth>,
    plugins: &std::collections::BTreeMap<String, PluginConfig>,
    line_of: LineOf,
) -> Result<AuthConfig, ConfigError> {
    let span = raw.span().start;
    let raw = raw.into_inner();
    let error = |key: &str, message: &str| ConfigError {
        key: format!("listener[{index}].auth.{key}"),
        line: Some(line_of(span)),
        message: message.into(),
    };
    match raw.mode {
        AuthMode::Edge => match (&raw.credentials, &raw.verifier) {
            (None, None) => {
                return Err(error(
                    "credentials",
                    "edge mode needs a credentials file or a verifier plugin",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(error("verifier", "set credentials or verifier, not both"));
            }
            (None, Some(verifier)) if !plugins.contains_key(verifier) => {
                return Err(error(
                    "verifier",
                    &format!("no [plugins.{verifier}] is configured"),
                ));
            }
            _ => {}
        },
        AuthMode::Passthrough | AuthMode::Off => {
            if raw.credentials.is_some() || raw.verifier.is_some() {
                return Err(error(
                    "credentials",
                    "credentials and verifier are for mode = \"edge\" only",
                ));
            }
            if raw.required && raw.mode == AuthMode::Off {
                return Err(error(
                    "required",
                    "AUTH cannot be required when mode = \"off\"",
                ));
            }
        }
    }
    let mechanisms = raw
        .mechanisms
        .unwrap_or_else(|| vec![Mechanism::Plain, Mechanism::Login]);
    if raw.mode != AuthMode::Off && mechanisms.is_empty() {
        return Err(error("mechanisms", "at least one mechanism is needed"));
    }
    Ok(AuthConfig {
        mode: raw.mode,
        mechanisms,
        allow_plaintext: raw.allow_plaintext,
        required: raw.required,
        credentials: raw.credentials,
        verifier: raw.verifier,
        sender_logins: raw.sender_logins,
    })
}

fn validate_upstream_tls(
    upstream: &RawUpstream,
    target: &UpstreamTarget,
    prefix: &str,
    line_of: LineOf,
) -> Result<UpstreamTlsConfig, ConfigError> {
    let Some(mode) = &upstream.tls else {
        return Ok(UpstreamTlsConfig::default());
    };
    let error = |key: &str, span: usize, message: &str| ConfigError {
        key: format!("{prefix}.{key}"),
        line: Some(line_of(span)),
        message: message.into(),
    };
    let trust = match (&upstream.tls_ca, upstream.tls_insecure) {
        (Some(ca), true) => {
            return Err(error(
                "tls_ca",
                ca.span().start,
                "set tls_ca or tls_insecure, not both",
            ));
        }
        (Some(ca), false) => Trust::CaFile(ca.get_ref().clone()),
        (None, true) => Trust::Insecure,
        (None, false) => Trust::SystemRoots,
    };
    let server_name = match (&upstream.tls_server_name, target) {
        (Some(name), _) => name.get_ref().clone(),
        (None, UpstreamTarget::Servers(servers))
            if servers.len() > 1 && *mode.get_ref() != TlsMode::None =>
        {
            return Err(error(
                "tls_server_name",
                mode.span().start,
                "several servers: set tls_server_name, the name every one of them has a certificate for",
            ));
        }
        (None, UpstreamTarget::Servers(servers)) => servers[0]
            .rsplit_once(':')
            .map(|(host, _)| host.trim_matches(['[', ']']).to_string())
            .unwrap_or_default(),
        (None, UpstreamTarget::Development(_)) => "localhost".into(),
    };
    if *mode.get_ref() == TlsMode::None {
        return Ok(UpstreamTlsConfig::default());
    }
    if rustls_pki_types::ServerName::try_from(server_name.as_str()).is_err() {
        let problem = format!("{server_name:?} is not a valid server name for TLS");
        return Err(match &upstream.tls_server_name {
            Some(name) => error("tls_server_name", name.span().start, &problem),
            None => error(
                "tls_server_name",
                mode.span().start,
                &format!("{problem} (taken from upstream.address; set tls_server_name)"),
            ),
        });
    }
    let span = upstream
        .tls_ca
        .as_ref()
        .map_or(mode.span().start, |ca| ca.span().start);
    Ok(UpstreamTlsConfig {
        mode: *mode.get_ref(),
        trust,
        server_name,
        line: Some(line_of(span)),
    })
}

/// Edge AUTH without XCLIENT: the upstream never learns who logged in.
fn warn_about_edge_auth(
    listeners: &[ListenerConfig],
    upstream: &UpstreamConfig,
    upstreams: &std::collections::BTreeMap<String, UpstreamConfig>,
    warnings: &mut Vec<ConfigWarning>,
) {
    for (index, listener) in listeners.iter().enumerate() {
        let group = listener
            .upstream
            .as_ref()
            .and_then(|name| upstreams.get(name))
            .unwrap_or(upstream);
        if listener.auth.mode == AuthMode::Edge
            && group.client_address != ClientAddressMode::Xclient
        {
            warnings.push(ConfigWarning {
                key: format!("listener[{index}].auth.mode"),
                line: None,
                message: format!(
                    "edge AUTH on listener {} without upstream.client_address = \"xclient\": the upstream will not learn who logged in",
                    listener.name
                ),
            });
        }
    }
}

/// A plugin's name: it becomes the start of the plugin's key-value keys (so it must
/// not be empty or hold the separator that follows it), a metrics label and a log
/// field.
/// Checks the NAME of a `[TABLE.NAME]` on `line` by [`is_plugin_name`]'s rule: names
/// of plugins, milters and upstreams become keys, metric labels and log fields alike.
fn check_name(
    table: &str,
    name: &str,
    line: usize,
    what: &str,
    why: &str,
) -> Result<(), ConfigError> {
    if is_plugin_name(name) {
        return Ok(());
    }
    Err(ConfigError {
        key: format!("{table}.{name:?}"),
        line: Some(line),
        message: format!("{what} is 1 to 64 letters, digits, '-', '_' or '.'{why}"),
    })
}

fn is_plugin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
