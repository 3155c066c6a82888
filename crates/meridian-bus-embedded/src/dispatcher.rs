//! Dispatch: one task per consumer name turns the shared log into deliveries.
//!
//! The dispatcher of consumer `c` owns everything about `c` in this process:
//!
//! - **Position.** `scanned` is the highest seq it has read from the log (matching or not).
//!   `outstanding` holds every fetched message not yet acknowledged. The durable watermark
//!   is `min(outstanding ∪ acks not yet durable ∪ {scanned + 1}) - 1`: every matching
//!   message at or below it is acknowledged. Acknowledgements above the watermark (out of
//!   order, say in a group) are stored as rows until the watermark passes them; nacks are
//!   stored with their attempt count and due time. After a restart the consumer reads from
//!   the watermark, skips the stored acks and restores the stored nacks, so no acknowledged
//!   message comes back and no unacknowledged one is lost.
//! - **Group.** Every subscription with this name in this process is a member. Messages are
//!   routed to a member by a hash of their key (the envelope's subject), so one key's
//!   messages go through one member's FIFO channel in seq order. Each member holds at most
//!   `max_in_flight` unacknowledged deliveries; the rest wait in its queue. When a member
//!   joins or leaves, queued messages are routed again and the leaver's unacknowledged
//!   deliveries are redelivered to the others.
//! - **Redelivery.** A delivery not settled within `ack_wait` is queued again, as is a nacked
//!   one once its delay has passed; each delivery raises the attempt count.
//! - **Durability of settles.** Acks and nacks of a durable consumer are group-committed: at
//!   most one settle job is in flight; everything acknowledged meanwhile goes into the next
//!   job, and each caller is answered after its job commits. A failed job puts its messages
//!   back for redelivery.
//! - **Wake-ups.** Publishes in this process advance a `watch` of the log's head, which
//!   wakes every dispatcher at once; a slow poll picks up appends by other processes (and
//!   retries a failed fetch).
//! - **Lifetime.** A dispatcher starts with the first subscription to its name and stops
//!   once the last one is gone and its settles are written. An ephemeral consumer is
//!   forgotten then; a durable one is loaded again from the database by the next.
//!
//! Nothing here blocks: database work runs in spawned tasks that report back as commands.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use meridian_bus::{
    AckHandle, BusError, Delivery, Message, StartAt, SubscribeOptions, Subscription, TopicPattern,
};
use meridian_core::valid_segment;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::log::{ConsumerRecord, Fetched, Log, PendingRow, Settle, micros};

/// Entries read from the log per fetch.
const FETCH_LIMIT: usize = 1024;

/// How often a dispatcher looks at the log without being woken: appends by another process
/// (a second instance, a CLI) are seen within this, and the watermark is checkpointed.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

type Reply<T> = oneshot::Sender<Result<T, BusError>>;

/// Everything a dispatcher is told: by subscriptions, by delivery handles, and by its own
/// database tasks reporting back.
enum Command {
    Join {
        member: Member,
        pattern: TopicPattern,
        durable: bool,
        start: StartAt,
        reply: Reply<()>,
    },
    Leave {
        member: u64,
    },
    Ack {
        seq: u64,
        reply: Reply<()>,
    },
    Nack {
        seq: u64,
        attempt: u32,
        delay: Duration,
        reply: Reply<()>,
    },
    Fetched {
        generation: u64,
        result: Result<Fetched, BusError>,
    },
    Settled {
        generation: u64,
        result: Result<(), BusError>,
    },
    /// The consumer's lag (see [`Dispatcher::lag`]).
    Lag {
        reply: oneshot::Sender<Option<u64>>,
    },
}

/// The consumers of one bus: a dispatcher task per consumer name, started on first use.
pub(crate) struct Registry {
    log: Arc<dyn Log>,
    head: watch::Receiver<u64>,
    shutdown: watch::Receiver<()>,
    dispatchers: Arc<Dispatchers>,
    next_member: AtomicU64,
}

/// The running dispatchers by consumer name. A dispatcher removes itself when its consumer
/// has no subscriptions left, so names used once do not pile up.
type Dispatchers = Mutex<HashMap<String, mpsc::UnboundedSender<Command>>>;

/// How often `subscribe` retries when it met a dispatcher that was just stopping.
const JOIN_TRIES: usize = 3;

impl Registry {
    /// `shutdown` ends every dispatcher when its sender is dropped (with the bus).
    pub(crate) fn new(
        log: Arc<dyn Log>,
        head: watch::Receiver<u64>,
        shutdown: watch::Receiver<()>,
    ) -> Self {
        Self {
            log,
            head,
            shutdown,
            dispatchers: Arc::new(Mutex::new(HashMap::new())),
            next_member: AtomicU64::new(1),
        }
    }

    pub(crate) async fn subscribe(
        &self,
        pattern: &TopicPattern,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        if !valid_segment(&options.consumer) {
            return Err(BusError::InvalidTopic(format!(
                "consumer name {:?} must be 1 or more of a-z, 0-9, '_' and '-'",
                options.consumer
            )));
        }
        for _ in 0..JOIN_TRIES {
            let commands = self.dispatcher(&options.consumer)?;
            let id = self.next_member.fetch_add(1, Ordering::Relaxed);
            let (deliveries, rx) = mpsc::unbounded_channel();
            let (reply, answer) = oneshot::channel();
            let join = Command::Join {
                member: Member {
                    id,
                    deliveries,
                    max_in_flight: options.max_in_flight.max(1),
                    ack_wait: options.ack_wait.max(Duration::from_millis(1)),
                    in_flight: 0,
                    queue: BTreeSet::new(),
                },
                pattern: pattern.clone(),
                durable: options.durable,
                start: options.start,
                reply,
            };
            if commands.send(join).is_err() {
                // The dispatcher stopped after we found it (or the bus is closing).
                continue;
            }
            match answer.await {
                Ok(result) => {
                    result?;
                    return Ok(Box::new(EmbeddedSubscription {
                        deliveries: rx,
                        member: id,
                        commands,
                    }));
                }
                // Dropped unanswered: the dispatcher was stopping; a new one takes over.
                Err(_) => continue,
            }
        }
        Err(BusError::Closed)
    }

    /// The command channel of `consumer`'s dispatcher, starting it if needed.
    fn dispatcher(&self, consumer: &str) -> Result<mpsc::UnboundedSender<Command>, BusError> {
        let mut dispatchers = self
            .dispatchers
            .lock()
            .map_err(|_| BusError::Internal("the consumer registry lock is poisoned".into()))?;
        if let Some(tx) = dispatchers.get(consumer).filter(|tx| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let dispatcher = Dispatcher {
            name: consumer.to_owned(),
            registry: Arc::clone(&self.dispatchers),
            joined: false,
            log: Arc::clone(&self.log),
            commands_tx: tx.clone(),
            group: None,
            generation: 0,
            fetching: false,
            fetch_failed: false,
            poll_due: true,
            settling: None,
            queued_acks: Vec::new(),
            queued_nacks: Vec::new(),
            head: 0,
        };
        tokio::spawn(dispatcher.run(rx, self.head.clone(), self.shutdown.clone()));
        dispatchers.insert(consumer.to_owned(), tx.clone());
        Ok(tx)
    }
}

/// One subscription: a member of its consumer's group.
struct EmbeddedSubscription {
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    member: u64,
    commands: mpsc::UnboundedSender<Command>,
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        self.deliveries.recv().await.ok_or(BusError::Closed)
    }

    /// See [`Dispatcher::lag`]; `None` once the bus is closed.
    async fn lag(&mut self) -> Option<u64> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Lag { reply }).ok()?;
        answer.await.ok().flatten()
    }
}

impl Drop for EmbeddedSubscription {
    fn drop(&mut self) {
        // The dispatcher may already be gone (bus closed); then there is nothing to leave.
        let _ = self.commands.send(Command::Leave {
            member: self.member,
        });
    }
}

/// Settles one delivery through its dispatcher.
struct Handle {
    seq: u64,
    attempt: u32,
    commands: mpsc::UnboundedSender<Command>,
}

#[async_trait]
impl AckHandle for Handle {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Ack {
                seq: self.seq,
                reply,
            })
            .map_err(|_| BusError::Closed)?;
        answer.await.map_err(|_| BusError::Closed)?
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Nack {
                seq: self.seq,
                attempt: self.attempt,
                delay,
                reply,
            })
            .map_err(|_| BusError::Closed)?;
        answer.await.map_err(|_| BusError::Closed)?
    }
}

struct Member {
    id: u64,
    deliveries: mpsc::UnboundedSender<Delivery>,
    max_in_flight: usize,
    ack_wait: Duration,
    in_flight: usize,
    /// Routed here, waiting for a free in-flight slot, lowest seq first.
    queue: BTreeSet<u64>,
}

/// A fetched message that is not acknowledged yet.
struct Pending {
    /// The message; each delivery takes a copy (a reference count, see [`Message`]).
    message: Message,
    key_hash: u64,
    /// Deliveries made so far.
    attempts: u32,
    /// A `bus_pending` row exists for it (it was nacked), to delete once it is acked.
    nack_stored: bool,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a member's queue (or unassigned while the group has no members).
    Queued,
    InFlight {
        member: u64,
        deadline: Instant,
    },
    /// Nacked; queued again at `until`.
    Waiting {
        until: Instant,
    },
}

/// The settle job in flight: what to undo if it fails.
struct SettleJob {
    acked: BTreeMap<u64, Pending>,
    watermark: u64,
    replies: Vec<Reply<()>>,
}

/// A consumer's state while it has been joined at least once (per generation).
struct Group {
    pattern: TopicPattern,
    durable: bool,
    scanned: u64,
    persisted_watermark: u64,
    outstanding: BTreeMap<u64, Pending>,
    /// Acknowledged in memory, not yet durable (queued acks; the job's are in `settling`).
    acking: BTreeMap<u64, Pending>,
    /// Stored acks above the watermark, still to be skipped when fetched.
    skip: BTreeSet<u64>,
    /// Stored nacks not fetched yet.
    stored_nacks: BTreeMap<u64, PendingRow>,
    members: Vec<Member>,
    /// Queued while the group has no members.
    unassigned: BTreeSet<u64>,
    /// Ack-wait deadlines and nack delays; stale entries are skipped when they fire.
    timers: BTreeSet<(Instant, u64)>,
}

impl Group {
    fn window(&self) -> usize {
        let in_flight: usize = self.members.iter().map(|m| m.max_in_flight).sum();
        (2 * in_flight).max(4 * FETCH_LIMIT)
    }

    fn route(&mut self, seq: u64) {
        let Some(p) = self.outstanding.get(&seq) else {
            return;
        };
        if self.members.is_empty() {
            self.unassigned.insert(seq);
        } else {
            let i = (p.key_hash % self.members.len() as u64) as usize;
            self.members[i].queue.insert(seq);
        }
    }

    /// Routes every queued message again, after the membership changed.
    fn rebalance(&mut self) {
        let mut queued = std::mem::take(&mut self.unassigned);
        for m in &mut self.members {
            queued.append(&mut m.queue);
        }
        for seq in queued {
            self.route(seq);
        }
    }

    /// Hands queued messages to members with free slots; returns the members whose
    /// subscription is gone without a Leave (a `subscribe` cancelled after it joined).
    fn pump(&mut self, commands: &mpsc::UnboundedSender<Command>) -> Vec<u64> {
        let now = Instant::now();
        let mut gone = Vec::new();
        for m in &mut self.members {
            if m.deliveries.is_closed() {
                gone.push(m.id);
                continue;
            }
            while m.in_flight < m.max_in_flight {
                let Some(seq) = m.queue.pop_first() else {
                    break;
                };
                let Some(p) = self.outstanding.get_mut(&seq) else {
                    continue;
                };
                let attempt = p.attempts + 1;
                let message = p.message.clone();
                let delivery = Delivery::new(
                    message,
                    attempt,
                    Some(seq),
                    Box::new(Handle {
                        seq,
                        attempt,
                        commands: commands.clone(),
                    }),
                );
                if m.deliveries.send(delivery).is_err() {
                    // The subscription is gone; its Leave is on the way and will route this
                    // message to someone else.
                    m.queue.insert(seq);
                    break;
                }
                let deadline = later(now, m.ack_wait);
                p.attempts = attempt;
                p.state = State::InFlight {
                    member: m.id,
                    deadline,
                };
                m.in_flight += 1;
                self.timers.insert((deadline, seq));
            }
        }
        gone
    }

    /// Frees the in-flight slot and the timer that `seq` in `state` holds, if any.
    fn release(&mut self, seq: u64, state: State) {
        match state {
            State::InFlight { member, deadline } => {
                self.timers.remove(&(deadline, seq));
                if let Some(m) = self.members.iter_mut().find(|m| m.id == member) {
                    m.in_flight = m.in_flight.saturating_sub(1);
                }
            }
            State::Waiting { until } => {
                self.timers.remove(&(until, seq));
            }
            State::Queued => {}
        }
    }

    fn unqueue(&mut self, seq: u64) {
        self.unassigned.remove(&seq);
        for m in &mut self.members {
            if m.queue.remove(&seq) {
                break;
            }
        }
    }

    /// The highest seq at or below which every matching message is acknowledged, counting
    /// acks not yet durable as not acknowledged (the caller writes the ones it settles in
    /// the same transaction as the watermark).
    fn watermark(&self) -> u64 {
        let low = [self.outstanding.keys().next(), self.acking.keys().next()]
            .into_iter()
            .flatten()
            .fold(self.scanned + 1, |low, first| low.min(*first));
        low - 1
    }
}

struct Dispatcher {
    name: String,
    registry: Arc<Dispatchers>,
    /// A Join has been handled (until then the dispatcher is not idle, only new).
    joined: bool,
    log: Arc<dyn Log>,
    commands_tx: mpsc::UnboundedSender<Command>,
    group: Option<Group>,
    /// Raised whenever the group is replaced, so late answers for the old one are ignored.
    generation: u64,
    fetching: bool,
    /// The last fetch failed; the next waits for the poll.
    fetch_failed: bool,
    poll_due: bool,
    settling: Option<SettleJob>,
    queued_acks: Vec<Reply<()>>,
    queued_nacks: Vec<(PendingRow, Reply<()>)>,
    /// The log's head as last seen by this process's publishes.
    head: u64,
}

impl Dispatcher {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut head: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<()>,
    ) {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut head_open = true;
        loop {
            self.head = *head.borrow();
            self.maybe_fetch(self.head);
            self.maybe_settle();
            let next_timer = self
                .group
                .as_ref()
                .and_then(|g| g.timers.first().map(|(t, _)| *t));
            tokio::select! {
                // Timers and the poll before commands: a steady stream of acks must not
                // starve ack-wait redeliveries or the poll.
                biased;
                _ = shutdown.changed() => break,
                _ = sleep_until(next_timer) => self.fire_timers(),
                _ = poll.tick() => {
                    self.poll_due = true;
                    self.fetch_failed = false;
                    self.checkpoint();
                }
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    // Commands win over head changes in this select; a lag asked for right
                    // after a publish must still count it.
                    self.head = *head.borrow();
                    self.handle(command).await;
                    // Take everything else already queued, so acks batch into one settle.
                    while let Ok(command) = commands.try_recv() {
                        self.handle(command).await;
                    }
                }
                changed = head.changed(), if head_open => {
                    if changed.is_err() {
                        head_open = false;
                    }
                }
            }
            if let Some(g) = &mut self.group {
                for gone in g.pump(&self.commands_tx) {
                    self.leave(gone);
                }
            }
            if self.idle() {
                self.stop(&mut commands);
                break;
            }
        }
        tracing::debug!(consumer = %self.name, "dispatcher stopped");
    }

    /// No subscription left and nothing waiting to be written: everything this dispatcher
    /// knows is in the database (durable) or meant to be forgotten (ephemeral).
    fn idle(&self) -> bool {
        if !self.joined {
            // Just started: its first Join may not have arrived yet.
            return false;
        }
        let no_members = self.group.as_ref().is_none_or(|g| g.members.is_empty());
        no_members
            && self.settling.is_none()
            && self.queued_acks.is_empty()
            && self.queued_nacks.is_empty()
    }

    /// Leaves the registry and refuses what is still queued: a `subscribe` whose Join is
    /// refused (reply dropped) retries with a new dispatcher; settling a delivery of a
    /// consumer with no subscriptions left fails with `Closed` and it is redelivered later.
    fn stop(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) {
        if let Ok(mut registry) = self.registry.lock()
            && registry
                .get(&self.name)
                .is_some_and(|tx| tx.same_channel(&self.commands_tx))
        {
            registry.remove(&self.name);
        }
        commands.close();
        while let Ok(command) = commands.try_recv() {
            match command {
                Command::Ack { reply, .. } | Command::Nack { reply, .. } => {
                    let _ = reply.send(Err(BusError::Closed));
                }
                Command::Join { .. }
                | Command::Lag { .. }
                | Command::Leave { .. }
                | Command::Fetched { .. }
                | Command::Settled { .. } => {}
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Join {
                member,
                pattern,
                durable,
                start,
                reply,
            } => {
                self.joined = true;
                let result = self.join(member, pattern, durable, start).await;
                let _ = reply.send(result);
            }
            Command::Leave { member } => self.leave(member),
            Command::Ack { seq, reply } => self.ack(seq, reply),
            Command::Nack {
                seq,
                attempt,
                delay,
                reply,
            } => self.nack(seq, attempt, delay, reply),
            Command::Fetched { generation, result } => self.fetched(generation, result),
            Command::Settled { generation, result } => self.settled(generation, result),
            Command::Lag { reply } => {
                let _ = reply.send(self.lag());
            }
        }
    }

    /// Messages fetched for the consumer and not yet durably acknowledged, stored nacks not
    /// fetched yet, and the log entries after what the dispatcher has read (of any topic:
    /// the ones the pattern does not match are only known once read, so the last term is an
    /// upper bound while the consumer is behind).
    fn lag(&self) -> Option<u64> {
        let g = self.group.as_ref()?;
        let held = g.outstanding.len() + g.acking.len() + g.stored_nacks.len();
        let settling = self.settling.as_ref().map_or(0, |job| job.acked.len());
        Some((held + settling) as u64 + self.head.saturating_sub(g.scanned))
    }

    async fn join(
        &mut self,
        member: Member,
        pattern: TopicPattern,
        durable: bool,
        start: StartAt,
    ) -> Result<(), BusError> {
        let reset = match &self.group {
            None => true,
            Some(g) if g.pattern == pattern => false,
            Some(g) if g.members.is_empty() => true,
            Some(g) => {
                tracing::warn!(
                    consumer = %self.name, current = %g.pattern, asked = %pattern,
                    "refused a group member with a different pattern"
                );
                return Err(BusError::Unsupported {
                    backend: "embedded",
                    what: "members of one consumer group subscribing to different patterns",
                });
            }
        };
        if reset {
            let group = self.load(&pattern, durable, start).await?;
            // Settles queued for the old group (acks sent after its last subscription
            // left) were not written: refuse them, so those messages count as unacked.
            for reply in self.queued_acks.drain(..) {
                let _ = reply.send(Err(BusError::Closed));
            }
            for (_, reply) in self.queued_nacks.drain(..) {
                let _ = reply.send(Err(BusError::Closed));
            }
            self.generation += 1;
            self.group = Some(group);
            self.fetching = false;
            self.poll_due = true;
        }
        if let Some(g) = &mut self.group {
            g.members.push(member);
            g.rebalance();
        }
        Ok(())
    }

    /// A fresh group: a durable consumer's stored position, or `start` for a new one.
    async fn load(
        &self,
        pattern: &TopicPattern,
        durable: bool,
        start: StartAt,
    ) -> Result<Group, BusError> {
        let initial = match start {
            StartAt::New => self.log.head().await?,
            StartAt::Earliest => 0,
            // Positions are SQL integers; one beyond them can only be waited for.
            StartAt::Position(p) => p.saturating_sub(1).min(i64::MAX as u64),
            StartAt::Time(t) => match self.log.first_at(t).await? {
                Some(seq) => seq - 1,
                None => self.log.head().await?,
            },
        };
        let record = if durable {
            self.log
                .open_consumer(&self.name, pattern.as_str(), initial)
                .await?
        } else {
            ConsumerRecord {
                acked_through: initial,
                ..ConsumerRecord::default()
            }
        };
        tracing::debug!(
            consumer = %self.name, pattern = %pattern, durable,
            acked_through = record.acked_through, "consumer opened"
        );
        Ok(Group {
            pattern: pattern.clone(),
            durable,
            scanned: record.acked_through,
            persisted_watermark: record.acked_through,
            outstanding: BTreeMap::new(),
            acking: BTreeMap::new(),
            skip: record.acked.into_iter().collect(),
            stored_nacks: record.pending.into_iter().map(|p| (p.seq, p)).collect(),
            members: Vec::new(),
            unassigned: BTreeSet::new(),
            timers: BTreeSet::new(),
        })
    }

    fn leave(&mut self, member: u64) {
        let Some(g) = &mut self.group else { return };
        let Some(i) = g.members.iter().position(|m| m.id == member) else {
            return;
        };
        let gone = g.members.remove(i);
        let mut requeue: Vec<u64> = gone.queue.into_iter().collect();
        for (seq, p) in &mut g.outstanding {
            if let State::InFlight {
                member: m,
                deadline,
            } = p.state
                && m == member
            {
                p.state = State::Queued;
                g.timers.remove(&(deadline, *seq));
                requeue.push(*seq);
            }
        }
        if g.members.is_empty() && !g.durable {
            // An ephemeral consumer is forgotten with its last subscription.
            self.group = None;
            self.generation += 1;
            self.queued_acks.clear();
            self.queued_nacks.clear();
            return;
        }
        for seq in requeue {
            g.route(seq);
        }
        g.rebalance();
    }

    fn ack(&mut self, seq: u64, reply: Reply<()>) {
        let Some(g) = &mut self.group else {
            // Nothing left to acknowledge (an ephemeral consumer that ended).
            let _ = reply.send(Ok(()));
            return;
        };
        let Some(p) = g.outstanding.remove(&seq) else {
            // Already acknowledged (say, once per redelivery): acking is idempotent.
            let _ = reply.send(Ok(()));
            return;
        };
        g.release(seq, p.state);
        if p.state == State::Queued {
            g.unqueue(seq);
        }
        if !g.durable {
            let _ = reply.send(Ok(()));
            return;
        }
        g.acking.insert(seq, p);
        self.queued_acks.push(reply);
    }

    fn nack(&mut self, seq: u64, attempt: u32, delay: Duration, reply: Reply<()>) {
        let Some(g) = &mut self.group else {
            let _ = reply.send(Ok(()));
            return;
        };
        let Some(p) = g.outstanding.get_mut(&seq) else {
            let _ = reply.send(Ok(()));
            return;
        };
        // Only the current delivery may nack: a nack of an earlier one that timed out and
        // was redelivered is stale.
        if !matches!(p.state, State::InFlight { .. }) || p.attempts != attempt {
            let _ = reply.send(Ok(()));
            return;
        }
        let state = p.state;
        let until = later(Instant::now(), delay);
        p.state = State::Waiting { until };
        let durable_row = g.durable.then(|| {
            p.nack_stored = true;
            PendingRow {
                seq,
                attempts: p.attempts,
                not_before_micros: micros(meridian_core::now())
                    .saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX)),
            }
        });
        g.release(seq, state);
        g.timers.insert((until, seq));
        match durable_row {
            Some(row) => self.queued_nacks.push((row, reply)),
            None => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn fire_timers(&mut self) {
        let Some(g) = &mut self.group else { return };
        let now = Instant::now();
        while let Some(&(at, seq)) = g.timers.first() {
            if at > now {
                break;
            }
            g.timers.pop_first();
            let Some(p) = g.outstanding.get_mut(&seq) else {
                continue;
            };
            let due = match p.state {
                State::InFlight { deadline, .. } => deadline == at,
                State::Waiting { until } => until == at,
                State::Queued => false,
            };
            if due {
                let state = std::mem::replace(&mut p.state, State::Queued);
                g.release(seq, state);
                g.route(seq);
            }
        }
    }

    fn maybe_fetch(&mut self, head: u64) {
        let Some(g) = &self.group else { return };
        let room = g.outstanding.len() + g.acking.len() < g.window();
        if self.fetching
            || self.fetch_failed
            || g.members.is_empty()
            || !room
            || !(self.poll_due || head > g.scanned)
        {
            return;
        }
        self.fetching = true;
        self.poll_due = false;
        let (log, tx, generation) = (
            Arc::clone(&self.log),
            self.commands_tx.clone(),
            self.generation,
        );
        let (after, pattern) = (g.scanned, g.pattern.clone());
        tokio::spawn(async move {
            let result = log.fetch(after, pattern, FETCH_LIMIT).await;
            let _ = tx.send(Command::Fetched { generation, result });
        });
    }

    fn fetched(&mut self, generation: u64, result: Result<Fetched, BusError>) {
        if generation != self.generation {
            return;
        }
        self.fetching = false;
        let fetched = match result {
            Ok(f) => f,
            Err(e) => {
                // Try again at the next poll rather than in a tight loop.
                tracing::warn!(consumer = %self.name, error = %e, "bus fetch failed");
                self.fetch_failed = true;
                return;
            }
        };
        let Some(g) = &mut self.group else { return };
        if fetched.more {
            // Someone else's appends may not have moved our head watch; keep reading.
            self.poll_due = true;
        }
        if fetched.through <= g.scanned {
            return;
        }
        let now = Instant::now();
        let wall_now = micros(meridian_core::now());
        for entry in fetched.entries {
            if entry.seq <= g.scanned || g.skip.contains(&entry.seq) {
                continue;
            }
            let (attempts, nack_stored, state) = match g.stored_nacks.get(&entry.seq) {
                Some(row) if row.not_before_micros > wall_now => {
                    let wait = (row.not_before_micros - wall_now) as u64;
                    let until = later(now, Duration::from_micros(wait));
                    g.timers.insert((until, entry.seq));
                    (row.attempts, true, State::Waiting { until })
                }
                Some(row) => (row.attempts, true, State::Queued),
                None => (0, false, State::Queued),
            };
            let mut hasher = DefaultHasher::new();
            entry.message.key().hash(&mut hasher);
            g.outstanding.insert(
                entry.seq,
                Pending {
                    key_hash: hasher.finish(),
                    message: entry.message,
                    attempts,
                    nack_stored,
                    state,
                },
            );
            if state == State::Queued {
                g.route(entry.seq);
            }
        }
        g.scanned = fetched.through;
        // Stored acks and nacks at or below `scanned` have been applied.
        g.skip = g.skip.split_off(&(g.scanned + 1));
        g.stored_nacks = g.stored_nacks.split_off(&(g.scanned + 1));
    }

    /// Starts the next settle job if none is running and there is something to write.
    fn maybe_settle(&mut self) {
        if self.settling.is_some() {
            return;
        }
        let Some(g) = &mut self.group else { return };
        if !g.durable || (self.queued_acks.is_empty() && self.queued_nacks.is_empty()) {
            return;
        }
        let acked = std::mem::take(&mut g.acking);
        let watermark = g.watermark().max(g.persisted_watermark);
        let job = SettleJob {
            acked,
            watermark,
            replies: std::mem::take(&mut self.queued_acks),
        };
        let mut settle = Settle {
            consumer: self.name.clone(),
            acks: job.acked.range(watermark + 1..).map(|(s, _)| *s).collect(),
            unpend: job
                .acked
                .iter()
                .filter(|(s, p)| p.nack_stored && **s > watermark)
                .map(|(s, _)| *s)
                .collect(),
            nacks: Vec::with_capacity(self.queued_nacks.len()),
            watermark: (watermark > g.persisted_watermark).then_some(watermark),
        };
        let mut job = job;
        for (row, reply) in self.queued_nacks.drain(..) {
            settle.nacks.push(row);
            job.replies.push(reply);
        }
        self.start_settle(settle, job);
    }

    /// Stores the watermark when it moved without acks (past messages the pattern does not
    /// match), so a restart does not scan them again.
    fn checkpoint(&mut self) {
        if self.settling.is_some() {
            return;
        }
        let Some(g) = &self.group else { return };
        let watermark = g.watermark();
        if !g.durable || watermark <= g.persisted_watermark {
            return;
        }
        let settle = Settle {
            consumer: self.name.clone(),
            watermark: Some(watermark),
            ..Settle::default()
        };
        let job = SettleJob {
            acked: BTreeMap::new(),
            watermark,
            replies: Vec::new(),
        };
        self.start_settle(settle, job);
    }

    fn start_settle(&mut self, settle: Settle, job: SettleJob) {
        let (log, tx, generation) = (
            Arc::clone(&self.log),
            self.commands_tx.clone(),
            self.generation,
        );
        self.settling = Some(job);
        tokio::spawn(async move {
            let result = if settle.is_empty() {
                Ok(())
            } else {
                log.settle(settle).await
            };
            let _ = tx.send(Command::Settled { generation, result });
        });
    }

    fn settled(&mut self, generation: u64, result: Result<(), BusError>) {
        let Some(job) = self.settling.take() else {
            return;
        };
        let current = generation == self.generation;
        match result {
            Ok(()) => {
                if current && let Some(g) = &mut self.group {
                    g.persisted_watermark = g.persisted_watermark.max(job.watermark);
                }
                for reply in job.replies {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!(consumer = %self.name, error = %e, "storing acks failed; redelivering");
                if current && let Some(g) = &mut self.group {
                    // Not durable, so not acknowledged: deliver them again.
                    for (seq, mut p) in job.acked {
                        p.state = State::Queued;
                        g.outstanding.insert(seq, p);
                        g.route(seq);
                    }
                }
                for reply in job.replies {
                    let _ = reply.send(Err(same_error(&e)));
                }
            }
        }
    }
}

fn same_error(e: &BusError) -> BusError {
    match e {
        BusError::Unavailable(m) => BusError::Unavailable(m.clone()),
        BusError::Closed => BusError::Closed,
        other => BusError::Internal(other.to_string()),
    }
}

/// `now + wait`, or a century from now for a wait too long to represent (`Duration::MAX`
/// means "not before I say so", not a panic).
fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
