//! The flow table: packets and bytes per 5-tuple (protocol, source,
//! destination), bounded in size. When full, the least recently seen eighth
//! of the table is evicted in one sweep (so eviction costs O(1) amortised
//! per new flow) and counted.

use std::net::IpAddr;
use std::time::SystemTime;

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
