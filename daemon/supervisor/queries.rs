//! Queries: a listener's status, the list (whole or by page), counters for
//! stats and their watches, connection totals for the metrics, and a
//! sniffer's packet stream. Entries are cloned out of the registry so that
//! building the protos happens unlocked.

use std::sync::Arc;

use crate::proto;
use crate::services::SpecError;

use super::entry::Entry;
use super::{Supervisor, SupervisorError};

impl Supervisor {
    pub fn get(&self, name: &str) -> Result<proto::Listener, SupervisorError> {
        Ok(self.entry(name)?.to_proto())
    }

    /// Connections open now across all listeners, and the sum of each
    /// listener's most open at once since the last call.
    pub fn connections_open_and_peak(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.listeners().values().fold((0, 0), |(open, peak), e| {
            let p = e.stats.take_peak();
            (open + e.stats.connections_active.load(Relaxed), peak + p)
        })
    }

    /// All listeners, sorted by name.
    pub fn list(&self) -> Vec<proto::Listener> {
        self.entries().iter().map(|e| e.to_proto()).collect()
    }

    /// Up to `page.size` entries after `page.after` (sorted by name), and
    /// whether more follow. The registry lock is held only for the range
    /// walk over the ordered map (O(page + log n)); building the protos
    /// happens unlocked.
    fn entries_page(&self, page: &crate::util::page::Page) -> (Vec<Arc<Entry>>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let listeners = self.listeners();
        let from = match &page.after {
            Some(a) => (Excluded(a.as_str()), Unbounded),
            None => (Unbounded, Unbounded),
        };
        let mut it = listeners.range::<str, _>(from);
        let entries: Vec<Arc<Entry>> = it
            .by_ref()
            .take(page.size)
            .map(|(_, e)| e.clone())
            .collect();
        let more = it.next().is_some();
        (entries, more)
    }

    /// One page of listeners, and the name to resume after if more follow.
    pub fn list_page(
        &self,
        page: &crate::util::page::Page,
    ) -> (Vec<proto::Listener>, Option<String>) {
        let (entries, more) = self.entries_page(page);
        let next = more
            .then(|| entries.last().map(|e| e.name.to_string()))
            .flatten();
        (entries.iter().map(|e| e.to_proto()).collect(), next)
    }

    /// One page of counters, and the name to resume after if more follow.
    pub fn samples_page(
        &self,
        page: &crate::util::page::Page,
    ) -> (Vec<proto::ListenerStatsSample>, Option<String>) {
        let (entries, more) = self.entries_page(page);
        let next = more
            .then(|| entries.last().map(|e| e.name.to_string()))
            .flatten();
        (entries.iter().map(|e| e.sample()).collect(), next)
    }

    /// Counters of every listener (sorted by name), or of one.
    pub fn samples(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<proto::ListenerStatsSample>, SupervisorError> {
        match name {
            None => Ok(self.entries().iter().map(|e| e.sample()).collect()),
            Some(n) => Ok(vec![self.entry(n)?.sample()]),
        }
    }

    /// For a stats watch: the counters of every listener (or of the one
    /// named; none if it is gone) are read and handed to `changed` with
    /// the name and state, and a sample is built only for those it says
    /// changed. Each tick of a watch reads every listener, so the idle
    /// ones must cost no allocation.
    pub fn changed_samples(
        &self,
        name: Option<&str>,
        mut changed: impl FnMut(&str, i32, &proto::ListenerStats) -> bool,
    ) -> Vec<proto::ListenerStatsSample> {
        let entries = match name {
            None => self.entries(),
            Some(n) => self.entry(n).map(|e| vec![e]).unwrap_or_default(),
        };
        let mut out = Vec::new();
        for e in &entries {
            let g = e.current_gen();
            let state = e.status().state as i32;
            let totals = e.stats_of(&g);
            if changed(&e.name, state, &totals) {
                out.push(proto::ListenerStatsSample {
                    name: e.name.to_string(),
                    kind: g.service.kind() as i32,
                    state,
                    totals: Some(totals),
                    rates: None,
                });
            }
        }
        out
    }

    /// Subscribe to a sniffer's packet summaries.
    pub fn packets(
        &self,
        name: &str,
    ) -> Result<
        (
            tokio::sync::broadcast::Receiver<proto::PacketSummary>,
            Arc<crate::services::sniffer::SnifferCounters>,
        ),
        SupervisorError,
    > {
        let entry = self.entry(name)?;
        let g = entry.current_gen();
        match g.service.as_sniffer() {
            Some(s) => Ok(s.watch()),
            None => Err(SpecError::new(format!(
                "'{name}' is a {} listener, not a sniffer",
                g.service.kind().slug()
            ))
            .into()),
        }
    }
}
