//! The sidecar's Prometheus metrics. Labelled by topic (bounded by what the plugin's ACL
//! allows), subscription, direction and reason; never by tenant.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const PUBLISHED_TOTAL: &str = "meridian_sidecar_published_total";
pub const PUBLISH_DURATION_SECONDS: &str = "meridian_sidecar_publish_duration_seconds";
pub const DELIVERED_TOTAL: &str = "meridian_sidecar_delivered_total";
pub const DELIVERY_LATENCY_SECONDS: &str = "meridian_sidecar_delivery_latency_seconds";
pub const SETTLED_TOTAL: &str = "meridian_sidecar_settled_total";
pub const FILTERED_TOTAL: &str = "meridian_sidecar_filtered_total";
pub const ACL_DENIALS_TOTAL: &str = "meridian_sidecar_acl_denials_total";
pub const ERRORS_TOTAL: &str = "meridian_sidecar_errors_total";
pub const HEARTBEAT_AGE_SECONDS: &str = "meridian_sidecar_heartbeat_age_seconds";
pub const UPTIME_SECONDS: &str = "meridian_sidecar_uptime_seconds";
pub const BUS_UP: &str = "meridian_sidecar_bus_up";

/// Seconds: fine below 10 ms, where the sidecar's own overhead lies, coarse up to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns the handle `/metrics` renders.
/// Histogram samples are folded into buckets when `/metrics` renders (and by the
/// exporter's own upkeep), so memory stays bounded between scrapes.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Prefix("meridian_sidecar_".to_owned()),
                    LATENCY_BUCKETS,
                )
                .expect("the bucket list is a non-empty constant")
                .build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "another metrics recorder is installed; /metrics will be partial");
            }
            metrics::describe_counter!(PUBLISHED_TOTAL, "Messages the plugin published, by topic.");
            metrics::describe_histogram!(
                PUBLISH_DURATION_SECONDS,
                "Time from the publish request to the bus's acceptance, by topic."
            );
            metrics::describe_counter!(DELIVERED_TOTAL, "Messages handed to the plugin, by topic.");
            metrics::describe_histogram!(
                DELIVERY_LATENCY_SECONDS,
                "Time from an event's creation to its hand-over to the plugin, by topic."
            );
            metrics::describe_counter!(SETTLED_TOTAL, "Acks and nacks from the plugin.");
            metrics::describe_counter!(
                FILTERED_TOTAL,
                "Messages a subscription received but the ACL kept from the plugin, by reason."
            );
            metrics::describe_counter!(ACL_DENIALS_TOTAL, "Publishes and subscriptions the ACL refused.");
            metrics::describe_counter!(ERRORS_TOTAL, "Errors by type.");
            metrics::describe_gauge!(HEARTBEAT_AGE_SECONDS, "Seconds since the plugin's last heartbeat.");
            metrics::describe_gauge!(UPTIME_SECONDS, "Seconds since the sidecar started.");
            metrics::describe_gauge!(BUS_UP, "1 when the last bus check succeeded.");
            handle
        })
        .clone()
}

pub fn error(kind: &'static str) {
    metrics::counter!(ERRORS_TOTAL, "type" => kind).increment(1);
}

pub fn counter_acl(direction: meridian_plugin::Direction, reason: &'static str) {
    metrics::counter!(ACL_DENIALS_TOTAL, "direction" => direction.as_str(), "reason" => reason)
        .increment(1);
}
