//! TLS client load for the TLS benchmarks (bench/tls_bench.sh), loopback
//! only: tokio-rustls with ring, the stack netd serves with, TLS 1.3 only
//! and session resumption off, so every connection is a full handshake.
//!
//! ```text
//! tls_load handshake --addr A [--concurrency 32] [--duration 5]
//! tls_load bulk      --addr A [--concurrency 4] [--duration 5] [--bytes 68719476736]
//! tls_load idle      --addr A [--concurrency 1000] [--duration 120]
//!   common: --ca FILE | --insecure, [--sni localhost] [--alpn h2,http/1.1]
//! ```
//!
//! - `handshake`: C loops, each TCP connect, full handshake, a 64-byte
//!   request, its 64-byte echo, close (SO_LINGER 0: no TIME_WAIT left
//!   behind), until the duration is over. Prints one JSON line: handshakes,
//!   secs, rate per second, p50/p99 of the whole exchange in µs, errors (a
//!   failed exchange or one over 5 s), and the version, cipher suite and
//!   key-exchange group negotiated.
//! - `bulk`: C connections each stream up to `--bytes` through the TLS
//!   connection to an echo and read them back, stopping at the duration.
//!   Prints one JSON line: bytes echoed, secs, MB/s (10^6 bytes), Gbit/s.
//! - `idle`: opens C connections in batches of 100 (handshake and one
//!   64-byte echo each), prints `ready C`, and holds them until stdin
//!   closes or the duration is over, so the server's memory can be read.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use netd::net::tls::client::NoVerify;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// One exchange (connect, handshake, echo) longer than this is an error.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds on what the command line may ask for.
const MAX_CONCURRENCY: u64 = 100_000;
const MAX_DURATION_SECS: u64 = 3600;
/// Bulk writes and reads in chunks of this size (a TLS record is 16 KiB).
const CHUNK: usize = 16 * 1024;

const USAGE: &str = "usage: tls_load handshake|bulk|idle --addr HOST:PORT (--ca FILE | --insecure) \
     [--sni NAME] [--concurrency C] [--duration SECS] [--bytes N] [--alpn P1,P2]";

struct Opts {
    mode: String,
    addr: SocketAddr,
    connector: TlsConnector,
    sni: ServerName<'static>,
    concurrency: usize,
    duration: Duration,
    bytes: u64,
}

/// The value after `flag`, if the flag is given.
fn value<'a>(args: &'a [String], flag: &str) -> anyhow::Result<Option<&'a str>> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .map(|v| Some(v.as_str()))
            .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}")),
    }
}

fn number(args: &[String], flag: &str, default: u64, max: u64) -> anyhow::Result<u64> {
    let n = match value(args, flag)? {
        None => default,
        Some(v) => v
            .parse()
            .with_context(|| format!("{flag} '{v}' is not a whole number"))?,
    };
    if n == 0 || n > max {
        bail!("{flag} must be between 1 and {max}, not {n}");
    }
    Ok(n)
}

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let known = [
        "--addr",
        "--ca",
        "--insecure",
        "--sni",
        "--concurrency",
        "--duration",
        "--bytes",
        "--alpn",
    ];
    for a in args.iter().skip(2).filter(|a| a.starts_with("--")) {
        if !known.contains(&a.as_str()) {
            bail!("unknown option {a}\n{USAGE}");
        }
    }
    let mode = args.get(1).cloned().unwrap_or_default();
    let (concurrency, duration, bytes) = match mode.as_str() {
        "handshake" => (32, 5, 0),
        "bulk" => (4, 5, 1 << 36),
        "idle" => (1000, 120, 0),
        _ => bail!("no mode '{mode}'\n{USAGE}"),
    };
    let addr_text = value(args, "--addr")?.ok_or_else(|| anyhow!("--addr is required\n{USAGE}"))?;
    let addr = addr_text
        .to_socket_addrs()
        .with_context(|| format!("--addr '{addr_text}'"))?
        .next()
        .ok_or_else(|| anyhow!("--addr '{addr_text}' resolves to nothing"))?;
    if !addr.ip().is_loopback() {
        bail!("--addr {addr}: tls_load only targets loopback addresses");
    }
    let sni_text = value(args, "--sni")?.unwrap_or("localhost");
    let sni = ServerName::try_from(sni_text.to_string())
        .map_err(|_| anyhow!("--sni '{sni_text}' is not a DNS name or IP address"))?;
    let alpn: Vec<Vec<u8>> = value(args, "--alpn")?
        .map(|v| v.split(',').map(|p| p.as_bytes().to_vec()).collect())
        .unwrap_or_default();
    let insecure = args.iter().any(|a| a == "--insecure");
    let connector = connector(value(args, "--ca")?, insecure, alpn)?;
    Ok(Opts {
        mode,
        addr,
        connector,
        sni,
        concurrency: number(args, "--concurrency", concurrency, MAX_CONCURRENCY)? as usize,
        duration: Duration::from_secs(number(args, "--duration", duration, MAX_DURATION_SECS)?),
        bytes: if bytes == 0 {
            0
        } else {
            number(args, "--bytes", bytes, u64::MAX)?
        },
    })
}

/// A TLS 1.3-only client with resumption off, trusting `ca` (or anything,
/// with `insecure`), offering `alpn`.
fn connector(ca: Option<&str>, insecure: bool, alpn: Vec<Vec<u8>>) -> anyhow::Result<TlsConnector> {
    let provider = netd::net::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?;
    let builder = match (ca, insecure) {
        (Some(_), true) => bail!("--ca and --insecure contradict each other: give one"),
        (None, false) => bail!("give --ca FILE (the server's CA) or --insecure\n{USAGE}"),
        (None, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider))),
        (Some(file), false) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(file).with_context(|| format!("--ca {file}"))? {
                roots
                    .add(c.with_context(|| format!("--ca {file}: not PEM"))?)
                    .with_context(|| format!("--ca {file}"))?;
            }
            if roots.is_empty() {
                bail!("--ca {file}: no certificate in the file");
            }
            builder.with_root_certificates(roots)
        }
    };
    let mut config = builder.with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Connect, handshake, send 64 bytes and read their echo.
async fn exchange(o: &Opts) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(o.addr).await.context("connect")?;
    tcp.set_nodelay(true).context("TCP_NODELAY")?;
    let mut tls = o
        .connector
        .connect(o.sni.clone(), tcp)
        .await
        .context("handshake")?;
    let msg = [0x42u8; 64];
    tls.write_all(&msg).await.context("write")?;
    let mut back = [0u8; 64];
    tls.read_exact(&mut back).await.context("read the echo")?;
    if back != msg {
        bail!("the echo differs from the request");
    }
    Ok(tls)
}

/// What was negotiated, for the JSON line: version, cipher suite, group.
fn negotiated(tls: &TlsStream<TcpStream>) -> String {
    let (_, c) = tls.get_ref();
    let version = c
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let suite = c
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let group = c
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_default();
    format!("\"version\":\"{version}\",\"cipher\":\"{suite}\",\"group\":\"{group}\"")
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn handshakes(o: Arc<Opts>) -> anyhow::Result<()> {
    let deadline = Instant::now() + o.duration;
    let start = Instant::now();
    let tasks: Vec<_> = (0..o.concurrency)
        .map(|_| {
            let o = o.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(10_000);
                let mut errors = 0u64;
                let mut seen = None;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(&o)).await {
                        Ok(Ok(tls)) => {
                            lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                            if seen.is_none() {
                                seen = Some(negotiated(&tls));
                            }
                            let _ = socket2::SockRef::from(tls.get_ref().0)
                                .set_linger(Some(Duration::ZERO));
                        }
                        Ok(Err(e)) => {
                            if errors == 0 {
                                eprintln!("tls_load: {e:#}");
                            }
                            errors += 1;
                        }
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors, seen)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    let mut seen = None;
    for t in tasks {
        let (l, e, s) = t.await.context("a load task panicked")?;
        all.extend(l);
        errors += e;
        seen = seen.or(s);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "{{\"handshakes\":{},\"secs\":{elapsed:.3},\"rate\":{:.1},\"p50_us\":{},\"p99_us\":{},\"errors\":{errors},{}}}",
        all.len(),
        all.len() as f64 / elapsed,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        seen.unwrap_or_else(|| "\"version\":\"\",\"cipher\":\"\",\"group\":\"\"".into())
    );
    Ok(())
}

/// How long past the duration a bulk connection may take to finish the
/// write in progress and read back what is in flight.
const DRAIN: Duration = Duration::from_secs(2);

/// Write up to `bytes` in chunks until `deadline`, counting them in `sent`;
/// `done` is set when the writer stops.
async fn writer<W: AsyncWrite + Unpin>(
    mut w: W,
    bytes: u64,
    deadline: Instant,
    sent: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let buf = vec![0x5au8; CHUNK];
    let mut left = bytes;
    let mut result = Ok(());
    while left > 0 && Instant::now() < deadline {
        let n = left.min(CHUNK as u64) as usize;
        match tokio::time::timeout_at((deadline + DRAIN).into(), w.write_all(&buf[..n])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                result = Err(e);
                break;
            }
            Err(_) => {
                result = Err(std::io::ErrorKind::TimedOut.into());
                break;
            }
        }
        left -= n as u64;
        sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    // TLS: write_all may leave the last records queued in rustls when the
    // socket was full; they go out on a flush, not on their own.
    if result.is_ok() {
        result = match tokio::time::timeout_at((deadline + DRAIN).into(), w.flush()).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        };
    }
    done.store(true, Ordering::Release);
    result
}

/// Read the echo, counting it in `echoed`, until the writer is done and
/// all it sent is back, or `deadline` plus [`DRAIN`] is past.
async fn reader<R: AsyncRead + Unpin>(
    mut r: R,
    deadline: Instant,
    sent: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        if done.load(Ordering::Acquire) && got >= sent.load(Ordering::Relaxed) {
            return Ok(());
        }
        // The writer may finish while this read waits: wake up now and
        // then to look again.
        let wake = (Instant::now() + Duration::from_millis(100)).min(deadline + DRAIN);
        let n = match tokio::time::timeout_at(wake.into(), r.read(&mut buf)).await {
            Ok(n) => n?,
            Err(_) if Instant::now() >= deadline + DRAIN => {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            Err(_) => continue,
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n as u64;
        echoed.fetch_add(n as u64, Ordering::Relaxed);
    }
}

async fn bulk(o: Arc<Opts>) -> anyhow::Result<()> {
    let echoed = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::with_capacity(o.concurrency);
    for _ in 0..o.concurrency {
        let tls = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(&o))
            .await
            .context("opening a connection took over 5 s")??;
        streams.push(tls);
    }
    let start = Instant::now();
    let deadline = start + o.duration;
    let mut tasks = Vec::with_capacity(streams.len());
    let mut seen = String::new();
    for tls in streams {
        if seen.is_empty() {
            seen = negotiated(&tls);
        }
        let (r, w) = tokio::io::split(tls);
        let sent = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (bytes, echoed) = (o.bytes, echoed.clone());
        tasks.push(tokio::spawn(async move {
            let read = tokio::spawn(reader(r, deadline, sent.clone(), done.clone(), echoed));
            let w = writer(w, bytes, deadline, sent, done).await;
            let r = read.await.map_err(std::io::Error::other)?;
            w.and(r)
        }));
    }
    let mut errors = 0u64;
    for t in tasks {
        if let Err(e) = t.await.context("a load task panicked")? {
            if errors == 0 {
                eprintln!("tls_load: bulk: {e}");
            }
            errors += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let bytes = echoed.load(Ordering::Relaxed);
    println!(
        "{{\"bytes\":{bytes},\"secs\":{elapsed:.3},\"mb_per_s\":{:.1},\"gbit_per_s\":{:.3},\"errors\":{errors},{seen}}}",
        bytes as f64 / elapsed / 1e6,
        bytes as f64 * 8.0 / elapsed / 1e9,
    );
    Ok(())
}

async fn idle(o: Arc<Opts>) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(o.concurrency);
    // In batches, so the server's backlog is never overrun.
    while held.len() < o.concurrency {
        let batch = (o.concurrency - held.len()).min(100);
        let opened: Vec<_> = (0..batch)
            .map(|_| {
                let o = o.clone();
                tokio::spawn(
                    async move { tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(&o)).await },
                )
            })
            .collect();
        for t in opened {
            let tls = t
                .await
                .context("a load task panicked")?
                .context("a handshake took over 5 s")?
                .with_context(|| format!("connection {}", held.len() + 1))?;
            held.push(tls);
        }
    }
    println!("ready {}", held.len());
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(o.duration, async {
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    drop(held);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let o = Arc::new(parse(&args)?);
    match o.mode.as_str() {
        "handshake" => handshakes(o).await,
        "bulk" => bulk(o).await,
        _ => idle(o).await,
    }
}
