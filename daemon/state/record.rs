//! One change to the overlay as the journal stores it, and the framing
//! that makes a torn or damaged record detectable.
//!
//! A record says what the overlay now holds for one listener name — its
//! full entry (created or changed through the control plane), "removed"
//! (a config listener stopped), or nothing (the name is back to the
//! config, or gone) — so applying a record is setting one key, and the
//! journal replays to the same overlay however the records were grouped.
//!
//! On disk a record is a frame: its payload's length (u32, little
//! endian), a checksum (FNV-1a 64 of the length bytes and the payload,
//! little endian), then the payload, a [`Record`] protobuf whose entry is
//! the state file's own `ListenerEntry` encoding. Records carry a sequence
//! number that starts at 1 in each journal, so replay stops at a gap as it
//! does at a torn or damaged frame.

use std::collections::HashMap;

use prost::Message as _;

use super::{Desired, fnv1a};
use crate::proto;

/// Bytes before a frame's payload: length (4) and checksum (8).
pub(super) const FRAME_HEADER: usize = 12;
/// Largest payload accepted (a listener entry is a few KiB at most).
pub(super) const MAX_PAYLOAD: usize = 16 << 20;

/// What the overlay holds for one name.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Created or changed through the control plane: its full entry.
    Put(Box<Desired>),
    /// A config listener stopped through the control plane.
    Removed,
    /// Nothing: as in the config, or not there at all.
    Clear,
}

/// The journal's record payload. Private to the state directory, so it is
/// declared here rather than in the public API's proto package; the
/// listener entry inside is the API's own message.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Record {
    /// 1 for the first record of a journal, then one more each.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    /// Set for [`Change::Put`].
    #[prost(message, optional, tag = "3")]
    pub entry: Option<proto::ListenerEntry>,
    /// Set for [`Change::Removed`]; neither set is [`Change::Clear`].
    #[prost(bool, tag = "4")]
    pub removed: bool,
}

impl Record {
    pub fn new(seq: u64, name: &str, change: &Change) -> Record {
        let (entry, removed) = match change {
            Change::Put(d) => (Some(d.to_entry()), false),
            Change::Removed => (None, true),
            Change::Clear => (None, false),
        };
        Record {
            seq,
            name: name.to_string(),
            entry,
            removed,
        }
    }

    /// The change this record holds, or why it makes no sense.
    pub fn change(self) -> Result<(String, Change), String> {
        let change = match (self.entry, self.removed) {
            (Some(_), true) => {
                return Err(format!(
                    "the record for '{}' is both an entry and a removal",
                    self.name
                ));
            }
            (Some(e), false) => {
                let Some(spec) = e.spec else {
                    return Err(format!("listener '{}' has no spec", self.name));
                };
                if e.name != self.name {
                    return Err(format!(
                        "the record for '{}' holds listener '{}'",
                        self.name, e.name
                    ));
                }
                Change::Put(Box::new(Desired {
                    name: e.name,
                    spec,
                    labels: e.labels.into_iter().collect::<HashMap<_, _>>(),
                }))
            }
            (None, true) => Change::Removed,
            (None, false) => Change::Clear,
        };
        Ok((self.name, change))
    }

    /// The framed record, appended to `out`.
    pub fn frame_into(&self, out: &mut Vec<u8>) {
        let payload = self.encode_to_vec();
        // A payload is one listener entry: far below 4 GiB.
        let len = u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes();
        out.extend_from_slice(&len);
        out.extend_from_slice(&frame_sum(&len, &payload).to_le_bytes());
        out.extend_from_slice(&payload);
    }
}

fn frame_sum(len: &[u8; 4], payload: &[u8]) -> u64 {
    let mut both = Vec::with_capacity(4 + payload.len());
    both.extend_from_slice(len);
    both.extend_from_slice(payload);
    fnv1a(&both)
}

/// The whole frames at the start of `bytes`, in order, up to the first
/// that is cut short, damaged or out of sequence (numbered from
/// `first_seq`). Returns the records, the bytes they span, and what stopped
/// the reading if it was not the end of `bytes`.
pub(super) fn read_frames(bytes: &[u8], first_seq: u64) -> (Vec<Record>, usize, Option<String>) {
    let mut records = Vec::new();
    let mut at = 0usize;
    let mut seq = first_seq;
    // Bounded: every pass consumes at least FRAME_HEADER bytes.
    while at < bytes.len() {
        let rest = &bytes[at..];
        let stop = |why: String| format!("at byte {at} (record {seq}): {why}");
        if rest.len() < FRAME_HEADER {
            return (records, at, Some(stop("the record is cut short".into())));
        }
        let len_bytes: [u8; 4] = [rest[0], rest[1], rest[2], rest[3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > MAX_PAYLOAD {
            return (
                records,
                at,
                Some(stop(format!(
                    "a record length of {len} bytes is impossible"
                ))),
            );
        }
        if rest.len() - FRAME_HEADER < len {
            return (records, at, Some(stop("the record is cut short".into())));
        }
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&rest[4..FRAME_HEADER]);
        let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
        if frame_sum(&len_bytes, payload) != u64::from_le_bytes(sum) {
            return (
                records,
                at,
                Some(stop("its checksum does not match".into())),
            );
        }
        let record = match Record::decode(payload) {
            Ok(r) => r,
            Err(e) => return (records, at, Some(stop(format!("cannot decode it: {e}")))),
        };
        if record.seq != seq {
            return (
                records,
                at,
                Some(stop(format!("it is numbered {}", record.seq))),
            );
        }
        records.push(record);
        seq += 1;
        at += FRAME_HEADER + len;
    }
    (records, at, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::listener_spec::Kind;

    fn put(name: &str) -> Change {
        let mut labels = HashMap::new();
        labels.insert("team".to_string(), "a".to_string());
        Change::Put(Box::new(Desired {
            name: name.into(),
            spec: proto::ListenerSpec {
                kind: Some(Kind::TcpEcho(proto::TcpEchoSpec {
                    listen: "127.0.0.1:7".into(),
                    ..Default::default()
                })),
            },
            labels,
        }))
    }

    fn three() -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut ends = Vec::new();
        for (i, (n, c)) in [
            ("a", put("a")),
            ("b", Change::Removed),
            ("a", Change::Clear),
        ]
        .iter()
        .enumerate()
        {
            Record::new(i as u64 + 1, n, c).frame_into(&mut out);
            ends.push(out.len());
        }
        (out, ends)
    }

    #[test]
    fn records_round_trip() {
        let (bytes, ends) = three();
        let (records, used, problem) = read_frames(&bytes, 1);
        assert!(problem.is_none(), "{problem:?}");
        assert_eq!(used, *ends.last().unwrap());
        let changes: Vec<(String, Change)> =
            records.into_iter().map(|r| r.change().unwrap()).collect();
        assert_eq!(
            changes,
            vec![
                ("a".to_string(), put("a")),
                ("b".to_string(), Change::Removed),
                ("a".to_string(), Change::Clear),
            ]
        );
    }

    #[test]
    fn a_cut_at_any_byte_keeps_the_whole_records_before_it() {
        let (bytes, ends) = three();
        for cut in 0..bytes.len() {
            let (records, used, problem) = read_frames(&bytes[..cut], 1);
            let whole = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(records.len(), whole, "cut at {cut}");
            assert_eq!(used, if whole == 0 { 0 } else { ends[whole - 1] });
            // Only a cut between records reads cleanly.
            assert_eq!(problem.is_none(), cut == used, "cut at {cut}: {problem:?}");
        }
    }

    #[test]
    fn a_flipped_byte_stops_the_reading_at_its_record() {
        let (bytes, ends) = three();
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x41;
            let (records, used, problem) = read_frames(&damaged, 1);
            let before = ends.iter().filter(|e| **e <= at).count();
            assert_eq!(records.len(), before, "flip at {at}");
            assert_eq!(used, if before == 0 { 0 } else { ends[before - 1] });
            assert!(problem.is_some(), "flip at {at}");
        }
    }

    #[test]
    fn a_checksum_mismatch_and_a_gap_in_sequence_are_named() {
        let (mut bytes, ends) = three();
        bytes[ends[0] + 5] ^= 1; // the second record's checksum
        let (records, _, problem) = read_frames(&bytes, 1);
        assert_eq!(records.len(), 1);
        assert!(problem.unwrap().contains("checksum"));

        let mut out = Vec::new();
        Record::new(1, "a", &Change::Removed).frame_into(&mut out);
        Record::new(3, "b", &Change::Removed).frame_into(&mut out);
        let (records, _, problem) = read_frames(&out, 1);
        assert_eq!(records.len(), 1);
        assert!(problem.unwrap().contains("numbered 3"));
        // A journal read from the wrong number stops at once.
        assert!(read_frames(&out, 2).0.is_empty());
    }

    #[test]
    fn nonsense_records_are_refused() {
        let mut r = Record::new(1, "a", &put("a"));
        r.removed = true;
        assert!(r.change().is_err());
        let r = Record::new(1, "b", &put("a"));
        assert!(r.change().unwrap_err().contains("holds listener 'a'"));
    }
}
