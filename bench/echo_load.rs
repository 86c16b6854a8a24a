//! Load generator for echo servers: C connections, each writing fixed-size
//! chunks and reading the echo back (a bounded number of chunks in flight),
//! for a fixed time. Prints one JSON line: bytes echoed, seconds, Gbit/s.
//!
//! cargo run --release --example echo_load -- ADDR [--conns C] [--secs S] [--chunk BYTES]
//! Loopback only: the address must be in 127.0.0.0/8 or ::1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn arg(args: &[String], flag: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: echo_load ADDR [--conns C] [--secs S] [--chunk B]");
    assert!(
        addr.ip().is_loopback(),
        "echo_load only targets loopback addresses"
    );
    let conns = arg(&args, "--conns", 4) as usize;
    let secs = arg(&args, "--secs", 3);
    let chunk = arg(&args, "--chunk", 16 * 1024) as usize;
    // Chunks in flight per connection: enough to keep the pipe busy, bounded
    // so socket buffers never deadlock the writer against the reader.
    const WINDOW: u64 = 8;

    let echoed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let echoed = echoed.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).ok();
            let (mut r, mut w) = stream.into_split();
            let sent = Arc::new(AtomicU64::new(0));
            let received = Arc::new(AtomicU64::new(0));
            let notify = Arc::new(tokio::sync::Notify::new());
            let (s2, r2, n2) = (sent.clone(), received.clone(), notify.clone());
            let writer = tokio::spawn(async move {
                let buf = vec![0x5au8; chunk];
                while Instant::now() < deadline {
                    while s2.load(Ordering::Relaxed)
                        >= r2.load(Ordering::Relaxed) + WINDOW * chunk as u64
                    {
                        n2.notified().await;
                    }
                    if w.write_all(&buf).await.is_err() {
                        return;
                    }
                    s2.fetch_add(chunk as u64, Ordering::Relaxed);
                }
                let _ = w.shutdown().await;
            });
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                        echoed.fetch_add(n as u64, Ordering::Relaxed);
                        notify.notify_one();
                    }
                }
            }
            let _ = writer.await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let bytes = echoed.load(Ordering::Relaxed);
    println!(
        "{{\"bytes\":{bytes},\"secs\":{elapsed:.3},\"gbit_per_sec\":{:.3}}}",
        bytes as f64 * 8.0 / elapsed / 1e9
    );
}
