//! A carrier reached over HTTP at a configured base URL.
//!
//! The protocol (a carrier, or a small bridge in front of one, implements it):
//!
//! `POST {base}/v1/labels` with `Idempotency-Key: {shipment id}` and the JSON body
//!
//! ```json
//! {"shipment_id": "…", "order_id": "…", "tenant_id": "…", "warehouse": "W1",
//!  "ship_to": {…} or null, "items": [{"sku": "…", "name": "…", "quantity": 1}]}
//! ```
//!
//! answered by `200` or `201` with `{"tracking_number": "…", "label_pdf": "<base64>"}`. The
//! same key asks for the same label again, so a retry after a timeout does not buy a
//! second one.
//!
//! Every call has a time limit. The adapter makes one attempt per call: the label step's
//! consumer owns the retries (exponential backoff with jitter, then the dead-letter queue
//! after the third failed attempt, from where a replay resumes it), so a failure is
//! counted once.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use meridian_fulfillment::Shipment;
use serde::{Deserialize, Serialize};

use crate::carrier::{Carrier, CarrierError, CarrierLabel};

/// The largest label accepted from a carrier.
const MAX_LABEL_BYTES: usize = 5 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct HttpCarrierConfig {
    /// The name shipments carry (`http` unless set).
    pub name: String,
    /// Such as `http://carrier.internal:8080`; `/v1/labels` is appended.
    pub base_url: String,
    /// The limit on one call, connection included.
    pub timeout: Duration,
    /// Trust for an https carrier (the system roots plus `MERIDIAN_HTTP_CA_FILE`).
    pub outbound: meridian_http::Outbound,
}

impl HttpCarrierConfig {
    pub const DEFAULT_NAME: &'static str = "http";
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            name: Self::DEFAULT_NAME.into(),
            base_url: base_url.into(),
            timeout: Self::DEFAULT_TIMEOUT,
            outbound: meridian_http::Outbound::system(),
        }
    }
}

/// The HTTP carrier adapter.
#[derive(Clone, Debug)]
pub struct HttpCarrier {
    config: HttpCarrierConfig,
    url: String,
    http: reqwest::Client,
}

#[derive(Serialize)]
struct LabelRequest<'a> {
    shipment_id: String,
    order_id: String,
    tenant_id: String,
    warehouse: &'a str,
    ship_to: &'a Option<meridian_orders::Address>,
    items: &'a [meridian_fulfillment::ShipmentItem],
}

#[derive(Deserialize)]
struct LabelResponse {
    tracking_number: String,
    label_pdf: String,
}

impl HttpCarrier {
    pub fn new(config: HttpCarrierConfig) -> Result<Self, CarrierError> {
        let http = config
            .outbound
            .builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| CarrierError::Failed {
                carrier: config.name.clone(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        let url = format!("{}/v1/labels", config.base_url.trim_end_matches('/'));
        Ok(Self { config, url, http })
    }

    fn failed(&self, reason: impl Into<String>) -> CarrierError {
        CarrierError::Failed {
            carrier: self.config.name.clone(),
            reason: reason.into(),
        }
    }
}

#[async_trait]
impl Carrier for HttpCarrier {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn create_label(&self, shipment: &Shipment) -> Result<CarrierLabel, CarrierError> {
        let body = LabelRequest {
            shipment_id: shipment.id.to_string(),
            order_id: shipment.order_id.to_string(),
            tenant_id: shipment.tenant_id.to_string(),
            warehouse: shipment.warehouse_code.as_str(),
            ship_to: &shipment.ship_to,
            items: &shipment.items,
        };
        let response = self
            .http
            .post(&self.url)
            .header("idempotency-key", shipment.id.to_string())
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    CarrierError::Timeout {
                        carrier: self.config.name.clone(),
                    }
                } else {
                    self.failed(format!("cannot reach {}: {e}", self.url))
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.failed(format!("{} answered {status}", self.url)));
        }
        let bytes = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                CarrierError::Timeout {
                    carrier: self.config.name.clone(),
                }
            } else {
                self.failed(format!("the answer broke off: {e}"))
            }
        })?;
        let answer: LabelResponse = serde_json::from_slice(&bytes)
            .map_err(|e| self.failed(format!("unreadable answer: {e}")))?;
        let pdf = base64::engine::general_purpose::STANDARD
            .decode(answer.label_pdf.as_bytes())
            .map_err(|e| self.failed(format!("label_pdf is not base64: {e}")))?;
        let tracking_ok = !answer.tracking_number.is_empty()
            && answer.tracking_number.len() <= 64
            && answer.tracking_number.bytes().all(|b| b.is_ascii_graphic());
        if !tracking_ok {
            return Err(self.failed("tracking_number must be 1 to 64 visible ASCII characters"));
        }
        if pdf.len() > MAX_LABEL_BYTES || !pdf.starts_with(b"%PDF") {
            return Err(self.failed("label_pdf must be a PDF of at most 5 MiB"));
        }
        Ok(CarrierLabel {
            tracking_number: answer.tracking_number,
            pdf,
        })
    }
}
