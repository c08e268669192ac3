//! The record of what each plugin said at each stage, for `portcullis replay`.

use std::sync::Arc;

use super::{SessionHooks, stage::Stage};

/// What one plugin said at one stage (recorded for `portcullis replay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// The stage: connect, helo, mail, rcpt, data.
    pub stage: &'static str,
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// Its verdict (and edits), or how it failed.
    pub outcome: String,
}

impl SessionHooks {
    /// Starts recording each plugin's verdict per stage.
    pub fn record_trace(&mut self) {
        self.trace.get_or_insert_with(Vec::new);
    }

    /// The verdicts recorded since the last call.
    pub fn take_trace(&mut self) -> Vec<TraceEntry> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Drops what was recorded at MAIL, RCPT and DATA (a transaction that ended
    /// before its message), keeping the session's connect, HELO and AUTH.
    pub fn forget_transaction_trace(&mut self) {
        if let Some(trace) = self.trace.as_mut() {
            trace.retain(|entry| matches!(entry.stage, "connect" | "helo" | "auth"));
        }
    }

    pub(super) fn note(&mut self, index: usize, stage: Stage, outcome: String) {
        if let Some(trace) = self.trace.as_mut() {
            trace.push(TraceEntry {
                stage: stage.name(),
                plugin: self.chain.members[index].name().clone(),
                outcome,
            });
        }
    }
}
