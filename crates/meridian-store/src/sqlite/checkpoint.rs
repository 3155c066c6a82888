//! WAL checkpoints, mostly on a thread of their own.
//!
//! A commit in WAL mode appends the pages it changed to the `-wal` file; a checkpoint copies
//! the newest version of each page back into the database file and fsyncs it. SQLite's
//! default runs a checkpoint inside the `COMMIT` that takes the WAL past 1,000 pages, on
//! the committing connection. For Meridian that is the writer thread, the store's
//! bottleneck: every few batches one of them also paid for copying a few thousand pages and
//! an fsync of the database file, and every order queued behind it waited.
//!
//! So the writer turns the automatic checkpoint off (its WAL hook replaces it) and a
//! checkpointer thread with its own connection runs `PASSIVE` checkpoints while the writer
//! goes on committing: a passive checkpoint takes no lock that a writer needs.
//!
//! A passive checkpoint alone cannot keep the WAL short, though. SQLite starts the WAL over
//! from its beginning only when a write transaction begins while every frame in it has
//! been checkpointed, and under load the writer has always appended more since the
//! checkpointer started. So the writer resets the WAL itself: once the WAL holds
//! [`WalLimits::reset_frames`], it checkpoints the few frames the checkpointer has not yet
//! copied, between two batches, and its next transaction starts the WAL over. Should the
//! WAL still reach [`WalLimits::truncate_frames`] (a reader holding an old snapshot keeps
//! frames from being checkpointed), the writer runs a `TRUNCATE` checkpoint, which waits
//! for readers (up to the busy timeout) and empties the file. The WAL therefore stays
//! bounded.
//!
//! Another process on the same file (`meridian tenants create` next to a server) has its
//! own writer and checkpointer; SQLite lets one checkpoint run at a time, and one that
//! finds another running simply skips its turn. Checkpoints are crash-safe: a process
//! killed in the middle of one leaves the WAL to be checkpointed again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use parking_lot::Mutex;
use rusqlite::Connection;

use crate::StoreError;

/// When checkpoints run, in WAL frames (one frame is one page, 4 KiB by default).
#[derive(Clone, Copy, Debug)]
pub(super) struct WalLimits {
    /// Frames committed since the last checkpoint that wake the checkpointer. Larger means
    /// fewer, bigger checkpoints; a page changed by many commits in between is copied once.
    pub(super) checkpoint_frames: u64,
    /// The WAL length at which the writer checkpoints the rest itself so that its next
    /// transaction starts the WAL over.
    pub(super) reset_frames: u64,
    /// The WAL length at which the writer runs a `TRUNCATE` checkpoint, waiting for readers.
    pub(super) truncate_frames: u64,
}

impl Default for WalLimits {
    fn default() -> Self {
        Self {
            checkpoint_frames: 1_000,
            reset_frames: 8_192,
            truncate_frames: 32_768,
        }
    }
}

/// State shared by the writer (through its WAL hook) and the checkpointer.
struct Shared {
    limits: WalLimits,
    /// Frames the writer has committed, in total.
    committed: AtomicU64,
    /// `committed` when the last checkpoint began: what is beyond it waits for the next one.
    checkpointed: AtomicU64,
    /// Held by whichever thread runs a checkpoint, so that the writer never waits inside
    /// SQLite (under its busy handler) for the checkpointer.
    running: Mutex<()>,
}

impl Shared {
    fn due(&self) -> bool {
        let committed = self.committed.load(Ordering::Relaxed);
        committed.saturating_sub(self.checkpointed.load(Ordering::Relaxed))
            >= self.limits.checkpoint_frames
    }
}

/// The writer's side: owns the WAL hook's view of the WAL and runs the resets.
pub(super) struct WalKeeper {
    shared: Arc<Shared>,
    /// The WAL's length in frames after the writer's latest commit.
    frames: Arc<AtomicU64>,
}

/// Starts the checkpointer thread on `ckpt_conn` and installs the WAL hook on the writer's
/// connection, which turns SQLite's automatic checkpoint off for it. The checkpointer ends
/// when the writer's connection is closed (the hook, which holds its wake-up channel, is
/// dropped with it).
pub(super) fn start(
    write_conn: &mut Connection,
    ckpt_conn: Connection,
    limits: WalLimits,
) -> Result<WalKeeper, StoreError> {
    let shared = Arc::new(Shared {
        limits,
        committed: AtomicU64::new(0),
        checkpointed: AtomicU64::new(0),
        running: Mutex::new(()),
    });
    let frames = Arc::new(AtomicU64::new(0));
    // Capacity 1: wake-ups while the checkpointer is busy collapse into one.
    let (wake, woken) = sync_channel::<()>(1);
    install_hook(write_conn, Arc::clone(&shared), Arc::clone(&frames), wake)?;
    let for_thread = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("meridian-sqlite-checkpointer".into())
        .spawn(move || run(&ckpt_conn, &for_thread, &woken))
        .map_err(|e| {
            tracing::error!(error = %e, "cannot start the sqlite checkpointer thread");
            StoreError::Unavailable("cannot start the sqlite checkpointer thread".into())
        })?;
    Ok(WalKeeper { shared, frames })
}

fn install_hook(
    conn: &mut Connection,
    shared: Arc<Shared>,
    frames: Arc<AtomicU64>,
    wake: SyncSender<()>,
) -> Result<(), StoreError> {
    let mut last = 0_u64;
    conn.wal_hook(Some(
        move |_: &mut rusqlite::hooks::Wal, n: std::ffi::c_int| {
            // `n` is the WAL's length after this commit; a shorter WAL than last time was
            // started over, and all of its frames are this commit's.
            let n = u64::try_from(n).unwrap_or(0);
            let added = if n >= last { n - last } else { n };
            last = n;
            frames.store(n, Ordering::Relaxed);
            shared.committed.fetch_add(added, Ordering::Relaxed);
            if shared.due() {
                // Full: a wake-up is already pending. Disconnected: the checkpointer is gone
                // (it panicked); the writer's resets still keep the WAL bounded.
                let _ = wake.try_send(());
            }
            Ok(())
        },
    ))
    .map_err(|e| {
        tracing::error!(error = %e, "cannot install the sqlite WAL hook");
        StoreError::Unavailable("cannot install the sqlite WAL hook".into())
    })
}

fn run(conn: &Connection, shared: &Shared, woken: &Receiver<()>) {
    tracing::debug!("sqlite checkpointer started");
    while woken.recv().is_ok() {
        if !shared.due() {
            continue;
        }
        let _running = shared.running.lock();
        shared
            .checkpointed
            .store(shared.committed.load(Ordering::Relaxed), Ordering::Relaxed);
        // A failure (another process checkpointing, a disk error) is logged and the next
        // wake-up tries again; nothing is lost, the frames stay in the WAL.
        let _ = checkpoint(conn, Mode::Passive);
    }
    tracing::debug!("sqlite checkpointer stopped");
}

impl WalKeeper {
    /// Called by the writer between transactions: starts the WAL over once it has grown to
    /// the reset length, truncates it at the truncate length.
    pub(super) fn after_commit(&self, conn: &Connection) {
        let frames = self.frames.load(Ordering::Relaxed);
        let limits = self.shared.limits;
        if frames < limits.reset_frames {
            return;
        }
        let truncate = frames >= limits.truncate_frames;
        let running = if truncate {
            Some(self.shared.running.lock())
        } else {
            // The checkpointer is at work: try again after the next batch rather than wait.
            self.shared.running.try_lock()
        };
        let Some(_running) = running else { return };
        self.shared.checkpointed.store(
            self.shared.committed.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let mode = if truncate {
            Mode::Truncate
        } else {
            Mode::Passive
        };
        if let Ok(done) = checkpoint(conn, mode)
            && truncate
            && !done
        {
            tracing::warn!(
                frames,
                "could not truncate the sqlite WAL; a reader holds it"
            );
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Passive,
    Truncate,
}

/// Runs one checkpoint; `Ok(true)` if it checkpointed every frame of the WAL.
fn checkpoint(conn: &Connection, mode: Mode) -> rusqlite::Result<bool> {
    let sql = match mode {
        Mode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        Mode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    let started = std::time::Instant::now();
    let result = conn.query_row(sql, [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    match result {
        Ok((busy, log, done)) => {
            tracing::trace!(?mode, busy, log, done, elapsed = ?started.elapsed(), "sqlite checkpoint");
            Ok(busy == 0 && log == done)
        }
        Err(e) => {
            tracing::warn!(error = %e, ?mode, "sqlite checkpoint failed");
            Err(e)
        }
    }
}
