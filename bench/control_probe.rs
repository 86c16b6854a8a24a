//! Control-plane load and measurement for bench/control_scale.sh, against
//! a netd on a Unix control socket (loopback only, every mode bounded).
//!
//! `control_probe start SOCK --count N [--from 0] [--conc 1]`: starts N
//! TCP echo listeners "s00000"... on 127.0.0.1:0 over one connection, at
//! most `conc` calls in flight; prints seconds taken and the p50/p99 of
//! one call, and the seconds of the first and last tenth (a start whose
//! cost grows with the registry shows there). With `--pairs 1`, each call
//! is a start and then a stop of the same listener (timed together), so the
//! registry keeps its size.
//!
//! `control_probe list SOCK` / `control_probe stats SOCK`: every listener
//! by following pages; prints listeners, pages and seconds.
//!
//! `control_probe watch SOCK --interval-ms 1000 --ticks 10`: opens a
//! WatchStats, reads the snapshot, then `ticks` ticks; prints the snapshot's
//! messages and bytes and the bytes of each tick. Bytes are gRPC frames as
//! sent (5-byte prefix + encoded message, no compression) plus 9 bytes of
//! HTTP/2 DATA frame header per 16 KiB: what crosses the socket, less the
//! HTTP/2 headers sent once per stream. With `--pid P`, also the CPU time
//! process P (netd) used over the ticks after the snapshot.
//!
//! `control_probe idle --pid P --secs S`: the CPU time process P used over
//! S seconds, the baseline for the above.

use std::time::{Duration, Instant};

use netd::proto::{self, listener_spec::Kind};
use netd::util::addr::ControlAddr;
use prost::Message as _;

fn arg(args: &[String], flag: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wire_bytes(encoded: usize) -> usize {
    let grpc = 5 + encoded;
    grpc + 9 * grpc.div_ceil(16384).max(1)
}

async fn next(
    s: &mut tonic::Streaming<proto::StatsSample>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<proto::StatsSample> {
    tokio::time::timeout_at(deadline, s.message())
        .await
        .map_err(|_| anyhow::anyhow!("watch took too long"))??
        .ok_or_else(|| anyhow::anyhow!("stream ended"))
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow::anyhow!("odd /proc/{pid}/stat"))?
        .1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5): 12 and 13 here.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let pid = arg(&args, "--pid", 0);
    if args.get(1).map(String::as_str) == Some("idle") {
        return idle(&args, pid).await;
    }
    let (Some(mode), Some(sock)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: control_probe start|list|stats|watch SOCK [options]");
    };
    let addr: ControlAddr = format!("unix:{sock}").parse()?;
    let opts = netd::control::client::DialOptions {
        request_timeout: None,
        ..Default::default()
    };
    let c = netd::control::client::control_client_with(&addr, &opts).await?;
    match mode.as_str() {
        "start" => start(c, &args).await,
        "list" | "stats" => pages(c, mode).await,
        "watch" => watch(c, &args, pid).await,
        other => anyhow::bail!("unknown mode {other:?}"),
    }
}

type Client = proto::control_client::ControlClient<tonic::transport::Channel>;

/// `idle`: the CPU time process `pid` used over `--secs`.
async fn idle(args: &[String], pid: u64) -> anyhow::Result<()> {
    let secs = arg(args, "--secs", 10);
    let c0 = cpu_secs(pid)?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let cpu = cpu_secs(pid)? - c0;
    println!(
        "{}",
        serde_json::json!({"secs": secs, "cpu_secs": cpu, "cpu_pct": 100.0 * cpu / secs as f64})
    );
    Ok(())
}

/// `start`: `--count` TCP echo listeners, `--conc` calls in flight.
async fn start(c: Client, args: &[String]) -> anyhow::Result<()> {
    let count = arg(args, "--count", 1000) as usize;
    let from = arg(args, "--from", 0) as usize;
    let conc = arg(args, "--conc", 1).max(1) as usize;
    let pairs = arg(args, "--pairs", 0) == 1;
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(count);
    let mut next = from;
    let end = from + count;
    let mut inflight = futures_util::stream::FuturesUnordered::new();
    use futures_util::StreamExt as _;
    let (mut first_tenth, mut last_tenth_from) = (None, None);
    let tenth = (count / 10).max(1);
    let mut done = 0usize;
    loop {
        while inflight.len() < conc && next < end {
            let mut c = c.clone();
            let name = format!("s{next:05}");
            next += 1;
            inflight.push(async move {
                let t = Instant::now();
                let r = c
                    .start_listener(proto::StartListenerRequest {
                        name: name.clone(),
                        spec: Some(proto::ListenerSpec {
                            kind: Some(Kind::TcpEcho(proto::TcpEchoSpec {
                                listen: "127.0.0.1:0".into(),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    })
                    .await;
                let r = match r {
                    Ok(_) if pairs => c
                        .stop_listener(proto::StopListenerRequest { name })
                        .await
                        .map(|_| ()),
                    r => r.map(|_| ()),
                };
                (r, t.elapsed())
            });
        }
        let Some((r, d)) = inflight.next().await else {
            break;
        };
        r?;
        lat.push(d.as_secs_f64());
        done += 1;
        if done == tenth {
            first_tenth = Some(t0.elapsed().as_secs_f64());
        }
        if done == count - tenth {
            last_tenth_from = Some(t0.elapsed().as_secs_f64());
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "started": count,
            "pairs": pairs,
            "conc": conc,
            "secs": secs,
            "per_sec": count as f64 / secs,
            "p50_ms": pct(&lat, 0.5) * 1e3,
            "p99_ms": pct(&lat, 0.99) * 1e3,
            "first_tenth_secs": first_tenth,
            "last_tenth_secs": last_tenth_from.map(|f| secs - f),
        })
    );
    Ok(())
}

/// `list` / `stats`: every listener, following pages.
async fn pages(mut c: Client, mode: &str) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let (mut n, mut pages, mut bytes) = (0usize, 0usize, 0usize);
    let mut token = String::new();
    loop {
        let (len, next, size) = if mode == "list" {
            let p = c
                .list_listeners(proto::ListListenersRequest {
                    page_size: 0,
                    page_token: token,
                })
                .await?
                .into_inner();
            (
                p.listeners.len(),
                p.next_page_token.clone(),
                p.encoded_len(),
            )
        } else {
            let p = c
                .get_stats(proto::GetStatsRequest {
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            (
                p.listeners.len(),
                p.next_page_token.clone(),
                p.encoded_len(),
            )
        };
        n += len;
        pages += 1;
        bytes += wire_bytes(size);
        token = next;
        if token.is_empty() || pages > 1000 {
            break;
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "listeners": n,
            "pages": pages,
            "bytes": bytes,
            "secs": t0.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// `watch`: the snapshot, then `--ticks` ticks of WatchStats.
async fn watch(mut c: Client, args: &[String], pid: u64) -> anyhow::Result<()> {
    let interval = Duration::from_millis(arg(args, "--interval-ms", 1000));
    let ticks = arg(args, "--ticks", 10) as usize;
    let mut s = c
        .watch_stats(proto::WatchStatsRequest {
            name: String::new(),
            interval: Some(interval.try_into()?),
        })
        .await?
        .into_inner();
    let limit = interval * (ticks as u32 + 5) + Duration::from_secs(60);
    let deadline = tokio::time::Instant::now() + limit;
    let t0 = Instant::now();
    let (mut snap_msgs, mut snap_bytes, mut snap_listeners) = (0usize, 0usize, 0usize);
    loop {
        let m = next(&mut s, deadline).await?;
        snap_msgs += 1;
        snap_bytes += wire_bytes(m.encoded_len());
        snap_listeners += m.listeners.len();
        if m.snapshot_complete {
            break;
        }
    }
    let snap_secs = t0.elapsed().as_secs_f64();
    let c0 = if pid > 0 { cpu_secs(pid)? } else { 0.0 };
    let t1 = Instant::now();
    let mut per_tick = Vec::with_capacity(ticks);
    let mut changed = 0usize;
    let mut cur = 0usize;
    while per_tick.len() < ticks {
        let m = next(&mut s, deadline).await?;
        cur += wire_bytes(m.encoded_len());
        changed += m.listeners.len();
        if !m.more {
            per_tick.push(cur);
            cur = 0;
        }
    }
    let (cpu, wall) = if pid > 0 {
        (cpu_secs(pid)? - c0, t1.elapsed().as_secs_f64())
    } else {
        (0.0, t1.elapsed().as_secs_f64())
    };
    let mut sorted = per_tick.clone();
    sorted.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "snapshot_listeners": snap_listeners,
            "snapshot_messages": snap_msgs,
            "snapshot_bytes": snap_bytes,
            "snapshot_secs": snap_secs,
            "ticks": ticks,
            "tick_bytes_median": sorted[sorted.len() / 2],
            "tick_bytes_max": sorted.last(),
            "listeners_sent_after_snapshot": changed,
            "ticks_secs": wall,
            "cpu_secs": cpu,
            "cpu_pct": 100.0 * cpu / wall,
            "cpu_ms_per_tick": 1e3 * cpu / ticks as f64,
        })
    );
    Ok(())
}
