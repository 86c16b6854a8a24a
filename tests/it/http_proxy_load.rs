//! The http-proxy under keep-alive load while its HTTP fault rules change:
//! rules that match none of the load's requests are added, updated and
//! removed again and again during the run, and no request may fail or be
//! answered with anything but the upstream's 200 — a rule change reaches
//! the connections already open without disturbing them. netd's request
//! counter must equal what the client sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::common::{Netd, bound_addr, wait_until};

/// Keep-alive connections of the load (each one request at a time).
const CONNS: usize = 16;
/// The load's bounds, whatever happens to the stop flag.
const MAX_SECS: u64 = 60;
const MAX_PER_CONN: u64 = 200_000;
/// Rounds of rule changes (each: add, update, remove, ...).
const ROUNDS: usize = 3;

/// What the load saw: requests sent, 200s, other statuses, failures.
#[derive(Debug, Default)]
struct Seen {
    sent: u64,
    ok: u64,
    other_status: Vec<u16>,
    errors: Vec<String>,
}

/// One keep-alive client sending GET `url` until `stop` (or the bounds).
async fn load(url: String, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>) -> Seen {
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(15))
        .build()
        .expect("reqwest client");
    let until = Instant::now() + Duration::from_secs(MAX_SECS);
    let mut seen = Seen::default();
    while !stop.load(Relaxed) && Instant::now() < until && seen.sent < MAX_PER_CONN {
        seen.sent += 1;
        let r = match client.get(&url).send().await {
            Ok(r) => r,
            Err(e) => {
                seen.errors.push(e.to_string());
                continue;
            }
        };
        let status = r.status().as_u16();
        if let Err(e) = r.bytes().await {
            seen.errors.push(format!("body: {e}"));
            continue;
        }
        if status == 200 {
            seen.ok += 1;
        } else {
            seen.other_status.push(status);
        }
        answered.fetch_add(1, Relaxed);
    }
    seen
}

/// Wait until the load has had `n` more answers, so each rule change
/// lands while requests are in flight.
fn more_answers(answered: &AtomicU64, n: u64) {
    let from = answered.load(Relaxed);
    wait_until("the load's requests to keep flowing", || {
        answered.load(Relaxed) >= from + n
    });
}

/// Run netctl with the words of `line`; it must succeed.
fn ctl(netd: &Netd, line: &str) {
    netd.netctl_ok(&line.split_whitespace().collect::<Vec<_>>());
}

#[test]
fn fault_rules_change_during_keep_alive_load_and_no_request_fails() {
    let netd = Netd::start("");
    netd.netctl_ok(&["start", "http", "up", "--listen", "127.0.0.1:0"]);
    let up = bound_addr(&netd, "up");
    netd.netctl_ok(&[
        "start",
        "http-proxy",
        "hp",
        "--listen",
        "127.0.0.1:0",
        "-u",
        &up.to_string(),
    ]);
    let hp = bound_addr(&netd, "hp");
    // A rule that matches nothing the load sends, from the start.
    ctl(
        &netd,
        "fault add hp f0 --type abort --http-status 503 --path-prefix /nomatch-0",
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let url = format!("http://{hp}/api/items");
    let tasks: Vec<_> = (0..CONNS)
        .map(|_| rt.spawn(load(url.clone(), stop.clone(), answered.clone())))
        .collect();

    more_answers(&answered, 200);
    for round in 0..ROUNDS {
        let prefix = |n: usize| format!("/nomatch-{round}-{n}");
        let changes = [
            format!("fault update hp f0 --path-prefix {}", prefix(0)),
            format!(
                "fault add hp a{round} --type abort --http-status 503 --path-prefix {}",
                prefix(1)
            ),
            format!("fault update hp a{round} --http-status 500"),
            format!(
                "fault add hp d{round} --type delay --delay 1s --path-prefix {}",
                prefix(2)
            ),
            format!("fault rm hp a{round}"),
            format!("fault rm hp d{round}"),
        ];
        for change in &changes {
            ctl(&netd, change);
            more_answers(&answered, 50);
        }
    }
    stop.store(true, Relaxed);
    let mut all = Seen::default();
    for t in tasks {
        let s = rt.block_on(t).expect("a load task panicked");
        all.sent += s.sent;
        all.ok += s.ok;
        all.other_status.extend(s.other_status);
        all.errors.extend(s.errors);
    }
    assert!(
        all.errors.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        all.errors.len(),
        all.sent,
        &all.errors[..all.errors.len().min(5)]
    );
    assert!(
        all.other_status.is_empty(),
        "{} answers were not 200, e.g. {:?}",
        all.other_status.len(),
        &all.other_status[..all.other_status.len().min(5)]
    );
    assert_eq!(all.ok, all.sent);
    let stats = netd.netctl_json(&["status", "hp"])["stats"]["http_proxy"].clone();
    assert_eq!(
        stats["requests"], all.sent,
        "netd counted other than what was sent: {stats}"
    );
    assert_eq!(stats["responses_2xx"], all.sent, "{stats}");

    // The rules were live all along: the one left matches its own path.
    let ls = netd.netctl_json(&["fault", "ls", "hp"]);
    let names: Vec<&str> = ls
        .as_array()
        .expect("fault ls: a list")
        .iter()
        .filter_map(|f| f["fault"]["name"].as_str())
        .collect();
    assert_eq!(names, ["f0"]);
    let hit = format!("http://{hp}/nomatch-{}-0/x", ROUNDS - 1);
    let status = rt.block_on(async {
        reqwest::get(&hit)
            .await
            .expect("request on the rule's path")
            .status()
    });
    assert_eq!(status.as_u16(), 503, "f0 did not abort {hit}");
}
