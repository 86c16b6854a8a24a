//! `netctl fault add|update|rm|ls`: faults on proxy and udp-proxy
//! listeners. Every attribute is a flag of its own name; the flags are
//! gathered into the same key/value table the config file uses
//! (`netd::fault::attrs`), so names, units and checks are the config's.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use netd::fault::attrs;
use netd::proto;
use toml::{Table, Value};

use super::*;
use crate::dial::status_line;
use crate::output::{self, bytes, table};
use crate::render::{self, outln};

#[derive(Debug, Subcommand)]
pub(crate) enum FaultCmd {
    /// Add a fault to a proxy or udp-proxy; it applies at once, to open
    /// connections too.
    ///
    /// TCP (proxy) types: latency, bandwidth, slow_close, timeout,
    /// reset_peer, slicer, limit_data, down. UDP (udp-proxy) types:
    /// latency, bandwidth, loss, duplicate, reorder, corrupt, down.
    Add {
        /// The proxy or udp-proxy listener.
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
        /// The proxy or udp-proxy listener.
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
        /// The proxy or udp-proxy listener.
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
        /// Only this proxy or udp-proxy listener.
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
    /// Probability (0 to 1) that a connection (UDP: a client) is affected.
    #[arg(long, value_name = "P")]
    toxicity: Option<String>,
    /// Only after N bytes on the direction, per connection (TCP).
    #[arg(long, value_name = "N")]
    after_bytes: Option<String>,
    /// Only inside a window: START+DUR after now (e.g. 5s+10s), START
    /// alone for good, +DUR from now.
    #[arg(long, value_name = "START+DUR")]
    window: Option<String>,
    /// Only clients in this network, e.g. 127.0.0.2/32.
    #[arg(long, value_name = "CIDR")]
    client: Option<String>,
    /// Only every Nth connection (UDP: client).
    #[arg(long, value_name = "N")]
    every: Option<String>,
    /// latency: added delay, e.g. 100ms.
    #[arg(long, value_name = "DUR")]
    latency: Option<String>,
    /// latency: uniform +- jitter, e.g. 10ms.
    #[arg(long, value_name = "DUR")]
    jitter: Option<String>,
    /// bandwidth: e.g. 1MB/s, 500KB/s, 8Mbit/s (K, M, G = 1000s; Ki, Mi,
    /// Gi = 1024s).
    #[arg(long, value_name = "RATE")]
    rate: Option<String>,
    /// slow_close: delay before the close; slicer: delay between slices.
    #[arg(long, value_name = "DUR")]
    delay: Option<String>,
    /// timeout, reset_peer: after this long (timeout unset: never close).
    /// (netctl's own request --timeout goes before the command.)
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,
    /// slicer: average slice size in bytes.
    #[arg(long, value_name = "BYTES")]
    average_size: Option<String>,
    /// slicer: +- variation of the slice size.
    #[arg(long, value_name = "BYTES")]
    size_variation: Option<String>,
    /// limit_data: close after this many bytes.
    #[arg(long, value_name = "BYTES")]
    bytes: Option<String>,
    /// loss, duplicate, reorder, corrupt: probability per datagram (0 to 1).
    #[arg(long, value_name = "P")]
    probability: Option<String>,
    /// loss (Gilbert-Elliott): probability of entering a burst.
    #[arg(long, value_name = "P")]
    burst_enter: Option<String>,
    /// loss (Gilbert-Elliott): probability of leaving a burst.
    #[arg(long, value_name = "P")]
    burst_exit: Option<String>,
    /// loss (Gilbert-Elliott): loss inside a burst (default 1).
    #[arg(long, value_name = "P")]
    bad_loss: Option<String>,
    /// loss (Gilbert-Elliott): loss outside bursts (default 0).
    #[arg(long, value_name = "P")]
    good_loss: Option<String>,
    /// reorder: datagrams that overtake a held one (default 1).
    #[arg(long, value_name = "N")]
    gap: Option<String>,
    /// reorder: longest hold (default 100ms).
    #[arg(long, value_name = "DUR")]
    max_hold: Option<String>,
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
        set("latency", &self.latency);
        set("jitter", &self.jitter);
        set("rate", &self.rate);
        set("delay", &self.delay);
        set("timeout", &self.timeout);
        set("average_size", &self.average_size);
        set("size_variation", &self.size_variation);
        set("bytes", &self.bytes);
        set("probability", &self.probability);
        set("burst_enter", &self.burst_enter);
        set("burst_exit", &self.burst_exit);
        set("bad_loss", &self.bad_loss);
        set("good_loss", &self.good_loss);
        set("gap", &self.gap);
        set("max_hold", &self.max_hold);
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
        Ok(())
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
fn build(t: &Table) -> anyhow::Result<proto::Fault> {
    attrs::from_table(t).map_err(|e| render::usage(anyhow!("{}", flagged(&e))))
}

/// Config key names in a message read as flags: `after_bytes` → `--after-bytes`.
fn flagged(msg: &str) -> String {
    let mut out = msg.to_string();
    for k in attrs::COMMON_KEYS.iter().chain(
        netd::fault::TCP_TYPES
            .iter()
            .chain(netd::fault::UDP_TYPES)
            .filter_map(|t| attrs::keys_of(t))
            .flatten(),
    ) {
        let flag = match *k {
            "every_nth" => "--every".to_string(),
            "start_after" | "duration" => "--window".to_string(),
            "client" => "--client".to_string(),
            k => format!("--{}", k.replace('_', "-")),
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
            let fault = build(&t)?;
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
            let fault = build(&t)?;
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
    let mut out = vec![format!("affected {}", s.connections_affected)];
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
    outln!(
        "{verb} fault {} ({}, {}) on {}: {}",
        crate::escape::escape(&f.name),
        netd::fault::type_of(&f),
        direction(&f),
        crate::escape::escape(&s.listener),
        crate::escape::escape(&attrs::summary(&f))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
            flagged("rate does not apply to a latency fault"),
            "--rate does not apply to a latency fault"
        );
        assert_eq!(flagged("every_nth: 'x' is not"), "--every: 'x' is not");
    }
}
