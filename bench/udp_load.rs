//! UDP load for the udp-echo and udp-proxy benchmarks (bench/udp_bench.sh):
//! offers more than a proxy can carry and counts what arrives. Loopback
//! only; every run is bounded in time.
//!
//! Senders: `--threads T` threads, each with `--sockets S` connected UDP
//! sockets sending `--size` byte datagrams with sendmmsg in batches of
//! `--batch`, round-robin over its sockets, paced to `--rate` datagrams/s in
//! all (0: as fast as they can) for `--secs` seconds.
//!
//! Modes:
//! - `--mode rr` (request/response): each sender socket reads its replies
//!   (recvmmsg) between batches; delivered = replies.
//! - `--mode oneway --sink ADDR`: a sink thread bound at ADDR (the proxy's
//!   upstream) counts what arrives; delivered = datagrams at the sink.
//! - `--echo ADDR` (with rr): an echo thread bound at ADDR answers every
//!   datagram (a proxy's upstream for rr through a proxy).
//!
//! `--search` finds the highest rate with loss at most `--loss-ok`
//! (default 0: none lost) by steps of `--secs` each: doubling from
//! `--rate` until loss, then bisecting (at most `--steps` steps).
//!
//! Prints one JSON line: offered and delivered datagrams/s, loss, and for
//! --search the zero-loss rate.
//!
//! udp_load TARGET [--mode rr|oneway] [--sink ADDR] [--echo ADDR] [--size B]
//!          [--threads T] [--sockets S] [--batch N] [--rate R] [--secs S]
//!          [--search] [--loss-ok F] [--steps N]
#![allow(unsafe_code)]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How long replies (or the sink) are waited for after the senders stop.
const DRAIN: Duration = Duration::from_millis(300);
const MAX_BATCH: usize = 64;

struct Args {
    target: SocketAddr,
    oneway: bool,
    sink: Option<SocketAddr>,
    echo: Option<SocketAddr>,
    size: usize,
    threads: usize,
    sockets: usize,
    batch: usize,
    rate: u64,
    secs: f64,
    search: bool,
    loss_ok: f64,
    steps: u32,
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a valid value")),
        None => default,
    }
}

fn loopback(a: Option<SocketAddr>, what: &str) -> Option<SocketAddr> {
    if let Some(a) = a {
        assert!(a.ip().is_loopback(), "{what} {a}: loopback addresses only");
    }
    a
}

fn parse() -> Args {
    let args: Vec<String> = std::env::args().collect();
    let target: SocketAddr = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: udp_load TARGET [--mode rr|oneway] ... (see the source)");
    loopback(Some(target), "target");
    let mode: String = flag(&args, "--mode", "rr".to_string());
    let a = Args {
        target,
        oneway: match mode.as_str() {
            "rr" => false,
            "oneway" => true,
            m => panic!("--mode {m}: rr or oneway"),
        },
        sink: loopback(flag(&args, "--sink", String::new()).parse().ok(), "--sink"),
        echo: loopback(flag(&args, "--echo", String::new()).parse().ok(), "--echo"),
        size: flag(&args, "--size", 64usize).clamp(1, 65_000),
        threads: flag(&args, "--threads", 1usize).clamp(1, 16),
        sockets: flag(&args, "--sockets", 4usize).clamp(1, 256),
        batch: flag(&args, "--batch", 32usize).clamp(1, MAX_BATCH),
        rate: flag(&args, "--rate", 0u64),
        secs: flag(&args, "--secs", 3.0f64).clamp(0.1, 60.0),
        search: args.iter().any(|a| a == "--search"),
        loss_ok: flag(&args, "--loss-ok", 0.0f64),
        steps: flag(&args, "--steps", 10u32).clamp(1, 30),
    };
    assert!(
        !a.oneway || a.sink.is_some(),
        "--mode oneway needs --sink ADDR"
    );
    a
}

fn socket(bind: SocketAddr) -> UdpSocket {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        None,
    )
    .expect("socket");
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.bind(&bind.into()).expect("bind");
    s.into()
}

/// recvmmsg of up to `bufs.len()` datagrams without waiting (0 if none),
/// their lengths into `lens`; with `from`, their sources too.
fn recv_batch(
    s: &UdpSocket,
    bufs: &mut [Vec<u8>],
    lens: &mut [usize; MAX_BATCH],
    from: Option<&mut Vec<SocketAddr>>,
) -> usize {
    let n = bufs.len().min(MAX_BATCH);
    // SAFETY: all-zero is a valid iovec, mmsghdr and sockaddr_storage.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovs[i].iov_base = bufs[i].as_mut_ptr().cast();
        iovs[i].iov_len = bufs[i].len();
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
    }
    // SAFETY: every pointer points at a live buffer of the length given.
    let rc = unsafe {
        libc::recvmmsg(
            s.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as _,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if rc <= 0 {
        return 0;
    }
    let got = rc as usize;
    for i in 0..got {
        lens[i] = hdrs[i].msg_len as usize;
    }
    if let Some(from) = from {
        from.clear();
        for name in names.iter().take(got) {
            from.push(sockaddr(name));
        }
    }
    got
}

/// The IP socket address the kernel wrote (loopback IPv4 or IPv6).
fn sockaddr(st: &libc::sockaddr_storage) -> SocketAddr {
    if libc::c_int::from(st.ss_family) == libc::AF_INET6 {
        // SAFETY: the family says a sockaddr_in6 is stored.
        let a = unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
        SocketAddr::from((a.sin6_addr.s6_addr, u16::from_be(a.sin6_port)))
    } else {
        // SAFETY: the family says a sockaddr_in is stored.
        let a = unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
        SocketAddr::from((
            u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
            u16::from_be(a.sin_port),
        ))
    }
}

/// Wait up to 20 ms for `s` to be readable.
fn wait_readable(s: &UdpSocket) {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 20) };
}

/// sendmmsg of `n` copies of `payload` on the connected `s` (to `to` each
/// if given, one per datagram); how many the kernel took.
fn send_batch(s: &UdpSocket, payloads: &[&[u8]], to: &[SocketAddr]) -> usize {
    let n = payloads.len().min(MAX_BATCH);
    // SAFETY: all-zero is a valid iovec and mmsghdr.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let names: Vec<socket2::SockAddr> = to.iter().map(|a| (*a).into()).collect();
    for i in 0..n {
        iovs[i].iov_base = payloads[i].as_ptr() as *mut libc::c_void;
        iovs[i].iov_len = payloads[i].len();
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        if let Some(a) = names.get(i) {
            hdrs[i].msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen = a.len();
        }
    }
    // SAFETY: every pointer points at a live buffer of the length given.
    let rc =
        unsafe { libc::sendmmsg(s.as_raw_fd(), hdrs.as_mut_ptr(), n as _, libc::MSG_DONTWAIT) };
    rc.max(0) as usize
}

/// A thread counting (and with `echo`, answering) what arrives at `s`
/// until `stop`.
fn serve(
    s: UdpSocket,
    echo: bool,
    got: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut bufs = vec![vec![0u8; 65_536]; MAX_BATCH];
        let mut lens = [0usize; MAX_BATCH];
        let mut from = Vec::with_capacity(MAX_BATCH);
        // Bounded by `stop`, set when the run ends.
        while !stop.load(Relaxed) {
            let n = recv_batch(&s, &mut bufs, &mut lens, echo.then_some(&mut from));
            if n == 0 {
                wait_readable(&s);
                continue;
            }
            got.fetch_add(n as u64, Relaxed);
            if echo {
                let payloads: Vec<&[u8]> = (0..n).map(|i| &bufs[i][..lens[i]]).collect();
                send_batch(&s, &payloads, &from);
            }
        }
    })
}

/// One run at `rate` (0: unlimited): (sent, delivered, seconds).
fn run(a: &Args, rate: u64) -> (u64, u64, f64) {
    let sink_got = Arc::new(AtomicU64::new(0));
    let stop_sink = Arc::new(AtomicBool::new(false));
    let sink = a
        .sink
        .filter(|_| a.oneway)
        .map(|addr| serve(socket(addr), false, sink_got.clone(), stop_sink.clone()));
    let echo = a.echo.filter(|_| !a.oneway).map(|addr| {
        serve(
            socket(addr),
            true,
            Arc::new(AtomicU64::new(0)),
            stop_sink.clone(),
        )
    });
    let start = Instant::now();
    let per_thread = rate / a.threads as u64;
    let handles: Vec<_> = (0..a.threads)
        .map(|_| {
            let (target, size, sockets, batch, secs, oneway) =
                (a.target, a.size, a.sockets, a.batch, a.secs, a.oneway);
            std::thread::spawn(move || {
                sender(target, size, sockets, batch, secs, oneway, per_thread)
            })
        })
        .collect();
    let (mut sent, mut replies) = (0, 0);
    for h in handles {
        let (s, r) = h.join().expect("sender thread");
        sent += s;
        replies += r;
    }
    let secs = start.elapsed().as_secs_f64() - DRAIN.as_secs_f64();
    stop_sink.store(true, Relaxed);
    for h in sink.into_iter().chain(echo) {
        h.join().expect("sink thread");
    }
    let delivered = if a.oneway {
        sink_got.load(Relaxed)
    } else {
        replies
    };
    (sent, delivered, secs.max(0.001))
}

/// One sender thread: (sent, replies received).
fn sender(
    target: SocketAddr,
    size: usize,
    sockets: usize,
    batch: usize,
    secs: f64,
    oneway: bool,
    rate: u64,
) -> (u64, u64) {
    let socks: Vec<UdpSocket> = (0..sockets)
        .map(|_| {
            let s = socket("127.0.0.1:0".parse().expect("an address"));
            s.connect(target).expect("connect");
            s
        })
        .collect();
    let payload = vec![0x5au8; size];
    let payloads: Vec<&[u8]> = vec![&payload[..]; batch];
    let mut bufs = vec![vec![0u8; size.max(2048)]; MAX_BATCH];
    let mut lens = [0usize; MAX_BATCH];
    let (mut sent, mut got) = (0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut i = 0usize;
    // Bounded by the deadline.
    while Instant::now() < end {
        if rate > 0 {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(200));
                if !oneway {
                    for s in &socks {
                        got += recv_batch(s, &mut bufs, &mut lens, None) as u64;
                    }
                }
                continue;
            }
        }
        let s = &socks[i % socks.len()];
        i += 1;
        sent += send_batch(s, &payloads, &[]) as u64;
        if !oneway {
            got += recv_batch(s, &mut bufs, &mut lens, None) as u64;
        }
    }
    let drain_end = Instant::now() + DRAIN;
    while !oneway && Instant::now() < drain_end {
        let mut any = 0;
        for s in &socks {
            any += recv_batch(s, &mut bufs, &mut lens, None);
        }
        got += any as u64;
        if any == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    if oneway {
        std::thread::sleep(DRAIN);
    }
    (sent, got)
}

fn main() {
    let a = parse();
    if !a.search {
        let (sent, delivered, secs) = run(&a, a.rate);
        println!(
            "{{\"size\":{},\"offered\":{:.0},\"delivered\":{:.0},\"loss\":{:.4},\"sent\":{sent},\"received\":{delivered}}}",
            a.size,
            sent as f64 / secs,
            delivered as f64 / secs,
            1.0 - delivered as f64 / sent.max(1) as f64
        );
        return;
    }
    // Stepped search: double while within loss, then bisect.
    let (mut good, mut bad) = (0u64, u64::MAX);
    let mut rate = a.rate.max(1000);
    let mut best_delivered = 0.0f64;
    for _ in 0..a.steps {
        let (sent, delivered, secs) = run(&a, rate);
        let loss = 1.0 - delivered as f64 / sent.max(1) as f64;
        let offered = sent as f64 / secs;
        eprintln!(
            "rate {rate}: offered {offered:.0}/s delivered {:.0}/s loss {loss:.4}",
            delivered as f64 / secs
        );
        // The senders may not reach the rate asked for: then that is the
        // ceiling.
        let reached = offered >= 0.9 * rate as f64;
        if loss <= a.loss_ok && reached {
            good = rate;
            best_delivered = best_delivered.max(delivered as f64 / secs);
        } else {
            bad = rate;
        }
        rate = if bad == u64::MAX {
            rate * 2
        } else {
            (good + bad) / 2
        };
        if bad != u64::MAX && bad - good <= bad / 20 {
            break;
        }
    }
    println!(
        "{{\"size\":{},\"zero_loss_rate\":{good},\"loss_ok\":{},\"delivered_at_it\":{best_delivered:.0}}}",
        a.size, a.loss_ok
    );
}
