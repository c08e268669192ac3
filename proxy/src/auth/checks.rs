//! Password checks, bounded. An Argon2 check holds its memory cost (19 MiB by
//! default) while it runs, so checks run on a fixed number of threads, each keeping
//! one working memory from check to check: a burst of AUTH attempts costs at most
//! `threads × memory cost`, and the attempts beyond wait their turn for at most
//! `auth_throttle.check_timeout`. One client address has at most one check admitted
//! at a time, so one address cannot take every thread.
//!
//! A check that has started runs to its end even if the client leaves, and keeps its
//! turn until then: leaving cannot be used to start more checks than the limit. A
//! thread that has had nothing to check for a few seconds drops its working memory.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock, mpsc},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::credentials::Scratch;

type Job = Box<dyn FnOnce(&mut Scratch) + Send>;

/// How long a checking thread keeps its working memory without a check to run.
const IDLE: Duration = Duration::from_secs(5);

/// No turn came within the wait allowed: 454 4.7.0, try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no turn to check the credentials within {0:?}")]
pub(crate) struct Busy(pub Duration);

/// The checking threads and the turns to use them.
#[derive(Debug)]
pub(crate) struct PasswordChecks {
    threads: usize,
    /// One permit per thread.
    permits: Arc<Semaphore>,
    clients: Arc<Mutex<HashMap<IpAddr, ClientQueue>>>,
    /// Started at the first check, so a proxy without a credentials file has none.
    jobs: OnceLock<mpsc::Sender<Job>>,
    timeout: Duration,
}

/// The one turn of an address, and how many of its attempts hold or want it.
#[derive(Debug)]
struct ClientQueue {
    turn: Arc<Semaphore>,
    users: usize,
}

/// A turn to check credentials: one of the threads, and this address's one check.
#[derive(Debug)]
pub(crate) struct Turn {
    // Fields drop in this order: the address's permit before its queue entry.
    _thread: OwnedSemaphorePermit,
    _client: OwnedSemaphorePermit,
    _queue: QueueEntry,
}

/// An attempt waiting for, or holding, its address's turn; leaving the queue
/// removes the address once no attempt of it is left.
#[derive(Debug)]
struct QueueEntry {
    clients: Arc<Mutex<HashMap<IpAddr, ClientQueue>>>,
    address: IpAddr,
}

impl Drop for QueueEntry {
    fn drop(&mut self) {
        let mut clients = self.clients.lock().expect("lock poisoned");
        if let Some(queue) = clients.get_mut(&self.address) {
            queue.users -= 1;
            if queue.users == 0 {
                clients.remove(&self.address);
            }
        }
    }
}

impl PasswordChecks {
    /// `threads` checks at once (0: one per CPU core); a turn is waited for at most
    /// `timeout`.
    pub(crate) fn new(threads: usize, timeout: Duration) -> Self {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        Self {
            threads,
            permits: Arc::new(Semaphore::new(threads)),
            clients: Arc::default(),
            jobs: OnceLock::new(),
            timeout,
        }
    }

    /// Waits for `address`'s turn, then for a free thread, within the timeout.
    pub(crate) async fn turn(&self, address: IpAddr) -> Result<Turn, Busy> {
        let (queue, turn) = {
            let mut clients = self.clients.lock().expect("lock poisoned");
            let queue = clients.entry(address).or_insert_with(|| ClientQueue {
                turn: Arc::new(Semaphore::new(1)),
                users: 0,
            });
            queue.users += 1;
            let entry = QueueEntry {
                clients: self.clients.clone(),
                address,
            };
            (entry, queue.turn.clone())
        };
        let permits = self.permits.clone();
        let wait = async move {
            let client = turn.acquire_owned().await.expect("never closed");
            let thread = permits.acquire_owned().await.expect("never closed");
            (client, thread)
        };
        let (client, thread) = tokio::time::timeout(self.timeout, wait)
            .await
            .map_err(|_| Busy(self.timeout))?;
        Ok(Turn {
            _thread: thread,
            _client: client,
            _queue: queue,
        })
    }

    /// Runs `check` on a checking thread with that thread's working memory. The
    /// turn is held until the check is done, whether or not anyone still waits for
    /// its result (`None` if the thread died).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        turn: Turn,
        check: impl FnOnce(&mut Scratch) -> T + Send + 'static,
    ) -> Option<T> {
        let (sender, receiver) = oneshot::channel();
        let job: Job = Box::new(move |scratch| {
            let result = check(scratch);
            drop(turn);
            let _ = sender.send(result);
        });
        self.jobs().send(job).ok()?;
        receiver.await.ok()
    }

    fn jobs(&self) -> &mpsc::Sender<Job> {
        self.jobs.get_or_init(|| {
            let (sender, receiver) = mpsc::channel::<Job>();
            let receiver = Arc::new(Mutex::new(receiver));
            for number in 0..self.threads {
                let receiver = receiver.clone();
                std::thread::Builder::new()
                    .name(format!("password-check-{number}"))
                    .spawn(move || {
                        let mut scratch = Scratch::default();
                        loop {
                            let job = receiver.lock().expect("lock poisoned").recv_timeout(IDLE);
                            match job {
                                Ok(job) => job(&mut scratch),
                                // A burst is over: its memory goes back.
                                Err(mpsc::RecvTimeoutError::Timeout) => {
                                    scratch = Scratch::default()
                                }
                                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                            }
                        }
                    })
                    .expect("cannot start a password-check thread");
            }
            sender
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn one_turn_per_address_and_one_per_thread() {
        let checks = PasswordChecks::new(2, Duration::from_millis(100));
        let [a, b, c]: [IpAddr; 3] =
            ["192.0.2.1", "192.0.2.2", "192.0.2.3"].map(|s| s.parse().unwrap());
        let first = checks.turn(a).await.unwrap();
        assert_eq!(
            checks.turn(a).await.unwrap_err(),
            Busy(Duration::from_millis(100)),
            "the same address waits for its first check"
        );
        let second = checks.turn(b).await.unwrap();
        assert!(checks.turn(c).await.is_err(), "both threads are taken");
        drop(first);
        let third = checks.turn(a).await.expect("a's turn is free again");
        drop((second, third));
        assert!(
            checks.clients.lock().unwrap().is_empty(),
            "addresses that timed out or finished leave nothing behind"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_check_keeps_its_turn_when_the_caller_stops_waiting() {
        let checks = Arc::new(PasswordChecks::new(1, Duration::from_secs(5)));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let turn = checks.turn(a).await.unwrap();
        let (started, wait_started) = std::sync::mpsc::channel();
        let counted = done.clone();
        let abandoned = tokio::spawn({
            let checks = checks.clone();
            async move {
                checks
                    .run(turn, move |_| {
                        started.send(()).unwrap();
                        std::thread::sleep(Duration::from_millis(200));
                        counted.fetch_add(1, Ordering::SeqCst);
                    })
                    .await
            }
        });
        wait_started.recv().unwrap();
        abandoned.abort();
        // The next check of the same address waits for the abandoned one.
        let turn = checks.turn(a).await.unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(checks.run(turn, |scratch| scratch.size()).await, Some(0));
    }
}
