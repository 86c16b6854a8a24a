//! Booting the listeners: the state directory opened, the runtime state
//! restored on top of the config's listeners, and all of them started.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::config::Config;
use crate::supervisor::Supervisor;

/// Open the state directory, restore the runtime state on top of the
/// config's listeners and start them all. A config listener that cannot
/// start is fatal (as it always was); a listener restored from the state
/// that cannot bind now is kept FAILED and retried; one whose spec no
/// longer validates is reported and left out.
/// How long a start waits for the state directory to open and the state
/// file to be read (a hung mount fails the start instead of hanging it).
const BOOT_STATE_DEADLINE: Duration = Duration::from_secs(30);

pub(super) async fn boot_listeners(
    config: &Config,
    inherited: HashMap<String, OwnedFd>,
) -> anyhow::Result<Supervisor> {
    use crate::state::{Desired, Store};
    let base: Vec<Desired> = config.listeners.iter().map(Desired::from).collect();
    let explicit = config.state_dir.is_some();
    let store = match config
        .state_dir
        .clone()
        .or_else(|| config.fallback_state_dir())
    {
        None if !config.use_default_state_dir => {
            tracing::info!(
                "the embedded default config keeps no state: changes made with netctl last until netd stops (use --state-dir to keep them)"
            );
            None
        }
        None => {
            tracing::warn!(
                "no state_dir (set it in the config or with --state-dir): changes made with netctl will not survive a restart"
            );
            None
        }
        Some(dir) => {
            let d = dir.clone();
            let opened = crate::sys::safe_file::off_runtime(
                "opening the state directory",
                BOOT_STATE_DEADLINE,
                move || Store::open(&d, explicit),
            )
            .await;
            match opened {
                Ok(store) => Some(store),
                Err(e) if explicit => {
                    return Err(e).with_context(|| {
                        format!("cannot use the state directory {}", dir.display())
                    });
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot use the default state directory (set state_dir or --state-dir): changes made with netctl will not survive a restart");
                    None
                }
            }
        }
    };
    let (store, loaded) = match store {
        None => (None, None),
        Some(s) => {
            // A state file that cannot be read in time stops the start:
            // running without it would drop its changes at the next save.
            let (s, loaded) = crate::sys::safe_file::off_runtime(
                "reading the state file",
                BOOT_STATE_DEADLINE,
                move || {
                    let loaded = s.load();
                    Ok((s, loaded))
                },
            )
            .await
            .context("cannot read the state file")?;
            (Some(s), Some(loaded))
        }
    };
    let overlay = match (&store, loaded) {
        (Some(s), Some(loaded)) => {
            if let Some((why, moved)) = &loaded.problem {
                let aside = moved
                    .as_ref()
                    .map(|p| format!("it was moved aside to {}", p.display()))
                    .unwrap_or_else(|| "it could not be moved aside".into());
                tracing::error!(path = %s.path().display(), "the state file is unusable ({why}); {aside}; starting with the config's listeners only");
            } else if !loaded.overlay.is_empty() {
                tracing::info!(
                    path = %s.path().display(),
                    changed = loaded.overlay.listeners.len(),
                    removed = loaded.overlay.removed.len(),
                    "restoring runtime changes"
                );
            }
            loaded.overlay
        }
        _ => crate::state::Overlay::default(),
    };
    let desired = overlay.on(&base);
    let supervisor =
        Supervisor::with_store(config.settings(), config.max_listeners, store, base.clone());
    crate::sys::fdstore::note_stored(inherited.keys().map(String::as_str));
    supervisor.inherit(inherited);
    for d in &desired {
        match config.listeners.iter().find(|l| l.name == d.name) {
            Some(l) if base.iter().any(|b| b == d) => {
                if let Err(e) = supervisor.start_boot(d).await {
                    // Let connections the listeners started so far (on
                    // sockets a predecessor may still share) finish.
                    supervisor.shutdown(config.shutdown_grace).await;
                    bail!("{}: listener '{}': {e}", l.origin, l.name);
                }
            }
            _ => {
                if let Err(e) = supervisor.restore(d).await {
                    tracing::error!(listener = %d.name, error = %e, "cannot restore a listener from the state file; it is left out (and dropped from the state at the next change)");
                }
            }
        }
    }
    for (name, _) in supervisor.take_unused_inherited() {
        tracing::info!(name = %name, "a socket handed over matches no listener; closed");
        if supervisor
            .get(crate::sys::fdstore::split_member(&name).0)
            .is_err()
        {
            crate::sys::fdstore::remove(&name);
        }
    }
    Ok(supervisor)
}

/// Where runtime changes go, for the ready line: the state file, or why
/// there is none.
pub(super) fn state_summary(supervisor: &Supervisor, config: &Config) -> String {
    match supervisor.state_file() {
        Some(path) => path.display().to_string(),
        None if !config.use_default_state_dir => {
            "none (embedded default; use --state-dir to keep changes)".into()
        }
        None => "none (changes are not kept across restarts)".into(),
    }
}
