//! Resident memory per idle connection, against the real binary: a TCP
//! echo connection and a proxied pair must stay under the bounds bench/README.md
//! states (4 KB and 3 KB of netd's RSS).
//!
//! How it is measured, so that it does not flake: a warm-up of [`WARM`]
//! connections, opened one by one, brings the heap, tokio's registration
//! slab and the buffer free lists to their working size; then [`MEASURED`]
//! more are opened in bursts of [`BURST`] (all connect and send, then all
//! read the echo back), so buffers of exchanges in flight together are
//! counted if they stay resident; netd's RSS growth over those, divided by
//! their number, is the figure. Each connection has exchanged a message
//! and is idle when RSS is read. The proxy's upstream is a TCP echo in a
//! second netd, so its memory is not counted. Measured (debug build): echo
//! ~1.6 KB, proxied pair ~2.8 KB; a buffer kept per idle connection would
//! add 16 or 64 KiB.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::{Netd, bound_addr, raise_fd_limit, rss_kib};

/// Connections opened, exchanged with and held before measuring.
const WARM: usize = 500;
/// Connections whose cost is measured.
const MEASURED: usize = 3000;
/// Connections opened together: all connect and send, then all read.
const BURST: usize = 100;
/// Bytes each connection sends and reads back before going idle.
const MESSAGE: usize = 12 * 1024;

/// Open `n` connections to `addr` in bursts of `burst`, each exchanging
/// [`MESSAGE`] bytes, and add them to `held`.
fn open_idle(addr: SocketAddr, n: usize, burst: usize, held: &mut Vec<TcpStream>) {
    let msg = vec![0x5a; MESSAGE];
    let mut left = n;
    while left > 0 {
        let opened: Vec<TcpStream> = (0..left.min(burst))
            .map(|_| {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(&msg).expect("send");
                s
            })
            .collect();
        let mut back = vec![0u8; MESSAGE];
        for mut s in opened {
            s.read_exact(&mut back).expect("echo back");
            held.push(s);
        }
        left -= left.min(burst);
    }
}

/// netd's RSS growth per connection, in bytes, over [`MEASURED`] idle
/// connections to `addr` (after [`WARM`] of them).
fn bytes_per_idle_connection(netd: &Netd, addr: SocketAddr) -> u64 {
    let mut held = Vec::with_capacity(WARM + MEASURED);
    open_idle(addr, WARM, 1, &mut held);
    let before = rss_kib(netd.pid());
    open_idle(addr, MEASURED, BURST, &mut held);
    let after = rss_kib(netd.pid());
    let per = after.saturating_sub(before) * 1024 / MEASURED as u64;
    eprintln!(
        "RSS {before} KiB with {WARM} idle connections, {after} KiB with {}: {per} B each",
        held.len()
    );
    per
}

#[test]
fn an_idle_tcp_echo_connection_costs_at_most_4_kb() {
    raise_fd_limit();
    let netd = Netd::start("[log]\nlevel = \"warn\"\n");
    netd.netctl_ok(&[
        "start",
        "tcp-echo",
        "e",
        "--listen",
        "127.0.0.1:0",
        "--max-connections",
        "10000",
    ]);
    let per = bytes_per_idle_connection(&netd, bound_addr(&netd, "e"));
    assert!(per <= 4096, "{per} B per idle echo connection (bound 4096)");
}

#[test]
fn an_idle_proxied_pair_costs_at_most_3_kb() {
    raise_fd_limit();
    // The upstream lives in a netd of its own: only the proxy is measured.
    let upstream = Netd::start("[log]\nlevel = \"warn\"\n");
    upstream.netctl_ok(&[
        "start",
        "tcp-echo",
        "up",
        "--listen",
        "127.0.0.1:0",
        "--max-connections",
        "10000",
    ]);
    let up = bound_addr(&upstream, "up").to_string();
    let netd = Netd::start("[log]\nlevel = \"warn\"\n");
    netd.netctl_ok(&[
        "start",
        "proxy",
        "p",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up,
        "--max-connections",
        "10000",
    ]);
    let per = bytes_per_idle_connection(&netd, bound_addr(&netd, "p"));
    assert!(per <= 3072, "{per} B per idle proxied pair (bound 3072)");
}
