//! The model upstream: an SMTP server whose every step (greeting, EHLO, each MAIL and
//! RCPT line, DATA, the final dot, RSET) is answered or failed as a pure function of
//! the seed and of the step, so the client side of the test can predict it. It
//! records the messages it accepted, with a hash of their content.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use crate::common::{WAIT, take_line};

/// How long a slow upstream step takes: past the proxy's timeout.
pub const SLOW: Duration = Duration::from_millis(600);

/// FNV-1a over `bytes`, starting from `seed`.
pub fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// What the upstream does at one step instead of its normal reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Tempfail,
    Reject,
    /// 421 and close.
    Closing,
    /// Close without a reply.
    Drop,
    /// The normal reply, after the proxy has stopped waiting.
    Slow,
    /// A line that is no SMTP reply.
    Garbage,
    /// A code the command cannot have (250 to DATA, 354 to MAIL or to the dot).
    Impossible,
}

fn fault_at(seed: u64, step: &str) -> Fault {
    match fnv(seed, step.as_bytes()) % 100 {
        0..=81 => Fault::None,
        82..=84 => Fault::Tempfail,
        85..=87 => Fault::Reject,
        88..=89 => Fault::Closing,
        90..=91 => Fault::Drop,
        92 => Fault::Slow,
        93..=95 => Fault::Garbage,
        _ => Fault::Impossible,
    }
}

/// The tag of a MAIL or RCPT line: the local part of its address (`s7`, `r7.2`).
pub fn tag_of(line: &str) -> &str {
    line.split_once('<')
        .and_then(|(_, rest)| rest.split_once('@'))
        .map_or("", |(local, _)| local)
}

/// The upstream's normal positive reply at a step: sometimes multi-line, so that the
/// client can check every line arrived.
fn normal_reply(seed: u64, step: &str, code: &str, text: &str) -> String {
    if fnv(seed ^ 1, step.as_bytes()).is_multiple_of(4) {
        format!("{code}-first line for {text}\r\n{code} {text}")
    } else {
        format!("{code} {text}")
    }
}

/// What the upstream answers to a MAIL or RCPT line (`None`: it closes silently).
/// The client calls this too, to know what a relayed reply must be.
pub fn envelope_reply(seed: u64, line: &str) -> Option<String> {
    let tag = tag_of(line);
    let (code, text) = if line.starts_with("MAIL") {
        ("250", format!("2.1.0 sender ok {tag}"))
    } else {
        ("250", format!("2.1.5 recipient ok {tag}"))
    };
    step_reply(
        seed,
        line,
        tag,
        &normal_reply(seed, line, code, &text),
        "354 go on",
    )
}

/// The reply for a step given its normal one and its impossible one.
fn step_reply(seed: u64, step: &str, tag: &str, normal: &str, impossible: &str) -> Option<String> {
    Some(match fault_at(seed, step) {
        Fault::None | Fault::Slow => normal.to_string(),
        Fault::Tempfail => format!("451 4.3.0 try later {tag}"),
        Fault::Reject => format!("550 5.7.1 refused {tag}"),
        Fault::Closing => format!("421 4.3.2 closing {tag}"),
        Fault::Drop => return None,
        Fault::Garbage => "this is no reply".to_string(),
        Fault::Impossible => impossible.to_string(),
    })
}

/// The reply to DATA for the transaction of sender `tag`.
pub fn data_reply(seed: u64, tag: &str) -> Option<String> {
    let step = format!("DATA {tag}");
    let normal = normal_reply(seed, &step, "354", &format!("send it {tag}"));
    step_reply(seed, &step, tag, &normal, &format!("250 2.0.0 fine {tag}"))
}

/// The reply to the final dot, for content whose hash is `hash`.
pub fn dot_reply(seed: u64, tag: &str, hash: u64) -> Option<String> {
    let step = format!(". {tag}");
    let normal = normal_reply(
        seed,
        &step,
        "250",
        &format!("2.0.0 queued {tag} {hash:016x}"),
    );
    step_reply(seed, &step, tag, &normal, &format!("354 more {tag}"))
}

/// A message the upstream accepted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Accepted {
    pub tag: String,
    pub hash: u64,
}

/// The upstream: faults as [`fault_at`] decides, acceptances recorded.
pub struct ModelUpstream {
    pub address: SocketAddr,
    /// Accepted in time.
    pub accepted: Arc<Mutex<BTreeSet<Accepted>>>,
    /// Accepted after a slow reply (the proxy may have given up).
    pub late: Arc<Mutex<BTreeSet<Accepted>>>,
}

impl ModelUpstream {
    /// An upstream that offers `extensions` besides SIZE, 8BITMIME and
    /// ENHANCEDSTATUSCODES.
    pub fn start(seed: u64, extensions: &'static [&'static str]) -> ModelUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let accepted: Arc<Mutex<BTreeSet<Accepted>>> = Arc::default();
        let late: Arc<Mutex<BTreeSet<Accepted>>> = Arc::default();
        let (in_time, after) = (accepted.clone(), late.clone());
        let connections = Arc::new(AtomicU64::new(0));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let number = connections.fetch_add(1, Ordering::Relaxed);
                let mut connection = UpstreamConnection {
                    seed,
                    number,
                    extensions,
                    ehlos: 0,
                    stream,
                    buffer: Vec::new(),
                    sender: String::new(),
                    accepted: in_time.clone(),
                    late: after.clone(),
                };
                thread::spawn(move || connection.serve());
            }
        });
        ModelUpstream {
            address,
            accepted,
            late,
        }
    }
}

struct UpstreamConnection {
    seed: u64,
    number: u64,
    extensions: &'static [&'static str],
    /// EHLOs so far (XCLIENT asks for a second one).
    ehlos: u32,
    stream: TcpStream,
    buffer: Vec<u8>,
    /// The tag of the current transaction's sender.
    sender: String,
    accepted: Arc<Mutex<BTreeSet<Accepted>>>,
    late: Arc<Mutex<BTreeSet<Accepted>>>,
}

impl UpstreamConnection {
    fn serve(&mut self) {
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
        let step = format!("greeting {}", self.number);
        let greeting = step_reply(self.seed, &step, "", "220 model.test ESMTP", "250 hello");
        if !self.answer(&step, greeting) {
            return;
        }
        while let Some(line) = self.line() {
            if !self.command(&line) {
                return;
            }
        }
    }

    /// Answers one command; false when the connection is over.
    fn command(&mut self, line: &str) -> bool {
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                self.ehlos += 1;
                let step = format!("ehlo {} {}", self.number, self.ehlos);
                let mut lines = vec!["250-model.test".to_string()];
                for extension in ["SIZE 104857600", "8BITMIME"].iter().chain(self.extensions) {
                    lines.push(format!("250-{extension}"));
                }
                lines.push("250 ENHANCEDSTATUSCODES".into());
                let reply = step_reply(self.seed, &step, "", &lines.join("\r\n"), "354 what");
                self.answer(&step, reply)
            }
            "XCLIENT" => {
                let step = format!("xclient {}", self.number);
                let reply = step_reply(self.seed, &step, "", "220 model.test ESMTP", "250 ok");
                self.answer(&step, reply)
            }
            "HELO" => {
                let step = format!("helo {}", self.number);
                let reply = step_reply(self.seed, &step, "", "250 model.test", "354 what");
                self.answer(&step, reply)
            }
            "MAIL" => {
                self.sender = tag_of(line).to_string();
                self.answer(line, envelope_reply(self.seed, line))
            }
            "RCPT" => self.answer(line, envelope_reply(self.seed, line)),
            "DATA" => self.data(),
            "RSET" => {
                let step = format!("RSET {} {}", self.number, self.sender);
                let reply = step_reply(self.seed, &step, "", "250 2.0.0 reset", "354 what");
                self.answer(&step, reply)
            }
            "QUIT" => {
                self.send("221 2.0.0 bye");
                false
            }
            _ => self.send("502 5.5.2 not here"),
        }
    }

    /// DATA, the message and the reply to its final dot.
    fn data(&mut self) -> bool {
        let tag = self.sender.clone();
        let step = format!("DATA {tag}");
        let reply = data_reply(self.seed, &tag);
        let starts_message = reply.as_deref().is_some_and(|r| r.starts_with("354"));
        if !self.answer(&step, reply) {
            return false;
        }
        if !starts_message {
            return true;
        }
        if fault_at(self.seed, &format!("body {tag}")) == Fault::Drop {
            // Gone in the middle of the message.
            let mut some = [0u8; 100];
            let _ = self.stream.read(&mut some);
            return false;
        }
        let Some(content) = self.message() else {
            return false;
        };
        let hash = fnv(0, &content);
        let step = format!(". {tag}");
        let reply = dot_reply(self.seed, &tag, hash);
        let queued = reply.as_deref().is_some_and(|r| r.contains(" queued "));
        let slow = fault_at(self.seed, &step) == Fault::Slow;
        let answered = self.answer(&step, reply);
        if queued && answered {
            let record = if slow { &self.late } else { &self.accepted };
            record.lock().unwrap().insert(Accepted { tag, hash });
        }
        answered
    }

    /// Sends `reply` as the fault of `step` says (slowly, or closing after it);
    /// false when the connection is over.
    fn answer(&mut self, step: &str, reply: Option<String>) -> bool {
        let Some(reply) = reply else {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
            return false;
        };
        if fault_at(self.seed, step) == Fault::Slow {
            thread::sleep(SLOW);
        }
        self.send(&reply) && !reply.starts_with("421")
    }

    fn send(&mut self, reply: &str) -> bool {
        self.stream
            .write_all(format!("{reply}\r\n").as_bytes())
            .is_ok()
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next line, CRLF included.
    fn raw_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(line) = take_line(&mut self.buffer) {
                return Some(line);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn line(&mut self) -> Option<String> {
        let line = self.raw_line()?;
        Some(String::from_utf8_lossy(&line[..line.len() - 2]).into_owned())
    }

    /// The message up to its final dot, un-stuffed: the content as the client meant it.
    fn message(&mut self) -> Option<Vec<u8>> {
        let mut content = Vec::new();
        loop {
            let line = self.raw_line()?;
            if line == b".\r\n" {
                return Some(content);
            }
            content.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
        }
    }
}
