//! Live reload of the whole configuration (SIGHUP and `portcullis reload`): under
//! load no connection is dropped and no message lost or duplicated; a session runs
//! to its end on the plugin version it started with while new sessions get the new
//! one; listeners come and go without disturbing the others; and a configuration or
//! plugin that is broken changes nothing, saying why.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use common::{Client, Proxy, RecordingUpstream, component, config::TestConfig, wait_until};
use toml::{Table, Value};

/// A copy of the headers plugin the test can replace, in a folder of its own.
struct PluginFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl PluginFile {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stamp.wasm");
        std::fs::copy(component("headers"), &path).unwrap();
        Self { _dir: dir, path }
    }

    /// A new version of the file: the same component with a custom section named
    /// `label` appended, so its contents (not its behaviour) differ.
    fn rebuild(&self, label: &str) {
        let mut bytes = std::fs::read(component("headers")).unwrap();
        let mut section = vec![label.len() as u8];
        section.extend_from_slice(label.as_bytes());
        section.extend_from_slice(b"a new build");
        bytes.push(0); // custom section
        bytes.push(section.len() as u8);
        bytes.extend_from_slice(&section);
        std::fs::write(&self.path, bytes).unwrap();
    }
}

/// The headers plugin's settings: add `X-Version: version` to every message.
fn stamping(version: &str) -> Table {
    let config: Table = toml::from_str(&format!(
        "add = [{{ name = \"X-Version\", value = \"{version}\" }}]"
    ))
    .unwrap();
    common::config::table([("config", Value::Table(config))])
}

/// The proxy's configuration: the `test` listener stamping `version`, a metrics
/// endpoint, the control socket in the proxy's folder, and the listeners `extra`.
fn configuration(upstream: &str, plugin: &Path, version: &str, extra: &[&str]) -> String {
    let mut config = TestConfig::relaying_to(upstream)
        .set("server.control_socket", "control.sock")
        .set("metrics.address", "127.0.0.1:0")
        .plugin("test", "stamp", plugin, stamping(version));
    for name in extra {
        config = config.listener(name);
    }
    config.render()
}

/// A proxy started with [`configuration`].
fn start(
    upstream: &RecordingUpstream,
    plugin: &PluginFile,
    version: &str,
    extra: &[&str],
) -> Proxy {
    Proxy::start_file(&configuration(
        &upstream.address(),
        &plugin.path,
        version,
        extra,
    ))
}

fn rewrite(proxy: &Proxy, text: &str) {
    std::fs::write(proxy.dir().join("portcullis.toml"), text).unwrap();
}

fn reload(proxy: &Proxy) -> String {
    let (ok, output) = proxy.reload();
    assert!(ok, "reload failed: {output}");
    output
}

/// One session, one message with this Message-ID; the reply to its final dot.
fn deliver(address: SocketAddr, id: &str) -> u16 {
    let mut client = Client::connect(address);
    let greeting = client.read_reply();
    assert_eq!(greeting.code, 220, "{greeting:?}");
    client.expect("EHLO client.test", 250);
    let wire = format!("Message-ID: <{id}>\r\nSubject: reload\r\n\r\nbody\r\n.\r\n");
    let reply = client.send_message("a@example.test", &["b@example.test"], wire.as_bytes());
    client.expect("QUIT", 221);
    reply.code
}

/// The X-Version field of the message with this Message-ID, as the upstream got it.
fn version_of(upstream: &RecordingUpstream, id: &str) -> String {
    let messages = upstream.messages();
    let message = messages
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .find(|m| m.contains(&format!("Message-ID: <{id}>")))
        .unwrap_or_else(|| panic!("the upstream never got {id}"));
    message
        .lines()
        .find_map(|line| line.strip_prefix("X-Version: "))
        .unwrap_or_else(|| panic!("{id} has no X-Version: {message}"))
        .to_string()
}

#[test]
fn reloads_under_load_drop_no_connection_and_lose_or_duplicate_no_message() {
    let upstream = RecordingUpstream::start();
    let plugin = PluginFile::new();
    let proxy = start(&upstream, &plugin, "one", &[]);
    let address = proxy.address;
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut outcomes = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("load-{sender}-{n}@reload.test");
                    outcomes.push((id.clone(), deliver(address, &id)));
                    n += 1;
                }
                outcomes
            })
        })
        .collect();
    // Each reload changes the plugin's configuration, and every other one adds or
    // removes a listener; one in three comes by SIGHUP.
    for round in 0..9 {
        let version = if round % 2 == 0 { "two" } else { "one" };
        let extra: &[&str] = if round % 4 < 2 { &["second"] } else { &[] };
        rewrite(
            &proxy,
            &configuration(&upstream.address(), &plugin.path, version, extra),
        );
        if round % 3 == 2 {
            proxy.signal("HUP");
            let generation = format!("generation {}:", round + 2);
            proxy.wait_for_log(&generation);
        } else {
            let output = reload(&proxy);
            assert!(
                output.contains(&format!("generation {}:", round + 2)),
                "{output}"
            );
        }
        thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    let outcomes: Vec<(String, u16)> = senders
        .into_iter()
        .flat_map(|sender| sender.join().expect("a sender failed"))
        .collect();
    let refused: Vec<_> = outcomes.iter().filter(|(_, code)| *code != 250).collect();
    assert!(refused.is_empty(), "messages not accepted: {refused:?}");
    assert!(outcomes.len() >= 20, "too little load: {}", outcomes.len());
    let messages = upstream.wait_messages(outcomes.len());
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for message in &messages {
        let text = String::from_utf8_lossy(message);
        let id = text
            .lines()
            .find_map(|line| line.strip_prefix("Message-ID: <"))
            .and_then(|rest| rest.strip_suffix('>'))
            .expect("every message has its Message-ID")
            .to_string();
        *delivered.entry(id).or_default() += 1;
    }
    let duplicated: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "delivered twice: {duplicated:?}");
    for (id, _) in &outcomes {
        assert!(delivered.contains_key(id), "accepted but lost: {id}");
    }
    assert_eq!(delivered.len(), outcomes.len());
    // The last reload (round 8) stamps "two".
    deliver(address, "after@reload.test");
    assert_eq!(version_of(&upstream, "after@reload.test"), "two");
    let metrics = proxy.metrics();
    assert!(
        metrics.contains("portcullis_reloads_total{outcome=\"ok\"} 9"),
        "{metrics}"
    );
}

#[test]
fn a_session_keeps_the_plugin_version_it_started_with() {
    let upstream = RecordingUpstream::start();
    let plugin = PluginFile::new();
    let proxy = start(&upstream, &plugin, "one", &[]);
    // Opened on version one, in the middle of a transaction when the reload comes.
    let mut open = proxy.client();
    open.expect("EHLO client.test", 250);
    open.expect("MAIL FROM:<a@example.test>", 250);
    open.expect("RCPT TO:<b@example.test>", 250);
    plugin.rebuild("two");
    rewrite(
        &proxy,
        &configuration(&upstream.address(), &plugin.path, "two", &[]),
    );
    let output = reload(&proxy);
    assert!(
        output.contains("1 plugin(s) loaded anew, 0 kept"),
        "{output}"
    );
    deliver(proxy.address, "new@reload.test");
    assert_eq!(version_of(&upstream, "new@reload.test"), "two");
    open.expect("DATA", 354);
    open.send(b"Message-ID: <old@reload.test>\r\n\r\nbody\r\n.\r\n");
    assert_eq!(open.read_reply().code, 250);
    open.expect("QUIT", 221);
    assert_eq!(version_of(&upstream, "old@reload.test"), "one");
    // Nothing changed: the plugin is kept, not compiled or initialised again.
    let output = reload(&proxy);
    assert!(
        output.contains("0 plugin(s) loaded anew, 1 kept"),
        "{output}"
    );
    // Only the file changed (same path, same settings): loaded anew.
    plugin.rebuild("three");
    let output = reload(&proxy);
    assert!(
        output.contains("1 plugin(s) loaded anew, 0 kept"),
        "{output}"
    );
}

#[test]
fn listeners_come_and_go_without_disturbing_the_others() {
    let upstream = RecordingUpstream::start();
    let plugin = PluginFile::new();
    let proxy = start(&upstream, &plugin, "one", &["second"]);
    let second = proxy.listener("second");
    let mut open = Client::connect(second);
    assert_eq!(open.read_reply().code, 220);
    open.expect("EHLO client.test", 250);
    rewrite(
        &proxy,
        &configuration(&upstream.address(), &plugin.path, "one", &["third"]),
    );
    let output = reload(&proxy);
    assert!(
        output.contains("(1 added, 1 removed; 1 address(es) bound, 1 closed)"),
        "{output}"
    );
    // The session on the removed listener runs to its end; the listener takes no
    // new connection; the new one and the one that stayed (same port) serve.
    let code = open
        .send_message(
            "a@example.test",
            &["b@example.test"],
            b"Message-ID: <removed@reload.test>\r\n\r\nbody\r\n.\r\n",
        )
        .code;
    assert_eq!(code, 250);
    open.expect("QUIT", 221);
    wait_until("the removed listener to close", || {
        TcpStream::connect(second).is_err()
    });
    let third = proxy.listener("third");
    assert_eq!(deliver(third, "third@reload.test"), 250);
    assert_eq!(deliver(proxy.address, "kept@reload.test"), 250);
}

#[test]
fn a_broken_configuration_or_plugin_changes_nothing_and_says_why() {
    let upstream = RecordingUpstream::start();
    let plugin = PluginFile::new();
    let good = configuration(&upstream.address(), &plugin.path, "one", &[]);
    let proxy = Proxy::start_file(&good);
    let ask = || {
        let mut socket = UnixStream::connect(proxy.dir().join("control.sock")).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        socket.write_all(b"reload\n").unwrap();
        let mut answer = String::new();
        BufReader::new(socket).read_line(&mut answer).unwrap();
        answer
    };
    // A key that does not exist: `portcullis reload` stops at its own check, and the
    // proxy, asked directly, refuses naming the key and its line.
    rewrite(&proxy, &format!("no_such_key = 1\n{good}"));
    let (ok, output) = proxy.reload();
    assert!(!ok && output.contains("no_such_key"), "{output}");
    let answer = ask();
    assert!(answer.starts_with("failed: "), "{answer}");
    assert!(
        answer.contains("line ") && answer.contains("no_such_key"),
        "{answer}"
    );
    // A plugin file that is not a component.
    rewrite(&proxy, &good);
    std::fs::write(&plugin.path, b"not a component").unwrap();
    let answer = ask();
    assert!(answer.starts_with("failed: "), "{answer}");
    assert!(answer.contains("plugins.stamp"), "{answer}");
    // By SIGHUP: the same refusal, in the log.
    let failures = || -> Vec<String> {
        proxy
            .logs()
            .into_iter()
            .filter(|line| line.contains("reload failed; nothing changed"))
            .collect()
    };
    proxy.signal("HUP");
    wait_until("the SIGHUP reload to fail", || failures().len() == 3);
    let line = failures().pop().unwrap();
    assert!(line.contains("plugins.stamp"), "{line}");
    // A plugin whose init refuses its configuration.
    plugin.rebuild("fixed");
    let mut refused = TestConfig::relaying_to(&upstream.address())
        .set("server.control_socket", "control.sock")
        .set("metrics.address", "127.0.0.1:0");
    let mut settings = Table::new();
    settings.insert("add".into(), Value::String("not a list".into()));
    refused = refused.plugin(
        "test",
        "stamp",
        &plugin.path,
        common::config::table([("config", Value::Table(settings))]),
    );
    rewrite(&proxy, &refused.render());
    let answer = ask();
    assert!(answer.starts_with("failed: "), "{answer}");
    assert!(answer.contains("plugins.stamp"), "{answer}");
    // Nothing changed: still version one, and the failures are counted.
    assert_eq!(deliver(proxy.address, "still@reload.test"), 250);
    assert_eq!(version_of(&upstream, "still@reload.test"), "one");
    let metrics = proxy.metrics();
    assert!(
        metrics.contains("portcullis_reloads_total{outcome=\"failed\"} 4"),
        "{metrics}"
    );
    // Fixed again: the reload goes through.
    rewrite(&proxy, &good);
    let output = reload(&proxy);
    assert!(output.contains("reloaded: generation 2:"), "{output}");
}
