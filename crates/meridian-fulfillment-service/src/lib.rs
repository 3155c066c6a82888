//! The fulfillment service: from a confirmed order to its parcels on their way.
//!
//! Four consumers on the bus, each idempotent (delivery is at least once), each run by
//! [`meridian_bus::consumer`]'s loop (retries with backoff and jitter, then `<topic>.dlq`
//! and the store's dead letters, which an operator replays):
//!
//! - [`ShipmentPlanner`] (`fulfillment-shipments`, on `platform.oms.order.*`): one
//!   shipment per warehouse allocation of a confirmed order, through the store's inbox in
//!   the same transaction; the order events of a batch (up to [`PLANNER_BATCH`], run by
//!   [`meridian_bus::consumer::run_batched`]) are written in one transaction
//!   ([`FulfillmentStore::create_shipments_batch`]); a canceled order's unshipped
//!   shipments are canceled.
//! - [`LabelMaker`] (`fulfillment-labels`, on `platform.fulfillment.shipment.created`): the
//!   label step, apart from creation. The carrier is called and the PDF stored through the
//!   [`LabelStore`] with no database transaction open; then the shipment records its
//!   tracking number and label (pending → label_created). Up to [`LABEL_BATCH`] labels
//!   are made at once (`run_batched`), each settled by its own result.
//! - [`HoldReleases`] (`fulfillment-releases`, on `platform.oms.order.*`, acting on
//!   `order.released` and `order.screened`): the label step for the shipments a hold kept
//!   waiting. While an order is held ([`meridian_store::HoldStore`]) the label step leaves
//!   its shipments pending, and the store refuses to record a label or a shipped update for
//!   them; the release's outbox event brings them back, so no label is lost and nothing
//!   polls. With [`Fulfillment::await_screening`], a label also waits for the order's
//!   first screening result.
//! - [`OrderFulfiller`] (`fulfillment-orders`, on `platform.fulfillment.shipment.shipped`):
//!   once every shipment of an order has shipped, the core's fulfil transition commits its
//!   stock. Driven by the outbox event of the shipped update, so a crash between the two
//!   writes only delays the fulfilment.
//!
//! Carriers sit behind [`Carrier`]: [`ManualCarrier`] renders its labels itself,
//! [`HttpCarrier`] asks a carrier API at a base URL (one attempt per call, under a time
//! limit; the label consumer owns the retries). Labels are kept through the [`LabelStore`]
//! port; [`LocalLabelStore`] keeps them in a directory, `S3LabelStore` (feature `s3`) in an
//! S3-compatible bucket. [`WebhookSecret`] checks carriers'
//! signed tracking webhooks (Standard Webhooks, HMAC-SHA256) and [`LabelUrlSigner`] makes
//! and checks pre-signed label links.
//!
//! [`FulfillmentStore::create_shipments_batch`]: meridian_store::FulfillmentStore::create_shipments_batch

mod carrier;
mod consumers;
mod http_carrier;
mod labels;
#[cfg(feature = "s3")]
mod s3_labels;
#[cfg(feature = "s3-test-server")]
pub mod s3_test_server;
mod signed_url;
mod webhook;

use std::sync::Arc;

use meridian_bus::consumer::{self, DeadLetterSink};
use meridian_bus::{Bus, BusError, RetryPolicy, StartAt, SubscribeOptions, TopicPattern};
use meridian_store::Store;
use tokio::sync::watch;

pub use carrier::{Carrier, CarrierError, CarrierLabel, ManualCarrier};
pub use consumers::{
    HoldReleases, LABELS_CONSUMER, LabelBatches, LabelMaker, ORDERS_CONSUMER, OrderFulfiller,
    RELEASES_CONSUMER, SHIPMENTS_CONSUMER, ShipmentPlanner, label_key,
};
pub use http_carrier::{HttpCarrier, HttpCarrierConfig};
pub use labels::{LabelStore, LabelStoreError, LocalLabelStore, check_key, parse_s3_url};
#[cfg(feature = "s3")]
pub use s3_labels::{S3LabelStore, S3LabelStoreConfig};
pub use signed_url::{LabelUrlSigner, MAX_EXPIRY_SECONDS};
pub use webhook::{TOLERANCE_SECONDS, WebhookError, WebhookSecret, hmac_sha256};

/// The fulfillment service's parts, ready to run on a bus.
#[derive(Clone)]
pub struct Fulfillment {
    pub store: Arc<dyn Store>,
    pub labels: Arc<dyn LabelStore>,
    /// The carriers labels can be made with; the first is the one new shipments get.
    pub carriers: Vec<Arc<dyn Carrier>>,
    pub retry: RetryPolicy,
    /// Labels wait until a screening plugin has decided on the order (off by default: a
    /// hold that arrives after the label still keeps the parcel from shipping).
    pub await_screening: bool,
}

impl std::fmt::Debug for Fulfillment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fulfillment")
            .field("store", &self.store.backend())
            .field("labels", &self.labels.name())
            .field(
                "carriers",
                &self.carriers.iter().map(|c| c.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// One consumer: its name, the topics it reads, and whether it starts from the earliest
/// message the bus keeps.
fn consumers(deployment: &str) -> Result<[(&'static str, TopicPattern); 4], BusError> {
    let d = deployment;
    Ok([
        (
            SHIPMENTS_CONSUMER,
            TopicPattern::parse(&format!("deployment.{d}.platform.oms.order.*"))?,
        ),
        (
            LABELS_CONSUMER,
            TopicPattern::parse(&format!(
                "deployment.{d}.platform.fulfillment.shipment.created"
            ))?,
        ),
        (
            ORDERS_CONSUMER,
            TopicPattern::parse(&format!(
                "deployment.{d}.platform.fulfillment.shipment.shipped"
            ))?,
        ),
        (
            RELEASES_CONSUMER,
            TopicPattern::parse(&format!("deployment.{d}.platform.oms.order.*"))?,
        ),
    ])
}

/// The most order events whose shipments are written in one store transaction.
pub const PLANNER_BATCH: usize = 128;

/// Labels made at once by `fulfillment-labels` (see [`LabelBatches`]): enough
/// to overlap the carrier calls, object writes and store updates of a burst, few enough
/// not to flood an HTTP carrier.
pub const LABEL_BATCH: usize = 16;

/// The same options when declaring and when running, so a broker that stores a durable
/// consumer's settings (NATS) sees one configuration.
fn options(consumer: &str) -> SubscribeOptions {
    let defaults = SubscribeOptions::durable(consumer);
    SubscribeOptions {
        // Events the relay published before the first subscription are not missed on a
        // bus that keeps history.
        start: StartAt::Earliest,
        // The planner takes batches: room for one being written while others are acked.
        max_in_flight: if consumer == SHIPMENTS_CONSUMER {
            4 * PLANNER_BATCH
        } else {
            defaults.max_in_flight
        },
        ..defaults
    }
}

impl Fulfillment {
    /// The service with the `manual` carrier and labels in `labels`.
    pub fn new(store: Arc<dyn Store>, labels: Arc<dyn LabelStore>) -> Self {
        Self {
            store,
            labels,
            carriers: vec![Arc::new(ManualCarrier)],
            retry: RetryPolicy::default(),
            await_screening: false,
        }
    }

    /// Declares the four durable consumers ([`consumer::declare`]). Call it before the
    /// relay starts.
    pub async fn declare(bus: &dyn Bus, deployment: &str) -> Result<(), BusError> {
        for (name, pattern) in consumers(deployment)? {
            consumer::declare(bus, &pattern, options(name)).await?;
        }
        Ok(())
    }

    /// Runs the four consumers until `shutdown` turns `true`.
    pub async fn run(
        self,
        bus: Arc<dyn Bus>,
        deployment: &str,
        dead_letters: Arc<dyn DeadLetterSink>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), BusError> {
        let [planner, labels, orders, releases] = consumers(deployment)?;
        let carrier = self
            .carriers
            .first()
            .map_or(ManualCarrier::NAME.to_owned(), |c| c.name().to_owned());
        let run = |(name, pattern): (&'static str, TopicPattern),
                   handler: Arc<dyn meridian_bus::Handler>| {
            consumer::run(
                bus.clone(),
                pattern,
                options(name),
                handler,
                self.retry,
                dead_letters.clone(),
                shutdown.clone(),
            )
        };
        let (planner_name, planner_pattern) = planner;
        let plan = consumer::run_batched(
            bus.clone(),
            planner_pattern,
            options(planner_name),
            Arc::new(ShipmentPlanner::new(self.store.clone(), carrier)),
            PLANNER_BATCH,
            self.retry,
            dead_letters.clone(),
            shutdown.clone(),
        );
        let label_maker = Arc::new(
            LabelMaker::new(
                self.store.clone(),
                self.labels.clone(),
                self.carriers.clone(),
            )
            .await_screening(self.await_screening),
        );
        let (labels_name, labels_pattern) = labels;
        let make_labels = consumer::run_batched(
            bus.clone(),
            labels_pattern,
            options(labels_name),
            Arc::new(LabelBatches(label_maker.clone())),
            LABEL_BATCH,
            self.retry,
            dead_letters.clone(),
            shutdown.clone(),
        );
        tokio::try_join!(
            plan,
            make_labels,
            run(orders, Arc::new(OrderFulfiller::new(self.store.clone()))),
            run(releases, Arc::new(HoldReleases::new(label_maker))),
        )?;
        Ok(())
    }
}
