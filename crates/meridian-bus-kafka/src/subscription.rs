//! Subscriptions: one consumer-group member each, polled by a thread of its own; the
//! pattern filter, the in-flight limit, client-side redelivery and offset commits.
//!
//! Per assigned partition the subscription keeps the offsets it has fetched but not yet
//! settled. The offset it commits is the lowest unsettled one (or one past the last
//! fetched when all are settled), so nothing unsettled is ever committed past. Messages
//! outside the pattern are settled as they arrive.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use meridian_bus::{
    AckHandle, BusError, Delivery, Message, StartAt, SubscribeOptions, Subscription, TopicPattern,
};
use meridian_core::valid_segment;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Headers, Message as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList, TopicPartitionListElem};
use rdkafka::{ClientContext, Timestamp};

use crate::Inner;
use crate::error::{internal, unavailable};
use crate::naming;

/// Fetched messages a subscription buffers beyond those in flight; above this it stops
/// taking more from librdkafka (whose own prefetch is bounded by
/// `queued.max.messages.kbytes`), except for one poll every [`FULL_POLL_EVERY`].
const BUFFER: usize = 1024;

/// How long `subscribe` waits for the group to hand this member its partitions, so that
/// messages published right after it returns are read.
const JOIN_WAIT: Duration = Duration::from_secs(8);

/// How often the polling thread commits offsets that advanced without an ack (messages
/// outside the pattern).
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// While the buffer is full the consumer is still polled this often, so that rebalances
/// (which run inside a poll) are not held up for long.
const FULL_POLL_EVERY: Duration = Duration::from_secs(2);

/// The longest a lag query waits for the broker: a gauge sample must not hold up
/// deliveries while the broker is slow or away.
const LAG_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// A partition of a Kafka topic.
type Tp = (String, i32);

pub(crate) struct KafkaSubscription {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

/// What the subscription, its polling thread, its rebalance callback and its ack handles
/// share.
struct Shared {
    state: Mutex<State>,
    notify: tokio::sync::Notify,
    pattern: TopicPattern,
    max_in_flight: usize,
    ack_wait: Duration,
    timeout: Duration,
    /// Serializes commits so that an older offset never lands after a newer one.
    commit_lock: Mutex<()>,
    /// The consumer, owned by the polling thread; gone once the subscription is dropped.
    consumer: OnceLock<Weak<BaseConsumer<Ctx>>>,
}

#[derive(Default)]
struct State {
    /// Fetched, matching, not yet handed out.
    ready: VecDeque<Pending>,
    /// Nacked or timed out, to be handed out again once due.
    retry: Vec<Pending>,
    /// Handed out, not yet settled, by (partition, offset).
    in_flight: HashMap<(Tp, i64), InFlight>,
    /// The partitions this member holds now.
    parts: HashMap<Tp, Part>,
    next_epoch: u64,
    next_seq: u64,
    /// The group assigned partitions at least once.
    assigned: bool,
}

struct Pending {
    tp: Tp,
    offset: i64,
    epoch: u64,
    message: Message,
    attempt: u32,
    due: Instant,
}

struct InFlight {
    seq: u64,
    epoch: u64,
    deadline: Instant,
    message: Message,
    attempt: u32,
}

struct Part {
    /// Changes with every assignment, so settling a delivery from an earlier assignment of
    /// the partition touches nothing.
    epoch: u64,
    unsettled: BTreeSet<i64>,
    /// One past the last fetched offset.
    fetched_to: Option<i64>,
    committed: Option<i64>,
}

impl Part {
    /// The offset that may be committed: nothing unsettled lies below it.
    fn commit_point(&self) -> Option<i64> {
        self.unsettled.first().copied().or(self.fetched_to)
    }

    fn needs_commit(&self) -> Option<i64> {
        let point = self.commit_point()?;
        (self.committed.is_none_or(|c| point > c)).then_some(point)
    }
}

/// Where partitions start that the group has no committed offset for: the offsets worked
/// out at subscribe time; partitions not listed (topics created later) start at their
/// beginning, since all of their messages were published after the subscription began.
#[derive(Default)]
struct StartPlan {
    offsets: HashMap<Tp, i64>,
}

/// The consumer's context: runs the rebalance.
struct Ctx {
    shared: Arc<Shared>,
    plan: StartPlan,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    // librdkafka has already applied the assignment (or revocation) between these two:
    // revoked partitions are committed before they go, assigned ones are re-assigned with
    // explicit start offsets right after.
    fn pre_rebalance(&self, rebalance: &Rebalance<'_>) {
        let Some(consumer) = self.shared.consumer.get().and_then(Weak::upgrade) else {
            // Closing: the final commit happened before.
            return;
        };
        match rebalance {
            Rebalance::Revoke(tpl) => self.revoke(&consumer, tpl),
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka: rebalance error"),
        }
    }

    fn post_rebalance(&self, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance
            && let Some(consumer) = self.shared.consumer.get().and_then(Weak::upgrade)
        {
            self.assign(&consumer, tpl);
        }
    }
}

impl Ctx {
    /// Starts each partition at the group's committed offset or, when it has none, at the
    /// subscription's start (and commits that, so that other members of the group agree).
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let mut assignment = tpl.clone();
        match consumer.committed_offsets(tpl.clone(), self.shared.timeout) {
            Ok(committed) => {
                let mut wanted = TopicPartitionList::new();
                let mut first = TopicPartitionList::new();
                for e in elements(&committed) {
                    let tp = (e.topic().to_owned(), e.partition());
                    let offset = match e.offset() {
                        Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                        _ => match self.plan.offsets.get(&tp) {
                            Some(&o) => {
                                let _ = first.add_partition_offset(&tp.0, tp.1, Offset::Offset(o));
                                Offset::Offset(o)
                            }
                            None => Offset::Beginning,
                        },
                    };
                    let _ = wanted.add_partition_offset(&tp.0, tp.1, offset);
                }
                if first.count() > 0
                    && let Err(e) = consumer.commit(&first, CommitMode::Sync)
                {
                    tracing::warn!(error = %e, "kafka: cannot commit the start offsets");
                }
                assignment = wanted;
            }
            Err(e) => {
                // librdkafka then reads the committed offsets itself (or starts at the
                // beginning): nothing is skipped.
                tracing::warn!(error = %e, "kafka: cannot read committed offsets");
            }
        }
        {
            let mut st = self.shared.state.lock();
            for e in elements(tpl) {
                st.next_epoch += 1;
                let part = Part {
                    epoch: st.next_epoch,
                    unsettled: BTreeSet::new(),
                    fetched_to: None,
                    committed: None,
                };
                st.parts.insert((e.topic().to_owned(), e.partition()), part);
            }
            st.assigned = true;
        }
        if let Err(e) = consumer.assign(&assignment) {
            tracing::error!(error = %e, "kafka: assign failed");
        }
        tracing::debug!(partitions = tpl.count(), pattern = %self.shared.pattern, "kafka: partitions assigned");
        self.shared.notify.notify_one();
    }

    /// Commits what the partitions settled and forgets them; their buffered messages go
    /// (the next owner reads them from the committed offset).
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked: Vec<Tp> = elements(tpl)
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        if let Err(e) = self.shared.commit(consumer, Some(&revoked)) {
            tracing::warn!(error = %e, "kafka: commit on revoke failed");
        }
        let mut st = self.shared.state.lock();
        for tp in &revoked {
            st.parts.remove(tp);
        }
        st.ready.retain(|p| !revoked.contains(&p.tp));
        st.retry.retain(|p| !revoked.contains(&p.tp));
        tracing::debug!(partitions = revoked.len(), "kafka: partitions revoked");
    }
}

impl Shared {
    /// Commits the commit point of `only` (or every held partition) where it advanced.
    fn commit(
        &self,
        consumer: &BaseConsumer<Ctx>,
        only: Option<&[Tp]>,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let _serial = self.commit_lock.lock();
        let points: Vec<(Tp, u64, i64)> = {
            let st = self.state.lock();
            st.parts
                .iter()
                .filter(|(tp, _)| only.is_none_or(|o| o.contains(tp)))
                .filter_map(|(tp, p)| p.needs_commit().map(|o| (tp.clone(), p.epoch, o)))
                .collect()
        };
        if points.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), _, offset) in &points {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        consumer.commit(&tpl, CommitMode::Sync)?;
        let mut st = self.state.lock();
        for (tp, epoch, offset) in points {
            if let Some(p) = st.parts.get_mut(&tp)
                && p.epoch == epoch
            {
                p.committed = Some(p.committed.map_or(offset, |c| c.max(offset)));
            }
        }
        Ok(())
    }

    /// Commits one partition from an ack, off the async runtime.
    async fn commit_from_ack(self: &Arc<Self>, tp: Tp) -> Result<(), BusError> {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || {
            let Some(consumer) = shared.consumer.get().and_then(Weak::upgrade) else {
                // The subscription is gone: the group redelivers from the last commit.
                return Err(BusError::Closed);
            };
            shared
                .commit(&consumer, Some(std::slice::from_ref(&tp)))
                .map_err(|e| unavailable("cannot commit the consumer's offset", e))
        })
        .await
        .map_err(|e| internal("a commit panicked", e))?
    }

    /// The group's lag on the partitions this member holds, asked of the broker (blocking:
    /// call it off the async runtime). `None` before the first assignment, once the
    /// subscription is gone, or when a request fails or runs out of `timeout` (logged at
    /// debug).
    fn lag_blocking(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        let consumer = self.consumer.get().and_then(Weak::upgrade)?;
        let parts: Vec<Tp> = {
            let st = self.state.lock();
            if !st.assigned {
                return None;
            }
            st.parts.keys().cloned().collect()
        };
        if parts.is_empty() {
            return Some(0);
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &parts {
            tpl.add_partition(topic, *partition);
        }
        let committed = match consumer.committed_offsets(tpl, timeout) {
            Ok(committed) => committed,
            Err(e) => {
                tracing::debug!(error = %e, "kafka: consumer lag not read (committed offsets)");
                return None;
            }
        };
        let mut lag = 0u64;
        for e in elements(&committed) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::debug!("kafka: consumer lag query timed out");
                return None;
            }
            let (low, high) = match consumer.fetch_watermarks(e.topic(), e.partition(), left) {
                Ok(marks) => marks,
                Err(err) => {
                    tracing::debug!(error = %err, topic = e.topic(), partition = e.partition(), "kafka: consumer lag not read (watermarks)");
                    return None;
                }
            };
            let from = match e.offset() {
                Offset::Offset(o) if o >= 0 => o,
                _ => low,
            };
            lag = lag.saturating_add(u64::try_from(high.saturating_sub(from)).unwrap_or(0));
        }
        Some(lag)
    }

    /// Takes one fetched record: buffered if it matches the pattern, settled at once if not.
    fn take(&self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let tp = (m.topic().to_owned(), m.partition());
        let offset = m.offset();
        let topic = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == naming::TOPIC_HEADER)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        });
        let message = match (topic, m.payload()) {
            (Some(topic), Some(payload)) => match Message::decode(topic, payload) {
                Ok(message) => Some(message),
                Err(e) => {
                    tracing::warn!(error = %e, topic = %tp.0, partition = tp.1, offset, "kafka: undecodable record skipped");
                    None
                }
            },
            _ => {
                tracing::warn!(topic = %tp.0, partition = tp.1, offset, "kafka: record without a Meridian topic skipped");
                None
            }
        };
        let mut st = self.state.lock();
        let Some(part) = st.parts.get_mut(&tp) else {
            return;
        };
        part.fetched_to = Some(offset + 1);
        let Some(message) = message.filter(|m| self.pattern.matches(&m.topic)) else {
            return;
        };
        part.unsettled.insert(offset);
        let epoch = part.epoch;
        st.ready.push_back(Pending {
            tp,
            offset,
            epoch,
            message,
            attempt: 1,
            due: Instant::now(),
        });
        drop(st);
        self.notify.notify_one();
    }

    /// Hands out the next delivery if one is ready and the in-flight limit allows it;
    /// otherwise the instant something may become due.
    fn poll_delivery(self: &Arc<Self>) -> Result<Delivery, Option<Instant>> {
        let mut st = self.state.lock();
        let now = Instant::now();
        // Deliveries past their ack wait go back to the retry queue.
        let expired: Vec<(Tp, i64)> = st
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(f) = st.in_flight.remove(&key)
                && st.parts.get(&key.0).is_some_and(|p| p.epoch == f.epoch)
            {
                st.retry.push(Pending {
                    tp: key.0,
                    offset: key.1,
                    epoch: f.epoch,
                    message: f.message,
                    attempt: f.attempt.saturating_add(1),
                    due: now,
                });
            }
        }
        if st.in_flight.len() < self.max_in_flight {
            let due = st
                .retry
                .iter()
                .enumerate()
                .filter(|(_, p)| p.due <= now)
                .min_by_key(|(_, p)| p.due)
                .map(|(i, _)| i);
            let next = match due {
                Some(i) => Some(st.retry.swap_remove(i)),
                None => st.ready.pop_front(),
            };
            if let Some(p) = next {
                st.next_seq += 1;
                let seq = st.next_seq;
                st.in_flight.insert(
                    (p.tp.clone(), p.offset),
                    InFlight {
                        seq,
                        epoch: p.epoch,
                        deadline: now + self.ack_wait,
                        message: p.message.clone(),
                        attempt: p.attempt,
                    },
                );
                let position = naming::position(p.tp.1, p.offset);
                return Ok(Delivery::new(
                    p.message,
                    p.attempt,
                    position,
                    Box::new(KafkaAck {
                        shared: self.clone(),
                        tp: p.tp,
                        offset: p.offset,
                        seq,
                        epoch: p.epoch,
                    }),
                ));
            }
        }
        let retry_due = st.retry.iter().map(|p| p.due).min();
        let expiry = st.in_flight.values().map(|f| f.deadline).min();
        Err(match (retry_due, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Ends one delivery: it leaves the in-flight set. Returns whether it still belongs to
    /// the current assignment of its partition.
    fn release(&self, st: &mut State, tp: &Tp, offset: i64, seq: u64, epoch: u64) -> bool {
        let key = (tp.clone(), offset);
        if st.in_flight.get(&key).is_some_and(|f| f.seq == seq) {
            st.in_flight.remove(&key);
        }
        st.parts.get(tp).is_some_and(|p| p.epoch == epoch)
    }
}

impl KafkaSubscription {
    pub(crate) async fn open(
        inner: Arc<Inner>,
        pattern: &TopicPattern,
        options: SubscribeOptions,
    ) -> Result<KafkaSubscription, BusError> {
        if !valid_segment(&options.consumer) {
            return Err(BusError::Internal(format!(
                "invalid consumer name {:?}: use a-z, 0-9, '_' and '-'",
                options.consumer
            )));
        }
        let (topics, regex) = inner.topics_for(pattern).await?;
        if regex && matches!(options.start, StartAt::Position(_)) {
            // Offsets are per partition of one topic: a position cannot name a point in
            // several domain topics.
            return Err(BusError::Unsupported {
                backend: "kafka",
                what: "starting at a position on a pattern that spans domains",
            });
        }
        let group = naming::group_id(pattern.deployment(), &options.consumer);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            notify: tokio::sync::Notify::new(),
            pattern: pattern.clone(),
            max_in_flight: options.max_in_flight.max(1),
            ack_wait: options.ack_wait,
            timeout: inner.config.request_timeout,
            commit_lock: Mutex::new(()),
            consumer: OnceLock::new(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let subscription = if topics.is_empty() {
            // A pattern that can match nothing: a subscription that never delivers.
            Vec::new()
        } else if regex {
            vec![naming::deployment_regex(pattern.deployment())]
        } else {
            topics.clone()
        };
        let setup = {
            let subscription = subscription.clone();
            let inner = inner.clone();
            let shared = shared.clone();
            let stop = stop.clone();
            let start = options.start;
            let durable = options.durable;
            tokio::task::spawn_blocking(move || -> Result<(), BusError> {
                let plan = start_plan(&inner, &topics, start)?;
                let consumer: BaseConsumer<Ctx> = inner
                    .config
                    .client_config()
                    .set("group.id", &group)
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("auto.offset.reset", "earliest")
                    .set("enable.partition.eof", "false")
                    .set("partition.assignment.strategy", "roundrobin")
                    .set("session.timeout.ms", "10000")
                    .set("heartbeat.interval.ms", "500")
                    .set("topic.metadata.refresh.interval.ms", "3000")
                    .set("fetch.wait.max.ms", "100")
                    .set("queued.max.messages.kbytes", "16384")
                    .create_with_context(Ctx {
                        shared: shared.clone(),
                        plan,
                    })
                    .map_err(|e| internal("cannot create the Kafka consumer", e))?;
                let consumer = Arc::new(consumer);
                let _ = shared.consumer.set(Arc::downgrade(&consumer));
                if !subscription.is_empty() {
                    let names: Vec<&str> = subscription.iter().map(String::as_str).collect();
                    consumer
                        .subscribe(&names)
                        .map_err(|e| internal("cannot subscribe the Kafka consumer", e))?;
                }
                std::thread::Builder::new()
                    .name("meridian-kafka-consumer".into())
                    .spawn(move || drive(consumer, shared, stop, inner, group, durable))
                    .map_err(|e| internal("cannot start the consumer thread", e))?;
                Ok(())
            })
        };
        setup
            .await
            .map_err(|e| internal("subscription setup panicked", e))??;
        let sub = KafkaSubscription { shared, stop };
        if !subscription.is_empty() {
            sub.wait_for_assignment().await;
        }
        Ok(sub)
    }

    async fn wait_for_assignment(&self) {
        let deadline = tokio::time::Instant::now() + JOIN_WAIT;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.state.lock().assigned {
                // Leave a wake-up for `next`, which may have missed one meanwhile.
                self.shared.notify.notify_one();
                return;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(pattern = %self.shared.pattern, "kafka: no partitions assigned yet; the subscription keeps waiting in the background");
                    return;
                }
            }
        }
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Polls the consumer until the subscription is dropped, then commits, leaves the group
/// and, for an ephemeral consumer, deletes the group if no other member is left.
fn drive(
    consumer: Arc<BaseConsumer<Ctx>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    inner: Arc<Inner>,
    group: String,
    durable: bool,
) {
    let mut last_commit = Instant::now();
    let mut last_poll = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let full = shared.state.lock().ready.len() >= BUFFER;
        if full && last_poll.elapsed() < FULL_POLL_EVERY {
            std::thread::sleep(Duration::from_millis(20));
        } else {
            last_poll = Instant::now();
            poll_once(&consumer, &shared);
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            if let Err(e) = shared.commit(&consumer, None) {
                tracing::debug!(error = %e, "kafka: periodic commit failed");
            }
            last_commit = Instant::now();
        }
    }
    if let Err(e) = shared.commit(&consumer, None) {
        tracing::warn!(error = %e, "kafka: final commit failed");
    }
    // Leaves the group (the offsets were committed just above).
    drop(consumer);
    if !durable {
        // Kafka refuses to delete a group that still has members: then the others keep it.
        let opts = inner.admin_options();
        // The admin client polls on its own thread: any executor can wait for its answer.
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map(|rt| rt.block_on(inner.admin.delete_groups(&[&group], &opts)));
        match result {
            Ok(Ok(groups)) => {
                tracing::debug!(group = %group, deleted = groups.iter().all(Result::is_ok), "kafka: ephemeral group cleanup");
            }
            Ok(Err(e)) => {
                tracing::debug!(group = %group, error = %e, "kafka: ephemeral group cleanup failed")
            }
            Err(e) => tracing::debug!(error = %e, "kafka: no runtime for the group cleanup"),
        }
    }
}

/// One poll: a message is taken, and rebalance callbacks run inside it.
fn poll_once(consumer: &BaseConsumer<Ctx>, shared: &Shared) {
    match consumer.poll(Duration::from_millis(100)) {
        None => {}
        Some(Ok(m)) => shared.take(&m),
        Some(Err(e)) => tracing::debug!(error = %e, "kafka: consumer error"),
    }
}

/// The elements of a partition list. rdkafka 0.36's `elements` makes a slice of
/// librdkafka's element pointer, which is null in an empty list (an assignment of no
/// partitions: more members than partitions, or a topic that is gone); a debug build aborts
/// on that.
fn elements(tpl: &TopicPartitionList) -> Vec<TopicPartitionListElem<'_>> {
    if tpl.count() == 0 {
        Vec::new()
    } else {
        tpl.elements()
    }
}

/// Works out where partitions without a committed offset start.
fn start_plan(inner: &Inner, topics: &[String], start: StartAt) -> Result<StartPlan, BusError> {
    let mut plan = StartPlan::default();
    if topics.is_empty() || start == StartAt::Earliest {
        return Ok(plan);
    }
    let timeout = inner.config.request_timeout;
    // The probe reads the high watermark rather than the last stable offset. Meridian
    // writes no transactions, so on its topics the two are the same; and the tansu broker
    // on its PostgreSQL storage cannot answer the read_committed form on PostgreSQL 15 (its
    // query uses a subquery without an alias, which only PostgreSQL 16 accepts).
    let probe: BaseConsumer = inner
        .config
        .client_config()
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(|e| internal("cannot create a Kafka client", e))?;
    let mut partitions: Vec<Tp> = Vec::new();
    for topic in topics {
        let metadata = probe
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| unavailable("cannot read topic metadata", e))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                partitions.push((t.name().to_owned(), p.id()));
            }
        }
    }
    let high = |tp: &Tp| -> Result<i64, BusError> {
        probe
            .fetch_watermarks(&tp.0, tp.1, timeout)
            .map(|(_, high)| high)
            .map_err(|e| unavailable("cannot read partition offsets", e))
    };
    let by_time = |millis: i64, tps: &[Tp]| -> Result<Vec<(Tp, i64)>, BusError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in tps {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(millis))
                .map_err(|e| internal("bad partition list", e))?;
        }
        let found = probe
            .offsets_for_times(tpl, timeout)
            .map_err(|e| unavailable("cannot look up offsets by time", e))?;
        let mut out = Vec::new();
        for e in elements(&found) {
            let tp = (e.topic().to_owned(), e.partition());
            let offset = match e.offset() {
                Offset::Offset(o) if o >= 0 => o,
                // No message at or after that time: start after the last one.
                _ => high(&tp)?,
            };
            out.push((tp, offset));
        }
        Ok(out)
    };
    match start {
        StartAt::Earliest => {}
        StartAt::New => {
            for tp in partitions {
                let offset = high(&tp)?;
                plan.offsets.insert(tp, offset);
            }
        }
        StartAt::Time(t) => {
            plan.offsets
                .extend(by_time(t.timestamp_millis().max(0), &partitions)?);
        }
        StartAt::Position(position) => {
            let (partition, offset) = naming::split_position(position);
            let Some(topic) = topics.first() else {
                return Ok(plan);
            };
            let named = (topic.clone(), partition);
            if !partitions.contains(&named) {
                return Err(BusError::Internal(format!(
                    "position {position} names partition {partition}, which {topic} does not have"
                )));
            }
            let others: Vec<Tp> = partitions.into_iter().filter(|tp| *tp != named).collect();
            match record_time(inner, topic, partition, offset)? {
                Some(millis) => plan.offsets.extend(by_time(millis, &others)?),
                None => {
                    for tp in others {
                        let offset = high(&tp)?;
                        plan.offsets.insert(tp, offset);
                    }
                }
            }
            plan.offsets.insert(named, offset);
        }
    }
    Ok(plan)
}

/// The timestamp of the record at `offset`, if there is one.
fn record_time(
    inner: &Inner,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<i64>, BusError> {
    let reader: BaseConsumer = inner
        .config
        .client_config()
        .set("enable.partition.eof", "true")
        // librdkafka wants a group even for a manual assignment; nothing is committed.
        .set("group.id", "meridian-position-reader")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| internal("cannot create a Kafka client", e))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(|e| internal("bad partition list", e))?;
    reader
        .assign(&tpl)
        .map_err(|e| internal("cannot assign a partition", e))?;
    let deadline = Instant::now() + inner.config.request_timeout;
    while Instant::now() < deadline {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                return Ok(match m.timestamp() {
                    Timestamp::NotAvailable => None,
                    t => t.to_millis(),
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(None),
            Some(Err(e)) => return Err(unavailable("cannot read the record at a position", e)),
            None => {}
        }
    }
    Err(BusError::Unavailable(
        "the record at a position could not be read in time".into(),
    ))
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake = match self.shared.poll_delivery() {
                Ok(delivery) => return Ok(delivery),
                Err(wake) => wake,
            };
            match wake {
                Some(at) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The sum over the partitions assigned to this member of the group's committed offset
    /// to the partition's high watermark (from the low watermark where the group has
    /// committed nothing): records not yet acknowledged by the group, including those
    /// buffered or in flight here and records outside the pattern not yet passed over. It
    /// asks the broker (one offset fetch, then the watermarks partition by partition) on a
    /// blocking thread, at most [`LAG_QUERY_TIMEOUT`] in all; `None` before the first
    /// assignment or when the broker does not answer in time (logged at debug).
    /// Deliveries are not held up meanwhile.
    async fn lag(&mut self) -> Option<u64> {
        let shared = self.shared.clone();
        let query = tokio::task::spawn_blocking(move || shared.lag_blocking(LAG_QUERY_TIMEOUT));
        match tokio::time::timeout(LAG_QUERY_TIMEOUT + Duration::from_millis(100), query).await {
            Ok(Ok(lag)) => lag,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "kafka: consumer lag query failed");
                None
            }
            Err(_) => {
                tracing::debug!("kafka: consumer lag query timed out");
                None
            }
        }
    }
}

/// Settles one delivery.
struct KafkaAck {
    shared: Arc<Shared>,
    tp: Tp,
    offset: i64,
    seq: u64,
    epoch: u64,
}

#[async_trait]
impl AckHandle for KafkaAck {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        let current = {
            let mut st = self.shared.state.lock();
            let current = self
                .shared
                .release(&mut st, &self.tp, self.offset, self.seq, self.epoch);
            if current {
                // Settled: also drop a redelivery queued after an ack-wait timeout.
                st.retry
                    .retain(|p| !(p.tp == self.tp && p.offset == self.offset));
                if let Some(p) = st.parts.get_mut(&self.tp) {
                    p.unsettled.remove(&self.offset);
                }
            }
            current
        };
        self.shared.notify.notify_one();
        if !current {
            // The partition moved to another member (or this one re-took it): it is read
            // again from the committed offset there.
            return Ok(());
        }
        self.shared.commit_from_ack(self.tp.clone()).await
    }

    /// Hands the message out again after `delay` from the copy kept while it was in
    /// flight; it stays unsettled meanwhile, so the committed offset does not pass it.
    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        let requeued = {
            let mut st = self.shared.state.lock();
            let key = (self.tp.clone(), self.offset);
            let held = st
                .in_flight
                .get(&key)
                .is_some_and(|f| f.seq == self.seq && f.epoch == self.epoch);
            let flight = if held {
                st.in_flight.remove(&key)
            } else {
                None
            };
            match flight {
                Some(f)
                    if st
                        .parts
                        .get(&self.tp)
                        .is_some_and(|p| p.epoch == self.epoch) =>
                {
                    st.retry.push(Pending {
                        tp: self.tp.clone(),
                        offset: self.offset,
                        epoch: self.epoch,
                        message: f.message,
                        attempt: f.attempt.saturating_add(1),
                        due: Instant::now() + delay,
                    });
                    true
                }
                _ => false,
            }
        };
        if !requeued {
            // Already redelivered after its ack wait, or its partition moved to another
            // member, which reads it again from the committed offset.
            tracing::debug!(
                offset = self.offset,
                "kafka: nack of a delivery no longer held"
            );
        }
        self.shared.notify.notify_one();
        Ok(())
    }
}
