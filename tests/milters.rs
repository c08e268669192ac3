//! Milters in the chain, against the real ones sites run (Debian's OpenDKIM and
//! rspamd) and against milters that misbehave on purpose: down, silent, or answering
//! garbage or forbidden edits.

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use common::{Client, Proxy, RecordingUpstream, closed_port, require_program};

/// A message as a client sends it: a folded header, a line that needs dot-stuffing.
const MESSAGE: &[u8] = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: a subject\r\n  folded onto a second line\r\nDate: Sat, 05 Dec 2026 03:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n\r\nHello Bob.\r\n..a line that starts with a dot\r\n.\r\n";

const GTUBE: &[u8] = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: spam\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n.\r\n";

/// A free loopback port.
fn free_port() -> u16 {
    closed_port().rsplit_once(':').unwrap().1.parse().unwrap()
}

fn wait_for_port(port: u16, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A daemon started in a process group of its own, which is killed whole when this
/// is dropped: rspamd's workers would outlive their main process otherwise.
struct Running(Child);

impl Running {
    fn spawn(command: &mut Command) -> Running {
        use std::os::unix::process::CommandExt;
        Running(command.process_group(0).spawn().expect("start the daemon"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// Debian's OpenDKIM, signing for example.com with a key made for the test.
struct OpenDkim {
    port: u16,
    dir: tempfile::TempDir,
    _process: Running,
}

impl OpenDkim {
    fn start(canonicalization: &str) -> Option<OpenDkim> {
        if !require_program("opendkim") || !require_program("opendkim-genkey") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("opendkim-genkey")
            .args(["-d", "example.com", "-s", "test", "-D"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "opendkim-genkey failed");
        let port = free_port();
        let config = dir.path().join("opendkim.conf");
        std::fs::write(
            &config,
            format!(
                "Syslog no\nMode sv\nDomain example.com\nSelector test\nKeyFile {}\n\
                 Socket inet:{port}@127.0.0.1\nCanonicalization {canonicalization}\n\
                 InternalHosts 127.0.0.1\nRequireSafeKeys no\nPidFile {}\n",
                dir.path().join("test.private").display(),
                dir.path().join("opendkim.pid").display(),
            ),
        )
        .unwrap();
        let process = Running::spawn(
            Command::new("opendkim")
                .arg("-f")
                .arg("-x")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_for_port(port, Duration::from_secs(20), "opendkim");
        Some(OpenDkim {
            port,
            dir,
            _process: process,
        })
    }

    /// The public key's TXT record, as DNS would serve it.
    fn key_record(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("test.txt")).unwrap();
        text.split('"').skip(1).step_by(2).collect()
    }
}

/// Verifies `message` with Python's `dkim` module (python3-dkim), an implementation
/// independent of OpenDKIM's, serving `record` for test._domainkey.example.com.
fn verified_by_dkimpy(message: &[u8], record: &str) -> bool {
    const SCRIPT: &str = r#"
import sys, dkim
record = sys.argv[1].encode()
def dns(name, timeout=5):
    return record if name == b"test._domainkey.example.com." else None
print(dkim.verify(sys.stdin.buffer.read(), dnsfunc=dns))
"#;
    // Debian's python3 (where python3-dkim is), not one a version manager put first.
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT, record])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3");
    child.stdin.take().unwrap().write_all(message).unwrap();
    let output = child.wait_with_output().unwrap();
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        answer == "True" || answer == "False",
        "the verifier did not answer: {answer:?} (is python3-dkim installed?)"
    );
    answer == "True"
}

/// The message as the upstream got it, without the dot-stuffing and terminator.
fn unstuffed(wire: &[u8]) -> Vec<u8> {
    let body = wire.strip_suffix(b".\r\n").unwrap_or(wire);
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

fn proxy_with(upstream: &RecordingUpstream, chain: &[&str], milters: &str) -> Proxy {
    let chain: Vec<String> = chain.iter().map(|m| format!("{m:?}")).collect();
    Proxy::start_with(&format!(
        "plugins = [{}]\n\n{milters}\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n",
        chain.join(", "),
        upstream.address()
    ))
}

#[test]
fn opendkim_signs_what_passes_and_an_independent_verifier_accepts_it() {
    for canonicalization in ["simple/simple", "relaxed/relaxed"] {
        let Some(dkim) = OpenDkim::start(canonicalization) else {
            return;
        };
        let upstream = RecordingUpstream::start();
        let proxy = proxy_with(
            &upstream,
            &["dkim"],
            &format!(
                "[milters.dkim]\naddress = \"inet:127.0.0.1:{}\"\n",
                dkim.port
            ),
        );
        let mut client = proxy.client();
        client.expect("EHLO client.example", 250);
        let reply = client.send_message("alice@example.com", &["bob@example.org"], MESSAGE);
        assert_eq!(reply.code, 250, "{reply:?}");
        client.expect("QUIT", 221);
        let delivered = unstuffed(&upstream.wait_messages(1)[0]);
        let text = String::from_utf8_lossy(&delivered);
        assert!(
            text.starts_with("DKIM-Signature: v=1;"),
            "no signature first: {text}"
        );
        assert!(text.contains(&format!("c={canonicalization};")), "{text}");
        // Everything the client sent is there, byte for byte, after the signature.
        let sent = unstuffed(MESSAGE);
        assert!(delivered.ends_with(&sent), "{text}");
        let record = dkim.key_record();
        assert!(
            verified_by_dkimpy(&delivered, &record),
            "{canonicalization}: dkimpy refused the signature:\n{text}"
        );
        let tampered = String::from_utf8_lossy(&delivered).replace("Hello Bob", "Hello Bop");
        assert!(!verified_by_dkimpy(tampered.as_bytes(), &record));
    }
}

/// Debian's rspamd with its proxy worker in milter mode (self-scan), its headers on.
struct Rspamd {
    port: u16,
    _dir: tempfile::TempDir,
    _process: Running,
}

impl Rspamd {
    fn start() -> Option<Rspamd> {
        if !require_program("rspamd") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (port, controller) = (free_port(), free_port());
        let local = dir.path().join("local.d");
        std::fs::create_dir_all(&local).unwrap();
        let files = [
            (
                "worker-proxy.inc",
                format!(
                    "bind_socket = \"127.0.0.1:{port}\";\nmilter = yes;\ntimeout = 60s;\ncount = 1;\n\
                     upstream \"local\" {{ default = yes; self_scan = yes; }}\n"
                ),
            ),
            ("worker-normal.inc", "enabled = false;\n".into()),
            ("worker-fuzzy.inc", "enabled = false;\n".into()),
            (
                "worker-controller.inc",
                format!("bind_socket = \"127.0.0.1:{controller}\";\n"),
            ),
            (
                "logging.inc",
                "type = \"console\";\nlevel = \"warning\";\n".into(),
            ),
            // No network here: DNS answers nothing at once rather than timing out.
            (
                "options.inc",
                "dns { timeout = 0.2s; retransmits = 1; nameserver = [\"127.0.0.1:1\"]; }\n".into(),
            ),
            (
                "milter_headers.conf",
                "extended_spam_headers = true;\nskip_local = false;\nskip_authenticated = false;\n"
                    .into(),
            ),
        ];
        for (name, text) in files {
            std::fs::write(local.join(name), text).unwrap();
        }
        // Its compiled regular expressions are kept between runs (they take seconds).
        let db = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rspamd-db");
        std::fs::create_dir_all(&db).unwrap();
        let var = |name: &str, path: &Path| format!("--var={name}={}", path.display());
        let process = Running::spawn(
            Command::new("rspamd")
                .args([
                    "-f",
                    "-i",
                    "-u",
                    "root",
                    "-g",
                    "root",
                    "-c",
                    "/etc/rspamd/rspamd.conf",
                ])
                .arg(var("LOCAL_CONFDIR", dir.path()))
                .arg(var("DBDIR", &db))
                .arg(var("RUNDIR", dir.path()))
                .arg(var("LOGDIR", dir.path()))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_for_port(port, Duration::from_secs(90), "rspamd");
        Some(Rspamd {
            port,
            _dir: dir,
            _process: process,
        })
    }
}

#[test]
fn rspamd_refuses_gtube_with_its_own_reply_marks_clean_mail_and_only_logs_in_shadow() {
    let Some(rspamd) = Rspamd::start() else {
        return;
    };
    let upstream = RecordingUpstream::start();
    let milter = format!("address = \"inet:127.0.0.1:{}\"\n", rspamd.port);
    let proxy = proxy_with(
        &upstream,
        &["rspamd"],
        &format!("[milters.rspamd]\n{milter}"),
    );
    let mut client = proxy.client();
    client.expect("EHLO client.example", 250);
    let reply = client.send_message("alice@example.com", &["bob@example.org"], GTUBE);
    assert_eq!(reply.code, 554, "{reply:?}");
    assert!(reply.text().contains("5.7.1 Gtube pattern"), "{reply:?}");
    let reply = client.send_message("alice@example.com", &["bob@example.org"], MESSAGE);
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("QUIT", 221);
    let delivered = upstream.wait_messages(1);
    assert_eq!(delivered.len(), 1, "GTUBE must not reach the upstream");
    let text = String::from_utf8_lossy(&delivered[0]);
    assert!(text.contains("X-Rspamd-Action: no action"), "{text}");
    assert!(text.contains("X-Spamd-Result: default: False"), "{text}");
    assert!(text.contains("Hello Bob."), "{text}");

    // The same rspamd in shadow: GTUBE is delivered; what rspamd would have done
    // is logged and counted.
    let upstream = RecordingUpstream::start();
    let proxy = proxy_with(
        &upstream,
        &["rspamd"],
        &format!("[milters.rspamd]\n{milter}mode = \"shadow\"\n"),
    );
    let mut client = proxy.client();
    client.expect("EHLO client.example", 250);
    let reply = client.send_message("alice@example.com", &["bob@example.org"], GTUBE);
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("QUIT", 221);
    let delivered = upstream.wait_messages(1);
    let text = String::from_utf8_lossy(&delivered[0]);
    assert!(!text.contains("X-Rspamd"), "shadow edits applied: {text}");
    // The log reader may lag the reply: wait for the DATA stage's shadow line.
    let data_line = || {
        proxy
            .logs()
            .into_iter()
            .find(|l| l.contains("shadow plugin") && l.contains("\"hook\":\"data\""))
    };
    common::wait_until("the shadow line of the message", || data_line().is_some());
    let line = data_line().unwrap();
    assert!(line.contains("reject 554 5.7.1 Gtube pattern"), "{line}");
}

/// A milter written for these tests: it negotiates what it is told, answers continue
/// to every step it has to answer (or what `answers` says, in order, for a command),
/// writes down every packet it hears, and behaves as told at one point.
#[derive(Clone)]
enum Behaviour {
    /// Answers as scripted.
    Scripted,
    /// Answers nothing after the negotiation.
    Silent,
    /// Answers the connect with a packet no milter may send.
    Garbage,
    /// At the end of the message sends these packets (command octet and data),
    /// then continue.
    EndOfMessage(Vec<Packet>),
}

/// A milter's packet: its command octet and its data.
type Packet = (u8, Vec<u8>);

#[derive(Clone)]
struct Script {
    actions: u32,
    protocol: u32,
    /// Replies in place of continue: the first unused one for a command.
    answers: Vec<(u8, Packet)>,
    behaviour: Behaviour,
}

struct FakeMilter {
    port: u16,
    heard: Arc<Mutex<Vec<Packet>>>,
}

fn packet(command: u8, data: &[u8]) -> Vec<u8> {
    let mut out = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(command);
    out.extend_from_slice(data);
    out
}

fn read_packet(stream: &mut TcpStream) -> Option<Packet> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).ok()?;
    let mut data = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut data).ok()?;
    let command = *data.first()?;
    Some((command, data[1..].to_vec()))
}

impl FakeMilter {
    fn start(actions: u32, behaviour: Behaviour) -> FakeMilter {
        FakeMilter::scripted(Script {
            actions,
            protocol: 0,
            answers: Vec::new(),
            behaviour,
        })
    }

    fn scripted(script: Script) -> FakeMilter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let log = heard.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let (script, log) = (script.clone(), log.clone());
                thread::spawn(move || serve(&mut stream, script, &log));
            }
        });
        FakeMilter { port, heard }
    }

    /// The commands heard so far, macros left out.
    fn commands(&self) -> String {
        let heard = self.heard.lock().unwrap();
        heard
            .iter()
            .filter(|(c, _)| *c != b'D')
            .map(|(c, _)| char::from(*c))
            .collect()
    }

    /// The macros sent before `command`, as text (NULs shown as `=` and `;`).
    fn macros_before(&self, command: u8) -> String {
        let heard = self.heard.lock().unwrap();
        let packet = heard
            .iter()
            .find(|(c, data)| *c == b'D' && data.first() == Some(&command))
            .unwrap_or_else(|| panic!("no macros for {}", char::from(command)));
        let fields: Vec<String> = packet.1[1..]
            .split(|&b| b == 0)
            .map(|f| String::from_utf8_lossy(f).to_string())
            .collect();
        fields
            .chunks(2)
            .map(|pair| pair.join("="))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// Whether a milter that negotiated `protocol` answers `command`.
fn is_answered(protocol: u32, command: u8) -> bool {
    let no_reply = match command {
        b'C' => 0x1000,
        b'H' => 0x2000,
        b'M' => 0x4000,
        b'R' => 0x8000,
        b'T' => 0x10000,
        b'L' => 0x80,
        b'N' => 0x40000,
        b'B' => 0x80000,
        _ => 0,
    };
    protocol & no_reply == 0
}

fn serve(stream: &mut TcpStream, script: Script, heard: &Mutex<Vec<Packet>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answers = script.answers.clone();
    while let Some((command, data)) = read_packet(stream) {
        heard.lock().unwrap().push((command, data));
        let scripted = answers
            .iter()
            .position(|(on, _)| *on == command)
            .map(|i| answers.remove(i).1);
        let answer = match (command, &script.behaviour) {
            (b'O', _) => {
                let mut data = 6u32.to_be_bytes().to_vec();
                data.extend_from_slice(&script.actions.to_be_bytes());
                data.extend_from_slice(&script.protocol.to_be_bytes());
                packet(b'O', &data)
            }
            (b'D' | b'A', _) => continue,
            (b'Q', _) => return,
            (_, Behaviour::Silent) => continue,
            (b'C', Behaviour::Garbage) => packet(b'?', b"not a milter reply"),
            (b'E', Behaviour::EndOfMessage(packets)) => {
                let mut out: Vec<u8> = packets
                    .iter()
                    .flat_map(|(command, data)| packet(*command, data))
                    .collect();
                out.extend_from_slice(&packet(b'c', b""));
                out
            }
            _ if !is_answered(script.protocol, command) => continue,
            _ => match scripted {
                Some((reply, data)) => packet(reply, &data),
                None => packet(b'c', b""),
            },
        };
        if stream.write_all(&answer).is_err() {
            return;
        }
    }
}

#[test]
fn a_milter_hears_the_steps_it_negotiated_with_postfixs_macros() {
    let upstream = RecordingUpstream::start();
    // No HELO, no body; RCPT and header fields are not answered.
    let milter = FakeMilter::scripted(Script {
        actions: 0,
        protocol: 0x02 | 0x10 | 0x8000 | 0x80,
        answers: Vec::new(),
        behaviour: Behaviour::Scripted,
    });
    let proxy = proxy_with(
        &upstream,
        &["watch"],
        &format!(
            "[milters.watch]\naddress = \"inet:127.0.0.1:{}\"\n",
            milter.port
        ),
    );
    let mut client = proxy.client();
    client.expect("EHLO client.example", 250);
    let reply = client.send_message("alice@example.com", &["bob@example.org"], MESSAGE);
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("QUIT", 221);
    assert_eq!(upstream.wait_messages(1).len(), 1);
    common::wait_until("the milter heard QUIT", || milter.commands().ends_with('Q'));
    // Negotiation, connect, MAIL, RCPT, DATA, five header fields, their end, the end
    // of the message, QUIT: no HELO, no body.
    assert_eq!(milter.commands(), "OCMRTLLLLLNEQ");
    let connect = milter.macros_before(b'C');
    for expected in [
        "j=",
        "{daemon_name}=test",
        "{client_addr}=127.0.0.1",
        "{if_addr}=127.0.0.1",
        "_=unknown [127.0.0.1]",
    ] {
        assert!(connect.contains(expected), "{expected} in {connect}");
    }
    let mail = milter.macros_before(b'M');
    assert!(mail.contains("{mail_addr}=alice@example.com"), "{mail}");
    assert!(mail.contains("{mail_host}=example.com"), "{mail}");
    assert!(mail.contains("i="), "{mail}");
    let rcpt = milter.macros_before(b'R');
    assert!(rcpt.contains("{rcpt_addr}=bob@example.org"), "{rcpt}");
    // The header fields as Postfix sends them: the one leading space taken off, the
    // folding kept with LF.
    let heard = milter.heard.lock().unwrap();
    let subject = heard
        .iter()
        .find(|(c, d)| *c == b'L' && d.starts_with(b"Subject\0"))
        .unwrap();
    assert_eq!(
        subject.1,
        b"Subject\0a subject\n  folded onto a second line\0".to_vec()
    );
}

#[test]
fn a_milters_own_replies_and_its_discard_at_rcpt() {
    let upstream = RecordingUpstream::start();
    let milter = FakeMilter::scripted(Script {
        actions: 0,
        protocol: 0,
        answers: vec![
            (
                b'R',
                (b'y', b"451 4.7.1 Greylisted, come back later\0".to_vec()),
            ),
            (b'R', (b'c', Vec::new())),
            (b'R', (b'd', Vec::new())),
        ],
        behaviour: Behaviour::Scripted,
    });
    let proxy = proxy_with(
        &upstream,
        &["grey"],
        &format!(
            "[milters.grey]\naddress = \"inet:127.0.0.1:{}\"\n",
            milter.port
        ),
    );
    let mut client = proxy.client();
    client.expect("EHLO client.example", 250);
    client.expect("MAIL FROM:<alice@example.com>", 250);
    let reply = client.expect("RCPT TO:<bob@example.org>", 451);
    assert!(
        reply.text().contains("4.7.1 Greylisted, come back later"),
        "{reply:?}"
    );
    client.expect("RCPT TO:<carol@example.org>", 250);
    client.expect("DATA", 354);
    client.send(MESSAGE);
    assert_eq!(client.read_reply().code, 250);
    // The next message: the milter discards it at RCPT; the client hears 250 and
    // nothing goes upstream.
    client.expect("MAIL FROM:<alice@example.com>", 250);
    client.expect("RCPT TO:<dave@example.org>", 250);
    client.expect("DATA", 354);
    client.send(MESSAGE);
    assert_eq!(client.read_reply().code, 250);
    client.expect("QUIT", 221);
    common::wait_until("the milter heard QUIT", || milter.commands().ends_with('Q'));
    let delivered = upstream.wait_messages(1);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        upstream.messages().len(),
        1,
        "the discarded one went upstream"
    );
    assert_eq!(delivered.len(), 1);
    // The envelope went upstream in lock step; the message did not.
    let commands = upstream.all_commands();
    let dave = commands.iter().position(|c| c.contains("dave")).unwrap();
    assert_eq!(commands[dave + 1], "RSET", "{commands:?}");
    // The discarded message was aborted, not sent: MAIL, RCPT, then abort and QUIT.
    assert!(milter.commands().ends_with("MRAQ"), "{}", milter.commands());
}

#[test]
fn a_milter_that_is_down_silent_or_garbled_gets_its_default_action_and_others_carry_on() {
    let upstream = RecordingUpstream::start();
    let silent = FakeMilter::start(0, Behaviour::Silent);
    let garbage = FakeMilter::start(0, Behaviour::Garbage);
    let config = format!(
        "[[listener]]\nname = \"down-tempfail\"\naddress = \"127.0.0.1:0\"\nplugins = [\"down\"]\n\n\
         [[listener]]\nname = \"down-accept\"\naddress = \"127.0.0.1:0\"\nplugins = [\"down_accept\"]\n\n\
         [[listener]]\nname = \"silent\"\naddress = \"127.0.0.1:0\"\nplugins = [\"silent\"]\n\n\
         [[listener]]\nname = \"garbage\"\naddress = \"127.0.0.1:0\"\nplugins = [\"garbage\"]\n\n\
         [milters.down]\naddress = \"inet:{down}\"\n\n\
         [milters.down_accept]\naddress = \"inet:{down}\"\ndefault_action = \"accept\"\n\n\
         [milters.silent]\naddress = \"inet:127.0.0.1:{silent}\"\ncommand_timeout = \"300ms\"\ndefault_action = \"accept\"\n\n\
         [milters.garbage]\naddress = \"inet:127.0.0.1:{garbage}\"\ndefault_action = \"reject\"\n\n\
         [upstream]\naddress = \"{upstream}\"\nclient_address = \"none\"\n",
        down = closed_port(),
        silent = silent.port,
        garbage = garbage.port,
        upstream = upstream.address(),
    );
    let proxy = Proxy::start_with(&config);

    // Down, tempfail (the default): the client hears 451 in place of the greeting.
    let mut client = Client::connect_from_unread("127.0.0.1", proxy.listener("down-tempfail"));
    let reply = client.read_reply();
    assert_eq!(reply.code, 451, "{reply:?}");

    // While a silent milter holds one session, a session on the plain listener
    // goes through at once.
    let silent_address = proxy.listener("silent");
    let slow = thread::spawn(move || {
        let started = Instant::now();
        let mut client = Client::connect_from_unread("127.0.0.1", silent_address);
        let greeting = client.read_reply();
        (greeting.code, started.elapsed())
    });
    let started = Instant::now();
    let mut client = proxy.client();
    client.expect("EHLO client.example", 250);
    let reply = client.send_message("alice@example.com", &["bob@example.org"], MESSAGE);
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("QUIT", 221);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "another session waited on the silent milter"
    );
    // The silent milter's own session: its command timeout, then accept (carry on).
    let (code, took) = slow.join().unwrap();
    assert_eq!(code, 220);
    assert!(took >= Duration::from_millis(250), "{took:?}");

    // Down, accept: the message goes through without it.
    let mut client = Client::connect_from_unread("127.0.0.1", proxy.listener("down-accept"));
    assert_eq!(client.read_reply().code, 220);
    client.expect("EHLO client.example", 250);
    let reply = client.send_message("alice@example.com", &["bob@example.org"], MESSAGE);
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("QUIT", 221);

    // Garbage, reject: 550 in place of the greeting.
    let mut client = Client::connect_from_unread("127.0.0.1", proxy.listener("garbage"));
    let reply = client.read_reply();
    assert_eq!(reply.code, 550, "{reply:?}");

    assert_eq!(upstream.wait_messages(2).len(), 2);
    // Each failure is logged with its cause (the log reader may lag the replies).
    for cause in ["cannot connect to", "no answer while", "protocol error"] {
        let line = proxy.wait_for_log(cause);
        assert!(line.contains("plugin failed"), "{line}");
    }
}

fn str_packet(parts: &[&str]) -> Vec<u8> {
    let mut data = Vec::new();
    for part in parts {
        data.extend_from_slice(part.as_bytes());
        data.push(0);
    }
    data
}

fn indexed(index: u32, parts: &[&str]) -> Vec<u8> {
    let mut data = index.to_be_bytes().to_vec();
    data.extend_from_slice(&str_packet(parts));
    data
}

#[test]
fn a_milters_edits_apply_as_a_plugins_do() {
    let upstream = RecordingUpstream::start();
    let all_actions = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20 | 0x40;
    let edits = FakeMilter::start(
        all_actions,
        Behaviour::EndOfMessage(vec![
            (b'h', str_packet(&["X-Milter", "added\n\tfolded"])),
            (b'i', indexed(0, &["X-First", "inserted"])),
            (b'm', indexed(1, &["Subject", "changed"])),
            (b'e', str_packet(&["<bounce@example.com>"])),
            (b'+', str_packet(&["<carol@example.org>"])),
            (b'-', str_packet(&["<bob@example.org>"])),
            (b'b', b"New body.\r\n".to_vec()),
            (b'q', str_packet(&["held for review"])),
        ]),
    );
    let proxy = proxy_with(
        &upstream,
        &["edits"],
        &format!(
            "[milters.edits]\naddress = \"inet:127.0.0.1:{}\"\n",
            edits.port
        ),
    );
    let mut client = proxy.client();
    client.expect("EHLO client.example", 250);
    let reply = client.send_message("alice@example.com", &["bob@example.org"], MESSAGE);
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("QUIT", 221);
    let delivered = upstream.wait_messages(1);
    let text = String::from_utf8_lossy(&delivered[0]);
    assert_eq!(
        text,
        "X-First: inserted\r\nFrom: Alice <alice@example.com>\r\nTo: bob@example.org\r\n\
         Subject: changed\r\nDate: Sat, 05 Dec 2026 03:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n\
         X-Milter: added\r\n\tfolded\r\nX-Portcullis-Quarantine: held for review\r\n\r\nNew body.\r\n.\r\n"
    );
    let commands = upstream.all_commands();
    let last_mail = commands
        .iter()
        .rposition(|c| c.starts_with("MAIL"))
        .unwrap();
    assert_eq!(commands[last_mail], "MAIL FROM:<bounce@example.com>");
    assert_eq!(&commands[last_mail + 1], "RCPT TO:<carol@example.org>");
    assert_eq!(&commands[last_mail + 2], "DATA");
}

#[test]
fn a_milter_cannot_smuggle_commands_or_edits_it_did_not_negotiate() {
    let attempts: Vec<(&str, u32, Packet)> = vec![
        (
            "a header value that ends the message",
            0x01,
            (
                b'h',
                str_packet(&["X-Evil", "x\r\n.\r\nMAIL FROM:<a@evil>"]),
            ),
        ),
        (
            "a sender with a command after it",
            0x40,
            (b'e', str_packet(&["<a@example.com>\r\nRCPT TO:<b@evil>"])),
        ),
        (
            "a recipient with a space",
            0x04,
            (b'+', str_packet(&["<b@evil> NOTIFY=NEVER"])),
        ),
        (
            "a sender parameter the client was not offered",
            0x40,
            (b'e', str_packet(&["<a@example.com>", "XFORWARD=yes"])),
        ),
        (
            "an edit it did not negotiate",
            0x01,
            (b'+', str_packet(&["<c@example.org>"])),
        ),
    ];
    for (what, actions, attempt) in attempts {
        let upstream = RecordingUpstream::start();
        let milter = FakeMilter::start(actions, Behaviour::EndOfMessage(vec![attempt]));
        let proxy = proxy_with(
            &upstream,
            &["evil"],
            &format!(
                "[milters.evil]\naddress = \"inet:127.0.0.1:{}\"\ndefault_action = \"reject\"\n",
                milter.port
            ),
        );
        let mut client = proxy.client();
        client.expect("EHLO client.example", 250);
        let reply = client.send_message("alice@example.com", &["bob@example.org"], MESSAGE);
        assert_eq!(reply.code, 550, "{what}: {reply:?}");
        client.expect("QUIT", 221);
        let commands = upstream.all_commands();
        assert!(upstream.messages().is_empty(), "{what}: delivered");
        assert!(
            commands.iter().all(|c| !c.contains("evil")),
            "{what}: {commands:?}"
        );
    }
}

#[test]
fn a_milter_that_accepts_the_connection_hears_nothing_more_of_it() {
    let upstream = RecordingUpstream::start();
    let milter = FakeMilter::scripted(Script {
        actions: 0,
        protocol: 0,
        answers: vec![(b'C', (b'a', Vec::new()))],
        behaviour: Behaviour::Scripted,
    });
    let after = FakeMilter::start(0, Behaviour::Scripted);
    let proxy = proxy_with(
        &upstream,
        &["trusting", "after"],
        &format!(
            "[milters.trusting]\naddress = \"inet:127.0.0.1:{}\"\n\n\
             [milters.after]\naddress = \"inet:127.0.0.1:{}\"\n",
            milter.port, after.port
        ),
    );
    let mut client = proxy.client();
    client.expect("EHLO client.example", 250);
    let reply = client.send_message("alice@example.com", &["bob@example.org"], MESSAGE);
    assert_eq!(reply.code, 250, "{reply:?}");
    client.expect("QUIT", 221);
    common::wait_until("the milter heard QUIT", || milter.commands().ends_with('Q'));
    assert_eq!(milter.commands(), "OCQ");
    // Its accept is its own: the milter after it still hears the whole session.
    common::wait_until("the next milter heard QUIT", || {
        after.commands().ends_with('Q')
    });
    assert!(
        after.commands().starts_with("OCHMRTL"),
        "{}",
        after.commands()
    );
    assert!(after.commands().ends_with("NBEQ"), "{}", after.commands());
}
