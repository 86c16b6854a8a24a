//! Paced UDP sender for the sniffer benchmark: sends COUNT datagrams of 16
//! bytes to ADDR at RATE per second, and owns a sink socket bound at ADDR
//! that never reads (so no ICMP errors are produced; the kernel drops what
//! overflows the sink). Loopback only. Prints one JSON line: sent, seconds,
//! achieved rate.
//!
//! udp_flood ADDR --count N --rate R

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn arg(args: &[String], flag: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: udp_flood ADDR --count N --rate R");
    assert!(
        addr.ip().is_loopback(),
        "udp_flood only targets loopback addresses"
    );
    let count = arg(&args, "--count", 30_000);
    let rate = arg(&args, "--rate", 10_000).max(1);
    let _sink = UdpSocket::bind(addr).expect("bind the sink");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind the sender");
    tx.connect(addr).expect("connect");
    let payload = [0x5au8; 16];
    let start = Instant::now();
    let mut sent = 0u64;
    // Send in 1 ms slices: each slice catches up to where the rate says.
    while sent < count {
        let due = ((start.elapsed().as_secs_f64() + 0.001) * rate as f64) as u64;
        while sent < due.min(count) {
            if tx.send(&payload).is_ok() {
                sent += 1;
            }
        }
        let next = start + Duration::from_secs_f64(sent as f64 / rate as f64);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait.min(Duration::from_millis(1)));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"sent\":{sent},\"secs\":{secs:.3},\"rate\":{:.0}}}",
        sent as f64 / secs
    );
}
