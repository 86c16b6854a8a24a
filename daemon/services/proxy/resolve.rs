//! Upstream host names kept resolved: the address cell a proxy upstream and
//! its pool connect to, the resolver behind it, and the loop that resolves
//! named upstreams again on a schedule.
//!
//! - A name is resolved first when the spec is validated (on the blocking
//!   pool, see `Supervisor::start`), then every `resolve_interval` by
//!   [`keep_resolved`]. Lookups go through [`Resolver`]; in production that
//!   is getaddrinfo on tokio's blocking pool ([`SystemResolver`]), never on
//!   an async worker.
//! - Each lookup is bounded by [`RESOLVE_TIMEOUT`]. A timed-out getaddrinfo
//!   cannot be cancelled: its blocking thread finishes on its own, and
//!   because names are looked up one at a time, at most one such thread per
//!   proxy is started per interval.
//! - An answer that still contains the current address keeps it (a DNS
//!   server rotating its answers does not move the upstream); otherwise the
//!   first answer the proxy accepts becomes the address. New connections
//!   read the cell at connect time; open connections are not touched.
//! - A failed, timed-out or empty lookup, or an answer the proxy refuses
//!   (its own listening address), keeps the last good address. Each one is
//!   counted; the log says so once per streak of failures and once when the
//!   name resolves again.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use parking_lot::RwLock;
use std::time::Duration;

/// Upper bound on one lookup.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a named upstream is resolved again when the spec says nothing.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// Bounds of `resolve_interval`.
pub const RESOLVE_INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);

/// A boxed lookup, so that the resolver can be a trait object.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Turns `host:port` into socket addresses.
pub trait Resolver: Send + Sync + fmt::Debug {
    fn lookup<'a>(&'a self, host_port: &'a str) -> Lookup<'a>;
}

/// The system resolver (getaddrinfo, so /etc/hosts and nsswitch apply), run
/// on tokio's blocking pool by `tokio::net::lookup_host`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup<'a>(&'a self, host_port: &'a str) -> Lookup<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host(host_port).await?.collect()) })
    }
}

/// The address an upstream is connected to now. Displays as that address.
#[derive(Debug)]
pub struct UpstreamAddr {
    /// `host:port` as given, when the host is a name (not an IP literal).
    name: Option<String>,
    /// Read for every connect; written only when a lookup moves it. The
    /// lock is never held across anything but the copy.
    current: RwLock<SocketAddr>,
}

impl UpstreamAddr {
    /// An upstream given as an IP literal: never resolved again.
    pub fn literal(addr: SocketAddr) -> UpstreamAddr {
        UpstreamAddr {
            name: None,
            current: RwLock::new(addr),
        }
    }

    /// An upstream given as `host:port` with a host name, first resolved to
    /// `first`.
    pub fn named(host_port: &str, first: SocketAddr) -> UpstreamAddr {
        UpstreamAddr {
            name: Some(host_port.to_string()),
            current: RwLock::new(first),
        }
    }

    /// Whether `host_port` names its host (so it is resolved again), as
    /// opposed to an IP literal.
    pub fn is_name(host_port: &str) -> bool {
        host_port.trim().parse::<SocketAddr>().is_err()
    }

    pub fn get(&self) -> SocketAddr {
        *self.current.read()
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn set(&self, addr: SocketAddr) {
        *self.current.write() = addr;
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

/// What one lookup of one name came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The current address is still in the answer.
    Kept,
    /// The address moved from the first to the second.
    Moved(SocketAddr, SocketAddr),
    /// No usable answer; the last good address stays.
    Failed(String),
}

/// Where lookups are counted (the proxy's stats).
#[derive(Debug, Clone, Copy)]
pub struct Counters<'a> {
    /// Lookups that failed, timed out, or gave no usable address.
    pub failures: &'a AtomicU64,
    /// Lookups that answered with a usable address.
    pub resolves: &'a AtomicU64,
}

/// The re-resolution state of a set of upstream addresses (the named ones;
/// literals are skipped).
#[derive(Debug)]
pub struct Keeper {
    addrs: Vec<Arc<UpstreamAddr>>,
    /// Per address: whether the last lookup failed (inside a streak).
    failing: Vec<bool>,
}

impl Keeper {
    pub fn new(addrs: impl IntoIterator<Item = Arc<UpstreamAddr>>) -> Keeper {
        let addrs: Vec<_> = addrs.into_iter().filter(|a| a.name.is_some()).collect();
        let failing = vec![false; addrs.len()];
        Keeper { addrs, failing }
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Look every name up once, one after the other. `allowed` may refuse
    /// an address (with the reason).
    pub async fn round(
        &mut self,
        resolver: &dyn Resolver,
        counters: Counters<'_>,
        allowed: &(dyn Fn(SocketAddr) -> Result<(), String> + Sync),
        listener: &str,
    ) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(self.addrs.len());
        for (addr, failing) in self.addrs.iter().zip(self.failing.iter_mut()) {
            let name = addr.name.as_deref().unwrap_or_default();
            let outcome = match tokio::time::timeout(RESOLVE_TIMEOUT, resolver.lookup(name)).await {
                Err(_) => Outcome::Failed(format!(
                    "no answer within {}",
                    humantime::format_duration(RESOLVE_TIMEOUT)
                )),
                Ok(Err(e)) => Outcome::Failed(e.to_string()),
                Ok(Ok(answer)) => choose(addr.get(), &answer, allowed),
            };
            match &outcome {
                Outcome::Failed(why) => {
                    counters.failures.fetch_add(1, Relaxed);
                    if !*failing {
                        *failing = true;
                        tracing::warn!(listener, upstream = name, address = %addr, error = %why, "cannot resolve the upstream again; keeping its last address");
                    }
                }
                Outcome::Kept | Outcome::Moved(..) => {
                    counters.resolves.fetch_add(1, Relaxed);
                    if std::mem::take(failing) {
                        tracing::info!(listener, upstream = name, "upstream resolves again");
                    }
                    if let Outcome::Moved(from, to) = outcome {
                        addr.set(to);
                        tracing::info!(listener, upstream = name, %from, %to, "upstream address changed; new connections go to the new one");
                    } else {
                        tracing::debug!(listener, upstream = name, address = %addr, "upstream resolved");
                    }
                }
            }
            outcomes.push(outcome);
        }
        outcomes
    }
}

/// The address to use after a lookup answered `answer`.
fn choose(
    current: SocketAddr,
    answer: &[SocketAddr],
    allowed: &(dyn Fn(SocketAddr) -> Result<(), String> + Sync),
) -> Outcome {
    if answer.contains(&current) {
        return Outcome::Kept;
    }
    let mut refused = None;
    for &a in answer {
        match allowed(a) {
            Ok(()) => return Outcome::Moved(current, a),
            Err(why) => refused = refused.or(Some(why)),
        }
    }
    Outcome::Failed(refused.unwrap_or_else(|| "the name resolved to no address".into()))
}

/// Resolve the named addresses again every `interval`, for as long as the
/// future is polled (the proxy drops it when it stops accepting), calling
/// `moved` for each address that moved. Never returns; with no named
/// address it just waits.
pub async fn keep_resolved(
    mut keeper: Keeper,
    resolver: &dyn Resolver,
    interval: Duration,
    counters: Counters<'_>,
    allowed: &(dyn Fn(SocketAddr) -> Result<(), String> + Sync),
    moved: &(dyn Fn(&UpstreamAddr) + Sync),
    listener: &str,
) {
    if keeper.is_empty() {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(interval).await;
        let outcomes = keeper.round(resolver, counters, allowed, listener).await;
        for (addr, outcome) in keeper.addrs.iter().zip(outcomes) {
            if let Outcome::Moved(..) = outcome {
                moved(addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use parking_lot::Mutex;

    /// A scripted resolver: each lookup takes the next answer; `None` never
    /// answers.
    #[derive(Debug, Default)]
    struct Script {
        answers: Mutex<VecDeque<Option<io::Result<Vec<SocketAddr>>>>>,
        calls: AtomicU64,
    }

    impl Script {
        fn push(&self, answer: Option<io::Result<Vec<SocketAddr>>>) {
            self.answers.lock().push_back(answer);
        }
    }

    impl Resolver for Script {
        fn lookup<'a>(&'a self, host_port: &'a str) -> Lookup<'a> {
            assert_eq!(host_port, "upstream.test:80");
            self.calls.fetch_add(1, Relaxed);
            let next = self
                .answers
                .lock()
                .pop_front()
                .unwrap_or_else(|| Some(Ok(vec![a(1)])));
            Box::pin(async move {
                match next {
                    Some(r) => r,
                    None => std::future::pending().await,
                }
            })
        }
    }

    fn a(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 80))
    }

    const OWN: u8 = 99;

    fn not_own(addr: SocketAddr) -> Result<(), String> {
        if addr == a(OWN) {
            Err(format!("{addr} is the proxy's own address"))
        } else {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_the_last_good_address_and_moves_only_when_it_is_gone() {
        let cell = Arc::new(UpstreamAddr::named("upstream.test:80", a(1)));
        let literal = Arc::new(UpstreamAddr::literal(a(50)));
        let mut keeper = Keeper::new([cell.clone(), literal.clone()]);
        let script = Script::default();
        let failures = AtomicU64::new(0);
        async fn round(
            keeper: &mut Keeper,
            script: &Script,
            failures: &AtomicU64,
            answer: Option<io::Result<Vec<SocketAddr>>>,
        ) -> Outcome {
            script.push(answer);
            let resolves = AtomicU64::new(0);
            let counters = Counters {
                failures,
                resolves: &resolves,
            };
            let out = keeper.round(script, counters, &not_own, "p").await;
            let ok = !matches!(out.first(), Some(Outcome::Failed(_)));
            assert_eq!(resolves.load(Relaxed), ok as u64);
            assert_eq!(out.len(), 1, "only the named upstream is looked up");
            out.into_iter().next().unwrap()
        }
        macro_rules! step {
            ($answer:expr) => {
                round(&mut keeper, &script, &failures, $answer)
            };
        }
        let refused = || io::Error::other("Name or service not known");

        // The current address is still in the answer (even not first): kept.
        assert_eq!(step!(Some(Ok(vec![a(2), a(1)]))).await, Outcome::Kept);
        assert_eq!(cell.get(), a(1));
        // Gone from the answer: the first answer is taken.
        assert_eq!(
            step!(Some(Ok(vec![a(3), a(4)]))).await,
            Outcome::Moved(a(1), a(3))
        );
        assert_eq!(cell.get(), a(3));
        // An error, a lookup that never answers, an empty answer and an
        // answer that is only the proxy's own address: all kept a(3).
        assert!(matches!(
            step!(Some(Err(refused()))).await,
            Outcome::Failed(_)
        ));
        match step!(None).await {
            Outcome::Failed(why) => assert!(why.contains("no answer within"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(step!(Some(Ok(vec![]))).await, Outcome::Failed(_)));
        match step!(Some(Ok(vec![a(OWN)]))).await {
            Outcome::Failed(why) => assert!(why.contains("own address"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(cell.get(), a(3));
        assert_eq!(failures.load(Relaxed), 4);
        // The own address is skipped in favour of the next answer.
        assert_eq!(
            step!(Some(Ok(vec![a(OWN), a(5)]))).await,
            Outcome::Moved(a(3), a(5))
        );
        assert_eq!(cell.get(), a(5));
        assert_eq!(literal.get(), a(50));
        assert_eq!(failures.load(Relaxed), 4);
        assert_eq!(cell.to_string(), "127.0.0.5:80");
    }

    #[tokio::test(start_paused = true)]
    async fn resolves_again_every_interval() {
        let cell = Arc::new(UpstreamAddr::named("upstream.test:80", a(1)));
        let script = Arc::new(Script::default());
        for _ in 0..3 {
            script.push(Some(Ok(vec![a(2)])));
        }
        let resolves = Arc::new(AtomicU64::new(0));
        let moves = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (keeper, script, resolves, moves) = (
                Keeper::new([cell.clone()]),
                script.clone(),
                resolves.clone(),
                moves.clone(),
            );
            async move {
                let failures = AtomicU64::new(0);
                let counters = Counters {
                    failures: &failures,
                    resolves: &resolves,
                };
                keep_resolved(
                    keeper,
                    &*script,
                    Duration::from_secs(30),
                    counters,
                    &not_own,
                    &|moved| {
                        assert_eq!(moved.get(), a(2));
                        moves.fetch_add(1, Relaxed);
                    },
                    "p",
                )
                .await
            }
        });
        // Virtual time: each sleep below returns as soon as the runtime is
        // idle, with the clock moved on.
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(script.calls.load(Relaxed), 0, "not before the interval");
        assert_eq!(cell.get(), a(1));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(script.calls.load(Relaxed), 1);
        assert_eq!(cell.get(), a(2));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(script.calls.load(Relaxed), 3);
        assert_eq!(resolves.load(Relaxed), 3);
        assert_eq!(moves.load(Relaxed), 1, "moved once, then kept");
        task.abort();
    }

    #[test]
    fn names_and_literals() {
        assert!(UpstreamAddr::is_name("localhost:80"));
        assert!(!UpstreamAddr::is_name("127.0.0.1:80"));
        assert!(!UpstreamAddr::is_name("[::1]:80"));
    }
}
