//! `netctl start KIND NAME ...`: one subcommand per kind, its flags
//! generated from the kind's key table ([`netd::spec::Key`]); the flags
//! given make the kind's flat form, which the kind reads into its spec
//! (`read_config`), as the config file's `[[listener]]` tables are read.
//! [`kind_arg`] and [`flag_value`] are shared with `netctl update`.

use std::collections::HashMap;

use clap::{Arg, ArgAction, ArgMatches, Command};
use netd::proto;
use netd::services::{KINDS, KindInfo};
use netd::spec::Key;
use netd::spec::form::{ReadOptions, Unit};

use super::*;
use crate::dial::reply_listener;
use crate::render::{self, outln};
use crate::{escape, output};

/// `netctl start KIND NAME [flags]`, parsed: the kind, and its flat form
/// as the flags give it.
#[derive(Debug)]
pub(crate) struct StartKind {
    kind: proto::ListenerKind,
    name: String,
    labels: Vec<(String, String)>,
    ephemeral: bool,
    table: toml::Table,
}

/// The flag of key `k` (which has one), with help `help`; `update` for
/// `netctl update`'s form (every flag optional, a switch may say false).
pub(crate) fn kind_arg(k: &Key, flag: &'static str, help: String, update: bool) -> Arg {
    // The flag is its own id (`upstream-connect-timeout`).
    let mut a = Arg::new(flag)
        .long(flag)
        .help(help)
        .value_name(k.unit.value_name());
    if let Some(c) = k.short {
        a = a.short(c);
    }
    if let Some(alias) = k.alias {
        a = a.alias(alias);
    }
    if !update && k.start_required {
        a = a.required(true);
    }
    let duration = |s: &str| humantime::parse_duration(s).map(|_| s.to_string());
    match k.unit {
        Unit::Count | Unit::Bits | Unit::Bytes32 => a
            .value_parser(clap::value_parser!(u32))
            .action(ArgAction::Set),
        Unit::Bytes => a
            .value_parser(clap::value_parser!(u64))
            .action(ArgAction::Set),
        Unit::Duration => a.value_parser(duration).action(ArgAction::Set),
        Unit::Bool => a
            .value_parser(clap::value_parser!(bool))
            .action(ArgAction::Set),
        Unit::Switch if update => a
            .value_parser(clap::value_parser!(bool))
            .num_args(0..=1)
            .default_missing_value("true")
            .action(ArgAction::Set),
        Unit::Switch => a.action(ArgAction::SetTrue),
        Unit::Addrs | Unit::Texts => a.action(ArgAction::Append),
        Unit::Addr if update => a.action(ArgAction::Append),
        Unit::Text
        | Unit::Addr
        | Unit::Rate
        | Unit::Expr
        | Unit::Interface
        | Unit::Path
        | Unit::File
        | Unit::Faults => a.action(ArgAction::Set),
    }
}

/// The value the command line gave the flag of `k`, as its flat form
/// holds it; None if not given. `slug` names the kind in errors.
pub(crate) fn flag_value(
    m: &ArgMatches,
    k: &Key,
    flag: &str,
    slug: &str,
) -> anyhow::Result<Option<toml::Value>> {
    let id = flag;
    if m.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
        return Ok(None);
    }
    let v = match k.unit {
        Unit::Count | Unit::Bits | Unit::Bytes32 => m
            .get_one::<u32>(id)
            .map(|n| toml::Value::Integer((*n).into())),
        Unit::Bytes => match m.get_one::<u64>(id) {
            Some(n) => Some(toml::Value::Integer(i64::try_from(*n).map_err(|_| {
                anyhow::anyhow!("--{flag} {n} is larger than netd takes")
            })?)),
            None => None,
        },
        Unit::Bool | Unit::Switch => m.get_one::<bool>(id).map(|b| toml::Value::Boolean(*b)),
        Unit::Addrs | Unit::Texts => m
            .get_many::<String>(id)
            .map(|v| toml::Value::Array(v.map(|s| toml::Value::String(s.clone())).collect())),
        Unit::Addr => match m.get_many::<String>(id).map(|v| v.collect::<Vec<_>>()) {
            Some(v) if v.len() > 1 => {
                return Err(anyhow::anyhow!("a {slug} has one --{flag}"));
            }
            Some(v) => v.first().map(|s| toml::Value::String((*s).clone())),
            None => None,
        },
        // A relative path is the caller's, not netd's (whose working
        // directory is /): made absolute here, where it was typed.
        Unit::File => match m.get_one::<String>(id) {
            Some(s) if !s.is_empty() && !s.starts_with('/') => {
                let abs =
                    std::path::absolute(s).map_err(|e| anyhow::anyhow!("--{flag} {s}: {e}"))?;
                Some(toml::Value::String(abs.to_string_lossy().into_owned()))
            }
            Some(s) => Some(toml::Value::String(s.clone())),
            None => None,
        },
        Unit::Text
        | Unit::Duration
        | Unit::Rate
        | Unit::Expr
        | Unit::Interface
        | Unit::Path
        | Unit::Faults => m
            .get_one::<String>(id)
            .map(|s| toml::Value::String(s.clone())),
    };
    Ok(v)
}

/// Set `key` in a flat form, dropping the key it stands in for.
pub(crate) fn set_key(t: &mut toml::Table, k: &Key, v: toml::Value) {
    if let Some(other) = k.replaces {
        t.remove(other);
    }
    t.insert(k.key.to_string(), v);
}

/// A one-paragraph help text as clap's derive shows a doc comment: without
/// its closing period.
pub(crate) fn summary(text: &str) -> String {
    text.strip_suffix('.').unwrap_or(text).to_string()
}

/// `netctl start KIND`'s subcommand for one kind.
fn kind_command(kind: &KindInfo) -> Command {
    let mut c = Command::new(kind.slug).about(summary(kind.about)).arg(
        Arg::new("name")
            .required(true)
            .value_name("NAME")
            .help("Unique listener name: 1-63 letters, digits, '-', '_', '.', starting with a letter or digit"),
    );
    for k in kind.keys {
        if let Some(flag) = k.flag {
            c = c.arg(kind_arg(k, flag, summary(k.help), false));
        }
    }
    c.arg(
        Arg::new("labels")
            .long("label")
            .value_name("KEY=VALUE")
            .help("Label to attach, key=value (repeatable)")
            .value_parser(parse_label)
            .action(ArgAction::Append),
    )
    .arg(
        Arg::new("ephemeral")
            .long("ephemeral")
            .help("Do not keep this listener in netd's state file: it is gone after netd restarts.")
            .action(ArgAction::SetTrue),
    )
}

impl clap::FromArgMatches for StartKind {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let missing = || {
            clap::Error::raw(
                clap::error::ErrorKind::MissingSubcommand,
                "a kind is required\n",
            )
        };
        let (slug, m) = m.subcommand().ok_or_else(missing)?;
        let kind = netd::services::kind_by_slug(slug).ok_or_else(missing)?;
        let mut table = toml::Table::new();
        for k in kind.keys {
            let Some(flag) = k.flag else { continue };
            let v = flag_value(m, k, flag, kind.slug).map_err(|e| {
                clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
            })?;
            if let Some(v) = v {
                set_key(&mut table, k, v);
            }
        }
        Ok(StartKind {
            kind: kind.kind,
            name: m.get_one::<String>("name").cloned().unwrap_or_default(),
            labels: m
                .get_many::<(String, String)>("labels")
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
            ephemeral: m.get_flag("ephemeral"),
            table,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Subcommand for StartKind {
    fn augment_subcommands(mut cmd: Command) -> Command {
        for kind in KINDS {
            cmd = cmd.subcommand(kind_command(kind));
        }
        cmd
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        netd::services::kind_by_slug(name).is_some()
    }
}

pub(crate) async fn run(ctx: &Ctx, start: StartKind) -> anyhow::Result<()> {
    let json = ctx.json;
    let dial = &ctx.dial;
    // A literal token is sent as given, as it always was.
    let opts = ReadOptions { placeholders: true };
    let kind = netd::services::read_config(start.kind, &start.table, &opts)
        .map_err(|e| render::usage(anyhow::anyhow!("{e}")))?;
    let common = start;
    let mut client = dial.client(false).await?;
    let req = proto::StartListenerRequest {
        name: common.name.clone(),
        spec: Some(proto::ListenerSpec { kind: Some(kind) }),
        labels: common.labels.into_iter().collect::<HashMap<_, _>>(),
        ephemeral: common.ephemeral,
    };
    let what = format!("cannot start '{}'", common.name);
    let l = reply_listener(&what, client.start_listener(req).await, |r| r.listener)?;
    if json {
        print_json(&output::listener_json(&l));
    } else {
        outln!(
            "started {} ({}) on {}",
            escape::escape(&l.name),
            l.kind().slug(),
            escape::escape(&l.bound_addr)
        );
    }
    Ok(())
}
