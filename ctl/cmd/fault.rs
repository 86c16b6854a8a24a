//! `netctl fault add|update|rm|ls`: faults on proxy, udp-proxy and
//! http-proxy listeners. Every attribute is a flag of its own name and can be given
//! as `--attr KEY=VALUE` too (as `toxiproxy-cli toxic add -a`); the type
//! attributes' flags and help come from the list of fault types
//! (`netd::fault::types`). Both are gathered into the same key/value table
//! the config file uses (`netd::fault::attrs`), so names, units and checks
//! are the config's.

use anyhow::anyhow;
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches, Subcommand};
use netd::fault::{Target, attrs, types};
use netd::proto;
use toml::{Table, Value};

use super::*;
use crate::dial::status_line;
use crate::output::{self, bytes, table};
use crate::render::{self, outln};

#[derive(Debug, Subcommand)]
pub(crate) enum FaultCmd {
    /// Add a fault to a proxy, udp-proxy or http-proxy; it applies at
    /// once, to open connections (HTTP: the next request) too.
    #[command(long_about = add_long_about())]
    Add {
        /// The proxy, udp-proxy or http-proxy listener.
        listener: String,
        /// The fault's name, unique on the listener.
        name: String,
        /// The fault's type.
        #[arg(short = 't', long = "type", value_name = "TYPE")]
        ty: String,
        #[command(flatten)]
        opts: FaultOpts,
    },
    /// Change a fault: only the options given change; its counters are
    /// kept and its time window starts again.
    Update {
        /// The proxy, udp-proxy or http-proxy listener.
        listener: String,
        /// The fault's name.
        name: String,
        /// A new type (the old type's attributes are dropped).
        #[arg(short = 't', long = "type", value_name = "TYPE")]
        ty: Option<String>,
        #[command(flatten)]
        opts: FaultOpts,
    },
    /// Remove a fault (or --all of a listener's); prints their final
    /// counters.
    #[command(alias = "remove")]
    Rm {
        /// The proxy, udp-proxy or http-proxy listener.
        listener: String,
        /// The fault's name.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Every fault of the listener.
        #[arg(long)]
        all: bool,
    },
    /// List faults with their counters: of one listener, or of all.
    #[command(alias = "list")]
    Ls {
        /// Only this proxy, udp-proxy or http-proxy listener.
        listener: Option<String>,
    },
}

/// Conditions and attributes; each flag sets the key of its name.
#[derive(Debug, Args)]
pub(crate) struct FaultOpts {
    /// upstream (client to upstream), downstream (back; the default) or
    /// both.
    #[arg(short, long, value_name = "DIR")]
    direction: Option<String>,
    /// Probability (0 to 1) that a connection (UDP: a client; HTTP: a
    /// request) is affected.
    #[arg(long, value_name = "P")]
    toxicity: Option<String>,
    /// Only after N bytes on the direction, per connection (TCP); reset
    /// (HTTP): bytes of the response body sent before the reset.
    #[arg(long, value_name = "N")]
    after_bytes: Option<String>,
    /// Only inside a window: START+DUR after now (e.g. 5s+10s), START
    /// alone for good, +DUR from now.
    #[arg(long, value_name = "START+DUR")]
    window: Option<String>,
    /// Only clients in this network, e.g. 127.0.0.2/32.
    #[arg(long, value_name = "CIDR")]
    client: Option<String>,
    /// Only every Nth connection (UDP: client; HTTP: matching request).
    #[arg(long, value_name = "N")]
    every: Option<String>,
    /// (HTTP) Only requests with this method (repeat for several).
    #[arg(long = "method", value_name = "METHOD")]
    methods: Vec<String>,
    /// (HTTP) Only requests whose path starts with this, e.g. /api.
    #[arg(long, value_name = "PATH")]
    path_prefix: Option<String>,
    /// (HTTP) Only requests whose path is exactly this.
    #[arg(long, value_name = "PATH")]
    path_exact: Option<String>,
    /// (HTTP) Only requests whose path matches this regular expression,
    /// e.g. '^/orders/[0-9]+$'.
    #[arg(long, value_name = "REGEX")]
    path_regex: Option<String>,
    /// (HTTP) Only requests with this header: 'name' (present), 'name:
    /// value' (that value) or 'name~ regex' (repeat: all must hold).
    #[arg(long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// (HTTP) Only gRPC calls to this service, e.g. pkg.Service.
    #[arg(long, value_name = "SERVICE")]
    grpc_service: Option<String>,
    /// (HTTP) Only gRPC calls to this method of --grpc-service.
    #[arg(long, value_name = "METHOD")]
    grpc_method: Option<String>,
    /// A type attribute or condition as KEY=VALUE (repeatable), e.g.
    /// --attr latency=100ms; the keys are the flags' names with `_`
    /// (and the config's: every_nth, start_after, duration). Applied
    /// after the flags.
    #[arg(short = 'a', long = "attr", value_name = "KEY=VALUE")]
    attr: Vec<String>,
    #[command(flatten)]
    types: TypeFlags,
}

/// `netctl fault add`'s long help: the types each listener kind takes.
fn add_long_about() -> String {
    let tcp = netd::services::fault_kinds(Target::Tcp).join(", ");
    let udp = netd::services::fault_kinds(Target::Udp).join(", ");
    let http = netd::services::fault_kinds(Target::Http).join(", ");
    format!(
        "Add a fault to a {tcp}, {udp} or {http}; it applies at once, to open \
         connections (HTTP: the next request) too.\n\n\
         TCP ({tcp}) types: {}. UDP ({udp}) types: {}. HTTP ({http}) types: {}.\n\n\
         Each attribute is a flag of its own name, or --attr KEY=VALUE.",
        types::names_for(Target::Tcp).join(", "),
        types::names_for(Target::Udp).join(", "),
        types::names_for(Target::Http).join(", ")
    )
}

/// The flag of a type attribute: its key with `-` for `_`.
fn flag_of(key: &str) -> String {
    key.replace('_', "-")
}

/// One flag per attribute key of the fault types (from their list), each
/// setting the key of its name (a list key's flag repeats). A key of a
/// common option's name (reset's after_bytes) is that option's flag.
#[derive(Debug, Default)]
pub(crate) struct TypeFlags(Vec<(&'static str, Value)>);

/// The type keys that have a flag of their own.
fn flag_keys() -> impl Iterator<Item = &'static types::Key> {
    types::all_keys()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !attrs::COMMON_KEYS.contains(&k.name))
}

impl FromArgMatches for TypeFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut out = TypeFlags::default();
        out.update_from_arg_matches(m)?;
        Ok(out)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for key in flag_keys() {
            let v = if key.unit == types::Unit::Texts {
                m.get_many::<String>(key.name)
                    .map(|v| Value::Array(v.map(|s| Value::String(s.clone())).collect()))
            } else {
                m.get_one::<String>(key.name)
                    .map(|v| Value::String(v.clone()))
            };
            if let Some(v) = v {
                self.0.retain(|(k, _)| *k != key.name);
                self.0.push((key.name, v));
            }
        }
        Ok(())
    }
}

impl Args for TypeFlags {
    fn augment_args(mut cmd: Command) -> Command {
        for key in flag_keys() {
            let mut help = types::key_help(key.name);
            if key.name == "timeout" {
                help.push_str(". (netctl's own request --timeout goes before the command.)");
            }
            let mut arg = Arg::new(key.name)
                .long(flag_of(key.name))
                .value_name(key.unit.value_name())
                .value_parser(clap::value_parser!(String))
                .help(help);
            if key.unit == types::Unit::Texts {
                arg = arg.action(clap::ArgAction::Append);
            }
            cmd = cmd.arg(arg);
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FaultOpts {
    /// Set the keys given on the command line in `t`.
    fn apply(&self, t: &mut Table) -> anyhow::Result<()> {
        let mut set = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                t.insert(k.into(), Value::String(v.clone()));
            }
        };
        set("direction", &self.direction);
        set("toxicity", &self.toxicity);
        set("after_bytes", &self.after_bytes);
        set("client", &self.client);
        set("every_nth", &self.every);
        set("path_prefix", &self.path_prefix);
        set("path_exact", &self.path_exact);
        set("path_regex", &self.path_regex);
        set("grpc_service", &self.grpc_service);
        set("grpc_method", &self.grpc_method);
        let list = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
        if !self.methods.is_empty() {
            t.insert("methods".into(), list(&self.methods));
        }
        if !self.headers.is_empty() {
            t.insert("headers".into(), list(&self.headers));
        }
        for (k, v) in &self.types.0 {
            t.insert((*k).into(), v.clone());
        }
        if let Some(w) = &self.window {
            let (start, dur) =
                parse_window(w).map_err(|e| render::usage(anyhow!("--window: {e}")))?;
            t.remove("start_after");
            t.remove("duration");
            if let Some(s) = start {
                t.insert("start_after".into(), Value::String(s));
            }
            if let Some(d) = dur {
                t.insert("duration".into(), Value::String(d));
            }
        }
        let mut lists: Vec<&str> = Vec::new();
        for a in &self.attr {
            let (k, v) = parse_attr(a).map_err(|e| render::usage(anyhow!("--attr: {e}")))?;
            if !is_list_key(k) {
                t.insert(k.into(), Value::String(v.into()));
                continue;
            }
            // A list key given again adds to what --attr gave before.
            let item = Value::String(v.into());
            match t.get_mut(k) {
                Some(Value::Array(items)) if lists.contains(&k) => items.push(item),
                _ => {
                    t.insert(k.into(), Value::Array(vec![item]));
                    lists.push(k);
                }
            }
        }
        Ok(())
    }

    /// The keys given with --attr (named so in errors).
    fn attr_keys(&self) -> Vec<&str> {
        self.attr
            .iter()
            .filter_map(|a| parse_attr(a).ok())
            .map(|(k, _)| k)
            .collect()
    }
}

/// Whether a key holds a list (`methods`, `headers`, a header fault's
/// `set`, `add`, `remove`).
fn is_list_key(k: &str) -> bool {
    matches!(k, "methods" | "headers")
        || types::all_keys()
            .iter()
            .any(|(key, _)| key.name == k && key.unit == types::Unit::Texts)
}

/// "latency=100ms" → ("latency", "100ms"); the name and type are given
/// otherwise.
fn parse_attr(a: &str) -> Result<(&str, &str), String> {
    let Some((k, v)) = a.split_once('=') else {
        return Err(format!("'{a}': expected KEY=VALUE, e.g. latency=100ms"));
    };
    let k = k.trim();
    match k {
        "" => Err(format!("'{a}': expected KEY=VALUE, e.g. latency=100ms")),
        "name" | "type" => Err(format!(
            "{k} is not an attribute; give it as the fault's name or --type"
        )),
        _ => Ok((k, v)),
    }
}

/// "5s+10s" → (5s, 10s); "5s" → (5s, none); "+10s" → (none, 10s).
fn parse_window(w: &str) -> Result<(Option<String>, Option<String>), String> {
    let (start, dur) = match w.split_once('+') {
        Some((s, d)) => (s.trim(), Some(d.trim())),
        None => (w.trim(), None),
    };
    let check = |s: &str| {
        humantime::parse_duration(s)
            .map(|_| s.to_string())
            .map_err(|e| format!("'{s}' is not a duration ({e})"))
    };
    let start = if start.is_empty() {
        None
    } else {
        Some(check(start)?)
    };
    let dur = dur.map(check).transpose()?;
    if start.is_none() && dur.is_none() {
        return Err("expected START+DUR, START or +DUR, e.g. 5s+10s".into());
    }
    Ok((start, dur))
}

/// A flag or value netd's parser refuses is a usage error (exit 2).
fn build(t: &Table, opts: &FaultOpts) -> anyhow::Result<proto::Fault> {
    attrs::from_table(t).map_err(|e| render::usage(anyhow!("{}", flagged(&e, &opts.attr_keys()))))
}

/// Config key names in a message read as flags: `after_bytes` →
/// `--after-bytes`, or `--attr after_bytes` where it was given so.
fn flagged(msg: &str, attr_keys: &[&str]) -> String {
    let mut out = msg.to_string();
    let type_keys = types::all_keys();
    for k in attrs::COMMON_KEYS
        .iter()
        .copied()
        .chain(type_keys.iter().map(|(k, _)| k.name))
    {
        let flag = match k {
            k if attr_keys.contains(&k) => format!("--attr {k}"),
            "every_nth" => "--every".to_string(),
            "methods" => "--method".to_string(),
            "headers" => "--header".to_string(),
            "start_after" | "duration" => "--window".to_string(),
            "client" => "--client".to_string(),
            k => format!("--{}", flag_of(k)),
        };
        if let Some(rest) = out.strip_prefix(k) {
            if rest.starts_with([':', ' ']) {
                out = format!("{flag}{rest}");
            }
        }
    }
    out
}

pub(crate) async fn run(ctx: &Ctx, cmd: FaultCmd) -> anyhow::Result<()> {
    let mut client = ctx.dial.client(false).await?;
    match cmd {
        FaultCmd::Add {
            listener,
            name,
            ty,
            opts,
        } => {
            let mut t = Table::new();
            t.insert("name".into(), Value::String(name.clone()));
            t.insert("type".into(), Value::String(ty));
            opts.apply(&mut t)?;
            let fault = build(&t, &opts)?;
            let what = format!("cannot add fault '{name}' to '{listener}'");
            let st = client
                .add_fault(proto::AddFaultRequest {
                    listener,
                    fault: Some(fault),
                })
                .await
                .map_err(|s| status_line(&what, &s))?
                .into_inner();
            print_one(ctx, "added", &st);
        }
        FaultCmd::Update {
            listener,
            name,
            ty,
            opts,
        } => {
            let what = format!("cannot update fault '{name}' of '{listener}'");
            let list = client
                .list_faults(proto::ListFaultsRequest {
                    listener: listener.clone(),
                })
                .await
                .map_err(|s| status_line(&what, &s))?
                .into_inner();
            let Some(cur) = list
                .faults
                .iter()
                .find_map(|s| s.fault.as_ref().filter(|f| f.name == name))
            else {
                return Err(render::refused(anyhow!(
                    "{what}: listener '{listener}' has no fault named '{name}'"
                )));
            };
            let mut t = attrs::to_table(cur);
            if let Some(ty) = ty {
                if t.get("type").and_then(Value::as_str) != Some(ty.as_str()) {
                    // Keep the common keys only.
                    t.retain(|k, _| attrs::COMMON_KEYS.contains(&k));
                    t.insert("type".into(), Value::String(ty));
                }
            }
            opts.apply(&mut t)?;
            let fault = build(&t, &opts)?;
            let st = client
                .update_fault(proto::UpdateFaultRequest {
                    listener,
                    fault: Some(fault),
                })
                .await
                .map_err(|s| status_line(&what, &s))?
                .into_inner();
            print_one(ctx, "updated", &st);
        }
        FaultCmd::Rm {
            listener,
            name,
            all,
        } => {
            let what = match &name {
                Some(n) => format!("cannot remove fault '{n}' of '{listener}'"),
                None => format!("cannot remove the faults of '{listener}'"),
            };
            let r = client
                .remove_fault(proto::RemoveFaultRequest {
                    listener: listener.clone(),
                    name: name.unwrap_or_default(),
                    all,
                })
                .await
                .map_err(|s| status_line(&what, &s))?
                .into_inner();
            if ctx.json {
                print_json(&serde_json::Value::Array(
                    r.removed.iter().map(output::fault_stats_json).collect(),
                ));
            } else if r.removed.is_empty() {
                outln!("{listener} had no faults");
            } else {
                for s in &r.removed {
                    outln!(
                        "removed {} ({}) from {}: {}",
                        crate::escape::escape(&s.name),
                        s.r#type,
                        crate::escape::escape(&listener),
                        counters(s)
                    );
                }
            }
        }
        FaultCmd::Ls { listener } => {
            let what = "cannot list faults";
            let r = client
                .list_faults(proto::ListFaultsRequest {
                    listener: listener.unwrap_or_default(),
                })
                .await
                .map_err(|s| status_line(what, &s))?
                .into_inner();
            if ctx.json {
                print_json(&serde_json::Value::Array(
                    r.faults.iter().map(status_json).collect(),
                ));
            } else if r.faults.is_empty() {
                outln!("no faults");
            } else {
                table(&LS_HEADER, &r.faults.iter().map(ls_row).collect::<Vec<_>>());
            }
        }
    }
    Ok(())
}

const LS_HEADER: [&str; 7] = [
    "LISTENER",
    "FAULT",
    "TYPE",
    "DIRECTION",
    "SETTINGS",
    "ACTIVE",
    "COUNTERS",
];

fn direction(f: &proto::Fault) -> &'static str {
    // HTTP faults act on requests or responses (their phase), not on a
    // direction.
    if f.kind.as_ref().is_some_and(|k| types::def_of(k).http) {
        return "-";
    }
    match proto::FaultDirection::try_from(f.direction).unwrap_or_default() {
        proto::FaultDirection::Upstream => "upstream",
        proto::FaultDirection::Both => "both",
        proto::FaultDirection::Downstream | proto::FaultDirection::Unspecified => "downstream",
    }
}

fn ls_row(s: &proto::FaultStatus) -> Vec<String> {
    let f = s.fault.clone().unwrap_or_default();
    let st = s.stats.clone().unwrap_or_default();
    let settings = attrs::summary(&f)
        .split(' ')
        .filter(|kv| !kv.starts_with("direction="))
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        s.listener.clone(),
        f.name.clone(),
        netd::fault::type_of(&f).to_string(),
        direction(&f).to_string(),
        settings,
        if st.active { "yes" } else { "no" }.to_string(),
        counters(&st),
    ]
}

/// The counters that are not zero, shortest first ("affected 3").
pub(crate) fn counters(s: &proto::FaultStats) -> String {
    // HTTP faults count requests; the others connections (clients).
    let mut out = if types::by_name(&s.r#type).is_some_and(|d| d.http) {
        vec![format!("requests {}", s.requests_affected)]
    } else {
        vec![format!("affected {}", s.connections_affected)]
    };
    for (label, v, is_bytes) in [
        ("delayed", s.bytes_delayed, true),
        ("dropped", s.bytes_dropped, true),
        ("closed", s.connections_closed, false),
        ("lost", s.datagrams_lost, false),
        ("duplicated", s.datagrams_duplicated, false),
        ("reordered", s.datagrams_reordered, false),
        ("corrupted", s.datagrams_corrupted, false),
        ("delayed dgrams", s.datagrams_delayed, false),
    ] {
        if v != 0 {
            out.push(if is_bytes {
                format!("{label} {}", bytes(v))
            } else {
                format!("{label} {v}")
            });
        }
    }
    out.join(", ")
}

fn status_json(s: &proto::FaultStatus) -> serde_json::Value {
    let mut v = serde_json::json!({
        "listener": s.listener,
        "fault": s.fault.as_ref().map(|f| serde_json::to_value(attrs::to_table(f)).unwrap_or_default()),
    });
    if let Some(st) = &s.stats {
        v["stats"] = output::fault_stats_json(st);
    }
    v
}

fn print_one(ctx: &Ctx, verb: &str, s: &proto::FaultStatus) {
    if ctx.json {
        print_json(&status_json(s));
        return;
    }
    let f = s.fault.clone().unwrap_or_default();
    let what = match direction(&f) {
        "-" => netd::fault::type_of(&f).to_string(),
        d => format!("{}, {d}", netd::fault::type_of(&f)),
    };
    outln!(
        "{verb} fault {} ({what}) on {}: {}",
        crate::escape::escape(&f.name),
        crate::escape::escape(&s.listener),
        crate::escape::escape(&attrs::summary(&f))
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// The options of `netctl fault add ...`.
    fn add_opts(argv: &[&str]) -> FaultOpts {
        let cli = crate::Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        match cli.command {
            crate::Command::Fault(FaultCmd::Add { opts, .. }) => opts,
            other => panic!("{argv:?}: {other:?}"),
        }
    }

    /// Every attribute key of every type (from the list) has a named flag
    /// and can be given by --attr; both set the key, and it reaches the
    /// fault.
    #[test]
    fn every_type_key_is_a_flag_and_an_attr() {
        let mut n = 0;
        for def in types::ALL {
            for key in def.keys {
                let v = key.unit.example();
                let flag = format!("--{}", flag_of(key.name));
                let attr = format!("{}={v}", key.name);
                let head = ["netctl", "fault", "add", "l", "f", "--type", def.name];
                let by_flag = add_opts(&[&head[..], &[flag.as_str(), v]].concat());
                let by_attr = add_opts(&[&head[..], &["--attr", attr.as_str()]].concat());
                let table = |o: &FaultOpts| {
                    let mut t = Table::new();
                    t.insert("name".into(), Value::String("f".into()));
                    t.insert("type".into(), Value::String(def.name.into()));
                    o.apply(&mut t).unwrap();
                    t
                };
                let mut t = table(&by_flag);
                let got = t.get(key.name).and_then(|x| match x {
                    Value::Array(a) => a.first().and_then(Value::as_str),
                    other => other.as_str(),
                });
                assert_eq!(got, Some(v), "{flag}");
                assert_eq!(t, table(&by_attr), "{attr}");
                // The type's other required keys, so that it parses.
                for other in def.keys.iter().filter(|k| k.required && k.name != key.name) {
                    t.insert(
                        other.name.into(),
                        Value::String(other.unit.example().into()),
                    );
                }
                let f = attrs::from_table(&t).unwrap_or_else(|e| panic!("{attr}: {e}"));
                let kind = f.kind.as_ref().unwrap();
                let unset = types::default_kind(def.name).unwrap();
                assert_ne!(
                    types::get(kind, key.name),
                    types::get(&unset, key.name),
                    "{}: {attr} did not reach the fault",
                    def.name
                );
                n += 1;
            }
        }
        assert!(n >= 20, "{n} keys");
    }

    #[test]
    fn attrs_are_key_value_and_not_the_name_or_type() {
        assert_eq!(parse_attr("latency=100ms").unwrap(), ("latency", "100ms"));
        assert_eq!(parse_attr(" rate=1MB/s").unwrap(), ("rate", "1MB/s"));
        assert!(parse_attr("latency").is_err());
        assert!(parse_attr("=1").is_err());
        assert!(parse_attr("name=x").is_err());
        assert!(parse_attr("type=down").is_err());
    }

    #[test]
    fn windows_and_flag_names() {
        assert_eq!(
            parse_window("5s+10s").unwrap(),
            (Some("5s".into()), Some("10s".into()))
        );
        assert_eq!(parse_window("+1m").unwrap(), (None, Some("1m".into())));
        assert_eq!(parse_window("2s").unwrap(), (Some("2s".into()), None));
        assert!(parse_window("+").is_err());
        assert!(parse_window("soon").is_err());
        assert_eq!(
            flagged("rate does not apply to a latency fault", &[]),
            "--rate does not apply to a latency fault"
        );
        assert_eq!(flagged("every_nth: 'x' is not", &[]), "--every: 'x' is not");
        assert_eq!(
            flagged("rate does not apply to a latency fault", &["rate"]),
            "--attr rate does not apply to a latency fault"
        );
    }
}
