//! Which fields of a listener spec differ, by name, for update responses,
//! apply plans and events ("upstreams, idle_timeout").
//!
//! Generic over every kind without a hand-kept list: both specs are
//! encoded to protobuf, split into fields by their wire tags, and the tags
//! that differ are named from the compiled-in descriptor set (the same one
//! reflection serves). A field added to a spec, and a kind added to
//! `ListenerSpec`, are covered automatically.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use prost::Message as _;

use crate::proto;

/// Names of the fields that differ between two specs of the same kind, in
/// field-number order; `["kind"]` if the kinds differ.
pub fn changed_fields(a: &proto::ListenerSpec, b: &proto::ListenerSpec) -> Vec<String> {
    let (Some((tag_a, bytes_a)), Some((tag_b, bytes_b))) = (arm(a), arm(b)) else {
        return if a == b { vec![] } else { vec!["kind".into()] };
    };
    if tag_a != tag_b {
        return vec!["kind".into()];
    }
    let message = arm_message(tag_a);
    let (fa, fb) = (fields(&bytes_a), fields(&bytes_b));
    let tags: std::collections::BTreeSet<u32> = fa.keys().chain(fb.keys()).copied().collect();
    tags.into_iter()
        .filter(|t| fa.get(t) != fb.get(t))
        .map(|t| field_name(&message, t))
        .collect()
}

/// The `kind` oneof arm a spec sets: its field number in `ListenerSpec`
/// and the encoded kind spec (the arm's payload).
fn arm(spec: &proto::ListenerSpec) -> Option<(u32, Vec<u8>)> {
    spec.kind.as_ref()?;
    let encoded = spec.encode_to_vec();
    let mut buf = &encoded[..];
    let key = prost::encoding::decode_varint(&mut buf).ok()?;
    let len = prost::encoding::decode_varint(&mut buf).ok()? as usize;
    (key & 7 == 2 && len == buf.len()).then(|| ((key >> 3) as u32, buf.to_vec()))
}

/// The message type of `ListenerSpec`'s field `tag` (e.g. "ProxySpec").
fn arm_message(tag: u32) -> String {
    static ARMS: OnceLock<BTreeMap<u32, String>> = OnceLock::new();
    let arms = ARMS.get_or_init(|| {
        let mut m = BTreeMap::new();
        if let Ok(set) = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET) {
            for file in set.file {
                for msg in file
                    .message_type
                    .iter()
                    .filter(|m| m.name() == "ListenerSpec")
                {
                    for f in &msg.field {
                        let ty = f.type_name().rsplit('.').next().unwrap_or_default();
                        m.insert(f.number() as u32, ty.to_string());
                    }
                }
            }
        }
        m
    });
    arms.get(&tag).cloned().unwrap_or_default()
}

/// The raw bytes of each field (repeated fields concatenated), by tag.
fn fields(mut buf: &[u8]) -> BTreeMap<u32, Vec<u8>> {
    let mut out: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    while !buf.is_empty() {
        let start = buf;
        let Ok(key) = prost::encoding::decode_varint(&mut buf) else {
            break;
        };
        let tag = (key >> 3) as u32;
        let len = match key & 7 {
            0 => prost::encoding::decode_varint(&mut buf)
                .map(|_| 0)
                .unwrap_or(usize::MAX),
            1 => 8,
            2 => prost::encoding::decode_varint(&mut buf)
                .map(|l| l as usize)
                .unwrap_or(usize::MAX),
            5 => 4,
            _ => usize::MAX,
        };
        if len > buf.len() {
            break;
        }
        buf = &buf[len..];
        let consumed = start.len() - buf.len();
        out.entry(tag)
            .or_default()
            .extend_from_slice(&start[..consumed]);
    }
    out
}

/// `message`'s field `tag` by name, from the descriptor set.
fn field_name(message: &str, tag: u32) -> String {
    static NAMES: OnceLock<BTreeMap<(String, u32), String>> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        let mut m = BTreeMap::new();
        if let Ok(set) = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET) {
            for file in set.file {
                for msg in file.message_type {
                    for f in &msg.field {
                        m.insert(
                            (msg.name().to_string(), f.number() as u32),
                            f.name().to_string(),
                        );
                    }
                }
            }
        }
        m
    });
    names
        .get(&(message.to_string(), tag))
        .cloned()
        .unwrap_or_else(|| format!("field {tag}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::listener_spec::Kind;

    #[test]
    fn names_the_fields_that_differ() {
        let a = proto::ListenerSpec {
            kind: Some(Kind::Proxy(proto::ProxySpec {
                listen: "127.0.0.1:1".into(),
                upstreams: vec!["127.0.0.1:2".into()],
                ..Default::default()
            })),
        };
        let mut b = a.clone();
        if let Some(Kind::Proxy(p)) = &mut b.kind {
            p.upstreams.push("127.0.0.1:3".into());
            p.idle_timeout = Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            });
        }
        assert_eq!(changed_fields(&a, &b), ["upstreams", "idle_timeout"]);
        assert!(changed_fields(&a, &a).is_empty());
        let c = proto::ListenerSpec {
            kind: Some(Kind::TcpEcho(proto::TcpEchoSpec::default())),
        };
        assert_eq!(changed_fields(&a, &c), ["kind"]);
    }
}
