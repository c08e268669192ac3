//! Every way the upstream can fail, on both DATA paths: the client hears a 4xx, never
//! a 250 for a message the upstream did not take.

use super::*;

/// Runs a transaction against a failing upstream; returns the reply codes the client
/// got for MAIL, RCPT, DATA, and the final dot (0 where the step was not reached).
fn transaction_codes(proxy: &Proxy) -> Vec<u16> {
    let mut client = proxy.client();
    ehlo(&mut client);
    let mut codes = vec![client.command("MAIL FROM:<a@example.org>").code];
    if codes[0] != 250 {
        return codes;
    }
    codes.push(client.command("RCPT TO:<b@example.com>").code);
    if codes[1] != 250 {
        return codes;
    }
    codes.push(client.command("DATA").code);
    if codes[2] != 354 {
        return codes;
    }
    client.send(b"Subject: x\r\n\r\n");
    client.send(&b"body line\r\n".repeat(20_000));
    client.send(b".\r\n");
    codes.push(client.try_read_reply().map_or(0, |r| r.code));
    codes
}

const SHORT_TIMEOUTS: &str = "[upstream.timeouts]\nconnect = \"1s\"\ngreeting = \"1s\"\ncommand = \"1s\"\ndata_init = \"1s\"\ndata_block = \"1s\"\ndata_termination = \"1s\"\n";
/// Longer than every timeout in SHORT_TIMEOUTS, with a wide margin.
const TOO_SLOW: Duration = Duration::from_secs(3);

/// Which DATA path a failure case runs on.
#[derive(Clone, Copy, PartialEq)]
enum DataPath {
    /// No plugin wants DATA: the message streams through after the upstream's 354.
    Streamed,
    /// A DATA plugin is on the chain: the proxy answers 354 itself, spools the
    /// message, runs the hook, and only then sends DATA upstream.
    Spooled,
}

/// Every way the upstream can fail, and the codes the client must get on `path` for
/// MAIL, RCPT, DATA and the final dot: never a 2xx for the message.
fn failure_cases(path: DataPath) -> Vec<(&'static str, &'static str, Action, Vec<u16>)> {
    // Upstream failures at or after its DATA: on the streamed path the client's DATA
    // gets the 451; on the spooled path the client already has the proxy's 354, and
    // the reply to its final dot is the 451.
    let at_data = match path {
        DataPath::Streamed => vec![250, 250, 451],
        DataPath::Spooled => vec![250, 250, 354, 451],
    };
    vec![
        (
            "greeting refused",
            "<connect>",
            Action::Reply("554 5.3.2 go away".into()),
            vec![451],
        ),
        ("greeting dropped", "<connect>", Action::Drop, vec![451]),
        (
            "greeting too slow",
            "<connect>",
            Action::Delay(TOO_SLOW),
            vec![451],
        ),
        ("EHLO dropped", "EHLO", Action::Drop, vec![451]),
        ("MAIL dropped", "MAIL", Action::Drop, vec![451]),
        ("MAIL too slow", "MAIL", Action::Delay(TOO_SLOW), vec![451]),
        (
            "MAIL answered with 354",
            "MAIL",
            Action::Reply("354 go on".into()),
            vec![451],
        ),
        ("RCPT dropped", "RCPT", Action::Drop, vec![250, 451]),
        (
            "RCPT answered with 354",
            "RCPT",
            Action::Reply("354 go on".into()),
            vec![250, 451],
        ),
        ("DATA dropped", "DATA", Action::Drop, at_data.clone()),
        (
            "DATA too slow",
            "DATA",
            Action::Delay(TOO_SLOW),
            at_data.clone(),
        ),
        (
            "DATA answered with 250, as if the message were taken",
            "DATA",
            Action::Reply("250 2.0.0 fine".into()),
            at_data,
        ),
        (
            "dropped mid-DATA",
            "<data>",
            Action::Drop,
            vec![250, 250, 354, 451],
        ),
        (
            "final reply dropped",
            ".",
            Action::Drop,
            vec![250, 250, 354, 451],
        ),
        (
            "final reply too slow",
            ".",
            Action::Delay(TOO_SLOW),
            vec![250, 250, 354, 451],
        ),
        (
            "final reply a 354",
            ".",
            Action::Reply("354 more, please".into()),
            vec![250, 250, 354, 451],
        ),
        (
            "final reply tempfail",
            ".",
            Action::Reply("451 4.3.0 try later".into()),
            vec![250, 250, 354, 451],
        ),
    ]
}

/// The proxy's config for `path`, in front of `upstream`, with short timeouts.
fn failing_proxy(upstream: &str, path: DataPath) -> Proxy {
    match path {
        DataPath::Streamed => Proxy::start(upstream, SHORT_TIMEOUTS),
        DataPath::Spooled => Proxy::start_with(&format!(
            "plugins = [\"headers\"]\n\n[upstream]\naddress = \"{upstream}\"\nclient_address = \"none\"\n{SHORT_TIMEOUTS}\n\
             [plugins.headers]\npath = \"{}\"\nconfig = {{ add = [{{ name = \"X-Test\", value = \"1\" }}] }}\n",
            common::component("headers").display()
        )),
    }
}

/// Runs every failure case on `path`, each in its own thread (they mostly wait).
fn every_failure_gives_a_4xx(path: DataPath) {
    let runs: Vec<_> = failure_cases(path)
        .into_iter()
        .map(|(name, trigger, action, expected)| {
            thread::spawn(move || {
                let upstream = upstream_failing(trigger, action);
                let proxy = failing_proxy(&upstream.address(), path);
                assert_eq!(transaction_codes(&proxy), expected, "{name}");
                if trigger != "." {
                    assert!(
                        upstream.messages().is_empty(),
                        "{name}: the upstream must not have a complete message"
                    );
                }
            })
        })
        .collect();
    for run in runs {
        run.join().unwrap();
    }
    let proxy = failing_proxy(&closed_port(), path);
    assert_eq!(transaction_codes(&proxy), [451], "upstream unreachable");
}

#[test]
fn every_upstream_failure_gives_the_client_a_4xx() {
    every_failure_gives_a_4xx(DataPath::Streamed);
}

#[test]
fn every_upstream_failure_gives_the_client_a_4xx_when_a_plugin_spools_the_message() {
    every_failure_gives_a_4xx(DataPath::Spooled);
}
#[test]
fn after_a_failure_the_next_transaction_opens_a_new_upstream_session() {
    let upstream = upstream_failing(".", Action::Drop);
    let proxy = Proxy::start(&upstream.address(), SHORT_TIMEOUTS);
    let mut client = proxy.client();
    ehlo(&mut client);
    assert_eq!(
        client
            .send_message("a@example.org", &["b@example.com"], b"x\r\n.\r\n")
            .code,
        451
    );
    assert_eq!(
        client
            .send_message("a@example.org", &["b@example.com"], b"x\r\n.\r\n")
            .code,
        451
    );
    assert_eq!(upstream.sessions().len(), 2);
}

#[test]
fn an_upstream_421_is_relayed_and_ends_the_client_session() {
    let upstream = upstream_failing(
        "RCPT",
        Action::Reply("421 4.3.2 upstream.test Service shutting down".into()),
    );
    let proxy = Proxy::start(&upstream.address(), "");
    let mut client = proxy.client();
    ehlo(&mut client);
    client.expect("MAIL FROM:<a@example.org>", 250);
    let reply = client.expect("RCPT TO:<b@example.com>", 421);
    assert_eq!(
        reply.lines,
        ["421 4.3.2 upstream.test Service shutting down"]
    );
    assert!(client.is_closed());
}
