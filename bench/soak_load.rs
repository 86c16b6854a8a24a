//! Mixed, paced load for the soak test (bench/soak.sh), loopback only.
//!
//! `soak_load --tcp A --udp A --proxy A --http A [--secs 600] [--scale 1]
//! [--max-ops N]` drives every listener kind at once until --secs have passed
//! or N operations have been done (whichever comes first), each worker paced
//! so the whole run stays a moderate, steady load on a shared machine:
//!
//! - tcp:   connect, a few echo round trips of 1 B..16 KiB, close; every 10th
//!   connection is closed mid-echo (unread data) instead, and a few
//!   long-lived connections echo slowly for the whole run
//! - udp:   datagrams of 1..1400 B, each answered (lost replies time out)
//! - proxy: connect through the proxy, echo, close (half with SO_LINGER 0)
//! - http1: keep-alive GETs and JSON POSTs; every 20th on a fresh connection
//! - h2:    h2c prior knowledge, concurrent streams on shared connections;
//!   every 25th request abandoned after 1 ms (the stream is reset); a fresh
//!   connection every 200 requests
//!
//! Prints one JSON line at the end: operations and errors per kind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn arg<T: std::str::FromStr>(args: &[String], flag: &str) -> Option<T> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// Operations and errors per kind, plus the shared stop condition.
struct Run {
    deadline: Instant,
    max_ops: u64,
    total: AtomicU64,
    counts: [(AtomicU64, AtomicU64); 5],
}

const KINDS: [&str; 5] = ["tcp", "udp", "proxy", "http1", "h2"];

impl Run {
    /// True while the run may go on; counts one operation.
    fn next(&self) -> bool {
        Instant::now() < self.deadline && self.total.fetch_add(1, Relaxed) < self.max_ops
    }
    fn record(&self, kind: usize, ok: bool) {
        let (o, e) = &self.counts[kind];
        if ok { o } else { e }.fetch_add(1, Relaxed);
    }
}

/// A cheap deterministic pseudo-random sequence (xorshift), per worker.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const IO_TIMEOUT: Duration = Duration::from_secs(5);

async fn echo_round(s: &mut TcpStream, len: usize) -> std::io::Result<()> {
    let msg = vec![0x5a; len];
    s.write_all(&msg).await?;
    let mut back = vec![0; len];
    s.read_exact(&mut back).await?;
    Ok(())
}

/// One short TCP echo session; every 10th leaves unread data and closes.
async fn tcp_session(addr: SocketAddr, rng: &mut Rng, linger0: bool) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    if linger0 {
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
    }
    if rng.below(10) == 0 {
        s.write_all(&[1u8; 8192]).await?;
        return Ok(()); // dropped with the echo unread: a reset on close
    }
    for _ in 0..1 + rng.below(4) {
        let len = 1 + rng.below(16384) as usize;
        echo_round(&mut s, len).await?;
    }
    Ok(())
}

async fn tcp_worker(run: Arc<Run>, kind: usize, addr: SocketAddr, seed: u64, pace: Duration) {
    let mut rng = Rng(seed);
    let mut tick = tokio::time::interval(pace);
    while run.next() {
        tick.tick().await;
        let linger0 = kind == 2 && rng.below(2) == 0;
        let ok = matches!(
            tokio::time::timeout(IO_TIMEOUT, tcp_session(addr, &mut rng, linger0)).await,
            Ok(Ok(()))
        );
        run.record(kind, ok);
    }
}

/// A connection that stays open the whole run, echoing a little every second.
async fn tcp_long(run: Arc<Run>, addr: SocketAddr) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        run.record(0, false);
        return;
    };
    while run.next() {
        let ok = matches!(
            tokio::time::timeout(IO_TIMEOUT, echo_round(&mut s, 100)).await,
            Ok(Ok(()))
        );
        run.record(0, ok);
        if !ok {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn udp_worker(run: Arc<Run>, addr: SocketAddr, seed: u64, pace: Duration) {
    let mut rng = Rng(seed);
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else {
        run.record(1, false);
        return;
    };
    let mut buf = vec![0u8; 2048];
    let mut tick = tokio::time::interval(pace);
    while run.next() {
        tick.tick().await;
        let len = 1 + rng.below(1400) as usize;
        let ok = sock.send_to(&buf[..len], addr).await.is_ok()
            && matches!(
                tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await,
                Ok(Ok(n)) if n == len
            );
        run.record(1, ok);
    }
}

async fn http1_worker(run: Arc<Run>, base: String, seed: u64, pace: Duration) {
    let mut rng = Rng(seed);
    let new_client = || {
        reqwest::Client::builder()
            .http1_only()
            .timeout(IO_TIMEOUT)
            .build()
            .expect("http client")
    };
    let mut client = new_client();
    let mut tick = tokio::time::interval(pace);
    let mut n = 0u64;
    while run.next() {
        tick.tick().await;
        n += 1;
        if n % 20 == 0 {
            client = new_client();
        }
        let res = if rng.below(2) == 0 {
            client
                .get(format!("{base}/soak/{n}?k=v{}", rng.below(100)))
                .send()
                .await
        } else {
            let body = format!(
                "{{\"n\":{n},\"pad\":\"{}\"}}",
                "x".repeat(rng.below(4096) as usize)
            );
            client.post(format!("{base}/items")).body(body).send().await
        };
        let ok = match res {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        run.record(3, ok);
    }
}

fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(IO_TIMEOUT)
        .build()
        .expect("h2 client")
}

async fn h2_worker(run: Arc<Run>, base: String, seed: u64, pace: Duration) {
    let mut rng = Rng(seed);
    let mut client = h2_client();
    let mut tick = tokio::time::interval(pace);
    let mut n = 0u64;
    while run.next() {
        tick.tick().await;
        n += 1;
        if n % 200 == 0 {
            client = h2_client();
        }
        // A burst of concurrent streams on the one connection.
        let burst = 1 + rng.below(8);
        let mut reqs = Vec::new();
        for i in 0..burst {
            let req = if i % 2 == 0 {
                client.get(format!("{base}/h2/{n}/{i}")).send()
            } else {
                client
                    .post(format!("{base}/items"))
                    .body(format!("[{n},{i}]"))
                    .send()
            };
            let abandon = rng.below(25) == 0;
            reqs.push(async move {
                if abandon {
                    // Dropped after 1 ms: the client resets the stream.
                    let _ = tokio::time::timeout(Duration::from_millis(1), req).await;
                    return None;
                }
                Some(match req.await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                })
            });
        }
        for ok in futures_util::future::join_all(reqs)
            .await
            .into_iter()
            .flatten()
        {
            run.record(4, ok);
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: soak_load --tcp A --udp A --proxy A --http A [--secs S] [--scale K] [--max-ops N]";
    let addr = |flag: &str| -> SocketAddr {
        let a: SocketAddr = arg(&args, flag).expect(usage);
        assert!(
            a.ip().is_loopback(),
            "soak_load only targets loopback addresses"
        );
        a
    };
    let (tcp, udp, proxy, http) = (
        addr("--tcp"),
        addr("--udp"),
        addr("--proxy"),
        addr("--http"),
    );
    let secs: u64 = arg(&args, "--secs").unwrap_or(600);
    let scale: u64 = arg(&args, "--scale").unwrap_or(1).max(1);
    let run = Arc::new(Run {
        deadline: Instant::now() + Duration::from_secs(secs),
        max_ops: arg(&args, "--max-ops").unwrap_or(100_000_000),
        total: AtomicU64::new(0),
        counts: Default::default(),
    });
    let base = format!("http://{http}");
    let ms = Duration::from_millis;
    let mut tasks = Vec::new();
    // Per worker, one operation per pace interval at most; `scale` workers
    // of each kind. At scale 1: ~200 TCP sessions/s, 400 datagrams/s, 200
    // proxied sessions/s, 200 HTTP/1 requests/s, ~450 HTTP/2 streams/s.
    for w in 0..4 * scale {
        tasks.push(tokio::spawn(tcp_worker(
            run.clone(),
            0,
            tcp,
            11 + w,
            ms(20),
        )));
        tasks.push(tokio::spawn(tcp_worker(
            run.clone(),
            2,
            proxy,
            13 + w,
            ms(20),
        )));
        tasks.push(tokio::spawn(udp_worker(run.clone(), udp, 17 + w, ms(10))));
        tasks.push(tokio::spawn(http1_worker(
            run.clone(),
            base.clone(),
            19 + w,
            ms(20),
        )));
    }
    for w in 0..2 * scale {
        tasks.push(tokio::spawn(h2_worker(
            run.clone(),
            base.clone(),
            23 + w,
            ms(20),
        )));
    }
    for _ in 0..8 {
        tasks.push(tokio::spawn(tcp_long(run.clone(), tcp)));
    }
    for t in tasks {
        let _ = t.await;
    }
    let fields: Vec<String> = KINDS
        .iter()
        .zip(run.counts.iter())
        .map(|(k, (o, e))| {
            format!(
                "\"{k}\":{{\"ok\":{},\"errors\":{}}}",
                o.load(Relaxed),
                e.load(Relaxed)
            )
        })
        .collect();
    println!("{{{}}}", fields.join(","));
}
