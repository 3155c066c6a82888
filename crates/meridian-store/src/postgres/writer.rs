//! The order writer: group commit for `place_order`.
//!
//! Callers send their order over a channel and wait. One task owns one connection; it takes
//! every order queued (up to [`MAX_BATCH`]) and places them all in one transaction:
//!
//! 1. advisory locks on the batch's `(tenant, idempotency key)` hashes, sorted, so writers
//!    in other processes serialize per key;
//! 2. loads of the idempotency records, products and stock levels the batch names, the
//!    levels locked `FOR UPDATE` in `(tenant_id, warehouse_id, sku)` order;
//! 3. [`plan_batch`], pure Rust, while the locks are held (nothing outside the database is
//!    called);
//! 4. the [`WriteSet`](meridian_orders::WriteSet) as a handful of set-based statements,
//!    pipelined in one round trip, the outbox append last;
//! 5. `COMMIT`, and only then an answer to each caller.
//!
//! Steps 1–2 and 4 are each one round trip, so a batch costs four round trips and one WAL
//! flush however many orders it holds: under load, batches grow and the cost per order
//! falls.
//!
//! If the connection breaks, the writer reconnects for the next batch. A batch that failed
//! before `COMMIT` was rolled back and its callers get `Unavailable`. If the connection
//! broke during `COMMIT`, the writer asks a new connection whether the batch's first order
//! exists, after waiting on the outbox lock that the old transaction held until it ended,
//! and answers accordingly.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;
use meridian_core::{EventSource, OrderId, ProductId, TenantId, Timestamp};
use meridian_orders::{
    IdempotencyRecord, Order, PlaceOrder, PlaceOutcome, ProductRef, Snapshot, plan_batch,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls, Statement, Transaction};
use uuid::Uuid;

use super::{error, rows, sql, writes};
use crate::{Result, StoreError};

/// The most orders placed in one transaction. Large enough that a busy writer amortizes
/// its round trips and WAL flush; small enough that one batch's statements stay quick.
pub(super) const MAX_BATCH: usize = 512;

/// Orders that may wait for the writer before `place_order` itself waits (back-pressure).
const QUEUE_DEPTH: usize = 8 * MAX_BATCH;

/// After a failed reconnect, batches within this window fail fast instead of each waiting
/// for a connect timeout while the database is down.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// How long to wait for a transaction whose `COMMIT` got no answer to finish.
const PROBE_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '10s'";

struct Job {
    cmd: PlaceOrder,
    reply: oneshot::Sender<Result<Order>>,
}

/// The handle `PgStore` keeps; dropping it stops the writer once its queue is drained.
pub(super) struct OrderWriter {
    jobs: mpsc::Sender<Job>,
}

impl OrderWriter {
    /// Connects (so a bad configuration fails at start), prepares the writer's statements
    /// and spawns the writer task.
    pub(super) async fn start(pg: tokio_postgres::Config, events: EventSource) -> Result<Self> {
        let conn = Conn::open(&pg).await?;
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let task = Task {
            pg,
            events,
            queue,
            conn: Some(conn),
            last_connect_failure: None,
        };
        tokio::spawn(task.run());
        Ok(Self { jobs })
    }

    /// Queues `cmd` and waits until its batch has committed (or failed).
    pub(super) async fn place(&self, cmd: PlaceOrder) -> Result<Order> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { cmd, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the order writer has stopped".into()))?;
        answer.await.map_err(|_| {
            StoreError::Internal("the order writer dropped an order without answering".into())
        })?
    }
}

/// The writer's connection with its statements, prepared once.
struct Conn {
    client: Client,
    stmts: Statements,
}

struct Statements {
    lock_keys: Statement,
    load_idempotency: Statement,
    load_products: Statement,
    load_stock: Statement,
    update_stock: Statement,
    insert_ledger: Statement,
    insert_orders: Statement,
    insert_idempotency: Statement,
    orders_by_id: Statement,
    outbox_lock: Statement,
    insert_outbox: Statement,
    order_exists: Statement,
}

impl Conn {
    async fn open(pg: &tokio_postgres::Config) -> Result<Self> {
        let (client, connection) = pg.connect(NoTls).await.map_err(error::connect)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "order writer connection ended with an error");
            }
        });
        let orders_by_id = sql::orders_by_id();
        // All prepared in one pipelined round trip.
        let (a, b, c, d, e, f, g, h, i, j, k, l) = futures::try_join!(
            client.prepare(sql::LOCK_KEYS),
            client.prepare(sql::LOAD_IDEMPOTENCY),
            client.prepare(sql::LOAD_PRODUCTS),
            client.prepare(sql::LOAD_STOCK),
            client.prepare(sql::UPDATE_STOCK),
            client.prepare(sql::INSERT_LEDGER),
            client.prepare(sql::INSERT_ORDERS),
            client.prepare(sql::INSERT_IDEMPOTENCY),
            client.prepare(&orders_by_id),
            client.prepare(sql::OUTBOX_LOCK),
            client.prepare(sql::INSERT_OUTBOX),
            client.prepare(sql::ORDER_EXISTS),
        )
        .map_err(error::db)?;
        let stmts = Statements {
            lock_keys: a,
            load_idempotency: b,
            load_products: c,
            load_stock: d,
            update_stock: e,
            insert_ledger: f,
            insert_orders: g,
            insert_idempotency: h,
            orders_by_id: i,
            outbox_lock: j,
            insert_outbox: k,
            order_exists: l,
        };
        Ok(Self { client, stmts })
    }
}

/// How a batch failed.
enum Failed {
    /// Nothing was committed; every caller gets this error.
    RolledBack(StoreError),
    /// The connection broke while `COMMIT` was in flight: the batch may or may not have
    /// committed. `probe` is an order the batch created; `answers` are the replies if it
    /// did commit.
    CommitUnknown {
        probe: OrderId,
        answers: Vec<Result<Order>>,
    },
}

struct Task {
    pg: tokio_postgres::Config,
    events: EventSource,
    queue: mpsc::Receiver<Job>,
    conn: Option<Conn>,
    last_connect_failure: Option<Instant>,
}

impl Task {
    async fn run(mut self) {
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        // `recv_many` waits for one job and takes every other job already queued: the
        // batch is whatever arrived while the previous batch was committing.
        while self.queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
            let (cmds, replies): (Vec<_>, Vec<_>) =
                jobs.drain(..).map(|j| (j.cmd, j.reply)).unzip();
            let answers = self.process(&cmds).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                // A caller that stopped waiting still has its order placed; nothing to do.
                let _ = reply.send(answer);
            }
        }
        tracing::debug!("order writer stopped: every store handle was dropped");
    }

    /// Places one batch; returns one answer per command, in order.
    ///
    /// If the batch fails for a reason other than an outage, one order may be to blame (a
    /// value the database refuses, say), and it must not take the others down with it:
    /// the orders are then placed one by one, so each gets its own answer.
    async fn process(&mut self, cmds: &[PlaceOrder]) -> Vec<Result<Order>> {
        match self.attempt(cmds).await {
            Ok(answers) => answers,
            Err(e) if cmds.len() > 1 && !matches!(e, StoreError::Unavailable(_)) => {
                tracing::warn!(
                    orders = cmds.len(),
                    error = %e,
                    "order batch failed; placing its orders one at a time"
                );
                let mut answers = Vec::with_capacity(cmds.len());
                for cmd in cmds {
                    match self.attempt(std::slice::from_ref(cmd)).await {
                        Ok(one) => answers.extend(one),
                        Err(e) => answers.push(Err(e)),
                    }
                }
                answers
            }
            Err(e) => repeat(&e, cmds.len()),
        }
    }

    /// Places `cmds` in one transaction: one answer per command, or the error that failed
    /// the whole transaction (nothing of it committed).
    async fn attempt(&mut self, cmds: &[PlaceOrder]) -> Result<Vec<Result<Order>>> {
        let mut conn = self.take_connection().await?;
        let started = Instant::now();
        // A panic in planning must not kill the writer (every later order would fail):
        // fail this batch, drop the connection (which rolls back) and go on.
        let result = AssertUnwindSafe(place_batch(&mut conn, cmds, &self.events))
            .catch_unwind()
            .await;
        match result {
            Ok(Ok(answers)) => {
                tracing::debug!(
                    orders = cmds.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "order batch committed"
                );
                self.conn = Some(conn);
                Ok(answers)
            }
            Ok(Err(Failed::RolledBack(e))) => {
                // After an outage-class error the connection may be dying even if the
                // driver has not noticed yet (a FATAL arrives before the socket closes):
                // start the next batch on a fresh one.
                if !conn.client.is_closed() && !matches!(e, StoreError::Unavailable(_)) {
                    self.conn = Some(conn);
                }
                Err(e)
            }
            Ok(Err(Failed::CommitUnknown { probe, answers })) => {
                drop(conn);
                match self.committed(probe).await {
                    Ok(true) => Ok(answers),
                    Ok(false) => Err(StoreError::Unavailable(
                        "the database connection was lost; the order was not placed".into(),
                    )),
                    Err(e) => {
                        tracing::error!(
                            order.id = %probe,
                            error = %e,
                            "cannot learn whether an order batch committed"
                        );
                        Err(StoreError::Unavailable(
                            "the database connection was lost while committing; retry with \
                             the same Idempotency-Key to learn the outcome"
                                .into(),
                        ))
                    }
                }
            }
            Err(_) => {
                tracing::error!(
                    orders = cmds.len(),
                    "order writer panicked while placing a batch; it was rolled back"
                );
                Err(StoreError::Internal(
                    "the order writer failed on this batch".into(),
                ))
            }
        }
    }

    /// The open connection, or a new one.
    async fn take_connection(&mut self) -> Result<Conn> {
        if let Some(conn) = self.conn.take()
            && !conn.client.is_closed()
        {
            return Ok(conn);
        }
        if self
            .last_connect_failure
            .is_some_and(|t| t.elapsed() < RECONNECT_BACKOFF)
        {
            return Err(StoreError::Unavailable(
                "cannot connect to the database".into(),
            ));
        }
        match Conn::open(&self.pg).await {
            Ok(conn) => {
                if self.last_connect_failure.take().is_some() {
                    tracing::info!("order writer reconnected to postgres");
                }
                Ok(conn)
            }
            Err(e) => {
                self.last_connect_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Whether `order` was committed, asked on a fresh connection once the transaction
    /// that wrote it has ended: that transaction held the outbox lock from before its
    /// `COMMIT` until it finished, so taking the lock waits for it.
    async fn committed(&mut self, order: OrderId) -> Result<bool> {
        let mut conn = self.take_connection().await?;
        let found = async {
            let tx = conn.client.transaction().await?;
            tx.batch_execute(PROBE_LOCK_TIMEOUT).await?;
            tx.execute(&conn.stmts.outbox_lock, &[]).await?;
            let row = tx
                .query_one(&conn.stmts.order_exists, &[order.as_uuid()])
                .await?;
            let found: bool = row.try_get(0)?;
            tx.rollback().await?;
            Ok::<_, tokio_postgres::Error>(found)
        }
        .await
        .map_err(error::db)?;
        self.conn = Some(conn);
        Ok(found)
    }
}

/// `n` copies of `e` for every caller of a failed batch.
fn repeat(e: &StoreError, n: usize) -> Vec<Result<Order>> {
    (0..n)
        .map(|_| {
            Err(match e {
                StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                StoreError::StockConflict(m) => StoreError::StockConflict(m.clone()),
                StoreError::Validation(v) => StoreError::Validation(v.clone()),
                StoreError::Internal(m) => StoreError::Internal(m.clone()),
                other => StoreError::Internal(other.to_string()),
            })
        })
        .collect()
}

/// The advisory lock key of an idempotency key; the same in every process and version.
fn idempotency_lock(tenant: TenantId, key: &str) -> i64 {
    sql::advisory_key(&[
        b"meridian:idempotency",
        tenant.as_uuid().as_bytes(),
        key.as_bytes(),
    ])
}

fn rolled_back(e: tokio_postgres::Error) -> Failed {
    Failed::RolledBack(error::db(e))
}

/// Steps 1–5 of the module docs for one batch.
async fn place_batch(
    conn: &mut Conn,
    cmds: &[PlaceOrder],
    events: &EventSource,
) -> std::result::Result<Vec<Result<Order>>, Failed> {
    // What the batch names, deduplicated and sorted.
    let mut lock_keys: Vec<i64> = cmds
        .iter()
        .filter_map(|c| {
            c.idempotency_key
                .as_deref()
                .map(|k| idempotency_lock(c.tenant_id, k))
        })
        .collect();
    lock_keys.sort_unstable();
    lock_keys.dedup();
    let idempotency: BTreeSet<(Uuid, &str)> = cmds
        .iter()
        .filter_map(|c| {
            c.idempotency_key
                .as_deref()
                .map(|k| (*c.tenant_id.as_uuid(), k))
        })
        .collect();
    let (key_tenants, keys): (Vec<Uuid>, Vec<&str>) = idempotency.into_iter().unzip();
    let skus: BTreeSet<(Uuid, &str)> = cmds
        .iter()
        .flat_map(|c| {
            c.request
                .lines()
                .iter()
                .map(move |l| (*c.tenant_id.as_uuid(), l.sku.as_str()))
        })
        .collect();
    let (sku_tenants, skus): (Vec<Uuid>, Vec<&str>) = skus.into_iter().unzip();

    let s = &conn.stmts;
    let tx = conn.client.transaction().await.map_err(rolled_back)?;
    // One round trip; the server runs them in this order, so the key locks are held
    // before the idempotency records are read.
    let (_, idempotency_rows, product_rows, stock_rows) = futures::try_join!(
        async {
            if lock_keys.is_empty() {
                Ok(0)
            } else {
                tx.execute(&s.lock_keys, &[&lock_keys]).await
            }
        },
        async {
            if keys.is_empty() {
                Ok(Vec::new())
            } else {
                tx.query(&s.load_idempotency, &[&key_tenants, &keys]).await
            }
        },
        async { tx.query(&s.load_products, &[&sku_tenants, &skus]).await },
        async { tx.query(&s.load_stock, &[&sku_tenants, &skus]).await },
    )
    .map_err(rolled_back)?;
    let mut snapshot =
        snapshot(&idempotency_rows, &product_rows, &stock_rows).map_err(Failed::RolledBack)?;

    let now = meridian_core::now();
    let (outcomes, writes) = plan_batch(&mut snapshot, cmds, events, now);

    // Retries answered with an order from an earlier batch read it back here; those from
    // this batch are in `writes.orders`.
    let created: HashSet<OrderId> = writes.orders.iter().map(|o| o.id).collect();
    let mut earlier: Vec<Uuid> = outcomes
        .iter()
        .filter_map(|o| match o {
            PlaceOutcome::Existing(id) if !created.contains(id) => Some(*id.as_uuid()),
            _ => None,
        })
        .collect();
    earlier.sort_unstable();
    earlier.dedup();

    let (updated, _, _, _, earlier_rows, ()) = futures::try_join!(
        writes::update_stock(&tx, &s.update_stock, &writes.stock, now),
        writes::insert_ledger(&tx, &s.insert_ledger, &writes.ledger),
        writes::insert_orders(&tx, &s.insert_orders, &writes.orders),
        insert_idempotency(&tx, &s.insert_idempotency, &writes.idempotency, now),
        writes::orders_by_id(&tx, &s.orders_by_id, &earlier),
        writes::append_outbox(&tx, &s.outbox_lock, &s.insert_outbox, &writes.events),
    )
    .map_err(rolled_back)?;
    if updated != writes.stock.len() as u64 {
        return Err(Failed::RolledBack(writes::missing_levels(
            writes.stock.len(),
            updated,
        )));
    }
    let earlier = writes::decode_orders(&earlier_rows).map_err(Failed::RolledBack)?;
    let answers = answer(outcomes, &writes.orders, &earlier);

    match tx.commit().await {
        Ok(()) => Ok(answers),
        Err(e) if error::is_connection_lost(&e) => match writes.orders.first() {
            Some(order) => {
                tracing::warn!(error = %e, "postgres connection lost during COMMIT of an order batch");
                Err(Failed::CommitUnknown {
                    probe: order.id,
                    answers,
                })
            }
            // Nothing was written: the answers (rejections, earlier orders) stand.
            None => Ok(answers),
        },
        Err(e) => Err(rolled_back(e)),
    }
}

/// The plan's input, from the rows loaded under lock.
fn snapshot(
    idempotency: &[tokio_postgres::Row],
    products: &[tokio_postgres::Row],
    stock: &[tokio_postgres::Row],
) -> Result<Snapshot> {
    let mut snap = Snapshot::default();
    for row in idempotency {
        snap.idempotency.insert(
            (
                TenantId::from_uuid(rows::get(row, "tenant_id")?),
                rows::get::<String>(row, "key")?,
            ),
            IdempotencyRecord {
                request_hash: rows::get(row, "request_hash")?,
                order_id: OrderId::from_uuid(rows::get(row, "order_id")?),
            },
        );
    }
    for row in products {
        snap.products.insert(
            (
                TenantId::from_uuid(rows::get(row, "tenant_id")?),
                rows::parse(row, "sku")?,
            ),
            ProductRef {
                id: ProductId::from_uuid(rows::get(row, "id")?),
                name: rows::get(row, "name")?,
                price: meridian_core::Money::new(
                    rows::get(row, "price_amount")?,
                    rows::parse(row, "price_currency")?,
                ),
            },
        );
    }
    for row in stock {
        let level = rows::stock_level(row)?;
        snap.stock
            .entry((
                TenantId::from_uuid(rows::get(row, "tenant_id")?),
                level.sku.clone(),
            ))
            .or_default()
            .push(level);
    }
    Ok(snap)
}

/// One answer per outcome: the created order, the earlier order a retry refers to, or the
/// rejection.
fn answer(outcomes: Vec<PlaceOutcome>, created: &[Order], earlier: &[Order]) -> Vec<Result<Order>> {
    let by_id: HashMap<OrderId, &Order> =
        created.iter().chain(earlier).map(|o| (o.id, o)).collect();
    outcomes
        .into_iter()
        .map(|outcome| match outcome {
            PlaceOutcome::Created(order) => Ok(*order),
            PlaceOutcome::Existing(id) => by_id.get(&id).map(|o| (*o).clone()).ok_or_else(|| {
                tracing::error!(order.id = %id, "an idempotency key names a missing order");
                StoreError::Internal(format!("idempotency key refers to missing order {id}"))
            }),
            PlaceOutcome::Rejected(e) => Err(e.into()),
        })
        .collect()
}

async fn insert_idempotency(
    tx: &Transaction<'_>,
    stmt: &Statement,
    records: &[(TenantId, String, IdempotencyRecord)],
    now: Timestamp,
) -> std::result::Result<u64, tokio_postgres::Error> {
    if records.is_empty() {
        return Ok(0);
    }
    let tenants: Vec<Uuid> = records.iter().map(|(t, _, _)| *t.as_uuid()).collect();
    let keys: Vec<&str> = records.iter().map(|(_, k, _)| k.as_str()).collect();
    let hashes: Vec<&str> = records
        .iter()
        .map(|(_, _, r)| r.request_hash.as_str())
        .collect();
    let orders: Vec<Uuid> = records
        .iter()
        .map(|(_, _, r)| *r.order_id.as_uuid())
        .collect();
    tx.execute(stmt, &[&tenants, &keys, &hashes, &orders, &now])
        .await
}
