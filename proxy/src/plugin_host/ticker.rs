//! The epoch clock behind plugin deadlines.

use std::{sync::Arc, time::Duration};

/// How often the epoch advances while a call runs; plugin deadlines are checked at
/// this granularity.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The thread that advances the engines' epochs. It ticks only while a plugin call
/// (or an instantiation) runs and sleeps otherwise, so an idle proxy costs no
/// wakeups: deadlines are wall-clock times checked at each tick, so a pause between
/// calls loses nothing.
#[derive(Debug, Default)]
pub(super) struct Ticker {
    running: std::sync::atomic::AtomicUsize,
    pub(super) thread: std::sync::OnceLock<std::thread::Thread>,
    pub(super) stopped: std::sync::atomic::AtomicBool,
}

impl Ticker {
    /// Marks a call as running until the guard is dropped (also when the call's
    /// future is dropped half-way).
    pub(super) fn enter(self: &Arc<Self>) -> Running {
        if self
            .running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 0
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
        Running(self.clone())
    }

    pub(super) fn idle(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::SeqCst) == 0
    }
}

/// A plugin call in progress, keeping the epoch ticking.
#[must_use]
pub(super) struct Running(Arc<Ticker>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
