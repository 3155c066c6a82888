//! The carrier port and the built-in `manual` carrier.

use async_trait::async_trait;
use meridian_fulfillment::{Shipment, label, manual_tracking_number};

/// What a carrier returns for a shipment: its tracking number and the label to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CarrierLabel {
    pub tracking_number: String,
    /// The label as a PDF document.
    pub pdf: Vec<u8>,
}

/// Why a carrier call failed. Every failure is worth retrying: the label step is retried
/// with backoff and, after its last attempt, goes to the dead-letter queue with this
/// reason, where a replay resumes it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CarrierError {
    /// The carrier did not answer in time.
    #[error("carrier {carrier} timed out")]
    Timeout { carrier: String },
    /// The carrier answered with an error or something unreadable.
    #[error("carrier {carrier} failed: {reason}")]
    Failed { carrier: String, reason: String },
}

/// A carrier that makes labels.
///
/// Contract: `create_label` may be called more than once for a shipment (a retry after a
/// timeout, a replayed dead letter) and SHOULD then return the same tracking number; it
/// is never called while a database transaction is open.
#[async_trait]
pub trait Carrier: Send + Sync + 'static {
    /// The name shipments carry in `carrier`, such as `manual`.
    fn name(&self) -> &str;
    async fn create_label(&self, shipment: &Shipment) -> Result<CarrierLabel, CarrierError>;
}

/// The built-in carrier for shipments a warehouse hands over itself: Meridian makes up the
/// tracking number (derived from the shipment id, so a retry gets the same one) and
/// renders the label.
#[derive(Clone, Copy, Debug, Default)]
pub struct ManualCarrier;

impl ManualCarrier {
    pub const NAME: &'static str = "manual";
}

#[async_trait]
impl Carrier for ManualCarrier {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn create_label(&self, shipment: &Shipment) -> Result<CarrierLabel, CarrierError> {
        let tracking_number = manual_tracking_number(shipment.id);
        let pdf = label::render(shipment, &tracking_number).map_err(|e| CarrierError::Failed {
            carrier: Self::NAME.into(),
            reason: e.to_string(),
        })?;
        Ok(CarrierLabel {
            tracking_number,
            pdf,
        })
    }
}
