//! Shared pieces of the integration tests: the real `portcullis` binary started on
//! port 0, a scriptable upstream that records the exact bytes it receives, and a
//! minimal blocking SMTP client. Every wait is bounded, so a hung proxy fails a test
//! instead of hanging CI.
#![allow(dead_code)]

pub mod config;
pub mod dns;
pub mod haproxy;
pub mod redis;
pub mod tls;
mod upstream;

pub use upstream::*;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

/// The real proxy binary, running with a config written for the test.
pub struct Proxy {
    child: Child,
    pub address: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    folder: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts the proxy in front of `upstream` with extra TOML appended to the config.
    pub fn start(upstream: &str, extra: &str) -> Proxy {
        // The recording upstream has no XCLIENT: say so, unless the test chooses.
        let client_address = if extra.contains("client_address") {
            ""
        } else {
            "client_address = \"none\"\n"
        };
        Proxy::start_with(&format!(
            "[upstream]\naddress = \"{upstream}\"\n{client_address}{extra}"
        ))
    }

    /// Starts the proxy with a listener on port 0 and `rest` as the rest of the config.
    pub fn start_with(rest: &str) -> Proxy {
        Proxy::start_logging(rest, "info,portcullis=debug")
    }

    /// Starts the proxy with `config` as its whole configuration file (it must have
    /// a listener `test` on port 0, as [`config::TestConfig`] makes).
    pub fn start_file(config: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.toml");
        std::fs::write(&path, config).unwrap();
        let folder = dir.path().to_path_buf();
        Proxy::run(dir, &folder, &path, "test", "info,portcullis=debug")
    }

    /// [`Proxy::start_with`] with this `RUST_LOG` filter.
    pub fn start_logging(rest: &str, filter: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("portcullis.toml");
        std::fs::write(
            &config,
            format!("[[listener]]\nname = \"test\"\naddress = \"127.0.0.1:0\"\n\n{rest}"),
        )
        .unwrap();
        let folder = dir.path().to_path_buf();
        Proxy::run(dir, &folder, &config, "test", filter)
    }

    /// Runs the proxy in `folder` with the config file `config` (which must listen on
    /// port 0 as `listener`); `dir` is kept until the proxy is dropped.
    pub fn run(
        dir: tempfile::TempDir,
        folder: &Path,
        config: &Path,
        listener: &str,
        filter: &str,
    ) -> Proxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .current_dir(folder)
            .env("RUST_LOG", filter)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start portcullis");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (ready, listening) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        let listener = listener.to_string();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("\"message\":\"listening\"")
                    && json_field(&line, "listener").as_deref() == Some(listener.as_str())
                    && let Some(address) = json_field(&line, "address")
                {
                    let _ = ready.send(address);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let address = listening.recv_timeout(WAIT).unwrap_or_else(|_| {
            let logs = logs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            panic!(
                "proxy did not start: {:?}",
                &logs[logs.len().saturating_sub(30)..]
            );
        });
        Proxy {
            child,
            address: address.parse().unwrap(),
            logs,
            folder: folder.to_path_buf(),
            _dir: dir,
        }
    }

    /// The address of another listener of this proxy, by name.
    pub fn listener(&self, name: &str) -> SocketAddr {
        let line = self.wait_for_log(&format!("\"listener\":\"{name}\",\"address\""));
        json_field(&line, "address").unwrap().parse().unwrap()
    }

    /// The folder the proxy runs in (where a development upstream writes).
    pub fn dir(&self) -> PathBuf {
        self.folder.clone()
    }

    /// Every log line so far (JSON).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(line) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("no log line contains {needle:?}: {:#?}", self.logs());
    }

    /// A connected client that has read the greeting.
    pub fn client(&self) -> Client {
        let mut client = Client::connect(self.address);
        let greeting = client.read_reply();
        assert_eq!(greeting.code, 220, "{greeting:?}");
        client
    }

    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The proxy's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM in /proc status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Where the metrics endpoint listens (the proxy must have `[metrics]`).
    pub fn metrics_address(&self) -> SocketAddr {
        let line = self.wait_for_log("\"message\":\"metrics listening\"");
        json_field(&line, "address").unwrap().parse().unwrap()
    }

    /// The text of `/metrics` now.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_address(), "/metrics").1
    }

    /// Runs `portcullis reload` on the configuration file the proxy was started with
    /// (in its folder, so a relative `server.control_socket` is found): whether it
    /// succeeded, and what it printed (standard output, then standard error).
    pub fn reload(&self) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["reload", "--config", "portcullis.toml"])
            .current_dir(&self.folder)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns whether it exited successfully.
    pub fn wait_exit(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("proxy did not exit");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The string value of `"key":"value"` in a JSON log line (good enough for our logs).
pub fn json_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = line[start..].find('"')?;
    Some(line[start..start + end].to_string())
}

/// A reply as the client saw it.
#[derive(Debug, Clone)]
pub struct ClientReply {
    pub code: u16,
    /// Every line, without CRLF, codes included.
    pub lines: Vec<String>,
}

impl ClientReply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A minimal blocking SMTP client.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(address: SocketAddr) -> Client {
        Client::over(TcpStream::connect(address).unwrap())
    }

    /// Connects from a chosen local address (e.g. 127.0.0.2, to tell it from the proxy's)
    /// and reads the 220 greeting.
    pub fn connect_from(local: &str, address: SocketAddr) -> Client {
        let mut client = Client::connect_from_unread(local, address);
        assert_eq!(client.read_reply().code, 220);
        client
    }

    /// Connects from a chosen local address; the greeting is left unread.
    pub fn connect_from_unread(local: &str, address: SocketAddr) -> Client {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&format!("{local}:0").parse::<SocketAddr>().unwrap().into())
            .unwrap();
        socket.connect(&address.into()).unwrap();
        Client::over(socket.into())
    }

    fn over(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// Reads one (possibly multi-line) reply; panics on timeout or close.
    pub fn read_reply(&mut self) -> ClientReply {
        self.try_read_reply()
            .expect("connection closed before a reply")
    }

    /// Reads one reply, `None` if the connection closed first.
    pub fn try_read_reply(&mut self) -> Option<ClientReply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches("\r\n").to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                let code = lines[0][..3].parse().unwrap();
                return Some(ClientReply { code, lines });
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Sends, returning false if the server has closed the connection.
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).is_ok()
    }

    /// Sends a command line and returns the reply.
    pub fn command(&mut self, line: &str) -> ClientReply {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// Asserts the code of a command's reply.
    pub fn expect(&mut self, line: &str, code: u16) -> ClientReply {
        let reply = self.command(line);
        assert_eq!(reply.code, code, "{line} -> {reply:?}");
        reply
    }

    /// EHLO, MAIL, RCPT..., DATA, then the given wire bytes (dot-stuffed, terminator
    /// included); returns the reply to the final dot.
    pub fn send_message(&mut self, from: &str, to: &[&str], wire: &[u8]) -> ClientReply {
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), 250);
        }
        self.expect("DATA", 354);
        self.send(wire);
        self.read_reply()
    }

    /// True if the server has closed the connection (reads EOF within the wait).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0) | Err(_))
    }
}

/// A hash for a credentials file, from `portcullis hash-password` (Argon2id).
pub fn hash_password(password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// GET `path` over HTTP/1.1: the status code and the body.
pub fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: metrics.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `portcullis check` on a configuration `text`: whether it passed, and what it
/// printed (standard output, then standard error).
pub fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// A plugin component built by `./scripts/test`; missing is a failure, not a skip.
pub fn component(crate_name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm/wasm32-wasip2/plugin")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first (./scripts/test does: cargo build --profile plugin --target wasm32-wasip2 --target-dir target/wasm -p {crate_name})",
        path.display()
    );
    path
}

/// Waits (bounded) until `condition` holds.
pub fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A port nothing listens on, as `127.0.0.1:PORT`.
pub fn closed_port() -> String {
    format!("127.0.0.1:{}", closed_ports(1)[0])
}

/// `count` distinct ports nothing listens on, for a server started next to bind. They
/// are drawn below the range the kernel hands out to outgoing connections, so that
/// none is taken by one (of this test or another running beside it) before the
/// server binds it, and all are held at once while drawing, so none comes twice.
pub fn closed_ports(count: usize) -> Vec<u16> {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Unprivileged ports below the ephemeral range; where it leaves too few, the
    // kernel's own choice (then only the holding-at-once guards against repeats).
    let (low, span) = match first_ephemeral.checked_sub(10_000) {
        Some(span) if span >= 1_000 => (10_000u16, u64::from(span)),
        _ => {
            let held: Vec<_> = (0..count)
                .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
                .collect();
            return held
                .iter()
                .map(|listener| listener.local_addr().unwrap().port())
                .collect();
        }
    };
    let mut state = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let port = low + ((state >> 33) % span) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    held.iter()
        .map(|listener| listener.local_addr().unwrap().port())
        .collect()
}

/// Fails under CI when an external program is missing; elsewhere returns false so
/// the caller can skip with a message.
pub fn require_program(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{program} is required under CI=true but is not installed");
        }
        eprintln!(
            "skipping: {program} is not installed (run the README's test command to install it)"
        );
    }
    found
}
