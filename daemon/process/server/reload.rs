//! Reloading the config: SIGHUP and the `Reload` RPC.

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::proto;
use crate::supervisor::Supervisor;

/// How long a reload waits for the config file (and the token and TLS
/// files it names) to be read.
const RELOAD_READ_DEADLINE: Duration = Duration::from_secs(10);

/// Re-read the config file and apply the difference: SIGHUP and the
/// `Reload` RPC (`netctl reload`, the unit's ExecReload=) both come here.
/// Then every served TLS certificate is read again
/// ([`crate::net::tls::reload_all`]), whatever became of the config; one
/// that is refused keeps the old one serving and is reported in the answer
/// (or the error) and as a RELOAD_FAILED event of its listener. A config
/// with errors changes nothing; either way the outcome is logged,
/// sent on the event stream and returned (the RPC's answer), and systemd
/// hears RELOADING=1 then READY=1.
pub(super) async fn reload(
    supervisor: &Supervisor,
    running: &Config,
    path: Option<&Path>,
) -> Result<proto::ReloadResponse, String> {
    use crate::proto::{EventKind, ListenerKind, PlanAction};
    crate::process::notify::reloading();
    let outcome: Result<proto::ReloadResponse, String> = async {
        let Some(path) = path else {
            return Err("netd runs the embedded default config; there is no file to re-read".to_string());
        };
        let p = path.to_path_buf();
        // Off the runtime and bounded: a FIFO is refused at once, a hung
        // mount fails this reload (the next SIGHUP tries again).
        let config = crate::sys::safe_file::off_runtime("reading the config", RELOAD_READ_DEADLINE, move || {
            Ok(Config::load(&p))
        })
        .await
        .map_err(|e| format!("the config could not be read; keeping the running one: {e}"))?
            .map_err(|e| format!("the new config cannot be used; keeping the running one: {e}"))?;
        let mut restart_needed = Vec::new();
        for (what, changed) in [
            ("control", format!("{:?}", config.control.listen) != format!("{:?}", running.control.listen)),
            ("metrics", config.metrics_listen != running.metrics_listen),
            ("health", config.health_listen != running.health_listen),
            ("toxiproxy_api", config.toxiproxy_api_listen != running.toxiproxy_api_listen
                || config.toxiproxy_api_rules != running.toxiproxy_api_rules
                || config.toxiproxy_api_token != running.toxiproxy_api_token),
            ("log", config.log.level != running.log.level || config.log.format != running.log.format),
            ("max_listeners", config.max_listeners != running.max_listeners),
            ("capture_dir", config.capture_dir != running.capture_dir),
            ("shutdown_grace", config.shutdown_grace != running.shutdown_grace),
        ] {
            if changed {
                tracing::warn!(setting = what, "changed in the config; takes effect at the next restart (reload applies [[listener]] entries)");
                restart_needed.push(what.to_string());
            }
        }
        let base = config.listeners.iter().map(crate::state::Desired::from).collect();
        let (plan, applied) = supervisor.reload(base).await.map_err(|e| e.to_string())?;
        let count = |a: PlanAction| plan.iter().filter(|i| i.action() == a && i.error.is_empty()).count();
        let summary = format!(
            "{} created, {} updated, {} replaced, {} deleted, {} unchanged",
            count(PlanAction::Create),
            count(PlanAction::Update),
            count(PlanAction::Replace),
            count(PlanAction::Delete),
            count(PlanAction::Unchanged)
        );
        if applied {
            Ok(proto::ReloadResponse {
                plan,
                summary,
                restart_needed,
                config: path.display().to_string(),
                ..Default::default()
            })
        } else {
            let errors: Vec<String> = plan
                .iter()
                .filter(|i| !i.error.is_empty())
                .map(|i| format!("{}: {}", i.name, i.error))
                .collect();
            Err(format!("reload incomplete ({summary}); {}", errors.join("; ")))
        }
    }
    .await;
    // Certificates are read again whatever became of the config (after
    // its apply, so listeners it created serve what is read here too): a
    // config that cannot be used does not hold back a rotation, and a
    // certificate the config's check refused is counted and shown on its
    // listener.
    let (tls_reloaded, tls_refused) = crate::net::tls::reload_all().await;
    tls_refused_events(supervisor, &tls_refused);
    let outcome = with_tls(outcome, tls_reloaded, tls_refused);
    match &outcome {
        Ok(r) => {
            tracing::info!(summary = %r.summary, tls_reloaded = r.tls_reloaded, "config reloaded");
            supervisor.events().publish(
                EventKind::Reloaded,
                "",
                ListenerKind::Unspecified,
                r.summary.clone(),
            );
        }
        Err(why) => {
            tracing::error!(error = %why, "reload failed");
            supervisor.events().publish(
                EventKind::ReloadFailed,
                "",
                ListenerKind::Unspecified,
                why.clone(),
            );
        }
    }
    crate::process::notify::ready();
    outcome
}

/// The reload's outcome with what re-reading the certificates did: in the
/// answer, or appended to the error.
fn with_tls(
    outcome: Result<proto::ReloadResponse, String>,
    reloaded: usize,
    refused: Vec<String>,
) -> Result<proto::ReloadResponse, String> {
    match outcome {
        Ok(r) => Ok(proto::ReloadResponse {
            tls_reloaded: u32::try_from(reloaded).unwrap_or(u32::MAX),
            tls_refused: refused,
            ..r
        }),
        Err(why) if refused.is_empty() && reloaded == 0 => Err(why),
        Err(why) if refused.is_empty() => {
            Err(format!("{why}; TLS certificates re-read: {reloaded}"))
        }
        Err(why) => Err(format!("{why}; {TLS_REFUSED}: {}", refused.join("; "))),
    }
}

const TLS_REFUSED: &str = "TLS certificate refused, the old one keeps serving";

/// A RELOAD_FAILED event for each listener whose certificate was refused.
fn tls_refused_events(supervisor: &Supervisor, refused: &[String]) {
    use crate::proto::{EventKind, ListenerKind};
    if refused.is_empty() {
        return;
    }
    let listeners = supervisor.list();
    for line in refused {
        let (name, why) = line.split_once(": ").unwrap_or(("", line));
        let kind = listeners
            .iter()
            .find(|l| l.name == name)
            .map_or(ListenerKind::Unspecified, |l| l.kind());
        supervisor.events().publish(
            EventKind::ReloadFailed,
            name,
            kind,
            format!("{TLS_REFUSED}: {why}"),
        );
    }
}
