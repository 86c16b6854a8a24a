//! Paced UDP sender for the sniffer benchmark: sends COUNT datagrams of 16
//! bytes to ADDR at RATE per second, and owns a sink socket bound at ADDR
//! that never reads (so no ICMP errors are produced; the kernel drops what
//! overflows the sink). Loopback only. Prints one JSON line: sent, seconds,
//! achieved rate.
//!
//! udp_flood ADDR --count N --rate R [--flows F] [--threads T] [--batch B]
//!
//! `--flows F` sends from F sockets (F flows, round robin), `--threads T`
//! splits them, the count and the rate over T threads, `--batch B` sends B
//! datagrams per sendmmsg(2) (1: one send(2) each, as before). Defaults: 1
//! flow, 1 thread, batch 1.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn arg(args: &[String], flag: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Send `n` (≤ 1024) copies of `payload` on the connected socket `s`, in
/// one sendmmsg(2) when n > 1; returns how many went.
fn send_batch(s: &UdpSocket, payload: &[u8], n: usize) -> usize {
    if n <= 1 {
        return usize::from(s.send(payload).is_ok());
    }
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: an all-zero mmsghdr is valid (no name, no control); each
    // points at the one iovec, which points at payload; all outlive the call.
    let mut msgs: Vec<libc::mmsghdr> = (0..n)
        .map(|_| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: see above; the kernel reads msgs[..n].
    let rc = unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
    if rc < 0 { 0 } else { rc as usize }
}

/// One sender thread: `count` datagrams at `rate`/s over `socks`.
fn sender(socks: &[UdpSocket], count: u64, rate: u64, batch: u64) -> u64 {
    let payload = [0x5au8; 16];
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(count as f64 / rate as f64 * 4.0 + 10.0);
    let mut sent = 0u64;
    let mut next_sock = 0usize;
    // Send in 1 ms slices: each slice catches up to where the rate says.
    while sent < count && Instant::now() < deadline {
        let due = ((start.elapsed().as_secs_f64() + 0.001) * rate as f64) as u64;
        let mut stalled = 0;
        while sent < due.min(count) && stalled < 1000 {
            let n = (due.min(count) - sent).min(batch) as usize;
            let went = send_batch(&socks[next_sock], &payload, n) as u64;
            next_sock = (next_sock + 1) % socks.len();
            sent += went;
            stalled = if went == 0 { stalled + 1 } else { 0 };
        }
        let next = start + Duration::from_secs_f64(sent as f64 / rate as f64);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait.min(Duration::from_millis(1)));
        }
    }
    sent
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: udp_flood ADDR --count N --rate R [--flows F] [--threads T] [--batch B]");
    assert!(
        addr.ip().is_loopback(),
        "udp_flood only targets loopback addresses"
    );
    let count = arg(&args, "--count", 30_000);
    let rate = arg(&args, "--rate", 10_000).max(1);
    let threads = arg(&args, "--threads", 1).clamp(1, 64);
    let flows = arg(&args, "--flows", 1).clamp(threads, 4096);
    let batch = arg(&args, "--batch", 1).clamp(1, 1024);
    let _sink = UdpSocket::bind(addr).expect("bind the sink");
    let socks: Vec<UdpSocket> = (0..flows)
        .map(|_| {
            let tx = UdpSocket::bind("127.0.0.1:0").expect("bind a sender");
            tx.connect(addr).expect("connect");
            tx
        })
        .collect();
    let per = flows.div_ceil(threads) as usize;
    let start = Instant::now();
    let sent: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = socks
            .chunks(per)
            .enumerate()
            .map(|(i, chunk)| {
                let t = threads.min(socks.len().div_ceil(per) as u64);
                // Thread i's share of the count (the first take the rest).
                let share = count / t + u64::from((i as u64) < count % t);
                s.spawn(move || sender(chunk, share, (rate / t).max(1), batch))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sender thread"))
            .sum()
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"sent\":{sent},\"secs\":{secs:.3},\"rate\":{:.0}}}",
        sent as f64 / secs
    );
}
