//! The fault types: one list (`fault_types!` below) from which every
//! table that names a type is made — the type names and which transports
//! take them, the attribute keys with their units and help (the flat form
//! of [`super::attrs`], `netctl fault add`'s flags and `--attr`), and the
//! Toxiproxy API's toxic names and attribute units.
//!
//! Each type is one module here holding its [`Def`] (name, transports,
//! keys), the read and write of its attributes ([`Val`] by key) and its
//! compile step (checks, then its [`TcpAction`], [`UdpAction`] or
//! [`HttpAction`]).
//! Adding a type: its message and oneof arm in the proto, its module
//! here, one line in the list, its variant in [`TcpAction`], [`UdpAction`]
//! or [`HttpAction`] (`../action.rs`), and what it does in the engine(s)
//! that take it (`services/proxy/toxic.rs`, `services/udp_proxy/impair.rs`,
//! `services/http_proxy/fault.rs`).
//! Its flags, `--attr` keys, help, flat form and Toxiproxy mapping follow
//! from its line.

use std::time::Duration;

use super::{ActionOn, Target, err};
#[cfg(doc)]
use super::{HttpAction, TcpAction, UdpAction};
use crate::proto::fault::Kind;
use crate::spec::SpecError;

/// The unit of an attribute: how its flat form reads and writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A duration string ("100ms"); unset is left out.
    Duration,
    /// Bytes per second ("1MB/s"; K, M, G are powers of 1000, Ki, Mi, Gi
    /// of 1024; "bit" units count bits), or a whole number of bytes.
    Rate,
    /// A whole number of bytes (u64); 0 is left out.
    Bytes,
    /// A whole number of bytes up to u32's largest; 0 is left out.
    Size,
    /// A whole number up to u32's largest; 0 is left out.
    Count,
    /// A probability, 0 to 1.
    Probability,
    /// A string; empty is left out.
    Text,
    /// A list of strings (a flag given again adds one); empty is left out.
    Texts,
}

impl Unit {
    /// The value's name in `--help`.
    pub fn value_name(self) -> &'static str {
        match self {
            Unit::Duration => "DUR",
            Unit::Rate => "RATE",
            Unit::Bytes | Unit::Size => "BYTES",
            Unit::Count => "N",
            Unit::Probability => "P",
            Unit::Text | Unit::Texts => "TEXT",
        }
    }

    /// A value of this unit, for examples and tests.
    pub fn example(self) -> &'static str {
        match self {
            Unit::Duration => "100ms",
            Unit::Rate => "1MB/s",
            Unit::Bytes | Unit::Size | Unit::Count => "10",
            Unit::Probability => "0.5",
            Unit::Text => "response",
            Unit::Texts => "x-fault: 1",
        }
    }
}

/// How the Toxiproxy API writes an attribute (a whole number in its JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toxiproxy {
    /// Milliseconds.
    Millis,
    /// Microseconds.
    Micros,
    /// KB/s of 1000 bytes; 0 means no limit (netd's largest rate).
    KiloBytesPerSec,
    /// A whole number up to u32's largest.
    Whole32,
    /// A whole number.
    Whole,
}

/// One attribute of a type.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Its name in the flat form, `--attr`, the flag (`_` as `-`) and the
    /// Toxiproxy API.
    pub name: &'static str,
    pub unit: Unit,
    /// What it does, for `--help` (the type's name is put before it).
    pub help: &'static str,
    /// The flat form refuses the type without it.
    pub required: bool,
    /// Offered by the Toxiproxy API, in this unit.
    pub toxiproxy: Option<Toxiproxy>,
}

impl Key {
    pub(crate) const fn new(name: &'static str, unit: Unit, help: &'static str) -> Key {
        Key {
            name,
            unit,
            help,
            required: false,
            toxiproxy: None,
        }
    }

    pub(crate) const fn toxiproxy(mut self, t: Toxiproxy) -> Key {
        self.toxiproxy = Some(t);
        self
    }

    pub(crate) const fn required(mut self) -> Key {
        self.required = true;
        self
    }
}

/// A fault type.
#[derive(Debug)]
pub struct Def {
    /// As in `--type`, the flat form's `type` and the Toxiproxy API.
    pub name: &'static str,
    /// Taken by proxy (TCP) listeners.
    pub tcp: bool,
    /// Taken by udp-proxy listeners.
    pub udp: bool,
    /// An HTTP fault: taken by http-proxy listeners, on requests.
    pub http: bool,
    /// Offered by the Toxiproxy API (under the same name).
    pub toxiproxy: bool,
    /// Its attributes, beyond the common keys.
    pub keys: &'static [Key],
}

impl Def {
    pub fn takes(&self, target: Target) -> bool {
        match target {
            Target::Tcp => self.tcp,
            Target::Udp => self.udp,
            // An http-proxy takes the TCP toxics too: they act on its
            // client connections, beneath HTTP.
            Target::Http => self.http || self.tcp,
        }
    }

    pub fn key(&self, name: &str) -> Option<&'static Key> {
        self.keys.iter().find(|k| k.name == name)
    }
}

/// An attribute's value in a fault's proto message.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Dur(Option<prost_types::Duration>),
    Int(u64),
    /// None: unset (or 0 where the proto has no unset).
    Float(Option<f64>),
    /// Empty: unset.
    Text(String),
    /// Empty: unset.
    Texts(Vec<String>),
}

impl Val {
    pub fn dur(self) -> Option<prost_types::Duration> {
        match self {
            Val::Dur(d) => d,
            _ => None,
        }
    }

    pub fn int(self) -> u64 {
        match self {
            Val::Int(n) => n,
            _ => 0,
        }
    }

    pub fn text(self) -> String {
        match self {
            Val::Text(s) => s,
            _ => String::new(),
        }
    }

    pub fn texts(self) -> Vec<String> {
        match self {
            Val::Texts(v) => v,
            _ => Vec::new(),
        }
    }

    /// For u32 fields (range-checked where the value is read).
    pub fn int32(self) -> u32 {
        u32::try_from(self.int()).unwrap_or(u32::MAX)
    }

    pub fn float(self) -> Option<f64> {
        match self {
            Val::Float(f) => f,
            _ => None,
        }
    }

    /// A float field without an unset: 0 is reported as unset.
    pub fn of_f64(f: f64) -> Val {
        Val::Float((f != 0.0).then_some(f))
    }
}

/// What a type's compile step is given: the fault's name (for errors) and
/// the listener's transport.
pub struct Cx<'a> {
    pub name: &'a str,
    pub target: Target,
}

impl Cx<'_> {
    pub fn err(&self, msg: impl std::fmt::Display) -> SpecError {
        err(self.name, msg)
    }

    pub fn probability(&self, field: &str, p: f64) -> Result<f64, SpecError> {
        super::probability(self.name, field, p)
    }

    pub fn duration(
        &self,
        field: &str,
        d: &Option<prost_types::Duration>,
    ) -> Result<Option<Duration>, SpecError> {
        super::duration(self.name, field, d)
    }
}

/// The list: `ProtoArm => module`, in the order help and errors give them
/// (TCP ones, then UDP ones; `down` is for both; then the HTTP ones).
macro_rules! fault_types {
    ($($arm:ident => $module:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// Every type, in the list's order.
        pub static ALL: &[&Def] = &[$(&$module::DEF),*];

        /// The type of a fault's kind.
        pub fn def_of(kind: &Kind) -> &'static Def {
            match kind {
                $(Kind::$arm(_) => &$module::DEF,)*
            }
        }

        /// A kind of type `name` with every attribute unset.
        pub fn default_kind(name: &str) -> Option<Kind> {
            $(if name == $module::DEF.name {
                return Some(Kind::$arm(Default::default()));
            })*
            None
        }

        /// An attribute of a kind (None: not one of its keys).
        pub fn get(kind: &Kind, key: &str) -> Option<Val> {
            match kind {
                $(Kind::$arm(m) => $module::get(m, key),)*
            }
        }

        /// Set an attribute of a kind (a key not its own is ignored).
        pub fn set(kind: &mut Kind, key: &str, v: Val) {
            match kind {
                $(Kind::$arm(m) => $module::set(m, key, v),)*
            }
        }

        /// The type's own checks and its action.
        pub(crate) fn compile(kind: &Kind, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
            match kind {
                $(Kind::$arm(m) => $module::compile(m, cx),)*
            }
        }
    };
}

fault_types! {
    Latency => latency,
    Bandwidth => bandwidth,
    SlowClose => slow_close,
    Timeout => timeout,
    ResetPeer => reset_peer,
    Slicer => slicer,
    LimitData => limit_data,
    Loss => loss,
    Duplicate => duplicate,
    Reorder => reorder,
    Corrupt => corrupt,
    Down => down,
    Abort => abort,
    Delay => delay,
    SlowBody => slow_body,
    Reset => reset,
    Header => header,
    ReplaceBody => replace_body,
}

/// The type named `name`.
pub fn by_name(name: &str) -> Option<&'static Def> {
    ALL.iter().copied().find(|d| d.name == name)
}

/// The types a listener of `target` takes, in order.
pub fn names_for(target: Target) -> Vec<&'static str> {
    ALL.iter()
        .filter(|d| d.takes(target))
        .map(|d| d.name)
        .collect()
}

/// Every type: the TCP ones, then the UDP-only ones, then the HTTP ones.
pub fn all_names() -> Vec<&'static str> {
    let mut out = names_for(Target::Tcp);
    for n in names_for(Target::Udp)
        .into_iter()
        .chain(names_for(Target::Http))
    {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// Whether any type has the key `name`.
pub fn is_type_key(name: &str) -> bool {
    ALL.iter().any(|d| d.key(name).is_some())
}

/// Every type key once, in the list's order, with the types that have
/// it (for flags and their help).
pub fn all_keys() -> Vec<(&'static Key, Vec<&'static Def>)> {
    let mut out: Vec<(&'static Key, Vec<&'static Def>)> = Vec::new();
    for d in ALL {
        for k in d.keys {
            match out.iter_mut().find(|(o, _)| o.name == k.name) {
                Some((_, defs)) => defs.push(d),
                None => out.push((k, vec![d])),
            }
        }
    }
    out
}

/// A key's help across the types that have it: "slow_close: delay before
/// the close; slicer: delay between slices" (types with the same help
/// share it: "timeout, reset_peer: after this long").
pub fn key_help(key: &str) -> String {
    let mut parts: Vec<(Vec<&str>, &str)> = Vec::new();
    for d in ALL {
        if let Some(k) = d.key(key) {
            match parts.iter_mut().find(|(_, h)| *h == k.help) {
                Some((names, _)) => names.push(d.name),
                None => parts.push((vec![d.name], k.help)),
            }
        }
    }
    parts
        .iter()
        .map(|(names, h)| format!("{}: {h}", names.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_per_transport_keep_their_order() {
        assert_eq!(
            names_for(Target::Tcp).join(" "),
            "latency bandwidth slow_close timeout reset_peer slicer limit_data down"
        );
        assert_eq!(
            names_for(Target::Udp).join(" "),
            "latency bandwidth loss duplicate reorder corrupt down"
        );
        assert_eq!(
            names_for(Target::Http).join(" "),
            "latency bandwidth slow_close timeout reset_peer slicer limit_data down \
             abort delay slow_body reset header replace_body"
        );
        assert_eq!(all_names().len(), ALL.len());
    }

    /// Each type's module reads and writes every key its line lists, and
    /// the list names each type once, with a kind of its own.
    #[test]
    fn every_listed_key_reads_and_writes_its_field() {
        for (i, def) in ALL.iter().enumerate() {
            assert!(ALL[..i].iter().all(|d| d.name != def.name), "{}", def.name);
            let mut kind = default_kind(def.name).expect(def.name);
            assert_eq!(def_of(&kind).name, def.name);
            assert!(def.tcp || def.udp || def.http, "{}", def.name);
            for key in def.keys {
                let v = match key.unit {
                    Unit::Duration => Val::Dur(Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 5,
                    })),
                    Unit::Rate | Unit::Bytes | Unit::Size | Unit::Count => Val::Int(7),
                    Unit::Probability => Val::Float(Some(0.25)),
                    Unit::Text => Val::Text("x".into()),
                    Unit::Texts => Val::Texts(vec!["a: 1".into(), "b".into()]),
                };
                assert!(get(&kind, key.name).is_some(), "{}.{}", def.name, key.name);
                set(&mut kind, key.name, v.clone());
                assert_eq!(get(&kind, key.name), Some(v), "{}.{}", def.name, key.name);
                if def.toxiproxy {
                    assert!(key.toxiproxy.is_some(), "{}.{}", def.name, key.name);
                }
            }
            assert_eq!(get(&kind, "no_such_key"), None);
        }
    }
}
