//! TCP faults (toxics) on real traffic through the proxy: each type's
//! effect seen from a client on loopback, the conditions (after-bytes,
//! time window, client network, every Nth, toxicity), a live update, and
//! the per-fault counters in GetStats and /metrics. Timing assertions are
//! only "the fault added at least X" with generous upper bounds.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::{DEADLINE, Netd, TestUpstream, bound_addr, free_tcp_port, wait_until};
use netd::proto::{self, fault::Kind};

fn ms(n: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: (n / 1000) as i64,
        nanos: ((n % 1000) * 1_000_000) as i32,
    })
}

fn fault(name: &str, kind: Kind) -> proto::Fault {
    proto::Fault {
        name: name.into(),
        kind: Some(kind),
        ..Default::default()
    }
}

fn latency(name: &str, latency_ms: u64, jitter_ms: u64) -> proto::Fault {
    fault(
        name,
        Kind::Latency(proto::LatencyFault {
            latency: ms(latency_ms),
            jitter: ms(jitter_ms),
        }),
    )
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A netd with a proxy `p` in front of a test echo upstream.
struct Setup {
    netd: Netd,
    proxy: SocketAddr,
    _up: TestUpstream,
}

fn setup_with(config: &str) -> Setup {
    let netd = Netd::start(config);
    let up = TestUpstream::echo(b"");
    let u = up.addr.to_string();
    netd.netctl_ok(&[
        "start",
        "proxy",
        "p",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &u,
    ]);
    let proxy = bound_addr(&netd, "p");
    Setup {
        netd,
        proxy,
        _up: up,
    }
}

fn setup() -> Setup {
    setup_with("")
}

impl Setup {
    fn add(&self, f: proto::Fault) {
        block_on(async {
            self.netd
                .client()
                .await
                .add_fault(proto::AddFaultRequest {
                    listener: "p".into(),
                    fault: Some(f),
                })
                .await
                .expect("AddFault")
        });
    }

    fn update(&self, f: proto::Fault) {
        block_on(async {
            self.netd
                .client()
                .await
                .update_fault(proto::UpdateFaultRequest {
                    listener: "p".into(),
                    fault: Some(f),
                })
                .await
                .expect("UpdateFault")
        });
    }

    fn remove(&self, name: &str) {
        block_on(async {
            self.netd
                .client()
                .await
                .remove_fault(proto::RemoveFaultRequest {
                    listener: "p".into(),
                    name: name.into(),
                    all: false,
                })
                .await
                .expect("RemoveFault")
        });
    }

    /// The proxy's per-fault counters from GetStats.
    fn fault_stats(&self) -> Vec<proto::FaultStats> {
        block_on(async {
            let s = self
                .netd
                .client()
                .await
                .get_stats(proto::GetStatsRequest {
                    name: "p".into(),
                    ..Default::default()
                })
                .await
                .expect("GetStats")
                .into_inner();
            s.listeners
                .into_iter()
                .find(|l| l.name == "p")
                .and_then(|l| l.totals)
                .map(|s| s.faults)
                .unwrap_or_default()
        })
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.proxy).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s
    }
}

/// Send `msg` and read its echo; the time it took.
fn exchange(s: &mut TcpStream, msg: &[u8]) -> Duration {
    let t = Instant::now();
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Read until EOF or an error; what arrived and how it ended.
fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

#[test]
fn latency_delays_each_exchange_jitter_stays_in_bounds_and_updates_live() {
    let s = setup();
    s.add(latency("lat", 100, 0));
    let mut c = s.connect();
    let rts: Vec<Duration> = (0..20).map(|_| exchange(&mut c, b"ping")).collect();
    assert!(
        rts.iter().all(|d| *d >= Duration::from_millis(100)),
        "{rts:?}"
    );
    let m = median(rts);
    assert!(m <= Duration::from_millis(300), "median {m:?}");

    // Jitter: +-40 ms around 100 ms, on the same open connection.
    s.update(latency("lat", 100, 40));
    let rts: Vec<Duration> = (0..20).map(|_| exchange(&mut c, b"ping")).collect();
    let (lo, hi) = (rts.iter().min().unwrap(), rts.iter().max().unwrap());
    assert!(*lo >= Duration::from_millis(60), "{rts:?}");
    assert!(*hi <= Duration::from_millis(140 + 200), "{rts:?}");
    assert!(
        *hi - *lo >= Duration::from_millis(10),
        "no jitter seen: {rts:?}"
    );

    // A live update of the value reaches the open connection.
    s.update(latency("lat", 400, 0));
    let d = exchange(&mut c, b"ping");
    assert!(d >= Duration::from_millis(400), "{d:?}");
    let st = s.fault_stats();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].r#type, "latency");
    assert!(st[0].bytes_delayed >= 41 * 4, "{st:?}");
    assert!(st[0].connections_affected >= 1, "{st:?}");
}

#[test]
fn bandwidth_paces_a_stream_to_the_rate() {
    let s = setup();
    const RATE: u64 = 1_000_000;
    s.add(fault(
        "bw",
        Kind::Bandwidth(proto::BandwidthFault {
            rate_bytes_per_sec: RATE,
        }),
    ));
    let mut c = s.connect();
    let total: usize = 3_300_000;
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![7u8; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
    });
    // Measure from the first 100 KB to the end: ~3.2 s of paced data.
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    let mut start: Option<(Instant, usize)> = None;
    while got < total {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "EOF after {got} bytes");
        got += n;
        if start.is_none() && got >= 100_000 {
            start = Some((Instant::now(), got));
        }
    }
    let (t0, at) = start.unwrap();
    let rate = (got - at) as f64 / t0.elapsed().as_secs_f64();
    writer.join().unwrap();
    let ratio = rate / RATE as f64;
    assert!((0.95..=1.05).contains(&ratio), "measured {rate:.0} B/s");
}

#[test]
fn slicer_cuts_data_into_spaced_slices() {
    let s = setup();
    s.add(fault(
        "sl",
        Kind::Slicer(proto::SlicerFault {
            average_size: 64,
            size_variation: 0,
            delay: ms(30),
        }),
    ));
    let mut c = s.connect();
    let msg = vec![b'a'; 640];
    let t = Instant::now();
    c.write_all(&msg).unwrap();
    let mut sizes = Vec::new();
    let mut buf = [0u8; 4096];
    let mut got = 0;
    while got < msg.len() {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        sizes.push(n);
        got += n;
    }
    // Ten slices 30 ms apart: at least 270 ms; reads see slice sizes (a
    // slow reader may see two slices at once, never a part of one).
    assert!(
        t.elapsed() >= Duration::from_millis(270),
        "{:?}",
        t.elapsed()
    );
    assert!(sizes.iter().all(|n| n % 64 == 0), "{sizes:?}");
    assert!(sizes.len() >= 6, "{sizes:?}");
    assert_eq!(got, 640);
}

#[test]
fn timeout_drops_data_and_closes_after_the_timeout_or_never() {
    let s = setup();
    s.add(fault(
        "to",
        Kind::Timeout(proto::TimeoutFault { timeout: ms(500) }),
    ));
    let mut c = s.connect();
    let t = Instant::now();
    c.write_all(b"hello").unwrap();
    let (got, _) = read_to_close(&mut c);
    assert!(got.is_empty(), "data passed a timeout fault: {got:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    let st = s.fault_stats();
    assert_eq!(st[0].bytes_dropped, 5, "{st:?}");
    assert_eq!(st[0].connections_closed, 1, "{st:?}");

    // Unset: the connection stays open and silent, until the fault goes.
    s.update(fault(
        "to",
        Kind::Timeout(proto::TimeoutFault { timeout: None }),
    ));
    let mut c = s.connect();
    c.write_all(b"hello").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 16];
    let e = c
        .read(&mut buf)
        .expect_err("data or a close through timeout");
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );
    s.remove("to");
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    exchange(&mut c, b"after");
}

#[test]
fn reset_peer_resets_the_client_at_once_or_after_the_timeout() {
    let s = setup();
    s.add(fault(
        "rp",
        Kind::ResetPeer(proto::ResetPeerFault { timeout: None }),
    ));
    let mut c = s.connect();
    c.write_all(b"hello").unwrap();
    let (got, end) = read_to_close(&mut c);
    assert!(got.is_empty());
    assert_eq!(end.unwrap_err().kind(), ErrorKind::ConnectionReset);

    s.update(fault(
        "rp",
        Kind::ResetPeer(proto::ResetPeerFault { timeout: ms(400) }),
    ));
    let mut c = s.connect();
    let t = Instant::now();
    // Data passes until the reset.
    exchange(&mut c, b"before");
    let (_, end) = read_to_close(&mut c);
    assert_eq!(end.unwrap_err().kind(), ErrorKind::ConnectionReset);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    // One close per direction; the second may be counted after the client
    // has seen the reset.
    wait_until("both directions' closes counted", || {
        s.fault_stats()[0].connections_closed >= 2
    });
    assert_eq!(s.fault_stats()[0].connections_closed, 2);
}

#[test]
fn limit_data_delivers_exactly_the_limit_then_closes() {
    let s = setup();
    s.add(fault(
        "ld",
        Kind::LimitData(proto::LimitDataFault { bytes: 1000 }),
    ));
    let mut c = s.connect();
    let msg: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    c.write_all(&msg).unwrap();
    let (got, end) = read_to_close(&mut c);
    assert_eq!(got.len(), 1000, "{end:?}");
    assert_eq!(got[..], msg[..1000]);
    assert!(end.is_ok(), "{end:?}");
    let st = s.fault_stats();
    assert_eq!(st[0].connections_closed, 1);
    assert!(st[0].bytes_dropped > 0);
}

#[test]
fn slow_close_passes_the_close_on_late() {
    let s = setup();
    s.add(fault(
        "sc",
        Kind::SlowClose(proto::SlowCloseFault { delay: ms(500) }),
    ));
    let mut c = s.connect();
    exchange(&mut c, b"data");
    // The echo upstream closes when the client does; its FIN comes late.
    let t = Instant::now();
    c.shutdown(Shutdown::Write).unwrap();
    let (got, end) = read_to_close(&mut c);
    assert!(got.is_empty() && end.is_ok(), "{got:?} {end:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn down_resets_new_and_open_connections_until_removed() {
    let s = setup();
    let mut open = s.connect();
    exchange(&mut open, b"up");
    s.add(fault("down", Kind::Down(proto::DownFault {})));
    // The reset is seen by whichever call comes first after it (a write
    // consumes the error, the read then sees EOF).
    let reset = |c: &mut TcpStream, data: &[u8]| {
        let wrote = c.write_all(data);
        let (got, end) = read_to_close(c);
        assert!(got.is_empty(), "{got:?}");
        let kind = |r: std::io::Result<()>| r.err().map(|e| e.kind());
        assert!(
            kind(wrote) == Some(ErrorKind::ConnectionReset)
                || kind(end) == Some(ErrorKind::ConnectionReset),
            "not reset"
        );
    };
    reset(&mut s.connect(), b"x");
    // The open connection is reset at its next data.
    reset(&mut open, b"y");
    assert_eq!(s.fault_stats()[0].connections_closed, 2);
    s.remove("down");
    let mut c = s.connect();
    exchange(&mut c, b"back");
}

/// Whether a connection is hit by a `limit_data 0` fault: closed at its
/// first data instead of echoing.
fn hit_by_limit(c: &mut TcpStream) -> bool {
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    match c.read_exact(&mut buf) {
        Ok(()) => false,
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => true,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) => panic!("{e}"),
    }
}

fn cut(name: &str) -> proto::Fault {
    fault(name, Kind::LimitData(proto::LimitDataFault { bytes: 0 }))
}

#[test]
fn toxicity_half_hits_about_half_of_200_connections() {
    let s = setup();
    let mut f = cut("half");
    f.toxicity = Some(0.5);
    s.add(f);
    let hits = (0..200).filter(|_| hit_by_limit(&mut s.connect())).count();
    assert!((70..=130).contains(&hits), "{hits} of 200");
    let st = s.fault_stats();
    assert_eq!(st[0].connections_affected, hits as u64);
}

#[test]
fn every_nth_hits_every_third_connection() {
    let s = setup();
    let mut f = cut("third");
    f.when = Some(proto::FaultCondition {
        every_nth: 3,
        ..Default::default()
    });
    s.add(f);
    let hits: Vec<bool> = (0..9).map(|_| hit_by_limit(&mut s.connect())).collect();
    assert_eq!(
        hits,
        [false, false, true, false, false, true, false, false, true]
    );
}

#[test]
fn client_network_limits_a_fault_to_its_clients() {
    let s = setup();
    let mut f = latency("lat", 500, 0);
    f.when = Some(proto::FaultCondition {
        client_cidr: "127.0.0.2/32".into(),
        ..Default::default()
    });
    s.add(f);
    let mut one = s.connect();
    assert!(exchange(&mut one, b"x") < Duration::from_millis(500));
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.connect(&s.proxy.into()).unwrap();
    let mut two: TcpStream = sock.into();
    two.set_read_timeout(Some(DEADLINE)).unwrap();
    assert!(exchange(&mut two, b"x") >= Duration::from_millis(500));
    assert_eq!(s.fault_stats()[0].connections_affected, 1);
}

#[test]
fn after_bytes_delays_only_what_follows_the_threshold() {
    let s = setup();
    let mut f = latency("lat", 1000, 0);
    f.when = Some(proto::FaultCondition {
        after_bytes: 100,
        ..Default::default()
    });
    s.add(f);
    let mut c = s.connect();
    assert!(exchange(&mut c, &[1u8; 60]) < Duration::from_millis(1000));
    // 40 more bytes pass at once, the 20 after them are a second late.
    let t = Instant::now();
    c.write_all(&[2u8; 60]).unwrap();
    let mut first = [0u8; 40];
    c.read_exact(&mut first).unwrap();
    let fast = t.elapsed();
    let mut rest = [0u8; 20];
    c.read_exact(&mut rest).unwrap();
    assert!(fast < Duration::from_millis(1000), "{fast:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn time_window_starts_late_and_ends() {
    let s = setup();
    let mut f = latency("win", 800, 0);
    f.when = Some(proto::FaultCondition {
        start_after: ms(1000),
        duration: ms(3000),
        ..Default::default()
    });
    s.add(f);
    let mut c = s.connect();
    // Before the window opens (a second from now): not delayed.
    assert!(exchange(&mut c, b"early") < Duration::from_millis(800));
    wait_until("the window to open", || s.fault_stats()[0].active);
    assert!(exchange(&mut c, b"inside") >= Duration::from_millis(800));
    wait_until("the window to close", || !s.fault_stats()[0].active);
    assert!(exchange(&mut c, b"after") < Duration::from_millis(800));
}

#[test]
fn fault_counters_show_in_stats_and_metrics() {
    let port = free_tcp_port();
    let s = setup_with(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    s.add(latency("lat", 50, 0));
    let mut c = s.connect();
    exchange(&mut c, b"12345678");
    let st = s.fault_stats();
    assert_eq!(st[0].name, "lat");
    assert_eq!(st[0].bytes_delayed, 8);
    assert_eq!(st[0].connections_affected, 1);
    let mut m = TcpStream::connect(("127.0.0.1", port)).unwrap();
    m.set_read_timeout(Some(DEADLINE)).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    m.read_to_string(&mut body).unwrap();
    let line = |family: &str| {
        body.lines()
            .find(|l| l.starts_with(family) && l.contains("fault=\"lat\""))
            .unwrap_or_else(|| panic!("no {family} for lat in:\n{body}"))
            .to_string()
    };
    assert!(line("netd_fault_bytes_delayed").ends_with(" 8"));
    assert!(line("netd_fault_connections_affected").ends_with(" 1"));
}
