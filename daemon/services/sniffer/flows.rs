//! The flow table: packets and bytes per 5-tuple (protocol, source,
//! destination), bounded in size. When full, the least recently seen eighth
//! of the table is evicted in one sweep (so eviction costs O(1) amortised
//! per new flow) and counted.

use std::net::IpAddr;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::decode::{Decoded, Proto};
use crate::proto;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    proto: Proto,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    src_port: u16,
    dst_port: u16,
    /// Whether the packets carried ports (not for later fragments): such
    /// packets are a flow of their own, shown without ports.
    ports: bool,
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    packets: u64,
    bytes: u64,
    first: SystemTime,
    last: SystemTime,
}

#[derive(Debug)]
pub struct FlowTable {
    max: usize,
    /// FxHash: fast for small keys; flow keys come from local traffic.
    flows: rustc_hash::FxHashMap<FlowKey, Flow>,
    pub evicted: u64,
}

impl FlowTable {
    pub fn new(max: usize) -> Self {
        FlowTable {
            max: max.max(1),
            flows: Default::default(),
            evicted: 0,
        }
    }

    pub fn record(&mut self, d: &Decoded, now: SystemTime) {
        let key = FlowKey {
            proto: d.proto,
            src: d.src,
            dst: d.dst,
            src_port: d.src_port,
            dst_port: d.dst_port,
            ports: d.ports,
        };
        if let Some(f) = self.flows.get_mut(&key) {
            f.packets += 1;
            f.bytes += d.len as u64;
            f.last = now;
            return;
        }
        if self.flows.len() >= self.max {
            self.evict();
        }
        self.flows.insert(
            key,
            Flow {
                packets: 1,
                bytes: d.len as u64,
                first: now,
                last: now,
            },
        );
    }

    fn evict(&mut self) {
        let n = (self.max / 8).max(1);
        let mut by_age: Vec<(SystemTime, FlowKey)> =
            self.flows.iter().map(|(k, f)| (f.last, *k)).collect();
        by_age.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
        for (_, k) in &by_age[..n] {
            self.flows.remove(k);
        }
        self.evicted += n as u64;
    }

    /// Hold up to `max` flows from now on (a capture that fell back to one
    /// ring gives it the whole of max_flows).
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The `n` flows with the most bytes, largest first, copied out in one
    /// pass over the table (no sort of the whole table, nothing allocated
    /// beyond `n`): the table's lock is shared with the capture thread, so
    /// the caller formats them with [`TopFlows::into_proto`] after letting
    /// go of it.
    pub fn top(&self, n: usize) -> TopFlows {
        let mut top: Vec<(FlowKey, Flow)> = Vec::with_capacity(n + 1);
        if n == 0 {
            return TopFlows(top);
        }
        for (k, f) in &self.flows {
            if top.len() == n && top[n - 1].1.bytes >= f.bytes {
                continue;
            }
            let at = top.partition_point(|(_, t)| t.bytes >= f.bytes);
            top.insert(at, (*k, *f));
            top.truncate(n);
        }
        TopFlows(top)
    }
}

/// The merged view of a capture's flow tables, one per ring: flows
/// active (a flow held by several rings counted once), flows evicted (the
/// sum) and the `n` largest flows, each summed over the rings that hold it.
///
/// With hash fanout a flow normally lives on one ring; it is split when
/// the kernel moves packets off a full ring (rollover) or, for IP
/// fragments, because the kernel hashes a first fragment by addresses
/// only. The candidates for the top are each ring's own top `n`, summed
/// over all rings: exact for every flow held by one ring, and for a split
/// flow whenever one of its parts is among its ring's largest.
///
/// The tables are locked in order, together, for one pass over each; a
/// capture thread locks only its own, so this never waits on a wait.
pub fn merged(tables: &[Mutex<FlowTable>], n: usize) -> (u64, u64, TopFlows) {
    if let [one] = tables {
        let t = one.lock();
        return (t.len() as u64, t.evicted, t.top(n));
    }
    let guards: Vec<_> = tables.iter().map(|t| t.lock()).collect();
    let evicted = guards.iter().map(|t| t.evicted).sum();
    let mut active = 0u64;
    for (r, t) in guards.iter().enumerate() {
        for k in t.flows.keys() {
            if !guards[..r].iter().any(|o| o.flows.contains_key(k)) {
                active += 1;
            }
        }
    }
    let mut keys: Vec<FlowKey> = Vec::with_capacity(n * guards.len());
    for t in &guards {
        for (k, _) in t.top(n).0 {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let mut top: Vec<(FlowKey, Flow)> = keys
        .into_iter()
        .filter_map(|k| {
            let parts = guards.iter().filter_map(|t| t.flows.get(&k));
            parts
                .copied()
                .reduce(|a, b| Flow {
                    packets: a.packets + b.packets,
                    bytes: a.bytes + b.bytes,
                    first: a.first.min(b.first),
                    last: a.last.max(b.last),
                })
                .map(|f| (k, f))
        })
        .collect();
    top.sort_by_key(|t| std::cmp::Reverse(t.1.bytes));
    top.truncate(n);
    (active, evicted, TopFlows(top))
}

/// The largest flows, copied out of a [`FlowTable`].
#[derive(Debug)]
pub struct TopFlows(Vec<(FlowKey, Flow)>);

impl TopFlows {
    pub fn into_proto(self) -> Vec<proto::FlowStats> {
        self.0
            .into_iter()
            .map(|(k, f)| proto::FlowStats {
                protocol: k.proto.as_str().into(),
                src: endpoint(k.src, k.ports.then_some(k.src_port)),
                dst: endpoint(k.dst, k.ports.then_some(k.dst_port)),
                packets: f.packets,
                bytes: f.bytes,
                first_seen: Some(f.first.into()),
                last_seen: Some(f.last.into()),
            })
            .collect()
    }
}

/// "ip:port" ("[v6]:port") when there is a port (TCP/UDP with a transport
/// header), "ip" otherwise, "-" without IP.
pub fn endpoint(ip: Option<IpAddr>, port: Option<u16>) -> String {
    match (ip, port) {
        (None, _) => "-".into(),
        (Some(ip), Some(port)) => std::net::SocketAddr::new(ip, port).to_string(),
        (Some(ip), None) => ip.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn udp(src_port: u16, len: usize) -> Decoded {
        Decoded {
            proto: Proto::Udp,
            src: Some("127.0.0.1".parse().unwrap()),
            dst: Some("127.0.0.1".parse().unwrap()),
            src_port,
            dst_port: 53,
            ports: true,
            ethertype: 0x0800,
            ..Decoded::empty(len)
        }
    }

    #[test]
    fn merged_rings_count_a_split_flow_once_and_sum_it() {
        let t0 = SystemTime::UNIX_EPOCH;
        let rings = [Mutex::new(FlowTable::new(8)), Mutex::new(FlowTable::new(8))];
        // Flow 1 on ring 0 only (3 x 100 B); flow 2 split (2 x 80 B on
        // ring 0, 2 x 80 B on ring 1); flow 3 on ring 1 only (1 x 10 B).
        for i in 0..3 {
            rings[0]
                .lock()
                .record(&udp(1, 100), t0 + Duration::from_secs(i));
        }
        rings[0]
            .lock()
            .record(&udp(2, 80), t0 + Duration::from_secs(5));
        rings[0]
            .lock()
            .record(&udp(2, 80), t0 + Duration::from_secs(6));
        rings[1]
            .lock()
            .record(&udp(2, 80), t0 + Duration::from_secs(1));
        rings[1]
            .lock()
            .record(&udp(2, 80), t0 + Duration::from_secs(9));
        rings[1].lock().record(&udp(3, 10), t0);
        rings[1].lock().evicted = 4;
        let (active, evicted, top) = merged(&rings, 2);
        assert_eq!((active, evicted), (3, 4));
        let top = top.into_proto();
        assert_eq!(top.len(), 2);
        assert_eq!(
            top[0].src, "127.0.0.1:2",
            "the split flow, summed, is largest"
        );
        assert_eq!((top[0].packets, top[0].bytes), (4, 320));
        assert_eq!(
            top[0].first_seen,
            Some((t0 + Duration::from_secs(1)).into())
        );
        assert_eq!(top[0].last_seen, Some((t0 + Duration::from_secs(9)).into()));
        assert_eq!((top[1].packets, top[1].bytes), (3, 300));
        let (one_active, _, one_top) = merged(&rings[..1], 10);
        assert_eq!((one_active, one_top.into_proto().len()), (2, 2));
    }

    #[test]
    fn bounded_and_evicts_the_stalest() {
        let mut t = FlowTable::new(16);
        let base = SystemTime::UNIX_EPOCH;
        for i in 0..40u16 {
            let d = Decoded {
                proto: Proto::Udp,
                src: Some("127.0.0.1".parse().unwrap()),
                dst: Some("127.0.0.1".parse().unwrap()),
                src_port: 1000 + i,
                dst_port: 53,
                ports: true,
                ethertype: 0x0800,
                ..Decoded::empty(100 + i as usize)
            };
            t.record(&d, base + Duration::from_secs(i as u64));
        }
        assert!(t.len() <= 16);
        assert_eq!(t.evicted as usize + t.len(), 40);
        let top = t.top(3).into_proto();
        assert_eq!(top.len(), 3);
        let bytes: Vec<u64> = top.iter().map(|f| f.bytes).collect();
        assert_eq!(bytes, [139, 138, 137], "the largest, largest first");
        assert!(t.top(0).into_proto().is_empty());
        assert_eq!(t.top(100).into_proto().len(), t.len());
        assert_eq!(
            top[0].src, "127.0.0.1:1039",
            "the newest, largest flow survives"
        );
        assert_eq!(top[0].bytes, 139);
    }
}
