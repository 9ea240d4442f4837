//! Group commit: one writer thread owns the append side of a [`Store`]; callers queue entries
//! and wait for the fsync of the batch that carried theirs.
//!
//! ```text
//!   Appender::submit ──try_send──▶ queue (bounded) ──▶ writer: recv 1, try_recv ≤ max_batch − 1
//!        │ Full / Closed at once                           │ Store::append_batch (1 fsync round)
//!   Ticket::wait ◀──────── Stored(seq) | Failed | Closed ◀─┘ one reply per entry
//! ```
//!
//! Nothing blocks forever: a full queue is refused at once ([`StoreError::Full`], fail
//! closed: the caller reports it), and a waiter whose writer is gone gets
//! [`StoreError::Closed`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{Store, StoreError, MAX_ENTRY_BYTES};

/// Appender tunables.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AppenderConfig {
    /// Entries that may wait in the queue; beyond it `submit` returns [`StoreError::Full`].
    pub queue: usize,
    /// The most entries committed in one batch.
    pub max_batch: usize,
}

impl Default for AppenderConfig {
    fn default() -> AppenderConfig {
        AppenderConfig {
            queue: 65_536,
            max_batch: 4096,
        }
    }
}

/// Counters since spawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppenderStats {
    /// Batches committed, i.e. fsync rounds.
    pub batches: u64,
    /// Entries committed.
    pub entries: u64,
    /// Batches that failed.
    pub failed_batches: u64,
}

enum Msg {
    Append(Request),
    Shutdown,
}

struct Request {
    entry: Vec<u8>,
    reply: SyncSender<Outcome>,
}

enum Outcome {
    Stored(u64),
    Failed(Arc<StoreError>),
    Closed,
}

#[derive(Default)]
struct Shared {
    closed: AtomicBool,
    batches: AtomicU64,
    entries: AtomicU64,
    failed_batches: AtomicU64,
}

impl Shared {
    fn stats(&self) -> AppenderStats {
        AppenderStats {
            batches: self.batches.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
        }
    }
}

/// The queue side; clone it freely.
#[derive(Clone)]
pub struct Appender {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
}

/// Owns the writer thread; [`AppenderHandle::shutdown`] stops it after the queue drains.
pub struct AppenderHandle {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

/// An entry's place in line: [`Ticket::wait`] blocks until its batch is durable.
#[must_use = "the entry is durable only once wait() returns Ok"]
pub struct Ticket {
    rx: Receiver<Outcome>,
}

impl Ticket {
    /// The entry's sequence number, once its batch is fsynced.
    pub fn wait(self) -> Result<u64, StoreError> {
        match self.rx.recv() {
            Ok(Outcome::Stored(seq)) => Ok(seq),
            Ok(Outcome::Failed(source)) => Err(StoreError::Batch { source }),
            Ok(Outcome::Closed) | Err(_) => Err(StoreError::Closed),
        }
    }
}

impl Appender {
    /// Starts the writer thread for `store` (which must have no other writer).
    pub fn spawn(
        store: Arc<Store>,
        config: AppenderConfig,
    ) -> Result<(Appender, AppenderHandle), StoreError> {
        let (tx, rx) = mpsc::sync_channel(config.queue.max(1));
        let shared = Arc::new(Shared::default());
        let max_batch = config.max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn({
                let shared = Arc::clone(&shared);
                let store = Arc::clone(&store);
                move || run(&store, &rx, &shared, max_batch)
            })
            .map_err(|source| StoreError::Io {
                op: "spawn writer thread for",
                path: store.dir().to_path_buf(),
                source,
            })?;
        let handle = AppenderHandle {
            tx: tx.clone(),
            shared: Arc::clone(&shared),
            thread,
        };
        Ok((Appender { tx, shared }, handle))
    }

    /// Queues `entry` without waiting: [`StoreError::Full`] at once when the queue is full.
    pub fn submit(&self, entry: Vec<u8>) -> Result<Ticket, StoreError> {
        if entry.len() > MAX_ENTRY_BYTES {
            return Err(StoreError::TooLarge { len: entry.len() });
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let (reply, rx) = mpsc::sync_channel(1);
        match self.tx.try_send(Msg::Append(Request { entry, reply })) {
            Ok(()) => Ok(Ticket { rx }),
            Err(TrySendError::Full(_)) => Err(StoreError::Full),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::Closed),
        }
    }

    /// Appends `entry` and blocks until it is durable; returns its sequence number.
    pub fn append(&self, entry: Vec<u8>) -> Result<u64, StoreError> {
        self.submit(entry)?.wait()
    }

    pub fn stats(&self) -> AppenderStats {
        self.shared.stats()
    }
}

impl AppenderHandle {
    /// Refuses new entries, commits everything already queued, stops the writer.
    pub fn shutdown(self) -> AppenderStats {
        self.shared.closed.store(true, Ordering::Release);
        // Blocks only while the queue is full, which the running writer drains; fails at
        // once if the writer is gone.
        let _ = self.tx.send(Msg::Shutdown);
        drop(self.tx);
        if self.thread.join().is_err() {
            tracing::error!("audit writer thread panicked");
        }
        self.shared.stats()
    }
}

fn run(store: &Store, rx: &Receiver<Msg>, shared: &Shared, max_batch: usize) {
    let mut entries = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        let mut stop = false;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Append(req) => {
                    entries.push(req.entry);
                    replies.push(req.reply);
                }
                Msg::Shutdown => stop = true,
            }
            if !stop && entries.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        if !entries.is_empty() {
            commit(store, shared, &entries, &replies);
            entries.clear();
            replies.clear();
        }
        if stop {
            // Entries that raced past the closed flag.
            while let Ok(msg) = rx.try_recv() {
                if let Msg::Append(req) = msg {
                    let _ = req.reply.send(Outcome::Closed);
                }
            }
            return;
        }
    }
}

fn commit(store: &Store, shared: &Shared, entries: &[Vec<u8>], replies: &[SyncSender<Outcome>]) {
    match store.append_batch(entries) {
        Ok(range) => {
            shared.batches.fetch_add(1, Ordering::Relaxed);
            shared
                .entries
                .fetch_add(entries.len() as u64, Ordering::Relaxed);
            for (seq, reply) in range.zip(replies) {
                // A waiter that gave up has dropped its receiver; nothing to tell it.
                let _ = reply.send(Outcome::Stored(seq));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, entries = entries.len(), "audit append batch failed");
            shared.failed_batches.fetch_add(1, Ordering::Relaxed);
            let e = Arc::new(e);
            for reply in replies {
                let _ = reply.send(Outcome::Failed(Arc::clone(&e)));
            }
        }
    }
}
