//! The recording upstream: a scripted SMTP server on a loopback port that records the
//! exact bytes it receives. Only the standard library, so the integration tests and
//! the proxy's own session tests (which include this file) share one server.
#![allow(dead_code, unreachable_pub)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// What the scripted upstream does at one event.
#[derive(Debug, Clone)]
pub enum Action {
    /// The normal reply.
    Default,
    /// This reply instead (may be multi-line, CRLF-separated, without the final CRLF).
    Reply(String),
    /// Close the connection without replying.
    Drop,
    /// Wait this long, then give the normal reply.
    Delay(Duration),
}

/// Decides the upstream's action for a command line, for `"."` (end of data) and for
/// `"<data>"` (the first message bytes arrived).
pub type Script = Arc<dyn Fn(&str) -> Action + Send + Sync>;

/// One connection's worth of what the upstream received.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// Every byte received, in order.
    pub raw: Vec<u8>,
    /// The command lines received (without CRLF).
    pub commands: Vec<String>,
    /// The wire bytes of each complete message (dot-stuffed, terminator included).
    pub messages: Vec<Vec<u8>>,
    /// For each MAIL: the commands that had arrived when the upstream replied to it.
    pub arrived_before_mail_reply: Vec<Vec<String>>,
}

impl Recorded {
    /// The first command line that starts with `prefix`; fails the test without one.
    pub fn command_starting(&self, prefix: &str) -> &str {
        self.commands
            .iter()
            .find(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} command in {:?}", self.commands))
    }
}

/// A scripted upstream SMTP server recording the exact bytes it receives.
pub struct RecordingUpstream {
    pub address: SocketAddr,
    pub connections: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>>,
}

/// The extensions the recording upstream announces unless told otherwise.
pub const FULL_EHLO: &[&str] = &[
    "PIPELINING",
    "SIZE 104857600",
    "8BITMIME",
    "SMTPUTF8",
    "DSN",
    "ENHANCEDSTATUSCODES",
];

impl RecordingUpstream {
    /// An upstream that accepts everything.
    pub fn start() -> RecordingUpstream {
        RecordingUpstream::scripted(FULL_EHLO, Arc::new(|_| Action::Default))
    }

    /// An upstream that first reads a PROXY protocol header (v1 or v2), as Postfix does
    /// with `smtpd_upstream_proxy_protocol = haproxy`.
    pub fn expecting_proxy_header() -> RecordingUpstream {
        RecordingUpstream::new(FULL_EHLO, Arc::new(|_| Action::Default), true)
    }

    /// An upstream announcing `extensions` and acting as `script` says.
    pub fn scripted(extensions: &[&str], script: Script) -> RecordingUpstream {
        RecordingUpstream::new(extensions, script, false)
    }

    fn new(extensions: &[&str], script: Script, proxy_header: bool) -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>> = Arc::default();
        let extensions: Vec<String> = extensions.iter().map(|e| e.to_string()).collect();
        let all = connections.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let recorded = Arc::new(Mutex::new(Recorded::default()));
                all.lock().unwrap().push(recorded.clone());
                let (script, extensions) = (script.clone(), extensions.clone());
                thread::spawn(move || {
                    serve_upstream(stream, &extensions, &script, &recorded, proxy_header)
                });
            }
        });
        RecordingUpstream {
            address,
            connections,
        }
    }

    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Snapshots of every connection so far (the capability probe included).
    pub fn recorded(&self) -> Vec<Recorded> {
        self.connections
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.lock().unwrap().clone())
            .collect()
    }

    /// Every command line received, over all connections, in connection order.
    pub fn all_commands(&self) -> Vec<String> {
        self.recorded()
            .into_iter()
            .flat_map(|r| r.commands)
            .collect()
    }

    /// Every complete message received, over all connections.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.recorded()
            .into_iter()
            .flat_map(|r| r.messages)
            .collect()
    }

    /// Waits until `count` messages have arrived.
    pub fn wait_messages(&self, count: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("expected {count} messages, got {}", self.messages().len());
    }

    /// The connections that carried a MAIL command (the probe does not).
    pub fn sessions(&self) -> Vec<Recorded> {
        self.recorded()
            .into_iter()
            .filter(|r| r.commands.iter().any(|c| c.starts_with("MAIL")))
            .collect()
    }
}

fn serve_upstream(
    stream: TcpStream,
    extensions: &[String],
    script: &Script,
    recorded: &Mutex<Recorded>,
    proxy_header: bool,
) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = RecordingReader {
        stream,
        recorded,
        buffer: Vec::new(),
    };
    if proxy_header && !reader.skip_proxy_header() {
        return;
    }
    let send = |writer: &mut TcpStream, text: &str| {
        writer.write_all(format!("{text}\r\n").as_bytes()).is_ok()
    };
    if !act(
        script("<connect>"),
        &mut writer,
        "220 upstream.test ESMTP recording",
    ) {
        return;
    }
    let mut queue = 0u32;
    while let Some(line) = reader.line() {
        recorded.lock().unwrap().commands.push(line.clone());
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        if verb == "MAIL" {
            // Let pipelined commands arrive, then note what came before our reply.
            thread::sleep(Duration::from_millis(50));
            reader.drain_available();
            let arrived = reader.pending_lines();
            recorded
                .lock()
                .unwrap()
                .arrived_before_mail_reply
                .push(arrived);
        }
        let default = match verb.as_str() {
            "EHLO" => {
                let mut lines = vec!["250-upstream.test".to_string()];
                lines.extend(extensions.iter().map(|e| format!("250-{e}")));
                let last = lines.pop().unwrap().replacen("250-", "250 ", 1);
                lines.push(last);
                lines.join("\r\n")
            }
            "HELO" => "250 upstream.test".into(),
            "XCLIENT" => "220 upstream.test ESMTP after XCLIENT".into(),
            "MAIL" => "250 2.1.0 Sender ok".into(),
            "RCPT" => "250 2.1.5 Recipient ok".into(),
            "DATA" => "354 End data with <CR><LF>.<CR><LF>".into(),
            "RSET" | "NOOP" => "250 2.0.0 Ok".into(),
            "VRFY" => "252 2.0.0 upstream says maybe".into(),
            "QUIT" => {
                send(&mut writer, "221 2.0.0 Bye");
                return;
            }
            _ => "502 5.5.2 Error: command not recognized".into(),
        };
        let action = script(&line);
        if !act(action, &mut writer, &default) {
            return;
        }
        if verb == "DATA" && default.starts_with("354") {
            if !act(script("<data>"), &mut writer, "") {
                return;
            }
            let Some(message) = reader.message() else {
                return;
            };
            recorded.lock().unwrap().messages.push(message);
            queue += 1;
            if !act(
                script("."),
                &mut writer,
                &format!("250 2.0.0 Ok: queued as Q{queue}"),
            ) {
                return;
            }
        }
    }
}

/// Performs an action; false if the connection should end.
fn act(action: Action, writer: &mut TcpStream, default: &str) -> bool {
    let text = match action {
        Action::Default => default.to_string(),
        Action::Reply(text) => text,
        Action::Drop => {
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return false;
        }
        Action::Delay(duration) => {
            thread::sleep(duration);
            default.to_string()
        }
    };
    text.is_empty() || writer.write_all(format!("{text}\r\n").as_bytes()).is_ok()
}

struct RecordingReader<'a> {
    stream: TcpStream,
    recorded: &'a Mutex<Recorded>,
    buffer: Vec<u8>,
}

impl RecordingReader<'_> {
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.recorded
                    .lock()
                    .unwrap()
                    .raw
                    .extend_from_slice(&chunk[..n]);
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Consumes a PROXY v1 line or v2 block; false if there is none.
    fn skip_proxy_header(&mut self) -> bool {
        const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
        if self.buffer.is_empty() && !self.fill() {
            return false;
        }
        if self.buffer[0] == b'P' {
            return self.line().is_some_and(|line| line.starts_with("PROXY "));
        }
        while self.buffer.len() < 16 {
            if !self.fill() {
                return false;
            }
        }
        if self.buffer.starts_with(V2) {
            let length = 16 + usize::from(u16::from_be_bytes([self.buffer[14], self.buffer[15]]));
            while self.buffer.len() < length {
                if !self.fill() {
                    return false;
                }
            }
            self.buffer.drain(..length);
            return true;
        }
        self.line().is_some_and(|line| line.starts_with("PROXY "))
    }

    fn drain_available(&mut self) {
        self.stream.set_nonblocking(true).unwrap();
        while self.fill() {}
        self.stream.set_nonblocking(false).unwrap();
    }

    fn pending_lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.buffer)
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(line) = take_line(&mut self.buffer) {
                return Some(String::from_utf8_lossy(&line[..line.len() - 2]).into_owned());
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Reads up to and including CRLF.CRLF (or ".CRLF" at the very start).
    fn message(&mut self) -> Option<Vec<u8>> {
        let mut searched = 0;
        loop {
            if self.buffer.starts_with(b".\r\n") {
                return Some(self.buffer.drain(..3).collect());
            }
            if let Some(at) = self.buffer[searched..]
                .windows(5)
                .position(|w| w == b"\r\n.\r\n")
            {
                let end = searched + at + 5;
                return Some(self.buffer.drain(..end).collect());
            }
            searched = self.buffer.len().saturating_sub(4);
            if !self.fill() {
                return None;
            }
        }
    }
}

/// Takes the first CRLF-terminated line (CRLF included) out of `buffer`, if complete.
pub fn take_line(buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let at = buffer.windows(2).position(|w| w == b"\r\n")?;
    Some(buffer.drain(..at + 2).collect())
}
