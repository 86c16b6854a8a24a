//! What `netctl top` knows: per daemon, the last whole stats tick (folded
//! from WatchStats deltas by [`stats::View`]), a minute of history per
//! listener, its labels, its recent events, which faults fired lately and
//! the caller's role; across daemons, the rows shown (filtered, sorted)
//! and the selection.
//!
//! The rows are rebuilt only when something changed and at most once per
//! redraw: one pass to filter, one sort (n log n), so 10,000 listeners cost
//! a few milliseconds per redraw, not per message.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};

use netd::proto::{self, ListenerKind, ListenerState, StatsSample};

use crate::spark::{self, Histories};
use crate::stats;

/// Events kept per listener (and for the daemon itself).
pub const EVENTS_KEPT: usize = 8;

/// A fault is "firing" while one of its counters rose within this many
/// seconds.
pub const FIRING_SECS: f64 = 10.0;

/// What the feed of one daemon reports.
pub enum Msg {
    /// Connected (again): the streams are open.
    Up(usize),
    Stats(usize, StatsSample),
    Event(usize, proto::Event),
    /// The caller's role ("admin", "viewer"; "" when netd is too old to
    /// say) and principal.
    Caller(usize, String, String),
    /// Each listener's labels, `k=v` joined by commas.
    Labels(usize, HashMap<String, String>),
    /// The daemon cannot be reached or its stream broke; retried.
    Down(usize, String),
    /// An admin action ended: the status line.
    Done(String),
}

/// One daemon.
pub struct HostState {
    pub label: String,
    view: stats::View,
    pub sample: Option<StatsSample>,
    index: HashMap<String, usize>,
    pub hist: Histories,
    pub labels: HashMap<String, String>,
    pub events: HashMap<String, VecDeque<proto::Event>>,
    /// (role, principal) once known.
    pub caller: Option<(String, String)>,
    pub down: Option<String>,
    /// Listener -> the sample time a fault counter of it last rose.
    firing: HashMap<String, f64>,
    fault_sums: HashMap<(String, String), u64>,
}

impl HostState {
    pub fn new(label: String) -> Self {
        HostState {
            label,
            view: stats::View::default(),
            sample: None,
            index: HashMap::new(),
            hist: Histories::default(),
            labels: HashMap::new(),
            events: HashMap::new(),
            caller: None,
            down: None,
            firing: HashMap::new(),
            fault_sums: HashMap::new(),
        }
    }

    /// Take one WatchStats message; true when it completed a tick.
    fn apply(&mut self, m: StatsSample) -> bool {
        let Some(s) = self.view.apply(m) else {
            return false;
        };
        self.hist.update(&s);
        let now = spark::sample_secs(&s);
        let mut sums = HashMap::new();
        for l in &s.listeners {
            for f in l.totals.iter().flat_map(|t| &t.faults) {
                let key = (l.name.clone(), f.name.clone());
                let sum = fault_sum(f);
                if self.fault_sums.get(&key).is_some_and(|&old| sum > old) {
                    self.firing.insert(l.name.clone(), now);
                }
                sums.insert(key, sum);
            }
        }
        self.fault_sums = sums;
        self.index = s
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.clone(), i))
            .collect();
        self.firing
            .retain(|n, t| self.index.contains_key(n) && now - *t <= FIRING_SECS);
        self.events
            .retain(|n, _| n.is_empty() || self.index.contains_key(n));
        self.sample = Some(s);
        true
    }

    pub fn listener(&self, i: usize) -> Option<&proto::ListenerStatsSample> {
        self.sample.as_ref().and_then(|s| s.listeners.get(i))
    }

    /// Whether a fault of `name` fired in the last [`FIRING_SECS`].
    pub fn firing(&self, name: &str) -> bool {
        self.firing.contains_key(name)
    }

    /// The time of the last tick (for sparklines).
    pub fn now(&self) -> f64 {
        self.sample.as_ref().map_or(0.0, spark::sample_secs)
    }

    fn push_event(&mut self, e: proto::Event) {
        let q = self.events.entry(e.listener.clone()).or_default();
        q.push_back(e);
        while q.len() > EVENTS_KEPT {
            q.pop_front();
        }
    }
}

/// Everything a fault counted, summed: it rose = the fault acted.
fn fault_sum(f: &proto::FaultStats) -> u64 {
    [
        f.connections_affected,
        f.bytes_delayed,
        f.bytes_dropped,
        f.connections_closed,
        f.datagrams_lost,
        f.datagrams_duplicated,
        f.datagrams_reordered,
        f.datagrams_corrupted,
        f.datagrams_delayed,
        f.requests_affected,
    ]
    .iter()
    .fold(0u64, |a, b| a.saturating_add(*b))
}

/// The columns, in display order (HOST only in fleet mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    Host,
    Name,
    Kind,
    State,
    In,
    Out,
    Rate,
    Active,
    Errors,
    Fault,
    Trend,
}

impl Col {
    pub const ALL: [Col; 11] = [
        Col::Host,
        Col::Name,
        Col::Kind,
        Col::State,
        Col::In,
        Col::Out,
        Col::Rate,
        Col::Active,
        Col::Errors,
        Col::Fault,
        Col::Trend,
    ];

    pub fn header(self) -> &'static str {
        match self {
            Col::Host => "HOST",
            Col::Name => "NAME",
            Col::Kind => "KIND",
            Col::State => "STATE",
            Col::In => "IN/s",
            Col::Out => "OUT/s",
            Col::Rate => "CONN|DG/s",
            Col::Active => "ACTIVE",
            Col::Errors => "ERRORS",
            Col::Fault => "FAULT",
            Col::Trend => "LAST 1m",
        }
    }

    /// Text columns sort A-Z first, figures highest first.
    fn numeric(self) -> bool {
        !matches!(self, Col::Host | Col::Name | Col::Kind | Col::State)
    }
}

/// A row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowId {
    /// A daemon with no listeners to show: unreachable, connecting or
    /// empty.
    Host(usize),
    /// Listener `1` of daemon `0`'s last tick.
    Listener(usize, usize),
}

/// The view's state.
pub struct Model {
    pub hosts: Vec<HostState>,
    pub fleet: bool,
    pub sort: Col,
    pub desc: bool,
    pub filter: String,
    rows: Vec<RowId>,
    stale: bool,
    pub selected: usize,
    /// The first row shown.
    pub offset: usize,
    /// The selection follows its listener across re-sorts.
    selected_key: Option<(usize, String)>,
}

impl Model {
    pub fn new(labels: Vec<String>) -> Self {
        Model {
            fleet: labels.len() > 1,
            hosts: labels.into_iter().map(HostState::new).collect(),
            sort: Col::Name,
            desc: false,
            filter: String::new(),
            rows: Vec::new(),
            stale: true,
            selected: 0,
            offset: 0,
            selected_key: None,
        }
    }

    /// Take a feed message; true when what is shown may have changed.
    pub fn apply(&mut self, m: Msg) -> bool {
        let changed = match m {
            Msg::Up(h) => self.hosts[h].down.take().is_some(),
            Msg::Stats(h, s) => self.hosts[h].apply(s),
            Msg::Event(h, e) => {
                self.hosts[h].push_event(e);
                true
            }
            Msg::Caller(h, role, who) => {
                self.hosts[h].caller = Some((role, who));
                true
            }
            Msg::Labels(h, l) => {
                self.hosts[h].labels = l;
                true
            }
            Msg::Down(h, why) => {
                let host = &mut self.hosts[h];
                host.down = Some(why);
                host.sample = None;
                host.index.clear();
                host.view = stats::View::default();
                true
            }
            Msg::Done(_) => true,
        };
        self.stale |= changed;
        changed
    }

    /// Sort by `col`; the same column again reverses the order.
    pub fn sort_by(&mut self, col: Col) {
        if self.sort == col {
            self.desc = !self.desc;
        } else {
            self.sort = col;
            self.desc = col.numeric();
        }
        self.stale = true;
    }

    pub fn reverse(&mut self) {
        self.desc = !self.desc;
        self.stale = true;
    }

    pub fn set_filter(&mut self, f: String) {
        self.filter = f;
        self.stale = true;
    }

    /// The rows shown, rebuilt if anything changed since the last call.
    pub fn rows(&mut self) -> &[RowId] {
        if self.stale {
            self.rebuild();
            self.stale = false;
        }
        &self.rows
    }

    fn rebuild(&mut self) {
        let needle = self.filter.to_lowercase();
        let mut hosts_rows = Vec::new();
        let mut rows = Vec::new();
        for (h, host) in self.hosts.iter().enumerate() {
            let Some(s) = host.sample.as_ref().filter(|_| host.down.is_none()) else {
                hosts_rows.push(RowId::Host(h));
                continue;
            };
            let before = rows.len();
            for (i, l) in s.listeners.iter().enumerate() {
                if needle.is_empty() || matches(host, l, &needle) {
                    rows.push(RowId::Listener(h, i));
                }
            }
            if rows.len() == before && needle.is_empty() {
                hosts_rows.push(RowId::Host(h));
            }
        }
        let (col, desc) = (self.sort, self.desc);
        let hosts = &self.hosts;
        rows.sort_by(|a, b| {
            let o = compare(hosts, col, *a, *b);
            let o = if desc { o.reverse() } else { o };
            o.then_with(|| compare(hosts, Col::Host, *a, *b))
                .then_with(|| compare(hosts, Col::Name, *a, *b))
        });
        hosts_rows.extend(rows);
        self.rows = hosts_rows;
        // Keep the selection on its listener.
        if let Some((h, name)) = &self.selected_key {
            if let Some(i) = self.rows.iter().position(|r| match r {
                RowId::Listener(rh, ri) => {
                    rh == h
                        && self.hosts[*rh]
                            .listener(*ri)
                            .is_some_and(|l| &l.name == name)
                }
                RowId::Host(_) => false,
            }) {
                self.selected = i;
            }
        }
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
        self.remember_selection();
    }

    fn remember_selection(&mut self) {
        self.selected_key = match self.rows.get(self.selected) {
            Some(RowId::Listener(h, i)) => {
                self.hosts[*h].listener(*i).map(|l| (*h, l.name.clone()))
            }
            _ => None,
        };
    }

    /// Move the selection by `delta` rows (clamped), keeping it within a
    /// window of `height` rows.
    pub fn move_by(&mut self, delta: isize, height: usize) {
        let n = self.rows().len();
        if n == 0 {
            return;
        }
        let to = (self.selected as isize + delta).clamp(0, n as isize - 1);
        self.selected = to as usize;
        self.remember_selection();
        self.scroll_to_selection(height);
    }

    /// Keep the selected row inside the `height` rows shown.
    pub fn scroll_to_selection(&mut self, height: usize) {
        let height = height.max(1);
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if self.selected >= self.offset + height {
            self.offset = self.selected + 1 - height;
        }
        let n = self.rows.len();
        self.offset = self.offset.min(n.saturating_sub(height));
        if self.selected < self.offset {
            self.offset = self.selected;
        }
    }

    /// The selected listener: its daemon and row.
    pub fn selection(&mut self) -> Option<(usize, &proto::ListenerStatsSample)> {
        let sel = self.selected;
        match self.rows().get(sel).copied() {
            Some(RowId::Listener(h, i)) => self.hosts[h].listener(i).map(|l| (h, l)),
            _ => None,
        }
    }

    pub fn listener_count(&self) -> usize {
        self.hosts
            .iter()
            .filter_map(|h| h.sample.as_ref())
            .map(|s| s.listeners.len())
            .sum()
    }
}

/// Whether a listener matches a lowercase filter: a substring of its
/// name, its kind, or one of its labels (`key=value`).
fn matches(host: &HostState, l: &proto::ListenerStatsSample, needle: &str) -> bool {
    l.name.to_lowercase().contains(needle)
        || kind_of(l).slug().contains(needle)
        || host
            .labels
            .get(&l.name)
            .is_some_and(|lab| lab.to_lowercase().contains(needle))
}

pub fn kind_of(l: &proto::ListenerStatsSample) -> ListenerKind {
    ListenerKind::try_from(l.kind).unwrap_or_default()
}

pub fn state_of(l: &proto::ListenerStatsSample) -> ListenerState {
    ListenerState::try_from(l.state).unwrap_or_default()
}

/// Connections or datagrams per second, whichever the kind has.
pub fn events_per_sec(l: &proto::ListenerStatsSample) -> f64 {
    l.rates
        .map_or(0.0, |r| r.connections_per_sec + r.datagrams_in_per_sec)
}

/// 2: a fault fired lately; 1: it has faults; 0: none.
pub fn fault_level(host: &HostState, l: &proto::ListenerStatsSample) -> u8 {
    if host.firing(&l.name) {
        2
    } else if l.totals.as_ref().is_some_and(|t| !t.faults.is_empty()) {
        1
    } else {
        0
    }
}

fn compare(hosts: &[HostState], col: Col, a: RowId, b: RowId) -> Ordering {
    let get = |r: RowId| match r {
        RowId::Listener(h, i) => hosts[h].listener(i).map(|l| (h, l)),
        RowId::Host(_) => None,
    };
    let (Some((ha, a)), Some((hb, b))) = (get(a), get(b)) else {
        return Ordering::Equal;
    };
    let num = |f: &dyn Fn(usize, &proto::ListenerStatsSample) -> f64| f(ha, a).total_cmp(&f(hb, b));
    match col {
        Col::Host => ha.cmp(&hb),
        Col::Name => a.name.cmp(&b.name),
        Col::Kind => kind_of(a).slug().cmp(kind_of(b).slug()),
        Col::State => state_of(a).slug().cmp(state_of(b).slug()),
        Col::In => num(&|_, l| l.rates.map_or(0.0, |r| r.bytes_in_per_sec)),
        Col::Out => num(&|_, l| l.rates.map_or(0.0, |r| r.bytes_out_per_sec)),
        Col::Rate => num(&|_, l| events_per_sec(l)),
        Col::Active => num(&|_, l| {
            l.totals
                .as_ref()
                .map_or(0.0, |t| t.connections_active as f64)
        }),
        Col::Errors => num(&|_, l| l.totals.as_ref().map_or(0.0, |t| t.errors as f64)),
        Col::Fault => num(&|h, l| f64::from(fault_level(&hosts[h], l))),
        Col::Trend => num(&|h, l| hosts[h].hist.get(&l.name).map_or(0.0, |x| x.peak())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64, secs: i64, names: &[(&str, f64)], complete: bool) -> StatsSample {
        StatsSample {
            time: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            elapsed: (seq > 0).then_some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            seq,
            snapshot_complete: complete,
            listeners: names
                .iter()
                .map(|(n, r)| proto::ListenerStatsSample {
                    name: (*n).into(),
                    kind: ListenerKind::TcpEcho as i32,
                    state: ListenerState::Running as i32,
                    totals: Some(proto::ListenerStats::default()),
                    rates: (seq > 0).then(|| proto::ListenerRates {
                        bytes_in_per_sec: *r,
                        ..Default::default()
                    }),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn names(m: &mut Model) -> Vec<String> {
        let rows = m.rows().to_vec();
        rows.iter()
            .map(|r| match r {
                RowId::Listener(h, i) => m.hosts[*h].listener(*i).unwrap().name.clone(),
                RowId::Host(h) => format!("host {h}"),
            })
            .collect()
    }

    /// Deltas fold into whole ticks; sorting by a rate puts the busiest
    /// first; the filter hides rows; the selection follows its listener.
    #[test]
    fn rows_sort_filter_and_selection() {
        let mut m = Model::new(vec!["a".into()]);
        m.apply(Msg::Stats(
            0,
            sample(
                0,
                100,
                &[("alpha", 0.0), ("beta", 0.0), ("gamma", 0.0)],
                true,
            ),
        ));
        assert_eq!(names(&mut m), ["alpha", "beta", "gamma"]);
        // Only beta changed in this tick: the others keep rate 0.
        m.apply(Msg::Stats(0, sample(1, 101, &[("beta", 500.0)], false)));
        m.move_by(2, 10);
        m.sort_by(Col::In);
        assert_eq!(names(&mut m)[0], "beta");
        assert_eq!(m.selection().unwrap().1.name, "gamma", "follows gamma");
        m.set_filter("ALP".into());
        assert_eq!(names(&mut m), ["alpha"]);
        m.set_filter(String::new());
        m.apply(Msg::Down(0, "refused".into()));
        assert_eq!(names(&mut m), ["host 0"]);
    }

    /// However many messages arrive between two redraws, the rows are
    /// rebuilt once, when asked for.
    #[test]
    fn updates_coalesce_into_one_rebuild() {
        let mut m = Model::new(vec!["a".into()]);
        m.apply(Msg::Stats(0, sample(0, 100, &[("a", 0.0)], true)));
        for t in 1..1000 {
            m.apply(Msg::Stats(
                0,
                sample(t, 100 + t as i64, &[("a", 1.0)], false),
            ));
        }
        assert!(m.stale);
        assert_eq!(m.rows().len(), 1);
        assert!(!m.stale);
        let h = m.hosts[0].hist.get("a").unwrap();
        assert!(h.len() <= 61, "a minute of history, not {}", h.len());
    }
}
