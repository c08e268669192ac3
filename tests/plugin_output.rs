//! Plugin output as strict as client input: a rewrite, a reply or an edit that breaks
//! the rules a client's command follows is an invalid result (the plugin's `on_error`
//! applies, the log names the rule), and nothing of it reaches the upstream. Driven
//! through the fault plugin against the recording upstream, which shows the exact
//! bytes the MTA got; plus the failures a plugin author reads in the log, and the
//! start-up refusals of plugin settings that cannot work.

mod common;

use std::sync::Arc;

use common::{Action, Client, Proxy, RecordingUpstream, check_config, component};

/// A proxy in front of `upstream` with one listener per `(name, plugin table)`.
fn proxy(upstream: &RecordingUpstream, listeners: &[(&str, String)]) -> Proxy {
    let mut config = format!(
        "[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        upstream.address()
    );
    for (name, table) in listeners {
        config.push_str(&format!(
            "\n[[listener]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\nplugins = [\"{name}\"]\n\n\
             [plugins.{name}]\npath = {:?}\n{table}\n",
            component("fault-plugin")
        ));
    }
    Proxy::start_with(&config)
}

fn client(proxy: &Proxy, listener: &str) -> Client {
    let mut client = Client::connect(proxy.listener(listener));
    assert_eq!(client.read_reply().code, 220);
    client.expect("EHLO client.test", 250);
    client
}

/// The log line of the plugin's failure.
fn failure(proxy: &Proxy, plugin: &str) -> String {
    proxy.wait_for_log(&format!(
        "\"message\":\"plugin failed\",\"plugin\":\"{plugin}\""
    ))
}

#[test]
fn rewrites_must_follow_the_rules_of_client_commands() {
    // No 8BITMIME upstream, so BODY is not offered to clients.
    let upstream = RecordingUpstream::scripted(
        &["PIPELINING", "DSN", "ENHANCEDSTATUSCODES"],
        Arc::new(|_| Action::Default),
    );
    let rewrite = |stage: &str, rest: &str| {
        format!("config = {{ mode = \"rewrite\", stage = \"{stage}\", {rest} }}")
    };
    let cases: &[(&str, String, &str)] = &[
        (
            "address",
            rewrite("rcpt", "address = \"evil@x.example> NOTIFY=NEVER\""),
            "invalid domain",
        ),
        (
            "value",
            rewrite(
                "rcpt",
                "params = [\"NOTIFY=NEVER ORCPT=rfc822;evil@x.example\"]",
            ),
            "not an esmtp-value",
        ),
        (
            "keyword",
            rewrite("rcpt", "params = [\"X EVIL\"]"),
            "not an esmtp-keyword",
        ),
        (
            "unknown",
            rewrite("mail", "params = [\"XEVIL=1\"]"),
            "not a MAIL parameter the proxy relays",
        ),
        (
            "not-offered",
            rewrite("mail", "params = [\"BODY=8BITMIME\"]"),
            "not offered to this client",
        ),
        (
            "valid",
            rewrite(
                "rcpt",
                "address = \"archive@example.com\", params = [\"NOTIFY=NEVER\"]",
            ),
            "",
        ),
    ];
    let listeners: Vec<(&str, String)> = cases
        .iter()
        .map(|(name, table, _)| (*name, table.clone()))
        .collect();
    let proxy = proxy(&upstream, &listeners);
    for (name, table, rule) in cases {
        let mut client = client(&proxy, name);
        let stage_is_mail = table.contains("\"mail\"");
        let mail = client.command("MAIL FROM:<a@example.org>");
        let rcpt = (!stage_is_mail).then(|| client.command("RCPT TO:<b@example.com>"));
        let refused = if stage_is_mail {
            &mail
        } else {
            rcpt.as_ref().unwrap()
        };
        if rule.is_empty() {
            assert_eq!(refused.code, 250, "{name}: {refused:?}");
            continue;
        }
        assert_eq!(
            refused.lines,
            ["451 4.3.0 Temporary failure in a filter, try again later"],
            "{name}"
        );
        let line = failure(&proxy, name);
        assert!(
            line.contains("invalid result") && line.contains(rule),
            "{name}: {line}"
        );
        client.expect("QUIT", 221);
    }
    let commands: Vec<String> = upstream.all_commands();
    assert!(
        commands.contains(&"RCPT TO:<archive@example.com> NOTIFY=NEVER".to_string()),
        "{commands:?}"
    );
    for command in &commands {
        assert!(
            !command.contains("evil") && !command.contains("EVIL") && !command.contains("BODY"),
            "reached the upstream: {command}"
        );
    }
    // MAIL was refused before anything went upstream; RCPT after MAIL only.
    assert_eq!(
        commands.iter().filter(|c| c.starts_with("RCPT")).count(),
        1,
        "{commands:?}"
    );
}

#[test]
fn a_long_reply_is_wrapped_and_a_huge_one_refused() {
    let upstream = RecordingUpstream::start();
    let proxy = proxy(
        &upstream,
        &[
            (
                "long",
                "config = { mode = \"long-reply\", length = 2000 }".into(),
            ),
            (
                "huge",
                "config = { mode = \"long-reply\", length = 5000 }".into(),
            ),
        ],
    );
    let mut long = client(&proxy, "long");
    let reply = long.command("MAIL FROM:<a@example.org>");
    assert_eq!(reply.code, 550);
    assert!(reply.lines.len() >= 4, "{} lines", reply.lines.len());
    let mut text = String::new();
    for (index, line) in reply.lines.iter().enumerate() {
        assert!(
            line.len() + 2 <= 512,
            "line {index}: {} octets",
            line.len() + 2
        );
        let separator = if index + 1 == reply.lines.len() {
            " "
        } else {
            "-"
        };
        let words = line
            .strip_prefix(&format!("550{separator}5.7.1 "))
            .unwrap_or_else(|| panic!("{line}"));
        text.push_str(words);
        text.push(' ');
    }
    assert_eq!(text.split_whitespace().count(), 250, "no word lost");
    let mut huge = client(&proxy, "huge");
    assert_eq!(huge.command("MAIL FROM:<a@example.org>").code, 451);
    assert!(failure(&proxy, "huge").contains("text longer than 4000 octets"));
}

#[test]
fn a_recipient_a_plugin_added_is_never_dropped_silently() {
    let upstream = RecordingUpstream::scripted(
        common::FULL_EHLO,
        Arc::new(|line| {
            if line.contains("@refused.test") {
                Action::Reply("550 5.1.1 No such user".into())
            } else {
                Action::Default
            }
        }),
    );
    let archive = |policy: &str| {
        format!(
            "on_error = \"{policy}\"\nconfig = {{ mode = \"add-recipient\", stage = \"data\", recipient = \"archive@refused.test\" }}"
        )
    };
    let proxy = proxy(
        &upstream,
        &[
            ("tempfail", archive("tempfail")),
            ("continue", archive("continue")),
        ],
    );
    let wire = b"Subject: copy me\r\n\r\nbody\r\n.\r\n";
    let reply = client(&proxy, "tempfail").send_message("a@example.org", &["b@example.com"], wire);
    assert_eq!(
        reply.lines,
        ["451 4.3.0 Temporary failure in a filter, try again later"]
    );
    let line = proxy.wait_for_log("the upstream refused a recipient the plugin added");
    assert!(
        line.contains("\"plugin\":\"tempfail\"") && line.contains("archive@refused.test"),
        "{line}"
    );
    assert!(upstream.messages().is_empty(), "nothing delivered");
    // With on_error = "continue" the copy is dropped (and logged), the rest delivered.
    let reply = client(&proxy, "continue").send_message("a@example.org", &["b@example.com"], wire);
    assert_eq!(reply.code, 250, "{reply:?}");
    assert_eq!(upstream.wait_messages(1).len(), 1);
}

#[test]
fn a_footer_goes_on_a_message_of_the_largest_size_within_the_default_memory() {
    let upstream = RecordingUpstream::start();
    let proxy = proxy(
        &upstream,
        &[
            (
                "footer",
                "config = { mode = \"append-body\", stage = \"data\", body = \"-- \\nSent through the test\" }".into(),
            ),
            (
                "notice",
                "config = { mode = \"prepend-body\", stage = \"data\", body = \"[notice]\" }".into(),
            ),
        ],
    );
    // Just under smtp.max_message_size (50 MiB), in 1,000-octet lines.
    let line = format!("{}\r\n", "x".repeat(998));
    let lines = (50 * 1024 * 1024 - 2048) / line.len();
    let mut wire = b"Subject: large\r\n\r\n".to_vec();
    wire.extend(line.repeat(lines).into_bytes());
    wire.extend_from_slice(b".\r\n");
    let reply = client(&proxy, "footer").send_message("a@example.org", &["b@example.com"], &wire);
    assert_eq!(reply.code, 250, "{reply:?}");
    let message = &upstream.wait_messages(1)[0];
    assert_eq!(
        message.len(),
        wire.len() + "-- \r\nSent through the test\r\n".len()
    );
    assert!(message.ends_with(b"x\r\n-- \r\nSent through the test\r\n.\r\n"));
    let reply = client(&proxy, "notice").send_message(
        "a@example.org",
        &["b@example.com"],
        b"Subject: small\r\n\r\nbody\r\n.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let message = &upstream.wait_messages(2)[1];
    assert_eq!(
        String::from_utf8_lossy(message),
        "Subject: small\r\n\r\n[notice]\r\nbody\r\n.\r\n"
    );
}

#[test]
fn failures_say_what_happened_in_the_plugin_authors_terms() {
    let upstream = RecordingUpstream::start();
    let proxy = proxy(
        &upstream,
        &[
            ("panic", "config = { mode = \"panic\" }".into()),
            (
                "memory",
                "memory_mb = 16\nconfig = { mode = \"memory\" }".into(),
            ),
            (
                "loop",
                "timeout_ms = 250\nconfig = { mode = \"loop\" }".into(),
            ),
        ],
    );
    for name in ["panic", "memory", "loop"] {
        let reply = client(&proxy, name).command("MAIL FROM:<a@example.org>");
        assert_eq!(reply.code, 451, "{name}: {reply:?}");
    }
    let panic = failure(&proxy, "panic");
    assert!(
        panic.contains("panicked at tests/fault-plugin/src/lib.rs:")
            && panic.contains("the fault plugin panics"),
        "{panic}"
    );
    let memory = failure(&proxy, "memory");
    assert!(
        memory.contains("memory limit of 16 MiB reached (memory_mb)"),
        "{memory}"
    );
    let timeout = failure(&proxy, "loop");
    assert!(
        timeout.contains("timed out after 250 ms (timeout_ms)"),
        "{timeout}"
    );
}

/// `portcullis check` on a config with one fault-plugin entry of `table`.
fn check(table: &str) -> (bool, String) {
    check_config(&format!(
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nplugins = [\"fault\"]\n\n[upstream]\ndevelopment_folder = \"mail\"\n\n[plugins.fault]\npath = {:?}\n{table}\n",
        component("fault-plugin")
    ))
}

#[test]
fn check_refuses_plugin_settings_that_cannot_work() {
    let (ok, text) = check("timeout_ms = 0\nconfig = { mode = \"ok\" }");
    assert!(
        !ok && text.contains("line 11: plugins.fault.timeout_ms: must be 1 ms"),
        "{text}"
    );
    let (ok, text) = check("memory_mb = 0\nconfig = { mode = \"ok\" }");
    assert!(
        !ok && text.contains("plugins.fault.memory_mb: must be 1 to 4096 MiB"),
        "{text}"
    );
    let (ok, text) = check("memory_mb = 2\nconfig = { mode = \"ok\", init_alloc_mb = 4 }");
    assert!(
        !ok && text
            .contains("line 9: plugins.fault.memory_mb: too little for this plugin to start"),
        "{text}"
    );
    let (ok, text) = check("config = { mode = \"\" }");
    assert!(
        !ok && text
            .contains("line 9: plugins.fault: init refused the configuration: mode is required"),
        "{text}"
    );
    let (ok, text) = check("config = { mode = \"ok\" }");
    assert!(ok, "{text}");
}
