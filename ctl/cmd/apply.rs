//! `netctl apply -f FILE` and `netctl export`: the declarative pair.

use anyhow::{Context as _, anyhow};
use netd::proto;

use super::*;
use crate::dial::status_line;
use crate::output;
use crate::render::{self, out, outln};

/// The listeners of an apply file, as ListenerEntry messages.
pub(crate) fn read_apply_file(path: &std::path::Path) -> anyhow::Result<Vec<proto::ListenerEntry>> {
    let (text, source) = if path.as_os_str() == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .context("cannot read standard input")?;
        (t, "<stdin>".to_string())
    } else {
        let t = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        (t, path.display().to_string())
    };
    // Before any connection exists, so the blocking parse (an upstream
    // name may be resolved) holds up nothing else.
    let listeners = netd::config::parse_listeners(&text, &source).map_err(|e| anyhow!("{e}"))?;
    Ok(listeners
        .into_iter()
        .map(|l| proto::ListenerEntry {
            name: l.name,
            spec: Some(l.spec),
            labels: l.labels,
        })
        .collect())
}

pub(crate) fn plan_action(a: proto::PlanAction) -> &'static str {
    match a {
        proto::PlanAction::Unspecified => "unspecified",
        proto::PlanAction::Create => "create",
        proto::PlanAction::Update => "update",
        proto::PlanAction::Replace => "replace",
        proto::PlanAction::Delete => "delete",
        proto::PlanAction::Unchanged => "unchanged",
    }
}

pub(crate) async fn apply(
    ctx: &Ctx,
    file: std::path::PathBuf,
    dry_run: bool,
    prune: bool,
) -> anyhow::Result<()> {
    let json = ctx.json;
    let dial = &ctx.dial;
    let listeners = read_apply_file(&file).map_err(render::usage)?;
    let mut client = dial.client(false).await?;
    let r = client
        .apply_listeners(proto::ApplyListenersRequest {
            listeners,
            prune,
            dry_run,
        })
        .await
        .map_err(|s| status_line("cannot apply", &s))?
        .into_inner();
    let failed = r.plan.iter().find(|i| !i.error.is_empty()).cloned();
    if json {
        let items: Vec<_> = r
            .plan
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name,
                    "action": plan_action(i.action()),
                    "kind": i.kind().slug(),
                    "detail": i.detail,
                    "error": i.error,
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "dry_run": dry_run,
            "applied": r.applied,
            "plan": items,
        }));
    } else {
        let rows: Vec<Vec<String>> = r
            .plan
            .iter()
            .map(|i| {
                let mut detail = i.detail.clone();
                if !i.error.is_empty() {
                    detail = format!("FAILED: {}", i.error);
                }
                vec![
                    plan_action(i.action()).to_string(),
                    i.name.clone(),
                    i.kind().slug().to_string(),
                    detail,
                ]
            })
            .collect();
        output::table(&["ACTION", "NAME", "KIND", "DETAIL"], &rows);
        if dry_run {
            outln!("dry run: nothing changed");
        }
    }
    if let Some(f) = failed {
        return Err(render::refused(anyhow!(
            "apply stopped at '{}': {}",
            f.name,
            f.error
        )));
    }
    Ok(())
}

pub(crate) async fn export(ctx: &Ctx) -> anyhow::Result<()> {
    if ctx.json {
        // Its output is the file `apply -f` reads, which is TOML; JSON of
        // the same listeners would be a second format nothing reads.
        return Err(render::usage(anyhow!(
            "export prints the TOML file `netctl apply -f` reads, not JSON; for the listeners as JSON use `netctl -o json list`"
        )));
    }
    let dial = &ctx.dial;
    let mut client = dial.client(false).await?;
    let ls = netd::control::client::list_all(&mut client)
        .await
        .map_err(|s| status_line("cannot list listeners", &s))?;
    let entries: Vec<netd::config::export::ExportListener> = ls.iter().map(Into::into).collect();
    let text = netd::config::export::listeners_to_toml(&entries)
        .map_err(|e| render::refused(anyhow!("cannot export: {e}")))?;
    out!("{text}");
    Ok(())
}
