//! HTTP/1.1 keep-alive load with every request counted, for the
//! http-proxy benchmarks (bench/http_proxy_bench.sh), loopback only.
//!
//! ```text
//! http_load URL [--conns 50] [--requests 20000] [--secs 60]
//! ```
//!
//! C keep-alive connections (hyper's HTTP/1.1 client, one request in
//! flight on each) send GET URL until `--requests` have been sent in all
//! or `--secs` are over, whichever comes first. Each request's latency is
//! recorded (µs, sorted at the end: no sampling). Prints one JSON line:
//! requests answered, errors (a failed connection or request; the
//! connection is then opened again), answers by status code, seconds,
//! rate per second, and p50/p90/p99/max latency in µs.
//!
//! wrk gives throughput; this gives exact counts (a 10% abort is 2,000 of
//! 20,000, not "about") and every latency, for the fault-accuracy runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One request (or a connect) longer than this is an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNS: u64 = 10_000;
const MAX_REQUESTS: u64 = 100_000_000;
const MAX_SECS: u64 = 3600;
/// Connection failures in a row, per connection, before it gives up.
const MAX_FAILURES_IN_A_ROW: u32 = 100;

const USAGE: &str =
    "usage: http_load http://127.0.0.1:PORT/PATH [--conns C] [--requests N] [--secs S]";

fn number(args: &[String], flag: &str, default: u64, max: u64) -> anyhow::Result<u64> {
    let Some(i) = args.iter().position(|a| a == flag) else {
        return Ok(default);
    };
    let v = args
        .get(i + 1)
        .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
    let n: u64 = v
        .parse()
        .with_context(|| format!("{flag} '{v}' is not a whole number"))?;
    if n == 0 || n > max {
        bail!("{flag} must be between 1 and {max}, not {n}");
    }
    Ok(n)
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

/// Keep one connection sending until the shared budget or the time is
/// spent; a failed request costs its connection (opened again).
async fn worker(
    addr: SocketAddr,
    uri: hyper::Uri,
    budget: Arc<AtomicU64>,
    until: Instant,
) -> Tally {
    let mut t = Tally::default();
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let mut failures = 0u32;
    'connections: while Instant::now() < until && failures < MAX_FAILURES_IN_A_ROW {
        let connected = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
                .await
                .map_err(std::io::Error::other)
        })
        .await;
        let Ok(Ok((mut send, conn))) = connected else {
            t.errors += 1;
            failures += 1;
            continue;
        };
        let driver = tokio::spawn(conn);
        while Instant::now() < until {
            // Take one request from the budget, or stop.
            if budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err()
            {
                driver.abort();
                break 'connections;
            }
            let req = Request::get(uri.clone())
                .header(hyper::header::HOST, authority.as_str())
                .body(Empty::new());
            let Ok(req) = req else {
                t.errors += 1;
                break 'connections;
            };
            let began = Instant::now();
            let answered = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let resp = send.send_request(req).await?;
                let status = resp.status().as_u16();
                resp.into_body().collect().await?;
                Ok::<_, hyper::Error>(status)
            })
            .await;
            match answered {
                Ok(Ok(status)) => {
                    failures = 0;
                    let us = began.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    t.latencies_us.push(us);
                    *t.statuses.entry(status).or_default() += 1;
                }
                _ => {
                    t.errors += 1;
                    failures += 1;
                    driver.abort();
                    continue 'connections;
                }
            }
            if send.ready().await.is_err() {
                // The server closed the connection after the answer (e.g.
                // `Connection: close` on netd's own error): open another.
                continue 'connections;
            }
        }
        driver.abort();
    }
    t
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).ok_or_else(|| anyhow!("{USAGE}"))?;
    let uri: hyper::Uri = url.parse().with_context(|| format!("URL '{url}'"))?;
    if uri.scheme_str() != Some("http") {
        bail!("URL '{url}': only http:// is spoken\n{USAGE}");
    }
    let host = uri.host().ok_or_else(|| anyhow!("URL '{url}': no host"))?;
    let ip: std::net::IpAddr = host
        .trim_matches(['[', ']'])
        .parse()
        .with_context(|| format!("URL '{url}': the host must be an IP address"))?;
    if !ip.is_loopback() {
        bail!("URL '{url}': http_load only targets loopback addresses");
    }
    let addr = SocketAddr::new(ip, uri.port_u16().unwrap_or(80));
    let conns = number(&args, "--conns", 50, MAX_CONNS)?;
    let requests = number(&args, "--requests", 20_000, MAX_REQUESTS)?;
    let secs = number(&args, "--secs", 60, MAX_SECS)?;

    let budget = Arc::new(AtomicU64::new(requests));
    let began = Instant::now();
    let until = began + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(worker(addr, uri.clone(), budget.clone(), until)))
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.context("a load task panicked")?;
        all.latencies_us.extend(t.latencies_us);
        for (s, n) in t.statuses {
            *all.statuses.entry(s).or_default() += n;
        }
        all.errors += t.errors;
    }
    let took = began.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let answered = all.latencies_us.len();
    let statuses: serde_json::Map<String, serde_json::Value> = all
        .statuses
        .iter()
        .map(|(s, n)| (s.to_string(), (*n).into()))
        .collect();
    let out = serde_json::json!({
        "requests": answered,
        "errors": all.errors,
        "statuses": statuses,
        "secs": took,
        "rate": answered as f64 / took.max(1e-9),
        "p50_us": percentile(&all.latencies_us, 0.50),
        "p90_us": percentile(&all.latencies_us, 0.90),
        "p99_us": percentile(&all.latencies_us, 0.99),
        "max_us": all.latencies_us.last().copied().unwrap_or(0),
    });
    println!("{out}");
    Ok(())
}
