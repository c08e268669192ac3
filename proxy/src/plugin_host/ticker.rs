//! The epoch clock behind plugin deadlines.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

/// How often the epoch advances while a call runs; plugin deadlines are checked at
/// this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// How long the clock keeps ticking after the last call ended before it sleeps. Waking
/// a sleeping thread costs a system call and a context switch, which a proxy busy
/// with mail would otherwise pay on every plugin call (one session's calls run one
/// after the other, so the count of running calls drops to zero between them).
pub(super) const IDLE_TICKS_BEFORE_SLEEP: u32 = 50;

/// The thread that advances the engines' epochs. It ticks while plugin calls (or
/// instantiations) run and for [`IDLE_TICKS_BEFORE_SLEEP`] ticks after, and sleeps
/// otherwise, so an idle proxy costs no wakeups: deadlines are wall-clock times
/// checked at each tick, so a pause between calls loses nothing.
#[derive(Debug, Default)]
pub(super) struct Ticker {
    running: AtomicUsize,
    /// Set by the thread before it parks; only then does a call wake it.
    asleep: AtomicBool,
    pub(super) thread: std::sync::OnceLock<std::thread::Thread>,
    pub(super) stopped: AtomicBool,
}

impl Ticker {
    /// Marks a call as running until the guard is dropped (also when the call's
    /// future is dropped half-way).
    pub(super) fn enter(self: &Arc<Self>) -> Running {
        if self.running.fetch_add(1, SeqCst) == 0
            && self.asleep.load(SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
        Running(self.clone())
    }

    pub(super) fn idle(&self) -> bool {
        self.running.load(SeqCst) == 0
    }

    /// The thread's loop: `tick` advances the epochs (false: the engines are gone).
    pub(super) fn run(&self, mut tick: impl FnMut() -> bool) {
        let mut idle_ticks = 0;
        while !self.stopped.load(SeqCst) {
            if self.idle() {
                idle_ticks += 1;
                if idle_ticks > IDLE_TICKS_BEFORE_SLEEP {
                    // Announce the sleep before the last look, so a call that starts
                    // in between sees it and wakes the thread (all SeqCst).
                    self.asleep.store(true, SeqCst);
                    if self.idle() && !self.stopped.load(SeqCst) {
                        std::thread::park();
                    }
                    self.asleep.store(false, SeqCst);
                    idle_ticks = 0;
                    continue;
                }
            } else {
                idle_ticks = 0;
            }
            if !tick() {
                return;
            }
            std::thread::sleep(EPOCH_TICK);
        }
    }
}

/// A plugin call in progress, keeping the epoch ticking.
#[must_use]
pub(super) struct Running(Arc<Ticker>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
}
