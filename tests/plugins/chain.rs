//! The chain at each stage: verdicts, rewrites and the envelope as the plugins before
//! made it, and what reaches the upstream.

use super::*;

#[test]
fn mail_flows_through_the_recipients_plugin() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        r#"plugins = ["recipients"]

[upstream]
address = "{}"
client_address = "none"

[plugins.recipients]
path = "{}"
config = {{ domains = ["example.com"], max_recipients = 2, aliases = {{ "sales@example.com" = "bob@example.com" }} }}
"#,
        upstream.address(),
        component("recipients").display()
    ));
    let mut client = proxy.client();
    client.expect("EHLO client.test", 250);
    client.expect("MAIL FROM:<a@origin.test>", 250);
    let reply = client.expect("RCPT TO:<someone@elsewhere.test>", 550);
    assert_eq!(
        reply.lines,
        ["550 5.1.1 <someone@elsewhere.test>: Recipient address rejected: not accepted here"]
    );
    client.expect("RCPT TO:<Sales@example.com>", 250);
    client.expect("RCPT TO:<carol@example.com>", 250);
    let reply = client.expect("RCPT TO:<dave@example.com>", 452);
    assert!(reply.lines[0].starts_with("452 4.5.3"), "{reply:?}");
    client.expect("DATA", 354);
    client.send(b"Subject: through a plugin\r\n\r\nhi\r\n.\r\n");
    assert_eq!(client.read_reply().code, 250);
    let session = &upstream.sessions()[0];
    let rcpts: Vec<&String> = session
        .commands
        .iter()
        .filter(|c| c.starts_with("RCPT"))
        .collect();
    assert_eq!(
        rcpts,
        ["RCPT TO:<bob@example.com>", "RCPT TO:<carol@example.com>"],
        "the alias was rewritten, the refused never sent"
    );
}

#[test]
fn plugins_read_the_envelope_as_the_chain_made_it_in_every_transaction() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        r#"plugins = ["alias", "extra", "watch"]

[upstream]
address = "{}"
client_address = "none"

[plugins.alias]
path = "{}"
config = {{ domains = ["example.com", "example.org"], aliases = {{ "sales@example.com" = "alice@example.org" }} }}

[plugins.extra]
path = "{fault}"
config = {{ mode = "add-recipient", stage = "data", recipient = "added@example.com" }}

[plugins.watch]
path = "{fault}"
config = {{ mode = "envelope" }}
"#,
        upstream.address(),
        component("recipients").display(),
        fault = component("fault-plugin").display()
    ));
    let mut client = proxy.client();
    client.expect("EHLO client.test", 250);
    // `watch` reads the envelope at the first and the last RCPT only: the second read
    // must bring the two recipients it skipped and the alias's rewrite.
    let first = [
        "b@example.com",
        "quiet1@example.com",
        "quiet2@example.com",
        "sales@example.com",
    ];
    let reply = client.send_message("a@example.org", &first, b"Subject: 1\r\n\r\nbody\r\n.\r\n");
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("RSET", 250);
    let reply = client.send_message(
        "c@example.org",
        &["d@example.com"],
        b"Subject: 2\r\n\r\nbody\r\n.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("QUIT", 221);
    let seen: Vec<Vec<String>> = upstream
        .wait_messages(2)
        .iter()
        .map(|message| {
            String::from_utf8_lossy(message)
                .lines()
                .filter(|line| line.starts_with("X-Envelope-At-"))
                .map(str::to_string)
                .collect()
        })
        .collect();
    assert_eq!(
        seen,
        [
            vec![
                "X-Envelope-At-Rcpt: a@example.org -> [] | a@example.org -> \
                 [b@example.com,quiet1@example.com,quiet2@example.com]"
                    .to_string(),
                "X-Envelope-At-Data: a@example.org -> [b@example.com,quiet1@example.com,\
                 quiet2@example.com,alice@example.org,added@example.com]"
                    .to_string(),
            ],
            vec![
                "X-Envelope-At-Rcpt: c@example.org -> []".to_string(),
                "X-Envelope-At-Data: c@example.org -> [d@example.com,added@example.com]"
                    .to_string(),
            ],
        ]
    );
}

#[test]
fn a_connect_refusal_replaces_the_greeting() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "plugins = [\"gate\"]\n\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n\n[plugins.gate]\npath = \"{}\"\nconfig = {{ mode = \"refuse-connect\" }}\n",
        upstream.address(),
        component("fault-plugin").display()
    ));
    let mut client = common::Client::connect(proxy.address);
    assert_eq!(client.read_reply().lines, ["554 5.7.1 No service for you"]);
    assert!(client.is_closed());
    assert!(upstream.sessions().is_empty());
}

#[test]
fn helo_hooks_refuse_and_rename_and_the_upstream_learns_the_new_name() {
    let mut extensions = common::FULL_EHLO.to_vec();
    extensions.push("XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN");
    let upstream = RecordingUpstream::scripted(
        &extensions,
        std::sync::Arc::new(|_| common::Action::Default),
    );
    let fault = component("fault-plugin");
    let proxy = Proxy::start_with(&format!(
        "plugins = [\"gate\", \"rename\"]\n\n[upstream]\naddress = \"{}\"\nclient_address = \"xclient\"\n\n\
         [plugins.gate]\npath = \"{}\"\nconfig = {{ mode = \"refuse-helo\", stage = \"helo\" }}\n\n\
         [plugins.rename]\npath = \"{}\"\nconfig = {{ mode = \"rename\", stage = \"helo\" }}\n",
        upstream.address(),
        fault.display(),
        fault.display()
    ));
    let mut client = proxy.client();
    let reply = client.expect("EHLO nodots", 550);
    assert_eq!(reply.lines, ["550 5.7.1 HELO name must be a domain"]);
    let reply = client.command("MAIL FROM:<a@example.org>");
    assert_eq!(
        reply.code, 503,
        "a refused EHLO leaves the client ungreeted: {reply:?}"
    );
    client.expect("EHLO client.test", 250);
    assert_eq!(
        client
            .send_message("a@example.org", &["b@example.com"], b"x\r\n.\r\n")
            .code,
        250
    );
    let session = &upstream.sessions()[0];
    let xclient = session.command_starting("XCLIENT");
    assert!(
        xclient
            .split(' ')
            .any(|word| word == "HELO=renamed.example"),
        "{xclient}"
    );
}

#[test]
fn data_verdicts_and_envelope_edits_reach_the_upstream() {
    // The recipients a plugin changed go upstream in one write where the upstream
    // offers PIPELINING, and one command at a time where it does not.
    for pipelining in [true, false] {
        data_edits_reach_the_upstream(pipelining);
    }
}

/// A chain with plugins in shadow beside an enforcing one: recipients in shadow
/// would refuse the recipient and headers in shadow would add a field, but only the
/// enforcing headers entry's field reaches the upstream; what the shadow entries
/// would have done is logged and counted.
#[test]
fn plugins_in_shadow_are_called_logged_and_counted_but_never_applied() {
    use common::config::{TestConfig, table};
    let upstream = RecordingUpstream::start();
    let add = |value: &str| {
        let config: toml::Table = toml::from_str(&format!(
            "add = [{{ name = \"X-Stamp\", value = \"{value}\" }}]"
        ))
        .unwrap();
        toml::Value::Table(config)
    };
    let refuse: toml::Table = toml::from_str("domains = [\"elsewhere.test\"]").unwrap();
    let proxy = TestConfig::relaying_to(&upstream.address())
        .set("metrics.address", "127.0.0.1:0")
        .plugin(
            "test",
            "recipients-next",
            &component("recipients"),
            table([
                ("mode", "shadow".into()),
                ("config", toml::Value::Table(refuse)),
            ]),
        )
        .plugin(
            "test",
            "headers-next",
            &component("headers"),
            table([("mode", "shadow".into()), ("config", add("next"))]),
        )
        .plugin(
            "test",
            "headers",
            &component("headers"),
            table([("config", add("live"))]),
        )
        .start();
    let mut client = proxy.client();
    client.expect("EHLO client.test", 250);
    let reply = client.send_message(
        "a@origin.test",
        &["bob@example.com"],
        b"Subject: shadow\r\n\r\nhi\r\n.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let message = String::from_utf8(upstream.wait_messages(1)[0].clone()).unwrap();
    assert!(message.contains("X-Stamp: live\r\n"), "{message}");
    assert!(
        !message.contains("X-Stamp: next"),
        "a shadow edit was applied: {message}"
    );
    let rcpt = proxy.wait_for_log("\"plugin\":\"recipients-next\",\"hook\":\"rcpt\"");
    assert!(
        rcpt.contains("shadow plugin") && rcpt.contains("would_have"),
        "{rcpt}"
    );
    assert!(rcpt.contains("reject"), "{rcpt}");
    let data = proxy.wait_for_log("\"plugin\":\"headers-next\",\"hook\":\"data\"");
    assert!(
        data.contains("X-Stamp"),
        "the edit it would have made: {data}"
    );
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(
            "portcullis_plugin_shadow_verdicts_total{plugin=\"recipients-next\",hook=\"rcpt\",verdict=\"reject\"} 1"
        ),
        "{metrics}"
    );
}
