//! `netctl update NAME [options]`: fetch the listener's spec, write it in
//! its kind's flat form, set the keys the options give, read it back with
//! the kind's `read_config` and send it. The options are generated from
//! every kind's key table (see [`super::start`]), so a kind's new key is
//! an update option with no code here.

use std::collections::HashMap;

use anyhow::{Context as _, anyhow};
use clap::{Arg, ArgAction, ArgMatches, Command};
use netd::proto;
use netd::services::KINDS;
use netd::spec::Key;
use netd::spec::form::{ReadOptions, Unit};

use super::start::{flag_value, kind_arg, set_key, summary};
use super::*;
use crate::dial::{reply_listener, status_line};
use crate::render::{self, outln};
use crate::{escape, output};

/// `netctl update NAME [options]`: each option replaces one key of the
/// listener's current spec; an option the listener's kind does not have
/// is an error.
#[derive(Debug)]
pub(crate) struct UpdateArgs {
    name: String,
    labels: Vec<(String, String)>,
    clear_labels: bool,
    /// The kinds' options given, by flag, in their flat form's values.
    values: Vec<(&'static str, toml::Value)>,
}

/// Every flag some kind's key has, once (the first kind's key in registry
/// order describes it), with the kinds that take it.
fn update_flags() -> Vec<(&'static str, &'static Key, Vec<&'static str>)> {
    let mut flags: Vec<(&'static str, &'static Key, Vec<&'static str>)> = Vec::new();
    for kind in KINDS {
        for k in kind.keys.iter().filter(|k| k.update) {
            let Some(flag) = k.flag else { continue };
            match flags.iter_mut().find(|(f, _, _)| *f == flag) {
                Some((_, _, slugs)) => slugs.push(kind.slug),
                None => flags.push((flag, k, vec![kind.slug])),
            }
        }
    }
    flags
}

impl clap::Args for UpdateArgs {
    fn augment_args(mut cmd: Command) -> Command {
        cmd = cmd.arg(
            Arg::new("name")
                .required(true)
                .value_name("NAME")
                .help("Listener name"),
        );
        for (flag, k, slugs) in update_flags() {
            let help = format!("{}: {}", slugs.join(", "), summary(k.help));
            cmd = cmd.arg(kind_arg(k, flag, help, true));
        }
        cmd.arg(
            Arg::new("labels")
                .long("label")
                .value_name("KEY=VALUE")
                .help("Replace all labels with these, key=value (repeatable)")
                .value_parser(parse_label)
                .action(ArgAction::Append),
        )
        .arg(
            Arg::new("clear_labels")
                .long("clear-labels")
                .help("Remove every label")
                .conflicts_with("labels")
                .action(ArgAction::SetTrue),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for UpdateArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut values = Vec::new();
        for (flag, k, _) in update_flags() {
            let v = flag_value(m, k, flag, "listener").map_err(|e| {
                clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
            })?;
            if let Some(v) = v {
                // One shape for a flag whichever kind it is for: a list
                // where some kind takes several.
                let v = match (k.unit, v) {
                    (Unit::Addr, toml::Value::String(s)) => {
                        toml::Value::Array(vec![toml::Value::String(s)])
                    }
                    (_, v) => v,
                };
                values.push((flag, v));
            }
        }
        Ok(UpdateArgs {
            name: m.get_one::<String>("name").cloned().unwrap_or_default(),
            labels: m
                .get_many::<(String, String)>("labels")
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
            clear_labels: m.get_flag("clear_labels"),
            values,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl UpdateArgs {
    /// Apply the options given to `spec`: its flat form, with the keys
    /// given set, read back by its kind.
    fn patch(&self, spec: &mut proto::ListenerSpec) -> anyhow::Result<()> {
        let Some(arm) = spec.kind.as_ref() else {
            return Err(anyhow!("netd sent the listener without a spec"));
        };
        let info = netd::services::info(arm);
        let mut form = netd::spec::Table::default();
        netd::services::write_config(arm, &mut form).map_err(|e| anyhow!("{e}"))?;
        let mut table: toml::Table =
            toml::from_str(form.text()).context("the listener's current spec")?;
        for (flag, v) in &self.values {
            let Some(k) = info.keys.iter().find(|k| k.update && k.flag == Some(*flag)) else {
                return Err(anyhow!(
                    "--{flag} does not apply to a {} listener",
                    info.slug
                ));
            };
            let v = match (k.unit, v) {
                (Unit::Addr, toml::Value::Array(items)) => match items.as_slice() {
                    [one] => one.clone(),
                    _ => return Err(anyhow!("a {} has one --{flag}", info.slug)),
                },
                (_, v) => v.clone(),
            };
            set_key(&mut table, k, v);
        }
        // The placeholder netd shows for a secret means "keep it".
        let opts = ReadOptions { placeholders: true };
        let kind = netd::services::read_config(info.kind, &table, &opts)?;
        spec.kind = Some(kind);
        Ok(())
    }

    /// The labels to set, if any option asks to.
    fn labels(&self) -> Option<HashMap<String, String>> {
        if self.clear_labels {
            Some(HashMap::new())
        } else if self.labels.is_empty() {
            None
        } else {
            Some(self.labels.iter().cloned().collect())
        }
    }
}

pub(crate) async fn run(ctx: &Ctx, args: UpdateArgs) -> anyhow::Result<()> {
    let json = ctx.json;
    let dial = &ctx.dial;
    let mut client = dial.client(false).await?;
    let what = format!("cannot update '{}'", args.name);
    let req = proto::GetListenerRequest {
        name: args.name.clone(),
    };
    let cur = reply_listener(&what, client.get_listener(req).await, |r| r.listener)?;
    let mut spec = cur.spec.unwrap_or_default();
    args.patch(&mut spec)
        .map_err(|e| render::usage(anyhow!("{what}: {e}")))?;
    let labels = args.labels();
    let req = proto::UpdateListenerRequest {
        name: args.name.clone(),
        spec: Some(spec),
        set_labels: labels.is_some(),
        labels: labels.unwrap_or_default(),
    };
    let r = client
        .update_listener(req)
        .await
        .map_err(|s| status_line(&what, &s))?
        .into_inner();
    let how = match r.action() {
        proto::UpdateAction::Unchanged => "unchanged",
        proto::UpdateAction::InPlace => "in_place",
        proto::UpdateAction::Replaced => "replaced",
        proto::UpdateAction::Unspecified => "unspecified",
    };
    let unchanged = r.action() == proto::UpdateAction::Unchanged;
    let l = r.listener.unwrap_or_default();
    if json {
        print_json(&serde_json::json!({
            "action": how,
            "changed": r.changed,
            "listener": output::listener_json(&l),
        }));
    } else if unchanged {
        outln!("{}: unchanged", escape::escape(&l.name));
    } else {
        outln!(
            "updated {} ({}): {} on {}",
            escape::escape(&l.name),
            how.replace('_', " "),
            escape::escape(&r.changed),
            escape::escape(&l.bound_addr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    /// Keys no flag sets, and why.
    const NO_FLAG: &[(&str, &str)] = &[("faults", "set by `netctl fault add|update|rm`")];

    /// An empty spec of kind `slug`.
    fn spec_of(slug: &str) -> proto::ListenerSpec {
        let kind = netd::services::kind_by_slug(slug)
            .unwrap_or_else(|| panic!("start {slug}: not a kind"));
        let arm =
            netd::services::read_config(kind.kind, &toml::Table::new(), &ReadOptions::default())
                .expect("an empty form reads");
        proto::ListenerSpec { kind: Some(arm) }
    }

    /// A value `--long` accepts, by its value name.
    fn sample(long: &str, value_name: &str) -> String {
        match (long, value_name) {
            ("token-file", _) => concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").into(),
            (_, "N") => "7".into(),
            (_, "DUR") => "3s".into(),
            (_, "BYTES") => "4096".into(),
            (_, "BITS") => "48".into(),
            (_, "ADDR") => "127.0.0.1:9".into(),
            (_, "KEY=VALUE") => "k=v".into(),
            (_, "BOOL") => "true".into(),
            (_, "RATE") => "5/s".into(),
            (_, "EXPR") => "tcp".into(),
            (_, "IF") => "lo".into(),
            _ => "x".into(),
        }
    }

    /// Every key of every kind has a `start KIND` flag and an `update`
    /// flag (through the commands clap builds), but the few no flag sets.
    #[test]
    fn every_key_of_every_kind_has_a_start_and_an_update_flag() {
        let mut cli = crate::Cli::command();
        cli.build();
        let start = cli.find_subcommand("start").expect("start");
        let update = cli.find_subcommand("update").expect("update");
        let longs = |c: &Command| -> Vec<String> {
            c.get_arguments()
                .filter_map(|a| a.get_long().map(String::from))
                .collect()
        };
        let update_longs = longs(update);
        let mut keys = 0;
        for kind in KINDS {
            let sub = start
                .find_subcommand(kind.slug)
                .unwrap_or_else(|| panic!("no `netctl start {}`", kind.slug));
            let start_longs = longs(sub);
            for k in kind.keys {
                keys += 1;
                let Some(flag) = k.flag else {
                    assert!(
                        NO_FLAG.iter().any(|(key, _)| *key == k.key),
                        "{} key {} has no flag",
                        kind.slug,
                        k.key
                    );
                    continue;
                };
                assert!(
                    start_longs.iter().any(|l| l == flag),
                    "`netctl start {} --{flag}` is missing ({})",
                    kind.slug,
                    k.key
                );
                assert!(
                    k.update && update_longs.iter().any(|l| l == flag),
                    "`netctl update --{flag}` is missing ({} {})",
                    kind.slug,
                    k.key
                );
            }
        }
        assert!(keys >= 40, "{keys} keys");
    }

    /// Every option `netctl start KIND` has, `netctl update` accepts for a
    /// listener of that kind and writes into its spec (the README promises
    /// "any option start takes").
    #[test]
    fn update_takes_every_start_option() {
        let cli = crate::Cli::command();
        let start = cli.find_subcommand("start").expect("start");
        let mut kinds = 0;
        for kind in start.get_subcommands() {
            kinds += 1;
            let slug = kind.get_name();
            for arg in kind.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if long == "ephemeral" {
                    // Whether netd keeps a listener is decided at start.
                    continue;
                }
                let mut argv = vec!["netctl".to_string(), "update".into(), "x".into()];
                argv.push(format!("--{long}"));
                if arg.get_action().takes_values() {
                    let name = arg
                        .get_value_names()
                        .and_then(|v| v.first())
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    argv.push(sample(long, &name));
                }
                let parsed =
                    crate::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
                let crate::Command::Update(args) = parsed.command else {
                    panic!("{argv:?} is not an update")
                };
                let mut spec = spec_of(slug);
                args.patch(&mut spec)
                    .unwrap_or_else(|e| panic!("update of a {slug} with --{long}: {e}"));
                if long == "label" {
                    assert!(args.labels().is_some(), "--label sets no labels");
                } else {
                    assert_ne!(
                        spec,
                        spec_of(slug),
                        "update of a {slug} with {argv:?} left the spec unchanged"
                    );
                }
            }
        }
        assert!(kinds >= 6, "start has {kinds} kinds");
    }

    /// Options of update that the listener's kind lacks are errors, not
    /// silently ignored.
    #[test]
    fn an_option_of_another_kind_is_refused() {
        let parsed =
            crate::Cli::try_parse_from(["netctl", "update", "x", "--interface", "lo"]).unwrap();
        let crate::Command::Update(args) = parsed.command else {
            panic!("not an update")
        };
        let mut spec = spec_of("tcp-echo");
        let e = args.patch(&mut spec).unwrap_err();
        assert!(
            e.to_string()
                .contains("--interface does not apply to a tcp-echo"),
            "{e}"
        );
    }

    /// Without options, the spec goes back as it came (its flat form
    /// read back is the spec itself).
    #[test]
    fn no_option_leaves_the_spec_as_it_is() {
        let parsed = crate::Cli::try_parse_from(["netctl", "update", "x"]).unwrap();
        let crate::Command::Update(args) = parsed.command else {
            panic!("not an update")
        };
        let mut spec = proto::ListenerSpec {
            kind: Some(proto::listener_spec::Kind::Proxy(proto::ProxySpec {
                listen: "127.0.0.1:1".into(),
                upstreams: vec!["127.0.0.1:2".into(), "127.0.0.1:3".into()],
                idle_timeout: Some(prost_types::Duration {
                    seconds: 90,
                    nanos: 5,
                }),
                access_log: Some(false),
                ..Default::default()
            })),
        };
        let before = spec.clone();
        args.patch(&mut spec).unwrap();
        assert_eq!(spec, before);
    }
}
