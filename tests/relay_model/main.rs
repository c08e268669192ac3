//! Randomised sessions through the real proxy, against an upstream that fails at
//! random steps, checked against what each side can predict of the other.
//!
//! The upstream's behaviour at every step is a pure function of the seed and of the
//! step (a command line carries a tag unique to its transaction: `s7`, `r7.2`), so the
//! client knows what the upstream would answer to each of its commands. It checks:
//!
//! - every command gets exactly one reply, in order, until a 421 (after which the
//!   connection closes) or the 221 to QUIT;
//! - a positive reply (2xx, 3xx) is exactly the upstream's reply to that very command,
//!   every line of it — the proxy never invents one (but its own 354 when a plugin
//!   spools the message) nor hands one to the wrong command, and a reply naming a tag
//!   names the command's own; a 3xx never answers MAIL or RCPT, nor a 2xx DATA,
//!   whatever the upstream sent;
//! - the commands a client pipelined behind a MAIL the upstream failed do not count as
//!   its errors (a careful client is never cut off for the upstream's faults);
//! - the reply to a final dot that says "queued" carries the hash of the content the
//!   upstream received, so it proves the content arrived unchanged;
//! - nothing lost, nothing hidden: the messages the upstream accepted are exactly the
//!   ones whose acceptance reached the client (except those it accepted after the
//!   proxy had stopped waiting, which a real MTA may deliver twice, RFC 1047).
//!
//! A failure prints its seed; `PORTCULLIS_MODEL_SEED=N` replays one.

#[path = "../common/mod.rs"]
mod common;
mod upstream;

use std::{collections::BTreeSet, thread};

use common::{Client, ClientReply, Proxy, component};
use upstream::{Accepted, ModelUpstream, SLOW, data_reply, dot_reply, envelope_reply, fnv, tag_of};

/// How long the proxy waits for each upstream reply in these tests.
const UPSTREAM_TIMEOUT: &str = "300ms";
/// Client sessions per configuration and seed.
const SESSIONS: u64 = 20;

/// A small deterministic generator for the client's choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One client transaction.
struct Transaction {
    tag: String,
    recipients: Vec<String>,
    /// The content lines (without CRLF); a bare LF in one makes the message invalid.
    lines: Vec<Vec<u8>>,
}

impl Transaction {
    fn new(rng: &mut Rng, number: u64) -> Transaction {
        let tag = format!("s{number}");
        let recipients = (0..1 + rng.below(3))
            .map(|k| format!("r{number}.{k}"))
            .collect();
        let mut lines = vec![format!("Subject: {tag}").into_bytes(), Vec::new()];
        for _ in 0..rng.below(12) {
            lines.push(match rng.below(10) {
                0 => b".".to_vec(),
                1 => b"..".to_vec(),
                2 => b".leading dot".to_vec(),
                3 => Vec::new(),
                4 => "eight bit: ü é".as_bytes().to_vec(),
                5 => vec![b'x'; 998],
                6 if rng.chance(20) => b"bare\nline feed".to_vec(),
                _ => format!("line {} of {tag}", rng.below(1000)).into_bytes(),
            });
        }
        Transaction {
            tag,
            recipients,
            lines,
        }
    }

    fn valid(&self) -> bool {
        !self.lines.iter().any(|line| line.contains(&b'\n'))
    }

    /// The content the upstream should receive (lines with CRLF, dots as meant).
    fn content(&self) -> Vec<u8> {
        let mut content = Vec::new();
        for line in &self.lines {
            content.extend_from_slice(line);
            content.extend_from_slice(b"\r\n");
        }
        content
    }

    /// The dot-stuffed wire form, terminator included.
    fn wire(&self) -> Vec<u8> {
        let mut wire = Vec::new();
        for line in &self.lines {
            if line.first() == Some(&b'.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(line);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        wire
    }

    fn commands(&self) -> Vec<String> {
        let mut commands = vec![format!("MAIL FROM:<{}@model.test>", self.tag)];
        commands.extend(
            self.recipients
                .iter()
                .map(|r| format!("RCPT TO:<{r}@model.test>")),
        );
        commands
    }
}

/// How a client session checks each reply, and what it saw accepted.
struct Checker<'a> {
    seed: u64,
    /// The proxy answers 354 itself (a plugin wants the message).
    spooled: bool,
    acknowledged: &'a mut BTreeSet<Accepted>,
    context: String,
}

impl Checker<'_> {
    /// Checks the reply to a MAIL or RCPT line.
    fn envelope(&self, line: &str, reply: &ClientReply) {
        assert_ne!(
            reply.code / 100,
            3,
            "{}: a 3xx reached the client for {line}: {reply:?}",
            self.context
        );
        let expected = envelope_reply(self.seed, line);
        self.must_be_the_upstreams(line, reply, expected.as_deref());
        self.names_only_its_own_tag(reply, tag_of(line));
    }

    fn data(&self, tag: &str, reply: &ClientReply) {
        assert_ne!(
            reply.code / 100,
            2,
            "{}: a 2xx to DATA reads as the message's acceptance: {reply:?}",
            self.context
        );
        if !(self.spooled && reply.code == 354) {
            self.must_be_the_upstreams("DATA", reply, data_reply(self.seed, tag).as_deref());
        }
        self.names_only_its_own_tag(reply, tag);
    }

    fn dot(&mut self, transaction: &Transaction, reply: &ClientReply) {
        let hash = fnv(0, &transaction.content());
        // When the proxy spools, the upstream sees DATA only after the client's dot,
        // and a refusal of that DATA is the reply to the dot.
        let expected = match data_reply(self.seed, &transaction.tag) {
            Some(refusal) if self.spooled && refusal.starts_with(['4', '5']) => Some(refusal),
            _ => dot_reply(self.seed, &transaction.tag, hash),
        };
        self.must_be_the_upstreams("the final dot", reply, expected.as_deref());
        self.names_only_its_own_tag(reply, &transaction.tag);
        if !transaction.valid() {
            assert!(
                reply.code >= 500,
                "{}: an invalid message got {reply:?}",
                self.context
            );
        }
        if reply.code / 100 == 2 {
            self.acknowledged.insert(Accepted {
                tag: transaction.tag.clone(),
                hash,
            });
        }
    }

    /// A positive reply, or a 421 (which ends the session), must be the upstream's:
    /// nothing makes the proxy close on a careful client by itself here.
    fn must_be_the_upstreams(&self, command: &str, reply: &ClientReply, upstream: Option<&str>) {
        if reply.code < 400 || reply.code == 421 {
            assert_eq!(
                Some(reply.lines.join("\r\n").as_str()),
                upstream,
                "{}: a reply to {command} that is not the upstream's",
                self.context
            );
        }
    }

    fn names_only_its_own_tag(&self, reply: &ClientReply, tag: &str) {
        let text = reply.text();
        for word in text.split([' ', '\n']) {
            let is_tag = (word.starts_with('s') || word.starts_with('r'))
                && word.len() > 1
                && word[1..].chars().all(|c| c.is_ascii_digit() || c == '.');
            assert!(
                !is_tag || word == tag,
                "{}: the reply for {tag} names {word}: {reply:?}",
                self.context
            );
        }
    }
}

/// How a transaction ended for the client.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The final dot was answered: the transaction is over either way.
    Finished,
    /// It stopped before the dot (a refused MAIL, RCPT or DATA): RSET is due.
    Unfinished,
    /// The proxy said 421 and must close the connection.
    Closed,
}

/// One client session of one to three transactions, as a careful client runs them.
fn client_session(proxy: &Proxy, rng: &mut Rng, next_tag: &mut u64, checker: &mut Checker) {
    let mut client = Client::connect(proxy.address);
    assert_eq!(client.read_reply().code, 220, "{}", checker.context);
    let ehlo = client.command("EHLO client.model.test");
    assert_eq!(ehlo.code, 250, "{}", checker.context);
    let pipelining = ehlo.lines.iter().any(|l| l.ends_with("PIPELINING"));
    for _ in 0..1 + rng.below(3) {
        *next_tag += 1;
        let transaction = Transaction::new(rng, *next_tag);
        let pipelined = pipelining && rng.chance(50);
        match run_transaction(&mut client, &transaction, pipelined, checker) {
            Outcome::Closed => {
                assert!(
                    client.is_closed(),
                    "{}: 421 but still open",
                    checker.context
                );
                return;
            }
            Outcome::Unfinished => command(&mut client, "RSET", 250, checker),
            Outcome::Finished if rng.chance(20) => command(&mut client, "RSET", 250, checker),
            Outcome::Finished => {}
        }
        if rng.chance(20) {
            command(&mut client, "NOOP", 250, checker);
        }
    }
    command(&mut client, "QUIT", 221, checker);
}

/// Sends a command the proxy answers itself and checks the code.
fn command(client: &mut Client, line: &str, code: u16, checker: &Checker) {
    assert!(
        client.try_send(format!("{line}\r\n").as_bytes()),
        "{}: closed before {line}",
        checker.context
    );
    let reply = client
        .try_read_reply()
        .unwrap_or_else(|| panic!("{}: closed instead of answering {line}", checker.context));
    assert_eq!(reply.code, code, "{}: {line} -> {reply:?}", checker.context);
}

/// MAIL, RCPTs, DATA and the message: pipelined in one write, or one at a time, each
/// only if what it needs was accepted.
fn run_transaction(
    client: &mut Client,
    transaction: &Transaction,
    pipelined: bool,
    checker: &mut Checker,
) -> Outcome {
    let mut commands = transaction.commands();
    commands.push("DATA".to_string());
    if pipelined {
        client.send(format!("{}\r\n", commands.join("\r\n")).as_bytes());
    }
    let (mut mail_ok, mut rcpt_ok) = (false, false);
    for command in &commands {
        let is_mail = command.starts_with("MAIL");
        if !pipelined {
            let needed = if command == "DATA" { rcpt_ok } else { mail_ok };
            if !is_mail && !needed {
                return Outcome::Unfinished;
            }
            client.send(format!("{command}\r\n").as_bytes());
        }
        let Some(reply) = client.try_read_reply() else {
            panic!("{}: closed without a reply to {command}", checker.context);
        };
        if command == "DATA" {
            checker.data(&transaction.tag, &reply);
        } else {
            checker.envelope(command, &reply);
        }
        if reply.code == 421 {
            return Outcome::Closed;
        }
        mail_ok |= is_mail && reply.code == 250;
        rcpt_ok |= command.starts_with("RCPT") && reply.code == 250;
        if command == "DATA" && reply.code == 354 {
            assert!(rcpt_ok, "{}: 354 without an accepted RCPT", checker.context);
            client.send(&transaction.wire());
            let Some(reply) = client.try_read_reply() else {
                panic!("{}: closed without a reply to the dot", checker.context);
            };
            checker.dot(transaction, &reply);
            return if reply.code == 421 {
                Outcome::Closed
            } else {
                Outcome::Finished
            };
        }
    }
    Outcome::Unfinished
}

/// One proxy configuration under test.
struct Variant {
    name: &'static str,
    /// What the upstream offers besides SIZE, 8BITMIME and ENHANCEDSTATUSCODES.
    extensions: &'static [&'static str],
    /// Keys of the `[[listener]]` table.
    listener: &'static str,
    /// More keys of the `[upstream]` table.
    upstream: &'static str,
}

/// Runs `SESSIONS` client sessions through a proxy configured as `variant`, in front
/// of a model upstream, and checks that what the upstream accepted is what the
/// clients were told.
fn run_model(seed: u64, variant: &Variant) {
    let upstream = ModelUpstream::start(seed, variant.extensions);
    let t = UPSTREAM_TIMEOUT;
    let spooled = variant.listener.contains("plugins");
    let plugins = if spooled {
        plugin_tables()
    } else {
        String::new()
    };
    let proxy = Proxy::start_logging(
        &format!(
            "{}\n[upstream]\naddress = \"{}\"\n{}\n[upstream.timeouts]\nconnect = \"2s\"\ngreeting = \"{t}\"\ncommand = \"{t}\"\ndata_init = \"{t}\"\ndata_block = \"2s\"\ndata_termination = \"{t}\"\n{plugins}",
            variant.listener, upstream.address, variant.upstream,
        ),
        "info",
    );
    let name = variant.name;
    let mut rng = Rng(fnv(seed, name.as_bytes()) | 1);
    let mut acknowledged = BTreeSet::new();
    let mut next_tag = 0;
    for session in 0..SESSIONS {
        let mut checker = Checker {
            seed,
            spooled,
            acknowledged: &mut acknowledged,
            context: format!(
                "{name}, seed {seed} (PORTCULLIS_MODEL_SEED={seed}), session {session}"
            ),
        };
        client_session(&proxy, &mut rng, &mut next_tag, &mut checker);
    }
    // A slow upstream may still be writing its late acceptances.
    thread::sleep(SLOW);
    let accepted = upstream.accepted.lock().unwrap().clone();
    let late = upstream.late.lock().unwrap().clone();
    let lost: Vec<_> = acknowledged.difference(&accepted).collect();
    let hidden: Vec<_> = accepted.difference(&acknowledged).collect();
    assert!(
        lost.iter().all(|a| late.contains(a)) && hidden.is_empty(),
        "{name}, seed {seed}: told the client but not accepted upstream: {lost:?}; accepted upstream but not told: {hidden:?}"
    );
    assert!(
        !acknowledged.is_empty(),
        "{name}, seed {seed}: no message got through, so nothing was checked"
    );
}

/// The plugin a spooled listener names: it wants DATA and changes nothing.
fn plugin_tables() -> String {
    format!(
        "[plugins.watch]\npath = \"{}\"\nconfig = {{ mode = \"ok\", stage = \"data\" }}\n",
        component("fault-plugin").display()
    )
}

fn seeds() -> Vec<u64> {
    match std::env::var("PORTCULLIS_MODEL_SEED") {
        Ok(seed) => vec![seed.parse().expect("PORTCULLIS_MODEL_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    }
}

#[test]
fn streamed_data_through_a_pipelining_upstream() {
    let variant = Variant {
        name: "streamed, pipelining upstream",
        extensions: &["PIPELINING"],
        listener: "",
        upstream: "client_address = \"none\"",
    };
    for seed in seeds() {
        run_model(seed, &variant);
    }
}

#[test]
fn streamed_data_through_a_lock_step_upstream_kept_for_reuse() {
    let variant = Variant {
        name: "streamed, lock-step upstream, reuse",
        extensions: &[],
        listener: "",
        upstream: "client_address = \"none\"\nreuse = { idle_timeout = \"5s\" }",
    };
    for seed in seeds() {
        run_model(seed, &variant);
    }
}

#[test]
fn spooled_data_for_a_plugin() {
    let variant = Variant {
        name: "spooled",
        extensions: &["PIPELINING"],
        listener: "plugins = [\"watch\"]",
        upstream: "client_address = \"none\"",
    };
    for seed in seeds() {
        run_model(seed, &variant);
    }
}

#[test]
fn streamed_data_with_xclient() {
    let variant = Variant {
        name: "streamed, XCLIENT",
        extensions: &["PIPELINING", "XCLIENT ADDR PORT NAME HELO PROTO LOGIN"],
        listener: "",
        upstream: "client_address = \"xclient\"",
    };
    for seed in seeds() {
        run_model(seed, &variant);
    }
}
