fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let track: bool = args.get(2).map(|s| s == "track").unwrap_or(false);
    let batch: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(256);
    let spin: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(20);
    let single = args.get(5).is_some();
    let rt = if single { tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap() } else { tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap() };
    let r = rt.block_on(meridian_bus::bench::bench_memory_with(meridian_bus::bench::BenchOptions { messages: n, batch, track_unacked: track, spin: std::time::Duration::from_micros(spin) })).unwrap();
    eprintln!("single={single} track={track} batch={batch} spin={spin}: {:.1} ns/msg (median {:.1}), drop {:.1}, transport {:.1}, channel {:.1}", r.ns_per_message, r.median_round_ns_per_message, r.drop_ns_per_message, r.transport_ns_per_message(), r.channel_ns_per_message);
}
