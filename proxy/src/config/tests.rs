//! The configuration's tests: defaults, and an error table in which each bad
//! config names its key and line.

use super::*;

const MINIMAL: &str = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n\n[upstream]\naddress = \"127.0.0.1:10025\"\n";

#[test]
fn the_client_name_is_looked_up_for_xclient_and_the_received_field_unless_turned_off() {
    let with = |extra: &str| {
        let text = MINIMAL.replace("10025\"\n", &format!("10025\"\n{extra}"));
        Config::parse(&text).unwrap().upstream.client_name_lookup
    };
    assert!(with(""), "XCLIENT is the default in front of a real MTA");
    assert!(!with("client_address = \"none\"\n"));
    assert!(!with("client_address = \"proxy-v1\"\n"));
    assert!(with("client_address = \"xclient\"\n"));
    assert!(!with(
        "client_address = \"xclient\"\nclient_name_lookup = false\n"
    ));
}

#[test]
fn the_upstream_judges_the_real_client_unless_told_otherwise() {
    let config = Config::parse(MINIMAL).unwrap();
    assert_eq!(config.upstream.client_address, ClientAddressMode::Xclient);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let development = Config::parse(&MINIMAL.replace(
        "address = \"127.0.0.1:10025\"",
        "development_folder = \"mail-out\"",
    ))
    .unwrap();
    assert_eq!(development.upstream.client_address, ClientAddressMode::None);
    assert!(development.warnings.is_empty());
    let none = Config::parse(&MINIMAL.replace("10025\"\n", "10025\"\nclient_address = \"none\"\n"))
        .unwrap();
    let warning = none.warnings[0].to_string();
    assert!(
        warning.starts_with(
            "line 7: upstream.client_address: \"none\": the upstream sees this proxy's address"
        ),
        "{warning}"
    );
    let reuse = MINIMAL.replace("10025\"\n", "10025\"\nreuse = { idle_timeout = \"5s\" }\n");
    let error = Config::parse(&reuse).unwrap_err();
    assert_eq!(error.key, "upstream.reuse.idle_timeout");
    assert!(
        error
            .message
            .contains("only reused with client_address = \"none\"")
    );
}

#[test]
fn minimal_config_gets_rfc_defaults() {
    let config = Config::parse(MINIMAL).unwrap();
    assert_eq!(config.smtp.command_line_limit, 512);
    assert_eq!(config.smtp.text_line_limit, 1000);
    assert_eq!(config.smtp.max_recipients, 100);
    assert_eq!(config.smtp.command_timeout, Duration::from_secs(300));
    assert_eq!(
        config.upstream.timeouts.data_termination,
        Duration::from_secs(600)
    );
    assert_eq!(
        config.upstream.target,
        UpstreamTarget::Servers(vec!["127.0.0.1:10025".into()])
    );
    assert_eq!(
        config.listeners[0].address,
        "127.0.0.1:2525".parse().unwrap()
    );
}

#[test]
fn errors_name_the_key_and_the_line() {
    let cases: &[(&str, &str, Option<usize>, &str)] = &[
        (
            &MINIMAL.replace("127.0.0.1:2525", "nowhere"),
            "listener[0].address",
            Some(3),
            "invalid socket address",
        ),
        (
            &format!("{MINIMAL}\n[smtp]\ncommand_line_limit = 100\n"),
            "smtp.command_line_limit",
            Some(9),
            "at least 512",
        ),
        (
            &format!("{MINIMAL}\n[smtp]\ncommand_timeout = \"soon\"\n"),
            "smtp.command_timeout",
            Some(9),
            "",
        ),
        (
            &format!("{MINIMAL}\n[smtp]\nbare_line_endings = \"fix\"\n"),
            "smtp.bare_line_endings",
            Some(9),
            "unknown variant",
        ),
        (
            &MINIMAL.replace("2525\"\n", "2525\"\nproxy_protocol = \"v2\"\n"),
            "listener[0].proxy_protocol",
            Some(4),
            "needs proxy_trusted",
        ),
        (
            &MINIMAL.replace(
                "2525\"\n",
                "2525\"\nproxy_protocol = \"any\"\nproxy_trusted = [\"10.0.0.0/33\"]\n",
            ),
            "listener[0].proxy_trusted",
            Some(5),
            "not an address or a network",
        ),
        (
            &MINIMAL.replace("2525\"\n", "2525\"\nproxy_trusted = [\"10.0.0.1\"]\n"),
            "listener[0].proxy_trusted",
            Some(4),
            "only used with proxy_protocol",
        ),
        (
            &MINIMAL.replace(
                "2525\"\n",
                "2525\"\nproxy_protocol = \"v3\"\nproxy_trusted = [\"10.0.0.1\"]\n",
            ),
            "listener[0].proxy_protocol",
            Some(4),
            "unknown variant",
        ),
        (
            &format!("{MINIMAL}\n[client_limits]\nipv4_prefix = 33\n"),
            "client_limits.ipv4_prefix",
            Some(8),
            "from 8 to 32",
        ),
        (
            &MINIMAL.replace(
                "2525\"\n",
                "2525\"\n[listener.client_limits]\nipv6_prefix = 8\n",
            ),
            "listener[0].client_limits.ipv6_prefix",
            Some(4),
            "from 16 to 128",
        ),
        (
            &format!("{MINIMAL}\n[smtp]\ncolour = 1\n"),
            "smtp.colour",
            Some(9),
            "unknown field",
        ),
        (
            &format!("{MINIMAL}\n[client_limits]\nmax_new_sessions = 10\nwindow = \"0s\"\n"),
            "client_limits.window",
            Some(8),
            "longer than 0s",
        ),
        (
            &format!("{MINIMAL}\n[auth_throttle]\nmax_failures = 0\n"),
            "auth_throttle.max_failures",
            Some(9),
            "at least 1",
        ),
        (
            &format!("{MINIMAL}\n[smtp]\nmax_junk_commands = 0\n"),
            "smtp.max_junk_commands",
            Some(9),
            "at least 1",
        ),
        (
            &MINIMAL.replace("127.0.0.1:10025", "no-port"),
            "upstream.address",
            Some(6),
            "host:port",
        ),
        (
            &format!("{MINIMAL}development_folder = \"x\"\n"),
            "upstream.address",
            Some(6),
            "one of address, servers and development_folder",
        ),
        (
            &MINIMAL.replace(
                "address = \"127.0.0.1:10025\"",
                "servers = [\"127.0.0.1:10025\", \"mx2\"]",
            ),
            "upstream.servers",
            Some(6),
            "\"mx2\": expected host:port",
        ),
        (
            &MINIMAL.replace(
                "address = \"127.0.0.1:10025\"",
                "servers = [\"a.example:25\", \"b.example:25\"]\ntls = \"starttls\"",
            ),
            "upstream.tls_server_name",
            Some(7),
            "several servers",
        ),
        (
            &format!("{MINIMAL}[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:1\"\n"),
            "listener[1].name",
            Some(8),
            "another listener",
        ),
        (
            "[upstream]\naddress = \"a:1\"\n",
            "listener",
            None,
            "at least one",
        ),
        ("[[listener]\n", "(syntax)", Some(1), ""),
        (
            &format!("{MINIMAL}\n[kv]\nmax_entries = 0\n"),
            "kv.max_entries",
            Some(9),
            "nonzero",
        ),
        (
            &MINIMAL.replace("name = \"mx\"", "name = \"mx\"\nplugins = [\"nope\"]"),
            "listener[0].plugins",
            Some(3),
            "no [plugins.nope]",
        ),
        (
            &format!("{MINIMAL}\n[plugins.x]\npath = \"x.wasm\"\nshare_instances = \"yes\"\n"),
            "plugins.x.share_instances",
            Some(10),
            "invalid type",
        ),
        (
            &MINIMAL.replace(
                "10025\"\n",
                "10025\"\nclient_address = \"proxy-v2\"\nclient_name_lookup = true\n",
            ),
            "upstream.client_name_lookup",
            Some(8),
            "only sent with client_address = \"xclient\" or received_header = true",
        ),
        (
            &format!("{MINIMAL}\n[plugins.x]\npath = \"x.wasm\"\non_error = \"explode\"\n"),
            "plugins.x.on_error",
            Some(10),
            "unknown variant",
        ),
        (
            &MINIMAL.replace("name = \"mx\"", "name = \"mx\"\ntls = \"starttls\""),
            "listener[0].tls",
            Some(3),
            "[[tls.certificate]]",
        ),
        (
            &MINIMAL.replace("name = \"mx\"", "name = \"mx\"\nrequire_tls = true"),
            "listener[0].require_tls",
            Some(3),
            "tls = \"none\"",
        ),
        (
            &MINIMAL.replace(
                "address = \"127.0.0.1:2525\"",
                "address = \"127.0.0.1:2525\"\nauth = { require_tls = true }",
            ),
            "listener[0].auth.require_tls",
            Some(4),
            "tls = \"none\"",
        ),
        (
            &MINIMAL.replace("name = \"mx\"", "name = \"mx\"\ntls = \"sometimes\""),
            "listener[0].tls",
            Some(3),
            "unknown variant",
        ),
        (
            &MINIMAL.replace(
                "address = \"127.0.0.1:2525\"",
                "address = \"127.0.0.1:2525\"\n[listener.auth]\nmode = \"edge\"",
            ),
            "listener[0].auth.credentials",
            Some(4),
            "credentials file or a verifier",
        ),
        (
            &MINIMAL.replace(
                "address = \"127.0.0.1:2525\"",
                "address = \"127.0.0.1:2525\"\n[listener.auth]\nmode = \"edge\"\nverifier = \"ghost\"",
            ),
            "listener[0].auth.verifier",
            Some(4),
            "no [plugins.ghost]",
        ),
        (
            &MINIMAL.replace(
                "address = \"127.0.0.1:2525\"",
                "address = \"127.0.0.1:2525\"\n[listener.auth]\nrequired = true",
            ),
            "listener[0].auth.required",
            Some(4),
            "mode = \"off\"",
        ),
        (
            &MINIMAL.replace(
                "address = \"127.0.0.1:2525\"",
                "address = \"127.0.0.1:2525\"\n[listener.auth]\nmode = \"edge\"\ncredentials = \"u\"\nmechanisms = [\"CRAM-MD5\"]",
            ),
            "listener[0].auth.mechanisms[0]",
            Some(7),
            "unknown variant",
        ),
        (
            &MINIMAL.replace(
                "address = \"127.0.0.1:2525\"",
                "address = \"127.0.0.1:2525\"\n[listener.auth]\nmode = \"passthrough\"",
            ),
            "listener[0].auth.mode",
            Some(4),
            "only offered over TLS",
        ),
        (
            &format!("{MINIMAL}tls = \"implicit\"\ntls_insecure = true\ntls_ca = \"ca.pem\"\n"),
            "upstream.tls_ca",
            Some(9),
            "not both",
        ),
        (
            &format!("{MINIMAL}\n[plugins.\"\"]\npath = \"p.wasm\"\n"),
            "plugins.\"\"",
            Some(8),
            "1 to 64 letters",
        ),
        (
            &format!("{MINIMAL}\n[plugins.\"a\\u0000b\"]\npath = \"p.wasm\"\n"),
            "plugins.\"a\\0b\"",
            Some(8),
            "1 to 64 letters",
        ),
        (
            &MINIMAL.replace("2525\"\n", "2525\"\nupstream = \"submission\"\n"),
            "listener[0].upstream",
            Some(4),
            "no [upstreams.submission]",
        ),
        (
            &format!("{MINIMAL}\n[upstreams.submission]\naddress = \"nowhere\"\n"),
            "upstreams.submission.address",
            Some(9),
            "host:port",
        ),
        (
            &format!("{MINIMAL}\n[kv]\nbackend = \"redis\"\n"),
            "kv.url",
            Some(9),
            "needs url",
        ),
        (
            &format!("{MINIMAL}\n[kv]\nbackend = \"etcd\"\n"),
            "kv.backend",
            Some(9),
            "not a backend",
        ),
        (
            &format!("{MINIMAL}\n[kv]\nurl = \"redis://127.0.0.1\"\n"),
            "kv.url",
            Some(8),
            "only for backend = \"redis\"",
        ),
        (
            &format!("{MINIMAL}\n[kv]\nbackend = \"redis\"\nurl = \"http://x\"\n"),
            "kv.url",
            Some(10),
            "not a Redis URL",
        ),
        (
            &format!("{MINIMAL}\n[kv]\nbackend = \"redis\"\nurl = \"rediss://x:6379\"\n"),
            "kv.url",
            Some(10),
            "not supported yet",
        ),
        (
            &format!("{MINIMAL}\n[kv]\nbackend = \"redis\"\nurl = \"redis://x:port\"\n"),
            "kv.url",
            Some(10),
            "not a usable Redis URL",
        ),
        (
            &format!(
                "{MINIMAL}\n[kv]\nbackend = \"redis\"\nurl = \"redis://a\"\ncluster = [\"redis://b\"]\n"
            ),
            "kv.cluster",
            Some(11),
            "not both",
        ),
        (
            &format!(
                "{MINIMAL}\n[kv]\nbackend = \"redis\"\nurl = \"redis://a\"\nmax_entries = 5\n"
            ),
            "kv.max_entries",
            Some(8),
            "maxmemory",
        ),
    ];
    for (text, key, line, message) in cases {
        let error = Config::parse(text).unwrap_err();
        assert_eq!(
            (error.key.as_str(), error.line),
            (*key, *line),
            "{text}\n{error}"
        );
        assert!(error.message.contains(message), "{error}");
    }
}

#[test]
fn require_tls_may_also_sit_in_the_auth_table() {
    // The form of DESIGN.md's config sketch.
    let text = MINIMAL.replace(
        "address = \"127.0.0.1:2525\"",
        "address = \"127.0.0.1:2525\"\ntls = \"starttls\"\nauth = { mode = \"edge\", required = true, require_tls = true, credentials = \"users\" }\n[[tls.certificate]]\ncert = \"c.pem\"\nkey = \"k.pem\"",
    );
    let config = Config::parse(&text).unwrap();
    assert!(config.listeners[0].require_tls);
    assert!(config.listeners[0].auth.required);
    let implicit = text.replace("\"starttls\"", "\"implicit\"");
    assert!(Config::parse(&implicit).unwrap().listeners[0].require_tls);
}

#[test]
fn submission_and_mx_examples_are_valid() {
    let submission = Config::parse(include_str!("../../../config/submission.toml")).unwrap();
    let ports: Vec<_> = submission
        .listeners
        .iter()
        .map(|l| (l.address.port(), l.tls))
        .collect();
    assert_eq!(ports, [(587, TlsMode::Starttls), (465, TlsMode::Implicit)]);
    assert!(
        submission
            .listeners
            .iter()
            .all(|l| l.auth.mode == AuthMode::Edge
                && l.auth.required
                && l.auth.sender_logins.is_some())
    );
    assert!(submission.listeners[0].require_tls);
    let mx = Config::parse(include_str!("../../../config/mx.toml")).unwrap();
    assert_eq!(mx.listeners[0].address.port(), 25);
    assert_eq!(mx.listeners[0].auth.mode, AuthMode::Off);
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../../config/portcullis.toml");
    let config = Config::parse(text).unwrap();
    assert_eq!(config.listeners[0].address.port(), 2525);
    assert!(matches!(
        config.upstream.target,
        UpstreamTarget::Development(_)
    ));
}

#[test]
fn a_listener_behind_load_balancers_trusts_only_their_networks() {
    let text = MINIMAL.replace(
        "2525\"\n",
        "2525\"\nproxy_protocol = \"any\"\nproxy_trusted = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]\n",
    );
    let config = Config::parse(&text).unwrap();
    let proxy = config.listeners[0].proxy_protocol.clone().unwrap();
    assert_eq!(proxy.versions, ProxyVersions::Any);
    assert_eq!(proxy.timeout, Duration::from_secs(5));
    for (address, trusted) in [
        ("10.1.2.3", true),
        ("11.0.0.1", false),
        ("192.0.2.7", true),
        ("192.0.2.8", false),
        ("2001:db8::1", true),
        ("2001:db9::1", false),
        // An IPv4 balancer reaching a dual-stack socket.
        ("::ffff:10.0.0.9", true),
    ] {
        assert_eq!(proxy.trusts(address.parse().unwrap()), trusted, "{address}");
    }
    assert!(
        Config::parse(MINIMAL).unwrap().listeners[0]
            .proxy_protocol
            .is_none()
    );
}

#[test]
fn a_listener_may_have_client_limits_of_its_own() {
    let text = MINIMAL.replace(
        "2525\"\n",
        "2525\"\n[listener.client_limits]\nmax_sessions = 3\nipv4_prefix = 24\n",
    );
    let config = Config::parse(&text).unwrap();
    let own = config.listeners[0].client_limits.clone().unwrap();
    assert_eq!(
        (own.max_sessions, own.ipv4_prefix, own.ipv6_prefix),
        (3, 24, 64)
    );
    assert_eq!(
        config.client_limits.max_sessions, 50,
        "the global ones stay"
    );
    assert!(
        Config::parse(MINIMAL).unwrap().listeners[0]
            .client_limits
            .is_none()
    );
}
