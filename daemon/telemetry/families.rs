//! Prometheus families declared as tables by the code that owns the
//! numbers: each kind its own (`services/<kind>/metrics.rs`, registered as
//! the kind's `ListenerKind::FAMILIES`), the fault model the per-fault ones
//! (`fault/metrics.rs`). `/metrics` encodes exactly what the tables
//! declare, so a family is exported by declaring it and cannot be declared
//! and left out.
//!
//! A family is read from a source value `S` (a kind's arm of
//! `ListenerStats.detail`, or one fault's `FaultStats`): one series per
//! source, or one per value of the family's own labels. The encoder puts
//! the `listener` and `kind` labels in front of those. A histogram family
//! reads [`Buckets`] (cumulative counts at fixed bounds, a sum and a
//! count) where the others read a number.

use crate::proto::listener_stats::Detail;

/// The Prometheus type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Exported with `_total` appended to the name.
    Counter,
    Gauge,
    /// Exported as `_bucket` (with `le`, `+Inf` included), `_sum` and
    /// `_count` series.
    Histogram,
}

/// What a family is, apart from how it is read: the same wherever it is
/// declared (two kinds may declare one family, such as the datagram-source
/// guard's; the encoder merges their series).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// The name, without the `_total` a counter gets.
    pub name: &'static str,
    pub help: &'static str,
    pub metric: Metric,
    /// The family's own labels, after `listener` and `kind`.
    pub labels: &'static [&'static str],
}

impl Desc {
    pub const fn counter(name: &'static str, help: &'static str) -> Desc {
        Desc {
            name,
            help,
            metric: Metric::Counter,
            labels: &[],
        }
    }

    pub const fn gauge(name: &'static str, help: &'static str) -> Desc {
        Desc {
            name,
            help,
            metric: Metric::Gauge,
            labels: &[],
        }
    }

    pub const fn histogram(name: &'static str, help: &'static str) -> Desc {
        Desc {
            name,
            help,
            metric: Metric::Histogram,
            labels: &[],
        }
    }

    /// The same family with series told apart by `labels`.
    pub const fn by(self, labels: &'static [&'static str]) -> Desc {
        Desc { labels, ..self }
    }
}

/// Where a reader puts a series: the values of the family's own labels
/// (in [`Desc::labels`] order) and the value.
pub type Put<'a> = &'a mut dyn FnMut(&[&str], u64);

/// One histogram series, as a source holds it: counts at fixed upper
/// bounds, each of everything at or under its bound (Prometheus' `le`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Buckets<'a> {
    /// Upper bounds, ascending, without `+Inf`.
    pub bounds: &'a [f64],
    /// Cumulative counts, one per bound (missing ones read as `count`).
    pub cumulative: &'a [u64],
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    pub sum: f64,
}

/// Where a histogram reader puts a series: the values of the family's own
/// labels and the buckets.
pub type PutHistogram<'a> = &'a mut dyn FnMut(&[&str], Buckets<'_>);

/// A series of any family, as the encoder takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Series<'a> {
    /// A counter's or a gauge's value.
    Value(u64),
    Histogram(Buckets<'a>),
}

/// Where [`Family::read`] puts a series of any family.
pub type Sink<'a> = &'a mut dyn FnMut(&[&str], Series<'_>);

/// How a family reads its series from a source.
pub enum Read<S: 'static> {
    /// One series, for a family without labels of its own.
    Value(fn(&S) -> u64),
    /// Any number of series, each with a value for every label of the
    /// family.
    Each(fn(&S, Put<'_>)),
    /// Any number of histogram series (a [`Metric::Histogram`] family).
    Histograms(fn(&S, PutHistogram<'_>)),
}

/// One family of a table: what it is and how to read it.
pub struct Family<S: 'static> {
    pub desc: Desc,
    pub read: Read<S>,
}

impl<S> Family<S> {
    /// A family with one series per source.
    pub const fn value(desc: Desc, read: fn(&S) -> u64) -> Self {
        assert!(
            !matches!(desc.metric, Metric::Histogram),
            "a histogram reads Buckets"
        );
        Family {
            desc,
            read: Read::Value(read),
        }
    }

    /// A family with a series per value of its labels.
    pub const fn each(desc: Desc, read: fn(&S, Put<'_>)) -> Self {
        assert!(
            !matches!(desc.metric, Metric::Histogram),
            "a histogram reads Buckets"
        );
        Family {
            desc,
            read: Read::Each(read),
        }
    }

    /// A histogram family ([`Desc::histogram`]) with a series per value of
    /// its labels.
    pub const fn histograms(desc: Desc, read: fn(&S, PutHistogram<'_>)) -> Self {
        assert!(
            matches!(desc.metric, Metric::Histogram),
            "Buckets are a histogram's"
        );
        Family {
            desc,
            read: Read::Histograms(read),
        }
    }

    /// Put the family's series of `source`.
    pub fn read(&self, source: &S, sink: Sink<'_>) {
        match self.read {
            Read::Value(get) => sink(&[], Series::Value(get(source))),
            Read::Each(each) => each(source, &mut |labels, v| sink(labels, Series::Value(v))),
            Read::Histograms(each) => {
                each(source, &mut |labels, b| sink(labels, Series::Histogram(b)));
            }
        }
    }
}

impl<S> std::fmt::Debug for Family<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family").field("desc", &self.desc).finish()
    }
}

/// A kind's families, as the kinds registry holds them: read from the
/// kind's arm of `ListenerStats.detail`, whatever its message type.
pub trait DetailFamilies: Sync + std::fmt::Debug {
    /// The families, in declaration order.
    fn descs(&self) -> Vec<Desc>;
    /// Put the series of family `i` of `detail`; nothing if `detail` is
    /// another kind's arm.
    fn read(&self, i: usize, detail: &Detail, sink: Sink<'_>);
    /// A detail with at least one series in every family, for the test
    /// that each declared family is exported (None: the kind has none).
    fn sample(&self) -> Option<Detail>;
}

/// The families of a kind whose stats are `S`, one arm of `Detail`.
pub struct KindFamilies<S: 'static> {
    /// The arm's constructor (a `Detail` variant).
    pub wrap: fn(S) -> Detail,
    /// The arm's stats, if `detail` is this arm.
    pub unwrap: fn(&Detail) -> Option<&S>,
    /// Stats with at least one series in every family (see
    /// [`DetailFamilies::sample`]).
    pub sample: fn() -> S,
    pub families: &'static [Family<S>],
}

impl<S> std::fmt::Debug for KindFamilies<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.families.iter().map(|f| f.desc.name))
            .finish()
    }
}

impl<S> DetailFamilies for KindFamilies<S> {
    fn descs(&self) -> Vec<Desc> {
        self.families.iter().map(|f| f.desc).collect()
    }

    fn read(&self, i: usize, detail: &Detail, sink: Sink<'_>) {
        if let (Some(family), Some(stats)) = (self.families.get(i), (self.unwrap)(detail)) {
            family.read(stats, sink);
        }
    }

    fn sample(&self) -> Option<Detail> {
        Some((self.wrap)((self.sample)()))
    }
}

/// The families of a kind that has none of its own (its counters are all
/// in the base `ListenerStats`).
#[derive(Debug)]
pub struct NoFamilies;

impl DetailFamilies for NoFamilies {
    fn descs(&self) -> Vec<Desc> {
        Vec::new()
    }

    fn read(&self, _i: usize, _detail: &Detail, _sink: Sink<'_>) {}

    fn sample(&self) -> Option<Detail> {
        None
    }
}

/// The TLS families, read from `ListenerStats.tls` of any listener that
/// serves or originates TLS, whatever its kind (as the fault families are
/// read from each fault). Failure reasons are the labels of
/// `net::tls::Reason`, spelled here too (telemetry is below net).
pub const TLS: &[Family<crate::proto::TlsStats>] = &[
    Family::value(
        Desc::counter("netd_tls_handshakes", "TLS handshakes completed with clients."),
        |t| t.handshakes,
    ),
    Family::each(
        Desc::counter(
            "netd_tls_handshake_failures",
            "TLS handshakes with clients that failed, by reason: no_shared_cipher, unknown_ca, bad_certificate, protocol_version, timeout, other.",
        )
        .by(&["reason"]),
        |t, put| {
            for (reason, n) in [
                ("no_shared_cipher", t.failed_no_shared_cipher),
                ("unknown_ca", t.failed_unknown_ca),
                ("bad_certificate", t.failed_bad_certificate),
                ("protocol_version", t.failed_protocol_version),
                ("timeout", t.failed_timeout),
                ("other", t.failed_other),
            ] {
                put(&[reason], n);
            }
        },
    ),
    Family::each(
        Desc::gauge(
            "netd_tls_certificate_expiry_seconds",
            "notAfter of the served certificate (the leaf), as Unix seconds: alert on it minus time().",
        ),
        |t, put| {
            if t.certificate_not_after > 0 {
                put(&[], t.certificate_not_after.unsigned_abs());
            }
        },
    ),
    Family::each(
        Desc::counter(
            "netd_tls_reloads",
            "Certificate reloads (SIGHUP, netctl reload, files changed on disk), by result: ok, or refused (the old certificate kept serving).",
        )
        .by(&["result"]),
        |t, put| {
            put(&["ok"], t.reloads);
            put(&["refused"], t.reload_failures);
        },
    ),
    Family::each(
        Desc::counter(
            "netd_tls_upstream_handshakes",
            "TLS handshakes completed with upstreams (listeners that originate TLS).",
        ),
        |t, put| {
            if t.upstream_handshakes > 0 || t.upstream_failures > 0 {
                put(&[], t.upstream_handshakes);
            }
        },
    ),
    Family::each(
        Desc::counter(
            "netd_tls_upstream_handshake_failures",
            "TLS handshakes with upstreams that failed.",
        ),
        |t, put| {
            if t.upstream_handshakes > 0 || t.upstream_failures > 0 {
                put(&[], t.upstream_failures);
            }
        },
    ),
];
