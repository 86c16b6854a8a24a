//! Detectors for suspicious traffic, fed by the capture thread:
//! - port scan: one source sending TCP SYNs (without ACK) to at least
//!   `ports` distinct destination ports within `window`; fires once per
//!   source per window. Only connection attempts count, so a busy server
//!   answering many clients does not look like a scanner. A TCP first
//!   fragment too short to hold the flags (a tiny fragment, as `nmap -f`
//!   sends) counts as a connection attempt too: no stack fragments inside
//!   a TCP header, so fragmenting cannot hide a scan.
//! - SYN rate: more than `syn_rate` SYNs in one second; fires at most once
//!   every 10 seconds.
//!
//! Memory is bounded: at most 4096 sources are tracked (the table is reset
//! when full) and each keeps at most `ports` port numbers.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::decode::{ACK, Decoded, Proto, SYN};

const MAX_SOURCES: usize = 4096;
const SYN_ALERT_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Source {
    since: Instant,
    ports: HashSet<u16>,
    alerted: bool,
}

#[derive(Debug)]
pub struct Detectors {
    ports: usize,
    window: Duration,
    syn_rate: u64,
    sources: HashMap<IpAddr, Source>,
    second: Option<Instant>,
    syns: u64,
    last_syn_alert: Option<Instant>,
}

impl Detectors {
    pub fn new(ports: u32, window: Duration, syn_rate: u32) -> Self {
        Detectors {
            ports: ports.max(1) as usize,
            window,
            syn_rate: syn_rate as u64,
            sources: HashMap::new(),
            second: None,
            syns: 0,
            last_syn_alert: None,
        }
    }

    /// Whether a packet can matter to a detector (a TCP connection
    /// attempt): the capture threads lock the shared detectors only then.
    pub fn concerns(d: &Decoded) -> bool {
        let attempt = d.tcp_split || (d.tcp_flags & SYN != 0 && d.tcp_flags & ACK == 0);
        d.proto == Proto::Tcp && attempt
    }

    /// Feed one packet; returns an alert message if a detector fires.
    pub fn observe(&mut self, d: &Decoded) -> Option<String> {
        if !Self::concerns(d) {
            return None;
        }
        let now = Instant::now();
        // SYN rate over whole seconds.
        let start = *self.second.get_or_insert(now);
        if now.duration_since(start) >= Duration::from_secs(1) {
            self.second = Some(now);
            self.syns = 0;
        }
        self.syns += 1;
        let mut alert = None;
        if self.syns > self.syn_rate
            && self
                .last_syn_alert
                .is_none_or(|t| now.duration_since(t) >= SYN_ALERT_EVERY)
        {
            self.last_syn_alert = Some(now);
            alert = Some(format!(
                "SYN rate: more than {} TCP SYNs within one second",
                self.syn_rate
            ));
        }

        let src = d.src?;
        if !d.ports {
            return alert;
        }
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&src) {
            self.sources.clear();
        }
        let s = self.sources.entry(src).or_insert_with(|| Source {
            since: now,
            ports: HashSet::new(),
            alerted: false,
        });
        if now.duration_since(s.since) > self.window {
            *s = Source {
                since: now,
                ports: HashSet::new(),
                alerted: false,
            };
        }
        if s.ports.len() < self.ports {
            s.ports.insert(d.dst_port);
        }
        if !s.alerted && s.ports.len() >= self.ports {
            s.alerted = true;
            return Some(format!(
                "port scan: {src} sent SYNs to {} distinct ports within {}",
                s.ports.len(),
                humantime::format_duration(self.window)
            ));
        }
        alert
    }
}
