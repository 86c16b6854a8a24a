//! Sparklines: the last minute of a listener's traffic as one column of
//! Unicode blocks, shared by `netctl stats --watch` and `netctl top`.
//!
//! A [`History`] keeps (time, value) points of the last [`WINDOW_SECS`],
//! at most [`MAX_POINTS`] of them, so memory per listener is bounded
//! whatever the interval; [`History::render`] folds them into as many time
//! buckets as the column is wide (the highest value of each bucket), scaled
//! to the highest value shown. A bucket with no point yet is a space; an
//! idle one the lowest block, so "no data" and "no traffic" differ.

use std::collections::{HashMap, VecDeque};

use netd::proto::{ListenerStatsSample, StatsSample};

/// How far back a sparkline looks, in seconds.
pub const WINDOW_SECS: f64 = 60.0;

/// Points kept per listener at most: a minute at the shortest interval
/// (100ms), plus slack.
pub const MAX_POINTS: usize = 640;

/// The blocks, lowest first.
const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The last minute of one series.
#[derive(Debug, Default, Clone)]
pub struct History {
    points: VecDeque<(f64, f64)>,
}

impl History {
    /// Add a value at time `t` (seconds, any fixed origin), dropping what
    /// is older than the window or beyond the point cap.
    pub fn push(&mut self, t: f64, v: f64) {
        let v = if v.is_finite() && v > 0.0 { v } else { 0.0 };
        self.points.push_back((t, v));
        while self
            .points
            .front()
            .is_some_and(|&(t0, _)| t0 < t - WINDOW_SECS)
            || self.points.len() > MAX_POINTS
        {
            self.points.pop_front();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// The highest value of the window.
    pub fn peak(&self) -> f64 {
        self.points.iter().map(|p| p.1).fold(0.0, f64::max)
    }

    /// `width` blocks for the window ending at `now` (oldest left).
    pub fn render(&self, width: usize, now: f64) -> String {
        if width == 0 {
            return String::new();
        }
        let mut buckets: Vec<Option<f64>> = vec![None; width];
        let start = now - WINDOW_SECS;
        let per = WINDOW_SECS / width as f64;
        for &(t, v) in &self.points {
            if t < start || t > now {
                continue;
            }
            let i = (((t - start) / per) as usize).min(width - 1);
            let b = buckets[i].get_or_insert(0.0);
            *b = b.max(v);
        }
        let max = buckets.iter().flatten().copied().fold(0.0, f64::max);
        buckets
            .iter()
            .map(|b| match b {
                None => ' ',
                Some(v) if *v <= 0.0 || max <= 0.0 => BLOCKS[0],
                Some(v) => {
                    let step = ((v / max) * 6.0).round() as usize;
                    BLOCKS[(1 + step).min(BLOCKS.len() - 1)]
                }
            })
            .collect()
    }
}

/// The value a listener's sparkline follows: bytes per second both ways,
/// or for a kind that moves no bytes, its connections or datagrams.
pub fn value_of(l: &ListenerStatsSample) -> f64 {
    l.rates.map_or(0.0, |r| {
        let bytes = r.bytes_in_per_sec + r.bytes_out_per_sec;
        if bytes > 0.0 {
            bytes
        } else {
            r.connections_per_sec + r.datagrams_in_per_sec
        }
    })
}

/// Seconds since the Unix epoch of a sample's time (0 without one).
pub fn sample_secs(s: &StatsSample) -> f64 {
    s.time
        .map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

/// One [`History`] per listener name, following whole samples (as
/// [`crate::stats::View`] gives them): a listener gone from the sample is
/// forgotten.
#[derive(Debug, Default)]
pub struct Histories {
    map: HashMap<String, History>,
}

impl Histories {
    pub fn update(&mut self, s: &StatsSample) {
        let t = sample_secs(s);
        if s.elapsed.is_none() {
            // The snapshot has no rates: nothing to plot yet.
            return;
        }
        let mut seen = std::collections::HashSet::with_capacity(s.listeners.len());
        for l in &s.listeners {
            self.map
                .entry(l.name.clone())
                .or_default()
                .push(t, value_of(l));
            seen.insert(l.name.as_str());
        }
        self.map.retain(|n, _| seen.contains(n.as_str()));
    }

    pub fn get(&self, name: &str) -> Option<&History> {
        self.map.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many points arrive, a history holds at most a minute of
    /// them and never more than the cap.
    #[test]
    fn history_is_bounded_by_window_and_cap() {
        let mut h = History::default();
        for i in 0..10_000 {
            h.push(f64::from(i), 1.0);
        }
        assert_eq!(h.len(), 61, "a point per second over 60 s, both ends");
        let mut h = History::default();
        for i in 0..10_000 {
            h.push(f64::from(i) * 0.001, 1.0);
        }
        assert_eq!(h.len(), MAX_POINTS);
    }

    #[test]
    fn render_scales_and_marks_gaps() {
        let mut h = History::default();
        h.push(100.0, 0.0);
        h.push(110.0, 50.0);
        h.push(119.0, 100.0);
        let s = h.render(6, 120.0);
        assert_eq!(s.chars().count(), 6);
        // Nothing before t=100 (the first four buckets of ten seconds each
        // are empty... the window starts at 60).
        assert_eq!(s, "    ▁█");
        let s = h.render(12, 120.0);
        assert_eq!(s.chars().count(), 12);
        assert!(s.ends_with('█'), "{s}");
        assert!(s.contains('▅'), "half the peak: {s}");
        assert_eq!(History::default().render(3, 0.0), "   ");
        assert_eq!(h.render(0, 120.0), "");
    }
}
