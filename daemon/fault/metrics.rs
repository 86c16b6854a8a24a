//! The per-fault Prometheus families (see [`crate::telemetry::families`]):
//! one series per fault of a listener, labelled with the fault's name and
//! type, read from its `FaultStats`.

use crate::proto::FaultStats;
use crate::telemetry::families::{Desc, Family, Put};

/// The labels of every fault series, after `listener` and `kind`.
const LABELS: &[&str] = &["fault", "type"];

/// A fault's series: its labels and `v`.
fn put(f: &FaultStats, put: Put<'_>, v: u64) {
    put(&[&f.name, &f.r#type], v);
}

/// The families of every fault, in export order.
pub const FAMILIES: &[Family<FaultStats>] = &[
    Family::each(
        Desc::gauge(
            "netd_fault_active",
            "1 while a fault is inside its time window (always, without one).",
        )
        .by(LABELS),
        |f, p| put(f, p, u64::from(f.active)),
    ),
    Family::each(
        Desc::counter(
            "netd_fault_connections_affected",
            "Connections (TCP) or clients (UDP) a fault was applied to.",
        )
        .by(LABELS),
        |f, p| put(f, p, f.connections_affected),
    ),
    Family::each(
        Desc::counter(
            "netd_fault_bytes_delayed",
            "Bytes a fault held back (latency, bandwidth, slicer).",
        )
        .by(LABELS),
        |f, p| put(f, p, f.bytes_delayed),
    ),
    Family::each(
        Desc::counter("netd_fault_bytes_dropped", "Bytes a fault discarded.").by(LABELS),
        |f, p| put(f, p, f.bytes_dropped),
    ),
    Family::each(
        Desc::counter(
            "netd_fault_connections_closed",
            "Connections a fault closed or reset.",
        )
        .by(LABELS),
        |f, p| put(f, p, f.connections_closed),
    ),
    Family::each(
        Desc::counter("netd_fault_datagrams_lost", "Datagrams a fault dropped.").by(LABELS),
        |f, p| put(f, p, f.datagrams_lost),
    ),
    Family::each(
        Desc::counter(
            "netd_fault_datagrams_duplicated",
            "Datagrams a fault sent twice.",
        )
        .by(LABELS),
        |f, p| put(f, p, f.datagrams_duplicated),
    ),
    Family::each(
        Desc::counter(
            "netd_fault_datagrams_reordered",
            "Datagrams a fault held back behind later ones.",
        )
        .by(LABELS),
        |f, p| put(f, p, f.datagrams_reordered),
    ),
    Family::each(
        Desc::counter(
            "netd_fault_datagrams_corrupted",
            "Datagrams in which a fault flipped a bit.",
        )
        .by(LABELS),
        |f, p| put(f, p, f.datagrams_corrupted),
    ),
    Family::each(
        Desc::counter("netd_fault_datagrams_delayed", "Datagrams a fault delayed.").by(LABELS),
        |f, p| put(f, p, f.datagrams_delayed),
    ),
    Family::each(
        Desc::counter(
            "netd_fault_requests_affected",
            "HTTP requests a fault acted on (http-proxy).",
        )
        .by(LABELS),
        |f, p| put(f, p, f.requests_affected),
    ),
];
