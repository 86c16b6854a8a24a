//! Connection-level load for proxy benchmarks, loopback only.
//!
//! `conn_load rate ADDR [--conns 50] [--secs 5]`: each of C tasks loops
//! connect, send 64 bytes, read 64 bytes back, close (with SO_LINGER 0, so
//! the client leaves no TIME_WAIT behind) for S seconds. Prints one JSON
//! line: exchanges, rate per second, p50/p99 latency of the whole exchange
//! in microseconds, errors (an exchange that fails or takes over 5 s).
//!
//! `conn_load idle ADDR [--conns 5000]`: opens C connections, does one
//! 64-byte exchange on each, prints `ready` and holds them open until stdin
//! closes (bounded by --secs, default 120).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn arg(args: &[String], flag: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn exchange(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let msg = [0x42u8; 64];
    s.write_all(&msg).await?;
    let mut back = [0u8; 64];
    s.read_exact(&mut back).await?;
    Ok(s)
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: conn_load rate|idle ADDR [--conns C] [--secs S]";
    let mode = args.get(1).expect(usage).clone();
    let addr: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    assert!(
        addr.ip().is_loopback(),
        "conn_load only targets loopback addresses"
    );
    match mode.as_str() {
        "rate" => {
            let conns = arg(&args, "--conns", 50) as usize;
            let secs = arg(&args, "--secs", 5);
            let deadline = Instant::now() + Duration::from_secs(secs);
            let start = Instant::now();
            let tasks: Vec<_> = (0..conns)
                .map(|_| {
                    tokio::spawn(async move {
                        let mut lat = Vec::with_capacity(100_000);
                        let mut errors = 0u64;
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            match tokio::time::timeout(Duration::from_secs(5), exchange(addr)).await
                            {
                                Ok(Ok(s)) => {
                                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                                    let _ =
                                        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                                }
                                // Refused, reset, or stalled for 5 s.
                                Ok(Err(_)) | Err(_) => errors += 1,
                            }
                        }
                        (lat, errors)
                    })
                })
                .collect();
            let mut all = Vec::new();
            let mut errors = 0;
            for t in tasks {
                let (l, e) = t.await.expect("task");
                all.extend(l);
                errors += e;
            }
            let elapsed = start.elapsed().as_secs_f64();
            all.sort_unstable();
            println!(
                "{{\"exchanges\":{},\"secs\":{elapsed:.3},\"rate\":{:.1},\"p50_us\":{},\"p99_us\":{},\"errors\":{errors}}}",
                all.len(),
                all.len() as f64 / elapsed,
                percentile(&all, 0.5),
                percentile(&all, 0.99)
            );
        }
        "idle" => {
            let conns = arg(&args, "--conns", 5000) as usize;
            let secs = arg(&args, "--secs", 120);
            let mut held = Vec::with_capacity(conns);
            // Open in batches so the proxy's backlog is never overrun.
            for chunk in (0..conns).collect::<Vec<_>>().chunks(100) {
                let opened: Vec<_> = chunk.iter().map(|_| tokio::spawn(exchange(addr))).collect();
                for o in opened {
                    held.push(o.await.expect("task").expect("exchange through the proxy"));
                }
            }
            println!("ready {}", held.len());
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(secs), async {
                while let Ok(n) = stdin.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            drop(held);
        }
        _ => panic!("{usage}"),
    }
}
