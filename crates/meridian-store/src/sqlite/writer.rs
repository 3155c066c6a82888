//! The single writer thread and its group commit.
//!
//! SQLite allows one writer at a time, so Meridian gives it exactly one: a `std::thread`
//! that owns the write connection. Async callers send jobs over a bounded channel (which
//! pushes back on them when the writer falls behind) and await a oneshot answer.
//!
//! Order placement is the hot path, and its cost is dominated by the fsync of each commit.
//! When the writer takes a place-order job it also takes every further place-order job
//! already queued (up to [`MAX_BATCH`]) and places them all in one `BEGIN IMMEDIATE`
//! transaction: one snapshot, one [`plan_batch`], one commit, one fsync. Every caller is
//! answered only after that commit returns, so an acknowledged order is durable. While a
//! batch commits, new requests queue up and form the next batch, so batches grow with load
//! by themselves and no request waits for a timer.
//!
//! Other writes met while draining run after the batch, each in its own transaction. That
//! reorders only requests that were in flight together, none of which has been answered,
//! so no caller can observe the difference.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use meridian_core::{EventSource, Sku, TenantId};
use meridian_orders::{
    IdempotencyRecord, Order, PlaceOrder, PlaceOutcome, ProductRef, Snapshot, plan_batch,
};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, mpsc, oneshot};

use super::checkpoint::{self, WalKeeper, WalLimits};
use super::conn::WriteTx;
use super::error::lost;
use super::queries;
use super::rows::{
    apply_stock_delta, insert_ledger, insert_order, insert_outbox, parsed, take_outbox_written, ts,
};
use crate::StoreError;

type Result<T> = std::result::Result<T, StoreError>;

/// The most orders placed in one transaction. Large enough to amortize the fsync under
/// heavy load, small enough that one transaction stays short (a few milliseconds).
pub(super) const MAX_BATCH: usize = 512;

/// Jobs waiting for the writer before `send` makes callers wait.
pub(super) const QUEUE_CAPACITY: usize = 4 * MAX_BATCH;

/// A write that runs its own transaction; it answers its caller itself.
type WriteFn = Box<dyn FnOnce(&mut Connection) + Send>;

pub(super) enum Job {
    // Boxed: an order request is a few hundred bytes, a write job a pointer.
    Place(Box<PlaceJob>),
    Write(WriteFn),
}

pub(super) struct PlaceJob {
    pub(super) cmd: PlaceOrder,
    pub(super) reply: oneshot::Sender<Result<Order>>,
}

/// The async side: a handle to the writer thread.
#[derive(Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on `conn`. The thread ends when every `Writer` is dropped
    /// and the queued jobs are done.
    /// `ckpt_conn` is for the checkpointer thread that runs beside the writer (see
    /// [`checkpoint`](super::checkpoint)).
    /// `outbox_signal` is woken after every job whose transaction inserted outbox rows.
    pub(super) fn start(
        mut conn: Connection,
        ckpt_conn: Connection,
        events: EventSource,
        outbox_signal: Arc<Notify>,
    ) -> Result<Self> {
        let wal = checkpoint::start(&mut conn, ckpt_conn, WalLimits::default())?;
        let (jobs, rx) = mpsc::channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("meridian-sqlite-writer".into())
            .spawn(move || run(conn, rx, &events, &wal, &outbox_signal))
            .map_err(|e| {
                tracing::error!(error = %e, "cannot start the sqlite writer thread");
                StoreError::Unavailable("cannot start the sqlite writer thread".into())
            })?;
        Ok(Self { jobs })
    }

    pub(super) fn is_running(&self) -> bool {
        !self.jobs.is_closed()
    }

    async fn send(&self, job: Job) -> Result<()> {
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the sqlite writer has stopped".into()))
    }

    /// Queues an order for the next group commit and waits until it is durable.
    pub(super) async fn place(&self, cmd: PlaceOrder) -> Result<Order> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Place(Box::new(PlaceJob { cmd, reply })))
            .await?;
        answer.await.map_err(|_| lost("writer"))?
    }

    /// Runs `f` on the writer thread. `f` opens and commits its own transaction.
    pub(super) async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: WriteFn = Box::new(move |conn| {
            // The caller may have gone away (a dropped request); the write stands anyway.
            let _ = reply.send(f(conn));
        });
        self.send(Job::Write(job)).await?;
        answer.await.map_err(|_| lost("writer"))?
    }
}

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    events: &EventSource,
    wal: &WalKeeper,
    outbox_signal: &Notify,
) {
    tracing::debug!("sqlite writer started");
    // After a job's transaction ended: committed outbox rows wake the relay (a rolled-back
    // insert wakes it for nothing, which is harmless).
    let wake_relay = || {
        if take_outbox_written() {
            outbox_signal.notify_one();
        }
    };
    while let Some(job) = rx.blocking_recv() {
        match job {
            Job::Write(f) => {
                run_write(&mut conn, f);
                wake_relay();
            }
            Job::Place(first) => {
                let mut batch = vec![*first];
                let mut deferred = Vec::new();
                while batch.len() < MAX_BATCH && deferred.len() < QUEUE_CAPACITY {
                    match rx.try_recv() {
                        Ok(Job::Place(p)) => batch.push(*p),
                        Ok(Job::Write(f)) => deferred.push(f),
                        Err(_) => break,
                    }
                }
                place_batch(&mut conn, events, batch);
                wake_relay();
                for f in deferred {
                    run_write(&mut conn, f);
                    wake_relay();
                }
            }
        }
        wal.after_commit(&conn);
    }
    tracing::debug!("sqlite writer stopped");
}

/// Runs one write job. A panic (a bug) must not take the only writer down with it: the
/// job's transaction rolls back as it unwinds, its caller gets `Internal`, and the thread
/// goes on with the next job.
fn run_write(conn: &mut Connection, f: WriteFn) {
    if catch_unwind(AssertUnwindSafe(|| f(conn))).is_err() {
        tracing::error!("a sqlite write job panicked; its transaction was rolled back");
    }
}

fn place_batch(conn: &mut Connection, events: &EventSource, jobs: Vec<PlaceJob>) {
    let (cmds, replies): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.cmd, j.reply)).unzip();
    let size = cmds.len();
    let started = std::time::Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        place_in_one_transaction(conn, events, &cmds)
    }));
    match outcome {
        Ok(Ok(results)) => {
            tracing::trace!(size, elapsed = ?started.elapsed(), "order batch committed");
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Ok(Err(e)) => {
            // Nothing of the batch was committed; every caller gets the error.
            tracing::error!(size, error = %e, "order batch failed and was rolled back");
            for reply in replies {
                let _ = reply.send(Err(same_error(&e)));
            }
        }
        Err(_) => {
            tracing::error!(size, "order batch panicked and was rolled back");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Internal(
                    "order placement failed; see the server log".into(),
                )));
            }
        }
    }
}

/// The batch-wide error for one caller. Only driver-level failures end a whole batch, so
/// `Unavailable` (worth a retry) is kept and everything else is `Internal`.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Internal(m) => StoreError::Internal(m.clone()),
        other => StoreError::Internal(other.to_string()),
    }
}

/// Loads the snapshot, plans, writes and commits; returns each caller's answer in order.
fn place_in_one_transaction(
    conn: &mut Connection,
    events: &EventSource,
    cmds: &[PlaceOrder],
) -> Result<Vec<Result<Order>>> {
    let tx = WriteTx::begin(conn)?;
    let mut snapshot = load_snapshot(&tx, cmds)?;
    let now = meridian_core::now();
    let (outcomes, writes) = plan_batch(&mut snapshot, cmds, events, now);

    // Orders before ledger rows and idempotency keys, which reference them.
    for order in &writes.orders {
        insert_order(&tx, order)?;
    }
    for change in &writes.stock {
        apply_stock_delta(&tx, change, &now)?;
    }
    for entry in &writes.ledger {
        insert_ledger(&tx, entry)?;
    }
    for event in &writes.events {
        insert_outbox(&tx, event)?;
    }
    for (tenant, key, rec) in &writes.idempotency {
        tx.prepare_cached(
            "INSERT INTO idempotency_keys (tenant_id, key, request_hash, order_id, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            tenant.to_string(),
            key,
            rec.request_hash,
            rec.order_id.to_string(),
            ts(&now),
        ])?;
    }

    let mut results = Vec::with_capacity(outcomes.len());
    for (outcome, cmd) in outcomes.into_iter().zip(cmds) {
        results.push(match outcome {
            PlaceOutcome::Created(order) => Ok(*order),
            // A retry: the first order may be from an earlier batch or from this one, whose
            // rows this transaction already sees.
            PlaceOutcome::Existing(id) => Ok(queries::find_order(&tx, cmd.tenant_id, id)?
                .ok_or_else(|| {
                    tracing::error!(order.id = %id, "idempotency key points at a missing order");
                    StoreError::Internal(format!("order {id} of an idempotency key is missing"))
                })?),
            PlaceOutcome::Rejected(e) => Err(StoreError::from(e)),
        });
    }
    tx.commit()?;
    Ok(results)
}

/// Reads what the batch touches: each named product, every level of each named SKU (with
/// its warehouse's code and priority) and each named idempotency key. The IMMEDIATE
/// transaction holds the database's write lock, so none of it can change before commit.
fn load_snapshot(conn: &Connection, cmds: &[PlaceOrder]) -> Result<Snapshot> {
    let mut snapshot = Snapshot::default();
    let mut skus: HashSet<(TenantId, &Sku)> = HashSet::new();
    let mut keys: HashSet<(TenantId, &str)> = HashSet::new();
    for cmd in cmds {
        let tenant = cmd.tenant_id;
        for line in cmd.request.lines() {
            if !skus.insert((tenant, &line.sku)) {
                continue;
            }
            let product = conn
                .prepare_cached(
                    "SELECT id, name, price_amount, price_currency FROM products \
                     WHERE tenant_id = ?1 AND sku = ?2",
                )?
                .query_row(params![tenant.to_string(), line.sku.as_str()], |r| {
                    Ok(ProductRef {
                        id: parsed(r, 0)?,
                        name: r.get(1)?,
                        price: meridian_core::Money::new(r.get(2)?, parsed(r, 3)?),
                    })
                })
                .optional()?;
            // Levels of a deleted product stay for audit but are not for sale.
            if let Some(product) = product {
                let levels = queries::levels_of(conn, tenant, &line.sku)?;
                snapshot
                    .products
                    .insert((tenant, line.sku.clone()), product);
                snapshot.stock.insert((tenant, line.sku.clone()), levels);
            }
        }
        if let Some(key) = &cmd.idempotency_key {
            if !keys.insert((tenant, key.as_str())) {
                continue;
            }
            let rec = conn
                .prepare_cached(
                    "SELECT request_hash, order_id FROM idempotency_keys \
                     WHERE tenant_id = ?1 AND key = ?2",
                )?
                .query_row(params![tenant.to_string(), key], |r| {
                    Ok(IdempotencyRecord {
                        request_hash: r.get(0)?,
                        order_id: parsed(r, 1)?,
                    })
                })
                .optional()?;
            if let Some(rec) = rec {
                snapshot.idempotency.insert((tenant, key.clone()), rec);
            }
        }
    }
    Ok(snapshot)
}
