//! A test plugin that misbehaves, or acts, as its config says. `stage` is `mail` (the
//! default), `data` or `helo`; `mode` is one of:
//!
//! - faults the proxy must contain to that call: `trap`, `panic`, `loop`, `memory`,
//!   `bad-code` (a 250 in a reject), `crlf` (CR LF in reply text), `bad-rewrite` (an
//!   address, or at DATA a header value, that would inject a command), `long-reply`
//!   (a 550 whose text has `length` characters, default 2000, in words);
//! - `rewrite` (`stage = "mail"` or `"rcpt"`): the path becomes `address` if set, and
//!   its parameters `params` if set (a list of `KEYWORD` or `KEYWORD=value` strings,
//!   split at the first `=` only, so a value may carry anything);
//! - DATA actions: `discard`, `quarantine`, `add-recipient` / `remove-recipient` (the
//!   `recipient` key), `replace-body`, `append-body`, `prepend-body` (the `body` key),
//!   `measure-body` (reads the whole body through the host and adds `X-Body-Size` and
//!   `X-Body-Lines` fields);
//! - HELO actions (`stage = "helo"`): `rename` (the upstream is told the name
//!   `renamed.example`), `refuse-helo` (550 5.7.1 for names without a dot);
//! - `count` (DATA): adds `X-Message-In-Session: N`, N counting this session's
//!   messages — per-instance state; its `init` logs `fault plugin init` once per run;
//!   with `fail_at = N` it panics instead when its count reaches N;
//! - `envelope` (RCPT and DATA): reads the envelope at each RCPT (except for
//!   recipients whose address starts with `quiet`) and adds `X-Envelope-At-Rcpt` (what
//!   those reads saw) and `X-Envelope-At-Data` (the envelope at DATA), each as
//!   `sender -> [recipient,recipient]`;
//! - `shareable = true` (any mode) declares the plugin shareable, so `count` then
//!   counts the messages of every session its shared instance served;
//! - `ok`, which does nothing; `refuse-connect` refuses every client with 554 5.7.1;
//! - `init_alloc_mb = N` (any mode): `init` allocates and keeps N MiB, like a plugin
//!   that builds large tables at start-up;
//! - AUTH: `refuse-login` (the AUTH hook refuses the login `mallory` with 554 5.7.1),
//!   `verifier` (a password checker: `LOGIN-secret` is valid, the login `backend-down`
//!   is unavailable, anything else invalid).

use portcullis_sdk::{
    Config, DataOutcome, Envelope, HeloOutcome, Hooks, LoginCheck, Message, MessageEdit, Param,
    PathOutcome, Plugin, Reply, Session, Verdict,
};

/// The configured behaviour.
pub struct Fault {
    mode: String,
    recipient: String,
    body: String,
    /// Messages seen by this instance (`count`).
    messages: u32,
    /// The count at which `count` panics instead (`fail_at`; 0: never).
    fail_at: u32,
    /// The envelopes the RCPT hook read in this transaction (`envelope`).
    seen_at_rcpt: Vec<String>,
    /// `rewrite`: the new address and parameters, if given.
    address: Option<String>,
    params: Option<Vec<Param>>,
    /// `long-reply`: the length of the text.
    length: usize,
}

/// `sender -> [recipient,recipient]`, checking the count the hook got against the list.
fn describe(envelope: &Envelope) -> String {
    let recipients = envelope.recipients();
    let mut text = format!("{} -> [{}]", envelope.sender(), recipients.join(","));
    if recipients.len() != envelope.recipient_count() {
        text.push_str(&format!(" (count says {})", envelope.recipient_count()));
    }
    text
}

fn text(config: &Config, key: &str) -> String {
    config
        .get(key)
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string()
}

impl Plugin for Fault {
    fn init(config: &Config) -> Result<(Self, Hooks), String> {
        let mode = text(config, "mode");
        if mode.is_empty() {
            return Err("mode is required".into());
        }
        let hooks = match (mode.as_str(), text(config, "stage").as_str()) {
            ("refuse-connect", _) => Hooks::CONNECT,
            ("refuse-login", _) => Hooks::AUTH,
            ("verifier", _) => Hooks::VERIFY_LOGIN,
            ("envelope", _) => Hooks::RCPT | Hooks::DATA,
            (_, "data") => Hooks::DATA,
            (_, "helo") => Hooks::HELO,
            (_, "rcpt") => Hooks::RCPT,
            _ => Hooks::MAIL,
        };
        let hooks = match config.get("shareable").and_then(|v| v.as_bool()) {
            Some(true) => hooks | Hooks::SHAREABLE,
            _ => hooks,
        };
        let fault = Fault {
            mode,
            recipient: text(config, "recipient"),
            body: text(config, "body"),
            messages: 0,
            fail_at: config
                .get("fail_at")
                .and_then(|v| v.as_integer())
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            seen_at_rcpt: Vec::new(),
            address: config
                .get("address")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            params: config.get("params").and_then(|v| v.as_array()).map(|list| {
                list.iter()
                    .filter_map(|item| item.as_str())
                    .map(|item| match item.split_once('=') {
                        Some((keyword, value)) => Param {
                            keyword: keyword.into(),
                            value: Some(value.into()),
                        },
                        None => Param {
                            keyword: item.into(),
                            value: None,
                        },
                    })
                    .collect()
            }),
            length: config
                .get("length")
                .and_then(|v| v.as_integer())
                .map_or(2000, |n| n as usize),
        };
        if fault.mode == "count" {
            portcullis_sdk::log::info("fault plugin init");
        }
        // A plugin that builds large tables at start-up: `init_alloc_mb` MiB kept.
        if let Some(mb) = config.get("init_alloc_mb").and_then(|v| v.as_integer()) {
            INIT_TABLES.with(|tables| *tables.borrow_mut() = vec![1u8; (mb as usize) << 20]);
        }
        Ok((fault, hooks))
    }

    fn connect(&mut self, _session: &Session) -> Verdict {
        Verdict::reject(554, "5.7.1", "No service for you")
    }

    fn helo(&mut self, _session: &Session, name: &str) -> HeloOutcome {
        match self.mode.as_str() {
            "rename" => HeloOutcome::rename("renamed.example"),
            "refuse-helo" if !name.contains('.') => {
                Verdict::reject(550, "5.7.1", "HELO name must be a domain").into()
            }
            _ => HeloOutcome::default(),
        }
    }

    fn auth(&mut self, _session: &Session, _mechanism: &str, login: &str) -> Verdict {
        if login == "mallory" {
            return Verdict::reject(554, "5.7.1", "Not from here, not now");
        }
        Verdict::Continue
    }

    fn verify_login(
        &mut self,
        _session: &Session,
        _mechanism: &str,
        login: &str,
        password: &str,
    ) -> LoginCheck {
        if login == "backend-down" {
            LoginCheck::Unavailable
        } else if password == format!("{login}-secret") {
            LoginCheck::Valid
        } else {
            LoginCheck::Invalid
        }
    }

    fn mail(&mut self, _session: &Session, _sender: &str, _params: &[Param]) -> PathOutcome {
        match self.mode.as_str() {
            "bad-rewrite" => PathOutcome::rewrite("x@example.org>\r\nRCPT TO:<victim@example.com"),
            "rewrite" => self.rewrite(),
            mode => self.misbehave(mode).into(),
        }
    }

    fn rcpt(&mut self, _: &Session, envelope: &Envelope, to: &str, _: &[Param]) -> PathOutcome {
        match self.mode.as_str() {
            "rewrite" => self.rewrite(),
            "envelope" => {
                if !to.starts_with("quiet") {
                    self.seen_at_rcpt.push(describe(envelope));
                }
                PathOutcome::default()
            }
            mode => self.misbehave(mode).into(),
        }
    }

    fn data(&mut self, _session: &Session, envelope: &Envelope, message: &Message) -> DataOutcome {
        let edit = match self.mode.as_str() {
            "envelope" => {
                let seen = std::mem::take(&mut self.seen_at_rcpt);
                return DataOutcome::with_edits(vec![
                    header("X-Envelope-At-Rcpt", &seen.join(" | ")),
                    header("X-Envelope-At-Data", &describe(envelope)),
                ]);
            }
            "discard" => return Verdict::Discard.into(),
            "bad-rewrite" => header("X-Evil", "x\r\n.\r\nMAIL FROM:<evil@example.com>"),
            "quarantine" => MessageEdit::quarantine("looks suspicious"),
            "add-recipient" => MessageEdit::add_recipient(&self.recipient),
            "remove-recipient" => MessageEdit::remove_recipient(&self.recipient),
            "replace-body" => MessageEdit::replace_body(self.body.clone()),
            "append-body" => MessageEdit::append_body(self.body.clone()),
            "prepend-body" => MessageEdit::prepend_body(self.body.clone()),
            "count" => {
                self.messages += 1;
                if self.messages == self.fail_at {
                    panic!("failing at message {}", self.messages);
                }
                header("X-Message-In-Session", &self.messages.to_string())
            }
            "measure-body" => {
                let body = message.body();
                let lines = body.iter().filter(|&&b| b == b'\n').count();
                return DataOutcome::with_edits(vec![
                    header("X-Body-Size", &message.body_size().to_string()),
                    header("X-Body-Lines", &lines.to_string()),
                ]);
            }
            mode => return self.misbehave(mode).into(),
        };
        DataOutcome::with_edits(vec![edit])
    }
}

thread_local! {
    /// What `init_alloc_mb` allocated.
    static INIT_TABLES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn header(name: &str, value: &str) -> MessageEdit {
    MessageEdit::add_header(name, value)
}

impl Fault {
    /// `rewrite`: the configured address and parameters.
    fn rewrite(&self) -> PathOutcome {
        let mut outcome = PathOutcome::default();
        outcome.rewrite_address = self.address.clone();
        outcome.rewrite_params = self.params.clone();
        outcome
    }

    /// The faults that do not depend on the hook; `ok` and unknown modes continue.
    fn misbehave(&self, mode: &str) -> Verdict {
        if mode == "long-reply" {
            let text = "blocked ".repeat(self.length / 8 + 1);
            return Verdict::reject(550, "5.7.1", &text[..self.length]);
        }
        misbehave(mode)
    }
}

/// The faults that do not depend on the hook or the configuration.
fn misbehave(mode: &str) -> Verdict {
    match mode {
        "trap" => trap(),
        "panic" => panic!("the fault plugin panics"),
        "loop" => {
            let mut counter = 0u64;
            loop {
                counter = std::hint::black_box(counter.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "bad-code" => Verdict::Reject(Reply::new(250, "2.0.0", "fine")),
        "crlf" => Verdict::reject(550, "5.7.1", "no\r\nRCPT TO:<victim@example.com>"),
        _ => Verdict::Continue,
    }
}

#[cfg(target_arch = "wasm32")]
fn trap() -> Verdict {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() -> Verdict {
    std::process::abort()
}

portcullis_sdk::export!(Fault);
