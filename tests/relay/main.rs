//! The relay end to end: the real binary between a test client and a recording
//! upstream, checking exact bytes, ordering, every upstream failure, the DATA rules
//! and each limit.

mod client_identity;
#[path = "../common/mod.rs"]
mod common;
mod data_rules;
mod exact;
mod failures;
mod server;
mod upstream_sessions;

use std::{sync::Arc, thread, time::Duration};

use common::{Action, Client, FULL_EHLO, Proxy, RecordingUpstream, closed_port};

fn ehlo(client: &mut Client) -> common::ClientReply {
    client.expect("EHLO client.test", 250)
}

/// Dot-stuffs content the way a client must, and appends the terminator.
fn stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// An upstream that fails as `action` says when it receives `trigger`.
fn upstream_failing(trigger: &'static str, action: Action) -> RecordingUpstream {
    RecordingUpstream::scripted(
        FULL_EHLO,
        Arc::new(move |line| {
            if line.starts_with(trigger) {
                action.clone()
            } else {
                Action::Default
            }
        }),
    )
}
