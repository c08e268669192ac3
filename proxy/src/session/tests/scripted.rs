//! An in-process scripted upstream: an SMTP server on a loopback port that answers
//! from a script (250 to what the script does not name) and records what it was sent,
//! so session tests cover relaying without spawning the binary or an MTA.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// What the upstream does on a command (or at the end of a message, named `.`).
#[derive(Debug, Clone)]
pub(super) enum Answer {
    /// Send this reply (one or more CRLF-terminated lines).
    Reply(&'static str),
    /// Close the connection without a reply.
    Close,
}

/// A running scripted upstream; it stops with the test's runtime.
pub(super) struct ScriptedUpstream {
    pub(super) address: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    commands: Vec<String>,
    messages: Vec<Vec<u8>>,
}

impl ScriptedUpstream {
    /// Starts a server announcing `extensions` after EHLO. Each `(verb prefix, answer)`
    /// of `script` is used once, by the first command that starts with its prefix
    /// (case-insensitive); `.` is the end of a message's data.
    pub(super) async fn start(extensions: &[&str], script: &[(&str, Answer)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut ehlo = String::from("250-scripted.test\r\n");
        for extension in extensions {
            ehlo.push_str(&format!("250-{extension}\r\n"));
        }
        ehlo.push_str("250 ENHANCEDSTATUSCODES\r\n");
        let script: Vec<(String, Answer)> = script
            .iter()
            .map(|(prefix, answer)| (prefix.to_ascii_uppercase(), answer.clone()))
            .collect();
        let script = Arc::new(Mutex::new(script));
        let recorder = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let session = Conversation {
                    ehlo: ehlo.clone(),
                    script: script.clone(),
                    seen: recorder.clone(),
                };
                tokio::spawn(session.serve(stream));
            }
        });
        Self { address, seen }
    }

    /// Every command line received, over all connections, in order.
    pub(super) fn commands(&self) -> Vec<String> {
        self.seen.lock().unwrap().commands.clone()
    }

    /// The commands that start with `verb`.
    pub(super) fn commands_starting(&self, verb: &str) -> Vec<String> {
        self.commands()
            .into_iter()
            .filter(|command| command.starts_with(verb))
            .collect()
    }

    /// Each message's data as received: dot-stuffed, without the final `.` line.
    pub(super) fn messages(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().messages.clone()
    }
}

struct Conversation {
    ehlo: String,
    script: Arc<Mutex<Vec<(String, Answer)>>>,
    seen: Arc<Mutex<Seen>>,
}

impl Conversation {
    /// The scripted answer to `command`, if any, used up.
    fn scripted(&self, command: &str) -> Option<Answer> {
        let upper = command.to_ascii_uppercase();
        let mut script = self.script.lock().unwrap();
        let at = script
            .iter()
            .position(|(prefix, _)| upper.starts_with(prefix))?;
        Some(script.remove(at).1)
    }

    async fn serve(self, stream: TcpStream) {
        let (reader, mut writer) = stream.into_split();
        let mut reader = BufReader::new(reader);
        if writer
            .write_all(b"220 scripted.test ESMTP\r\n")
            .await
            .is_err()
        {
            return;
        }
        let mut line = String::new();
        // The transaction as an MTA keeps it: RCPT needs an accepted MAIL, DATA an
        // accepted RCPT.
        let (mut mail, mut recipients) = (false, 0);
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let command = line.trim_end_matches(['\r', '\n']).to_string();
            self.seen.lock().unwrap().commands.push(command.clone());
            let verb = command.split(' ').next().unwrap_or("").to_ascii_uppercase();
            let default = match verb.as_str() {
                "EHLO" => self.ehlo.clone(),
                "HELO" => "250 scripted.test\r\n".into(),
                "XCLIENT" => "220 scripted.test ESMTP\r\n".into(),
                "RCPT" if !mail => "503 5.5.1 Error: need MAIL command\r\n".into(),
                "DATA" if recipients == 0 => "503 5.5.1 Error: need RCPT command\r\n".into(),
                "DATA" => "354 go ahead\r\n".into(),
                "QUIT" => "221 2.0.0 bye\r\n".into(),
                _ => "250 2.0.0 ok\r\n".into(),
            };
            let reply = match self.scripted(&command) {
                Some(Answer::Reply(reply)) => reply.to_string(),
                Some(Answer::Close) => return,
                None => default,
            };
            let accepted = reply.starts_with('2');
            match verb.as_str() {
                "MAIL" => mail = accepted,
                "RCPT" => recipients += usize::from(accepted),
                "RSET" | "EHLO" | "HELO" | "XCLIENT" => (mail, recipients) = (false, 0),
                _ => {}
            }
            if writer.write_all(reply.as_bytes()).await.is_err() || verb == "QUIT" {
                return;
            }
            if verb == "DATA" && reply.starts_with("354") {
                (mail, recipients) = (false, 0);
                let Some(message) = read_message(&mut reader).await else {
                    return;
                };
                self.seen.lock().unwrap().messages.push(message);
                let reply = match self.scripted(".") {
                    Some(Answer::Reply(reply)) => reply.to_string(),
                    Some(Answer::Close) => return,
                    None => "250 2.0.0 Ok: queued as SCRIPTED\r\n".into(),
                };
                if writer.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads up to and including CRLF "." CRLF; the data without that last line.
async fn read_message(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Vec<u8>> {
    let mut message = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if reader.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        message.push(byte[0]);
        if message == b".\r\n" {
            return Some(Vec::new());
        }
        if message.ends_with(b"\r\n.\r\n") {
            message.truncate(message.len() - 3);
            return Some(message);
        }
    }
}
