//! `netctl reload`: have netd re-read its config file and wait until the
//! change is applied (the systemd unit's ExecReload=).

use anyhow::anyhow;
use netd::proto;

use super::*;
use crate::cmd::apply::plan_action;
use crate::dial::status_line;
use crate::output;
use crate::render::{self, outln};

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let mut client = ctx.dial.client(false).await?;
    let r = client
        .reload(proto::ReloadRequest {})
        .await
        .map_err(|s| status_line("reload failed", &s))?
        .into_inner();
    if ctx.json {
        let items: Vec<_> = r
            .plan
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name,
                    "action": plan_action(i.action()),
                    "kind": i.kind().slug(),
                    "detail": i.detail,
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "config": r.config,
            "summary": r.summary,
            "restart_needed": r.restart_needed,
            "plan": items,
            "tls_reloaded": r.tls_reloaded,
            "tls_refused": r.tls_refused,
        }));
        return tls_refused(&r);
    }
    // What changed first; unchanged listeners only as a count (summary).
    let rows: Vec<Vec<String>> = r
        .plan
        .iter()
        .filter(|i| i.action() != proto::PlanAction::Unchanged)
        .map(|i| {
            vec![
                plan_action(i.action()).to_string(),
                i.name.clone(),
                i.kind().slug().to_string(),
                i.detail.clone(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        output::table(&["ACTION", "NAME", "KIND", "DETAIL"], &rows);
    }
    outln!("reloaded {}: {}", r.config, r.summary);
    if !r.restart_needed.is_empty() {
        outln!(
            "changed but applied only at the next restart: {}",
            r.restart_needed.join(", ")
        );
    }
    if r.tls_reloaded > 0 {
        outln!("TLS certificates re-read: {}", r.tls_reloaded);
    }
    if r.plan.iter().any(|i| !i.error.is_empty()) {
        // netd answers an incomplete reload with an error; never here.
        return Err(render::refused(anyhow!("reload incomplete")));
    }
    tls_refused(&r)
}

/// A refused certificate fails the command (systemctl reload too): the
/// config is applied, but a listener still serves its old certificate.
fn tls_refused(r: &proto::ReloadResponse) -> anyhow::Result<()> {
    if r.tls_refused.is_empty() {
        return Ok(());
    }
    Err(render::refused(anyhow!(
        "TLS certificate refused, the old one keeps serving: {}",
        r.tls_refused.join("; ")
    )))
}
