//! `cargo run --release -p meridian-bus-rabbitmq --example bench -- [MESSAGES] [BATCH] [ROUNDS]`
//!
//! The RabbitMQ bus against raw lapin on the broker at `MERIDIAN_TEST_AMQP_URL` (default:
//! the local broker); see `meridian_bus_rabbitmq::bench`.

use meridian_bus_rabbitmq::bench::{self, BenchOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut options = BenchOptions::default();
    if let Ok(url) = std::env::var("MERIDIAN_TEST_AMQP_URL") {
        options.url = url;
    }
    if let Some(n) = args.next() {
        options.messages = n.parse()?;
    }
    if let Some(b) = args.next() {
        options.batch = b.parse()?;
    }
    if let Some(r) = args.next() {
        options.rounds = r.parse()?;
    }
    let r = bench::run(&options).await?;
    println!(
        "{} messages of {} bytes, batches of {}, prefetch {}; median of {} alternating runs",
        options.messages, options.payload_bytes, options.batch, options.prefetch, options.rounds
    );
    for (name, side) in [("raw lapin", r.raw), ("rabbitmq bus", r.bus)] {
        println!(
            "{name:>12}: {:>8.0} msg/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({:.2} s)",
            side.messages_per_second,
            side.p50_latency.as_secs_f64() * 1e3,
            side.p99_latency.as_secs_f64() * 1e3,
            side.elapsed.as_secs_f64()
        );
    }
    println!("bus / raw throughput: {:.1}%", r.ratio * 100.0);
    Ok(())
}
