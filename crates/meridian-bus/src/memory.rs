//! `MemoryBus`: the in-process backend. Nothing is durable; it is the lowest-latency path
//! and the reference the conformance suite runs against first. `meridian bench bus
//! --backend memory` ([`crate::bench`]) measures it.
//!
//! Shape:
//! - A *group* is a consumer name and a pattern; it holds the subscriptions (*members*)
//!   sharing that name. Every group whose pattern matches a topic gets each message
//!   (fan-out); inside a group the message goes to one member, chosen by a hash of its key,
//!   so one key's messages stay in order on one member while membership is stable.
//! - Each member has one queue behind a mutex, holding batches: a `publish_batch` whose
//!   messages share a topic is queued as the `Vec` it arrived in, without moving a message.
//!   The subscription takes the whole queue in one swap, so a busy consumer locks once per
//!   batch rather than once per message, and a publisher wakes the consumer only when it is
//!   parked. An idle consumer can spin briefly before parking ([`MemoryBusConfig::spin`]),
//!   since a wake-up costs more than many messages.
//! - A [`Message`] is one reference-counted buffer (the encoded envelope), so handing it
//!   over, copying it for another group or for redelivery, and freeing it on the consumer's
//!   core are reference-count updates, not one allocation per envelope field.
//! - `next_batch` hands over up to `max` messages from the swapped-out queue in one call,
//!   counting them in flight with one atomic add. A delivery carries its member and a
//!   sequence number ([`MemoryAck`], no box), and `Delivery::ack_all` settles a run of
//!   consecutive sequences with one lock of the tracked copies and one in-flight update, so
//!   a batch costs no future and no allocation per message.
//! - The copies kept for redelivery (`track_unacked`) sit in a queue by sequence number
//!   ([`Tracked`]) behind their own lock, which publishers never take.
//! - Which groups a topic reaches is computed once per topic and cached; a new or removed
//!   group clears the cache. Only valid topics enter the cache, so a hit also means the
//!   topic was validated.
//! - Payload size is the length of the message's encoded envelope.
//!
//! Redelivery needs no copy of the message in the usual cases: a nack hands the message
//! back (`Delivery::nack`), and a delivery dropped without an ack or a nack (*abandoned*:
//! a handler that panicked or returned early, a consumer task that was cancelled) hands
//! its own message back as it is dropped, and is redelivered at once. A delivery still
//! held when its subscription is dropped is redelivered to the group when it is dropped in
//! turn (and not at all if it is acked). What a copy is needed for is a delivery that is
//! *held* past its `ack_wait` by a handler that is stuck: the bus cannot take it back from
//! the handler, so [`MemoryBusConfig::track_unacked`] keeps a copy of each delivery to
//! redeliver then. That copy costs two reference-count updates and their release per
//! message (tens of nanoseconds, more than the rest of the delivery), so it is off by
//! default: in one process a consumer that fails drops its deliveries, and a stuck one is
//! a bug the copy would turn into concurrent duplicates.
//!
//! Lock order: registry → routes → group → member queue → member's tracked copies.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future as _;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use meridian_core::{Topic, valid_segment};
use parking_lot::{Mutex, RwLock};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::{
    Bus, BusError, Capabilities, Delivery, MAX_PAYLOAD_BYTES, Message, StartAt, SubscribeOptions,
    Subscription, TopicPattern,
};

const NAME: &str = "memory";

/// Routes are cached per topic; past this many distinct topics the cache starts over, so a
/// stream of one-off topics cannot grow it without bound.
const ROUTE_CACHE_LIMIT: usize = 4096;

/// How the memory bus trades safety for speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBusConfig {
    /// Keep a copy of each delivered message until it is settled, so that a delivery held
    /// past its `ack_wait` without being settled is redelivered (from the copy) and a
    /// dropped subscription's unsettled deliveries go back to the group at once. Costs one
    /// clone of the message per delivery. Off by default: abandoned (dropped) deliveries
    /// are redelivered without it.
    pub track_unacked: bool,
    /// How long a consumer that has run out of messages keeps polling for new ones before
    /// it parks. Waking a parked task costs microseconds (a futex call and a context
    /// switch), many times the cost of a message, so a short spin keeps a busy stream from
    /// paying it per batch; the price is up to this much CPU each time a consumer goes
    /// idle, during which its worker thread runs nothing else. Zero (the default) parks at
    /// once, which suits a server whose consumers are mostly idle; tens of microseconds
    /// suit a dedicated low-latency stream.
    pub spin: Duration,
}

impl Default for MemoryBusConfig {
    fn default() -> Self {
        Self {
            track_unacked: false,
            spin: Duration::ZERO,
        }
    }
}

/// The in-process bus. Cloning gives another handle on the same bus.
///
/// Capabilities: not durable, no replay (`StartAt::Position` and `StartAt::Time` are
/// refused; `StartAt::Earliest` is `StartAt::New`, since nothing is kept), patterns matched
/// in process, ordered per key. A durable consumer name keeps receiving into a backlog
/// while no subscription is attached, for as long as the bus lives; an ephemeral one is
/// forgotten with its last subscription.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus")
            .field("config", &self.inner.config)
            .field("groups", &self.inner.registry.read().groups.len())
            .finish()
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

struct Inner {
    config: MemoryBusConfig,
    registry: RwLock<Registry>,
    /// Topic → the groups whose pattern matches it.
    routes: RwLock<HashMap<Box<str>, Route>>,
    closed: AtomicBool,
    next_member: AtomicU64,
}

#[derive(Default)]
struct Registry {
    /// By (consumer name, pattern).
    groups: HashMap<(String, String), Arc<Group>>,
}

type Route = Arc<[Arc<Group>]>;

struct Group {
    pattern: TopicPattern,
    durable: bool,
    /// Picks a member from a message's key.
    key_hasher: RandomState,
    state: Mutex<GroupState>,
}

#[derive(Default)]
struct GroupState {
    members: Vec<Arc<Member>>,
    /// Messages of a durable group with no member attached, kept for the next one.
    backlog: VecDeque<Pending>,
    /// Removed from the registry: a publisher holding a stale route drops its message.
    removed: bool,
}

/// A message waiting for delivery and the attempt its next delivery will be.
struct Pending {
    message: Message,
    attempt: u32,
}

/// Messages queued together, in order, all due for the same attempt. A published batch
/// is queued as the very `Vec` it arrived in, so queueing it moves no message.
struct Batch {
    attempt: u32,
    /// A single message, without allocating a `Vec` for it.
    first: Option<Message>,
    rest: std::vec::IntoIter<Message>,
}

impl Batch {
    fn one(p: Pending) -> Self {
        Self {
            attempt: p.attempt,
            first: Some(p.message),
            rest: Vec::new().into_iter(),
        }
    }

    fn new_messages(messages: Vec<Message>) -> Self {
        Self {
            attempt: 1,
            first: None,
            rest: messages.into_iter(),
        }
    }

    /// How many messages the batch still holds.
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn pop(&mut self) -> Option<Pending> {
        let message = self.first.take().or_else(|| self.rest.next())?;
        Some(Pending {
            message,
            attempt: self.attempt,
        })
    }
}

impl Iterator for Batch {
    type Item = Pending;
    fn next(&mut self) -> Option<Pending> {
        self.pop()
    }
}

struct Member {
    id: u64,
    group: Arc<Group>,
    queue: Mutex<MemberQueue>,
    /// Delivered and not yet settled.
    in_flight: AtomicUsize,
    /// The consumer is parked until an ack frees a slot (acks do not take the lock).
    awaiting_credit: AtomicBool,
    /// Copies of delivered messages (with `track_unacked`). Behind its own lock, which
    /// only the consumer's side takes, so settling never contends with publishers.
    tracked: Mutex<Tracked>,
    /// Bumped by every push, so an idle consumer can spin on it without the lock.
    pushes: AtomicU64,
    track_unacked: bool,
    ack_wait: Duration,
}

#[derive(Default)]
struct MemberQueue {
    ready: VecDeque<Batch>,
    /// Nacked messages, due at a time.
    delayed: BinaryHeap<Delayed>,
    waker: Option<Waker>,
    /// The subscription is gone: settling goes back to the group.
    closed: bool,
}

struct Delayed {
    due: Instant,
    pending: Pending,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest due must come out first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.due.cmp(&self.due)
    }
}

struct Unacked {
    message: Message,
    attempt: u32,
    deadline: Instant,
}

/// Copies of delivered messages by delivery sequence. A subscription numbers its
/// deliveries in order and gives each the same ack wait, so the copies form a queue: the
/// oldest one left is the first to expire, and settling is an index, not a hash lookup.
#[derive(Default)]
struct Tracked {
    /// The sequence of `slots[0]`.
    first: u64,
    /// `None` where the delivery was settled but an older one was not.
    slots: VecDeque<Option<Unacked>>,
}

impl Tracked {
    fn insert(&mut self, seq: u64, copy: Unacked) {
        if self.slots.is_empty() {
            self.first = seq;
        }
        // Sequences come in order; a gap would only mean a sequence that was never tracked.
        while self.first + (self.slots.len() as u64) < seq {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(copy));
    }

    fn remove(&mut self, seq: u64) -> Option<Unacked> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        let copy = self.slots.get_mut(i)?.take()?;
        self.trim();
        Some(copy)
    }

    /// Settles deliveries `seqs` (acknowledged together), dropping their copies in place;
    /// returns how many were still tracked. The common case, a run starting at the oldest
    /// tracked delivery, drains the front of the queue.
    fn remove_range(&mut self, seqs: std::ops::Range<u64>) -> usize {
        let start = seqs.start.saturating_sub(self.first);
        let end = seqs.end.saturating_sub(self.first);
        let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
            return 0;
        };
        let end = end.min(self.slots.len());
        if start >= end {
            return 0;
        }
        let removed = if start == 0 {
            let removed = self.slots.drain(..end).filter(Option::is_some).count();
            self.first += end as u64;
            removed
        } else {
            self.slots
                .range_mut(start..end)
                .filter_map(Option::take)
                .count()
        };
        self.trim();
        removed
    }

    fn trim(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first += 1;
        }
    }

    /// When the oldest tracked delivery's ack wait ends.
    fn next_deadline(&self) -> Option<Instant> {
        self.slots.front()?.as_ref().map(|u| u.deadline)
    }

    /// Takes the oldest tracked delivery if its ack wait ended by `now`.
    fn pop_expired(&mut self, now: Instant) -> Option<Unacked> {
        if self.next_deadline()? > now {
            return None;
        }
        let copy = self.slots.pop_front().flatten();
        self.first += 1;
        self.trim();
        copy
    }

    /// Every copy, oldest first.
    fn take_all(&mut self) -> impl Iterator<Item = Unacked> {
        std::mem::take(&mut self.slots).into_iter().flatten()
    }
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::with_config(MemoryBusConfig::default())
    }

    pub fn with_config(config: MemoryBusConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                registry: RwLock::new(Registry::default()),
                routes: RwLock::new(HashMap::new()),
                closed: AtomicBool::new(false),
                next_member: AtomicU64::new(1),
            }),
        }
    }

    /// The settings the bus was made with.
    pub fn config(&self) -> MemoryBusConfig {
        self.inner.config
    }

    /// Shuts the bus down: publishing fails and every subscription's `next` returns
    /// `Closed`. Queued messages are dropped.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let registry = self.inner.registry.read();
        for group in registry.groups.values() {
            for member in &group.state.lock().members {
                member.wake();
            }
        }
    }
}

impl Inner {
    fn check_open(&self) -> Result<(), BusError> {
        if self.closed.load(Ordering::Relaxed) {
            Err(BusError::Closed)
        } else {
            Ok(())
        }
    }

    /// The groups `topic` reaches, validating the topic on a cache miss.
    fn route(&self, topic: &Topic) -> Result<Route, BusError> {
        if let Some(route) = self.routes.read().get(topic.as_str()) {
            return Ok(route.clone());
        }
        self.route_slow(topic)
    }

    #[cold]
    fn route_slow(&self, topic: &Topic) -> Result<Route, BusError> {
        // `Topic` can be deserialized without validation, so check it again here.
        let topic = Topic::parse(topic.as_str()).map_err(BusError::InvalidTopic)?;
        // Holding the registry lock while filling the cache keeps a concurrent subscribe
        // (which clears the cache under the write lock) from being overwritten by a stale
        // route.
        let registry = self.registry.read();
        let route: Route = registry
            .groups
            .values()
            .filter(|g| g.pattern.matches(&topic))
            .cloned()
            .collect();
        let mut routes = self.routes.write();
        if routes.len() >= ROUTE_CACHE_LIMIT {
            routes.clear();
        }
        routes.insert(topic.as_str().into(), route.clone());
        Ok(route)
    }

    /// The route of `messages` if they are all acceptable and on one topic.
    fn uniform_route(&self, messages: &[Message]) -> Option<Route> {
        let first = messages.first()?;
        if self.check_open().is_err() {
            return None;
        }
        let route = self.route(&first.topic).ok()?;
        messages
            .iter()
            .all(|m| m.topic == first.topic && check_size(m).is_ok())
            .then_some(route)
    }

    /// Hands messages that share a route to every group in it: cloned for all but the
    /// last group.
    fn deliver(&self, route: &[Arc<Group>], messages: Vec<Message>) {
        let Some((last, rest)) = route.split_last() else {
            return;
        };
        for group in rest {
            group.push_new(messages.clone());
        }
        last.push_new(messages);
    }

    /// [`Inner::deliver`] for one message, without a `Vec`.
    fn deliver_one(&self, route: &[Arc<Group>], message: Message) {
        let Some((last, rest)) = route.split_last() else {
            return;
        };
        for group in rest {
            group.push_one(message.clone());
        }
        last.push_one(message);
    }
}

impl Group {
    fn member_index(&self, key: &str, members: usize) -> usize {
        if members == 1 {
            return 0;
        }
        (self.key_hasher.hash_one(key) % members as u64) as usize
    }

    /// Routes new messages to the members by key (or to the backlog), taking each lock
    /// once for the whole run.
    fn push_new(&self, messages: Vec<Message>) {
        let mut state = self.state.lock();
        if state.removed {
            return;
        }
        match state.members.len() {
            // Only durable groups outlive their last member.
            0 => state.backlog.extend(Batch::new_messages(messages)),
            1 => state.members[0].push_batch(Batch::new_messages(messages)),
            n => {
                let mut split: Vec<Vec<Message>> = (0..n).map(|_| Vec::new()).collect();
                for m in messages {
                    split[self.member_index(m.key(), n)].push(m);
                }
                for (member, part) in state.members.iter().zip(split) {
                    if !part.is_empty() {
                        member.push_batch(Batch::new_messages(part));
                    }
                }
            }
        }
    }

    fn push_one(&self, message: Message) {
        let mut state = self.state.lock();
        let pending = Pending {
            message,
            attempt: 1,
        };
        self.push_locked(&mut state, pending, None);
    }

    /// Routes one message back into the group (a redelivery, or a dropped member's
    /// messages), due at once or at `due`.
    fn push_locked(&self, state: &mut GroupState, pending: Pending, due: Option<Instant>) {
        if state.removed {
            return;
        }
        if state.members.is_empty() {
            state.backlog.push_back(pending);
            return;
        }
        let i = self.member_index(pending.message.key(), state.members.len());
        state.members[i].push(pending, due);
    }
}

impl Member {
    fn push_batch(&self, batch: Batch) {
        let waker = {
            let mut q = self.queue.lock();
            q.ready.push_back(batch);
            self.pushes.fetch_add(1, Ordering::Release);
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn push(&self, pending: Pending, due: Option<Instant>) {
        let waker = {
            let mut q = self.queue.lock();
            match due {
                Some(due) => q.delayed.push(Delayed { due, pending }),
                None => q.ready.push_back(Batch::one(pending)),
            }
            self.pushes.fetch_add(1, Ordering::Release);
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn wake(&self) {
        let waker = self.queue.lock().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Frees one delivery's slot and wakes a consumer waiting for one.
    fn release(&self) {
        self.release_many(1);
    }

    /// Frees `n` slots with one update and wakes a consumer waiting for one.
    fn release_many(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.in_flight.fetch_sub(n, Ordering::SeqCst);
        // A plain load first: the swap (a locked instruction) only when someone waits.
        if self.awaiting_credit.load(Ordering::SeqCst)
            && self.awaiting_credit.swap(false, Ordering::SeqCst)
        {
            self.wake();
        }
    }

    /// Settles delivery `seq`: frees its slot and returns the tracked copy. With tracking,
    /// whoever removes the copy frees the slot, so a delivery whose ack wait expired (and
    /// was redelivered) is not counted twice.
    fn settle(&self, seq: u64) -> Option<Unacked> {
        if !self.track_unacked {
            self.release();
            return None;
        }
        let copy = self.tracked.lock().remove(seq);
        if copy.is_some() {
            self.release();
        }
        copy
    }

    /// Settles deliveries `seqs` (acknowledged together) with one lock and one in-flight
    /// update. The copies are dropped under the lock, which only the consumer's side takes.
    fn settle_range(&self, seqs: std::ops::Range<u64>) {
        if !self.track_unacked {
            self.release_many((seqs.end - seqs.start) as usize);
            return;
        }
        let settled = self.tracked.lock().remove_range(seqs);
        self.release_many(settled);
    }

    /// Redelivers `pending`, after `delay` if given: to this member while it is
    /// subscribed, otherwise back to the group.
    fn requeue(&self, pending: Pending, delay: Option<Duration>) {
        let due = delay.map(|d| Instant::now() + d);
        let mut q = self.queue.lock();
        if !q.closed {
            // Under the lock: a subscription being dropped drains the queue after this.
            match due {
                Some(due) => q.delayed.push(Delayed { due, pending }),
                None => q.ready.push_back(Batch::one(pending)),
            }
            self.pushes.fetch_add(1, Ordering::Release);
            let waker = q.waker.take();
            drop(q);
            if let Some(w) = waker {
                w.wake();
            }
            return;
        }
        drop(q);
        let mut state = self.group.state.lock();
        self.group.push_locked(&mut state, pending, due);
    }
}

/// Settles one delivery of the memory bus: the member that delivered it and its
/// sequence number, carried in the [`Delivery`] itself (no allocation per delivery).
pub(crate) struct MemoryAck {
    member: Arc<Member>,
    seq: u64,
    attempt: u32,
}

impl MemoryAck {
    /// Acknowledges; the tracked copy is dropped outside the lock.
    pub(crate) fn ack(&mut self) {
        drop(self.member.settle(self.seq));
    }

    /// Redelivers `message` after `delay`, with the attempt count raised.
    pub(crate) fn nack_with(&mut self, message: Message, delay: Duration) {
        let copy = self.member.settle(self.seq);
        // With tracking, no copy means the ack wait expired and the message was already
        // redelivered; requeueing it again would duplicate it.
        if copy.is_some() || !self.member.track_unacked {
            drop(copy);
            self.redeliver(message, Some(delay));
        }
    }

    fn redeliver(&self, message: Message, delay: Option<Duration>) {
        let pending = Pending {
            message,
            attempt: self.attempt + 1,
        };
        self.member.requeue(pending, delay);
    }
}

impl MemoryAck {
    /// The delivery was dropped without an ack or a nack: redeliver `message` now rather
    /// than after the ack wait. With tracking, a delivery whose ack wait already expired
    /// was redelivered from its copy and is not redelivered again.
    pub(crate) fn abandon(&mut self, message: &Message) {
        let copy = self.member.settle(self.seq);
        if copy.is_some() || !self.member.track_unacked {
            drop(copy);
            self.redeliver(message.clone(), None);
        }
    }
}

/// Acknowledgements collected by [`Delivery::ack_all`]: consecutive deliveries of one
/// subscription are settled together ([`Member::settle_range`]) when the run breaks, ends
/// or is dropped.
#[derive(Default)]
pub(crate) struct AckRun {
    member: Option<Arc<Member>>,
    seqs: std::ops::Range<u64>,
}

impl AckRun {
    pub(crate) fn push(&mut self, ack: MemoryAck) {
        let continues = self.seqs.end == ack.seq
            && self
                .member
                .as_ref()
                .is_some_and(|m| Arc::ptr_eq(m, &ack.member));
        if continues {
            self.seqs.end += 1;
            return;
        }
        self.finish();
        self.seqs = ack.seq..ack.seq + 1;
        self.member = Some(ack.member.clone());
    }

    /// Settles the run collected so far.
    pub(crate) fn finish(&mut self) {
        if let Some(member) = self.member.take() {
            member.settle_range(std::mem::take(&mut self.seqs));
        }
    }
}

impl Drop for AckRun {
    fn drop(&mut self) {
        self.finish();
    }
}

struct MemorySubscription {
    inner: Arc<Inner>,
    member: Arc<Member>,
    /// Taken from the shared queue in one swap, delivered one by one.
    local: VecDeque<Batch>,
    max_in_flight: usize,
    next_seq: u64,
    timer: Option<Pin<Box<Sleep>>>,
    spin: Duration,
    /// `Member::pushes` when this subscription last looked at the queue.
    seen_pushes: u64,
}

impl MemorySubscription {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Delivery, BusError>> {
        match self.poll_ready(cx) {
            Poll::Ready(Ok(p)) => Poll::Ready(Ok(self.deliver(p))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// [`MemorySubscription::poll_next`] for up to `max` deliveries: the first as `next`
    /// gets it, then what `local` already holds, within the in-flight limit.
    fn poll_next_batch(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Vec<Delivery>, BusError>> {
        let first = match self.poll_ready(cx) {
            Poll::Ready(Ok(p)) => p,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        // `poll_ready` checked that one more slot is free; the others are counted here.
        let in_flight = self.member.in_flight.load(Ordering::SeqCst);
        let room = self.max_in_flight.saturating_sub(in_flight).max(1);
        let max = max.clamp(1, room);
        let mut out = Vec::with_capacity(max.min(self.local_len_hint() + 1));
        let member = self.member.clone();
        // Only this subscription and settling take this lock, never a publisher.
        let mut tracked = member
            .track_unacked
            .then(|| (member.tracked.lock(), Instant::now() + member.ack_wait));
        let mut next = Some(first);
        while let Some(p) = next {
            self.next_seq += 1;
            let seq = self.next_seq;
            if let Some((tracked, deadline)) = &mut tracked {
                let copy = Unacked {
                    message: p.message.clone(),
                    attempt: p.attempt,
                    deadline: *deadline,
                };
                tracked.insert(seq, copy);
            }
            let ack = MemoryAck {
                member: self.member.clone(),
                seq,
                attempt: p.attempt,
            };
            out.push(Delivery::memory(p.message, p.attempt, ack));
            next = if out.len() < max {
                self.pop_local()
            } else {
                None
            };
        }
        drop(tracked);
        // Counted once for the whole batch; nothing can settle these before they are
        // returned.
        self.member.in_flight.fetch_add(out.len(), Ordering::SeqCst);
        Poll::Ready(Ok(out))
    }

    /// How many messages the front batch of `local` still holds (a capacity hint).
    fn local_len_hint(&self) -> usize {
        self.local.front().map_or(0, Batch::len)
    }

    /// Waits until a message can be delivered (a free in-flight slot and a message) and
    /// takes it from `local`.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<Pending, BusError>> {
        loop {
            if self.inner.closed.load(Ordering::Relaxed) {
                return Poll::Ready(Err(BusError::Closed));
            }
            if self.member.in_flight.load(Ordering::SeqCst) >= self.max_in_flight {
                // Park until an ack (or an expired ack wait) frees a slot. Announce it, then
                // check again: an ack may have landed in between.
                let deadline = {
                    let mut q = self.member.queue.lock();
                    let next_expiry = self.reap_expired(&mut q, Instant::now());
                    q.waker = Some(cx.waker().clone());
                    next_expiry
                };
                self.member.awaiting_credit.store(true, Ordering::SeqCst);
                if self.member.in_flight.load(Ordering::SeqCst) >= self.max_in_flight {
                    return self.park_on_timer(cx, deadline);
                }
                continue;
            }
            if let Some(p) = self.pop_local() {
                return Poll::Ready(Ok(p));
            }
            self.spin_for_pushes();
            let deadline = {
                let mut q = self.member.queue.lock();
                if q.closed {
                    return Poll::Ready(Err(BusError::Closed));
                }
                let now = Instant::now();
                while q.delayed.peek().is_some_and(|d| d.due <= now) {
                    if let Some(d) = q.delayed.pop() {
                        q.ready.push_back(Batch::one(d.pending));
                    }
                }
                let next_expiry = self.reap_expired(&mut q, now);
                self.seen_pushes = self.member.pushes.load(Ordering::Acquire);
                if !q.ready.is_empty() {
                    // One swap takes the whole batch; `local` is empty here.
                    std::mem::swap(&mut self.local, &mut q.ready);
                    continue;
                }
                q.waker = Some(cx.waker().clone());
                let next_delayed = q.delayed.peek().map(|d| d.due);
                match (next_delayed, next_expiry) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            return self.park_on_timer(cx, deadline);
        }
    }

    fn pop_local(&mut self) -> Option<Pending> {
        loop {
            let batch = self.local.front_mut()?;
            if let Some(p) = batch.pop() {
                return Some(p);
            }
            self.local.pop_front();
        }
    }

    /// Waits up to the configured spin for a push after the last one this subscription saw.
    fn spin_for_pushes(&self) {
        let pushed = || self.member.pushes.load(Ordering::Acquire) != self.seen_pushes;
        if self.spin.is_zero() || pushed() {
            return;
        }
        let until = std::time::Instant::now() + self.spin;
        loop {
            for _ in 0..64 {
                std::hint::spin_loop();
                if pushed() {
                    return;
                }
            }
            if std::time::Instant::now() >= until {
                return;
            }
        }
    }

    /// Moves tracked deliveries whose ack wait has passed back to the ready queue, freeing
    /// their slots; a late ack of one finds no copy and changes nothing. Returns when the
    /// next tracked delivery's ack wait ends.
    fn reap_expired(&self, q: &mut MemberQueue, now: Instant) -> Option<Instant> {
        if !self.member.track_unacked {
            return None;
        }
        let mut tracked = self.member.tracked.lock();
        while let Some(u) = tracked.pop_expired(now) {
            self.member.in_flight.fetch_sub(1, Ordering::SeqCst);
            debug!(topic = %u.message.topic, attempt = u.attempt, "ack wait expired; redelivering");
            q.ready.push_back(Batch::one(Pending {
                message: u.message,
                attempt: u.attempt + 1,
            }));
        }
        tracked.next_deadline()
    }

    /// Returns `Pending`, arming the timer for `deadline` (a nack's due time or an ack
    /// wait's expiry); wakes at once if the deadline already passed.
    fn park_on_timer<T>(
        &mut self,
        cx: &mut Context<'_>,
        deadline: Option<Instant>,
    ) -> Poll<Result<T, BusError>> {
        let Some(deadline) = deadline else {
            return Poll::Pending;
        };
        let timer = match &mut self.timer {
            Some(t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if timer.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    fn deliver(&mut self, p: Pending) -> Delivery {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.member.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.member.track_unacked {
            let copy = Unacked {
                message: p.message.clone(),
                attempt: p.attempt,
                deadline: Instant::now() + self.member.ack_wait,
            };
            self.member.tracked.lock().insert(seq, copy);
        }
        let ack = MemoryAck {
            member: self.member.clone(),
            seq,
            attempt: p.attempt,
        };
        Delivery::memory(p.message, p.attempt, ack)
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        // Cancel-safe: a message leaves `local` only in the poll that returns it.
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, BusError> {
        // Cancel-safe as `next`: messages leave `local` only in the poll that returns them.
        std::future::poll_fn(|cx| self.poll_next_batch(cx, max)).await
    }

    /// The messages the consumer group holds and has not acknowledged: queued for any of
    /// its members (due now or nacked for later, or in the backlog of a durable group with
    /// no member), taken into this subscription's buffer and not yet delivered, and
    /// delivered to any member and not yet settled (in flight). Messages another member
    /// has already taken into its own buffer are not counted. Read under the group's and
    /// each member's queue lock, one length per queued batch; no message is touched.
    async fn lag(&mut self) -> Option<u64> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return None;
        }
        let local: usize = self.local.iter().map(Batch::len).sum();
        let state = self.member.group.state.lock();
        let mut held = local + state.backlog.len();
        for member in &state.members {
            let queued = {
                let q = member.queue.lock();
                q.ready.iter().map(Batch::len).sum::<usize>() + q.delayed.len()
            };
            held += queued + member.in_flight.load(Ordering::SeqCst);
        }
        Some(held as u64)
    }
}

impl Drop for MemorySubscription {
    /// Gives everything this member holds back to its group, in order, before any newer
    /// message can reach another member; removes an ephemeral group left empty.
    fn drop(&mut self) {
        let group = self.member.group.clone();
        let mut registry = self.inner.registry.write();
        let mut state = group.state.lock();
        state.members.retain(|m| m.id != self.member.id);
        let (ready, delayed, unacked) = {
            let mut q = self.member.queue.lock();
            q.closed = true;
            q.waker = None;
            let unacked: Vec<Unacked> = self.member.tracked.lock().take_all().collect();
            (
                std::mem::take(&mut q.ready),
                std::mem::take(&mut q.delayed),
                unacked,
            )
        };
        for p in self.local.drain(..).chain(ready).flatten() {
            group.push_locked(&mut state, p, None);
        }
        for d in delayed.into_vec() {
            group.push_locked(&mut state, d.pending, Some(d.due));
        }
        for u in unacked {
            let pending = Pending {
                message: u.message,
                attempt: u.attempt + 1,
            };
            group.push_locked(&mut state, pending, None);
        }
        if state.members.is_empty() && !group.durable {
            state.removed = true;
            drop(state);
            registry.groups.retain(|_, g| !Arc::ptr_eq(g, &group));
            self.inner.routes.write().clear();
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            replay: false,
            native_wildcards: true,
            native_dlq: false,
            ordered_per_key: true,
        }
    }

    async fn publish(&self, message: Message) -> Result<(), BusError> {
        let inner = &*self.inner;
        inner.check_open()?;
        let route = inner.route(&message.topic)?;
        check_size(&message)?;
        inner.deliver_one(&route, message);
        Ok(())
    }

    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<(), BusError>> {
        let inner = &*self.inner;
        // The usual batch (an outbox drain, a burst of one event type) is all valid and on
        // one topic: it is queued as it is, without moving a message.
        if let Some(route) = inner.uniform_route(&messages) {
            let n = messages.len();
            inner.deliver(&route, messages);
            return (0..n).map(|_| Ok(())).collect();
        }
        let mut out = Vec::with_capacity(messages.len());
        // Consecutive messages usually share a topic: they form a run that is routed with
        // one cache lookup and handed over with one lock per member.
        let mut run: Vec<Message> = Vec::new();
        let mut run_route: Option<Route> = None;
        for message in messages {
            let same_topic = run.last().is_some_and(|m| m.topic == message.topic);
            let checked = inner.check_open().and_then(|()| {
                let route = match &run_route {
                    Some(_) if same_topic => None,
                    _ => Some(inner.route(&message.topic)?),
                };
                check_size(&message)?;
                Ok(route)
            });
            match checked {
                Ok(None) => run.push(message),
                Ok(Some(route)) => {
                    if let Some(previous) = run_route.replace(route) {
                        inner.deliver(&previous, std::mem::take(&mut run));
                    }
                    run.push(message);
                }
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            }
            out.push(Ok(()));
        }
        if let Some(route) = run_route {
            inner.deliver(&route, run);
        }
        out
    }

    async fn subscribe(
        &self,
        pattern: &TopicPattern,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let inner = &self.inner;
        inner.check_open()?;
        if !valid_segment(&options.consumer) {
            return Err(BusError::InvalidTopic(format!(
                "consumer name {:?} must be 1 or more of a-z, 0-9, '_' and '-'",
                options.consumer
            )));
        }
        match options.start {
            StartAt::New | StartAt::Earliest => {}
            StartAt::Position(_) | StartAt::Time(_) => {
                return Err(BusError::Unsupported {
                    backend: NAME,
                    what: "replay from a position or a time",
                });
            }
        }
        let member = {
            let mut registry = inner.registry.write();
            let key = (options.consumer.clone(), pattern.as_str().to_owned());
            let mut created = false;
            let group = registry
                .groups
                .entry(key)
                .or_insert_with(|| {
                    created = true;
                    Arc::new(Group {
                        pattern: pattern.clone(),
                        durable: options.durable,
                        key_hasher: RandomState::new(),
                        state: Mutex::new(GroupState::default()),
                    })
                })
                .clone();
            let member = Arc::new(Member {
                id: inner.next_member.fetch_add(1, Ordering::Relaxed),
                group: group.clone(),
                queue: Mutex::new(MemberQueue::default()),
                in_flight: AtomicUsize::new(0),
                awaiting_credit: AtomicBool::new(false),
                tracked: Mutex::new(Tracked::default()),
                pushes: AtomicU64::new(0),
                track_unacked: inner.config.track_unacked,
                ack_wait: options.ack_wait,
            });
            let mut state = group.state.lock();
            state.members.push(member.clone());
            // A durable group's backlog goes to its first member back.
            let backlog = std::mem::take(&mut state.backlog);
            for p in backlog {
                group.push_locked(&mut state, p, None);
            }
            drop(state);
            if created {
                // A new group changes which groups a topic reaches.
                inner.routes.write().clear();
            }
            member
        };
        Ok(Box::new(MemorySubscription {
            inner: inner.clone(),
            member,
            local: VecDeque::new(),
            max_in_flight: options.max_in_flight.max(1),
            next_seq: 0,
            timer: None,
            spin: inner.config.spin,
            seen_pushes: 0,
        }))
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.inner.check_open()
    }
}

/// Refuses a message whose encoded envelope exceeds [`MAX_PAYLOAD_BYTES`]: a length
/// check, since the message carries its encoding.
fn check_size(message: &Message) -> Result<(), BusError> {
    let size = message.as_bytes().len();
    if size > MAX_PAYLOAD_BYTES {
        return Err(BusError::PayloadTooLarge {
            size,
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::{Envelope, TenantId};

    fn copy(n: u64, deadline: Instant) -> Unacked {
        let envelope = Envelope::new(
            "/meridian/d/oms",
            "meridian.oms.order.created",
            TenantId::new(),
            format!("order-{n}"),
            meridian_core::now(),
            serde_json::json!({ "n": n }),
        );
        Unacked {
            message: Message::new(Topic::platform("d", "oms", "order.created"), envelope),
            attempt: 1,
            deadline,
        }
    }

    fn keys(copies: impl IntoIterator<Item = Unacked>) -> Vec<String> {
        copies
            .into_iter()
            .map(|u| u.message.key().to_owned())
            .collect()
    }

    #[test]
    fn tracked_copies_settle_by_sequence_and_expire_oldest_first() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut tracked = Tracked::default();
        for seq in 1..=5 {
            tracked.insert(seq, copy(seq, at(seq)));
        }
        // Settling out of order leaves a hole; settling the oldest moves the front.
        assert_eq!(keys(tracked.remove(3)), ["order-3"]);
        assert!(tracked.remove(3).is_none(), "settled twice");
        assert_eq!(tracked.next_deadline(), Some(at(1)));
        assert_eq!(keys(tracked.remove(1)), ["order-1"]);
        assert_eq!(tracked.next_deadline(), Some(at(2)));
        // Expiry takes the oldest copies whose deadline passed, skipping settled ones.
        assert!(tracked.pop_expired(at(1)).is_none());
        assert_eq!(keys(tracked.pop_expired(at(4))), ["order-2"]);
        assert_eq!(keys(tracked.pop_expired(at(4))), ["order-4"]);
        assert!(tracked.pop_expired(at(4)).is_none());
        assert!(tracked.remove(2).is_none(), "expired copies are gone");
        // A sequence below the window or never given out finds nothing.
        assert!(tracked.remove(0).is_none() && tracked.remove(99).is_none());
        tracked.insert(7, copy(7, at(7)));
        assert_eq!(keys(tracked.take_all()), ["order-5", "order-7"]);
        assert_eq!(tracked.next_deadline(), None);
    }
}
