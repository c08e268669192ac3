//! Misbehaves at MAIL as its `mode` says: `trap`, `panic`, `loop`, `memory`,
//! `bad-code` (a 250 in a reject), `crlf` (CR LF in reply text), `bad-rewrite` (an
//! address that would inject a command), or `ok`. The proxy must contain every one of
//! them to that call. With `mode = "refuse-connect"` it instead refuses every client
//! at connect with 554 5.7.1.

use portcullis_sdk::{Config, Hooks, Param, PathOutcome, Plugin, Reply, Session, Verdict};

/// The configured misbehaviour.
pub struct Fault {
    mode: String,
}

impl Plugin for Fault {
    fn init(config: &Config) -> Result<(Self, Hooks), String> {
        let mode = config
            .get("mode")
            .and_then(|m| m.as_str())
            .ok_or("mode is required")?;
        let hooks = if mode == "refuse-connect" {
            Hooks::CONNECT
        } else {
            Hooks::MAIL
        };
        Ok((
            Fault {
                mode: mode.to_string(),
            },
            hooks,
        ))
    }

    fn connect(&mut self, _session: &Session) -> Verdict {
        Verdict::reject(554, "5.7.1", "No service for you")
    }

    fn mail(&mut self, _session: &Session, _sender: &str, _params: &[Param]) -> PathOutcome {
        match self.mode.as_str() {
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
            "bad-code" => Verdict::Reject(Reply::new(250, "2.0.0", "fine")).into(),
            "crlf" => Verdict::reject(550, "5.7.1", "no\r\nRCPT TO:<victim@example.com>").into(),
            "bad-rewrite" => PathOutcome::rewrite("x@example.org>\r\nRCPT TO:<victim@example.com"),
            _ => PathOutcome::default(),
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn trap() -> PathOutcome {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() -> PathOutcome {
    std::process::abort()
}

portcullis_sdk::export!(Fault);
