//! The Prometheus recorder and the metrics this crate records.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
pub const ORDERS_CREATED_TOTAL: &str = "orders_created_total";
pub const STOCK_RESERVATIONS_REFUSED_TOTAL: &str = "stock_reservations_refused_total";

/// Latency buckets in seconds: fine-grained below 100 ms, where the order path's p99 target
/// lies, and coarse up to the 30 s request timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histogram samples are folded into their buckets, bounding memory between
/// scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle)
/// and returns the handle that renders `/metrics`. No HTTP listener is started: the API
/// serves the text itself.
pub fn install_metrics() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.to_owned()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    // Bus and relay latencies (publish, end to end, relay lag) as histograms
                    // too, so they aggregate across instances.
                    b.set_buckets_for_metric(
                        Matcher::Prefix("meridian_bus_".to_owned()),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Prefix("meridian_relay_".to_owned()),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Prefix("meridian_gateway_".to_owned()),
                        LATENCY_BUCKETS,
                    )
                })
                .expect("the latency bucket list is a non-empty constant");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                // Only possible if something else installed a recorder first; the API still
                // serves, with an empty /metrics.
                tracing::warn!(error = %e, "another metrics recorder is installed; /metrics will be empty");
            }
            describe();
            let upkeep = handle.clone();
            // A plain thread, so that this works with or without a Tokio runtime.
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
            }
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests answered, by method, route template and status"
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "HTTP request latency, by method, route template and status"
    );
    metrics::describe_counter!(ORDERS_CREATED_TOTAL, "Orders created");
    metrics::describe_counter!(
        STOCK_RESERVATIONS_REFUSED_TOTAL,
        "Orders refused because stock was insufficient"
    );
}

pub(crate) fn record_request(method: &'static str, route: String, status: u16, elapsed: Duration) {
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS_TOTAL, &labels).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, &labels).record(elapsed.as_secs_f64());
}

pub(crate) fn order_created() {
    metrics::counter!(ORDERS_CREATED_TOTAL).increment(1);
}

pub(crate) fn reservation_refused() {
    metrics::counter!(STOCK_RESERVATIONS_REFUSED_TOTAL).increment(1);
}
