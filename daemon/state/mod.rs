//! The persisted runtime state: what the control plane changed relative to
//! the config file, kept in `state_dir` so that a restart brings it back.
//!
//! The rule (also in docs/runtime-state.md): the config file's
//! listeners are the base; the state records the difference the control
//! plane made to it (the *overlay*) — listeners started or changed through
//! netctl (with their full spec) and config listeners stopped through
//! netctl (by name). At start and on reload netd runs the base with that
//! difference on top. A change records the overlay's new value for the
//! names it touched; a change of the base (reload, apply) recomputes the
//! whole difference from the running set, so `netctl apply --prune -f
//! CONFIG` empties it. Ephemeral listeners (`netctl start --ephemeral`)
//! and draining ones are not part of the running set for this purpose.
//!
//! Two files hold it (mode 0600: they hold HTTP tokens): the snapshot
//! `state_dir/listeners.state`, a `StateFile` protobuf behind a magic line
//! and a checksum, written atomically (a temporary file in the same
//! directory, fsync, rename over the old one, fsync of the directory); and
//! the journal `listeners.journal` of changes since ([`journal`], records
//! in [`record`]). A snapshot that cannot be read or decoded is renamed
//! aside with a timestamp (the journal with it) and reported, never
//! silently dropped; start continues with the config alone. All file work
//! here is blocking: callers run it on the blocking pool.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the overlay, the snapshot, the directory, loading |
//! | `journal.rs` | appending changes, compaction, replay |
//! | `record.rs` | one change as a checksummed record |

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use prost::Message as _;

use crate::proto;
use crate::spec::BootListener;
use crate::sys::safe_file::Dir;

mod journal;
mod record;

pub use journal::{JOURNAL_NAME, Replayed, change_of};
pub use record::Change;

/// The state file's name in `state_dir`.
pub const FILE_NAME: &str = "listeners.state";
const TMP_NAME: &str = "listeners.state.tmp";
/// First bytes of a state file.
const MAGIC: &[u8] = b"netd-state v1\n";
/// Largest state file read (1024 listeners at a few KiB each fit easily).
const MAX_BYTES: u64 = 64 << 20;
/// Mode of the state file: it holds secrets (HTTP tokens).
const FILE_MODE: u32 = 0o600;

/// Replaces the built-in default of [`default_state_dir`] (an absolute
/// path): for tests, which must not touch the machine's /var/lib/netd.
pub const TEST_DEFAULT_STATE_DIR_ENV: &str = "NETD_TEST_DEFAULT_STATE_DIR";

/// `state_dir` when neither the config nor `--state-dir` sets one:
/// `/var/lib/netd` for root (the unit's StateDirectory), else
/// `$XDG_STATE_HOME/netd` or `$HOME/.local/state/netd`; None if neither
/// variable is set (then nothing is persisted, and netd says so).
/// `NETD_TEST_DEFAULT_STATE_DIR` replaces it (tests). The embedded default
/// config uses none of it (see `Config::fallback_state_dir`).
pub fn default_state_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(TEST_DEFAULT_STATE_DIR_ENV)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return Some(dir);
    }
    netd_state_home()
}

/// Where netd keeps what it writes when nothing says where: `/var/lib/netd`
/// for root, else `$XDG_STATE_HOME/netd` or `$HOME/.local/state/netd`
/// (absolute values only); None if neither variable is set.
pub fn netd_state_home() -> Option<PathBuf> {
    if crate::sys::euid() == 0 {
        return Some(PathBuf::from("/var/lib/netd"));
    }
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let state =
        absolute("XDG_STATE_HOME").or_else(|| absolute("HOME").map(|h| h.join(".local/state")))?;
    Some(state.join("netd"))
}

/// One listener as the state and the diff see it: name, spec (secrets
/// included), labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub name: String,
    pub spec: proto::ListenerSpec,
    pub labels: HashMap<String, String>,
}

impl Desired {
    pub fn to_entry(&self) -> proto::ListenerEntry {
        proto::ListenerEntry {
            name: self.name.clone(),
            spec: Some(self.spec.clone()),
            labels: self.labels.clone(),
        }
    }
}

impl From<&BootListener> for Desired {
    fn from(b: &BootListener) -> Self {
        Desired {
            name: b.name.clone(),
            spec: b.spec.clone(),
            labels: b.labels.clone(),
        }
    }
}

/// The difference between the running set and the config's listeners.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overlay {
    /// Created or changed through the control plane (full entries).
    pub listeners: Vec<Desired>,
    /// Config listeners stopped through the control plane.
    pub removed: Vec<String>,
}

impl Overlay {
    /// What differs between `running` and `base`.
    pub fn between(base: &[Desired], running: &[Desired]) -> Overlay {
        let base_by: BTreeMap<&str, &Desired> = base.iter().map(|d| (d.name.as_str(), d)).collect();
        let running_names: std::collections::HashSet<&str> =
            running.iter().map(|d| d.name.as_str()).collect();
        let mut listeners: Vec<Desired> = running
            .iter()
            .filter(|r| base_by.get(r.name.as_str()) != Some(r))
            .cloned()
            .collect();
        listeners.sort_by(|a, b| a.name.cmp(&b.name));
        let removed = base_by
            .keys()
            .filter(|n| !running_names.contains(*n))
            .map(|n| n.to_string())
            .collect();
        Overlay { listeners, removed }
    }

    /// `base` with this difference on top: what should run.
    pub fn on(&self, base: &[Desired]) -> Vec<Desired> {
        let mut out: BTreeMap<String, Desired> = base
            .iter()
            .filter(|d| !self.removed.contains(&d.name))
            .map(|d| (d.name.clone(), d.clone()))
            .collect();
        for d in &self.listeners {
            out.insert(d.name.clone(), d.clone());
        }
        out.into_values().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.removed.is_empty()
    }

    /// The snapshot's bytes: magic line, checksum, payload (the
    /// `StateFile`, then [`SnapshotMeta`] with `generation`).
    fn encode(&self, generation: u64) -> Vec<u8> {
        let msg = proto::StateFile {
            version: 1,
            listeners: self.listeners.iter().map(Desired::to_entry).collect(),
            removed: self.removed.clone(),
        };
        let mut payload = msg.encode_to_vec();
        payload.extend_from_slice(&SnapshotMeta { generation }.encode_to_vec());
        let mut out = Vec::with_capacity(MAGIC.len() + 8 + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&fnv1a(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// The overlay and generation (0 if the file has none) of a snapshot.
    fn decode(bytes: &[u8]) -> Result<(Overlay, u64), String> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or("it does not start with netd's state header")?;
        if rest.len() < 8 {
            return Err("it is cut short".into());
        }
        let (sum, payload) = rest.split_at(8);
        let sum = u64::from_le_bytes(sum.try_into().expect("8 bytes"));
        if fnv1a(payload) != sum {
            return Err("its checksum does not match (the file is damaged)".into());
        }
        let msg =
            proto::StateFile::decode(payload).map_err(|e| format!("cannot decode it: {e}"))?;
        let meta = SnapshotMeta::decode(payload).map_err(|e| format!("cannot decode it: {e}"))?;
        if msg.version != 1 {
            return Err(format!(
                "it has layout version {}; this netd reads version 1",
                msg.version
            ));
        }
        let mut listeners = Vec::with_capacity(msg.listeners.len());
        for e in msg.listeners {
            let Some(spec) = e.spec else {
                return Err(format!("listener '{}' has no spec", e.name));
            };
            listeners.push(Desired {
                name: e.name,
                spec,
                labels: e.labels,
            });
        }
        Ok((
            Overlay {
                listeners,
                removed: msg.removed,
            },
            meta.generation,
        ))
    }
}

/// The part of a snapshot's payload the public `StateFile` message does
/// not declare: read from the same bytes, which protobuf allows (each
/// message skips the other's fields).
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotMeta {
    /// One more at each rewrite; the journal names the generation it
    /// follows.
    #[prost(uint64, tag = "1000")]
    generation: u64,
}

/// FNV-1a, 64 bits: catches a damaged file (not an attacker, who could
/// write the file anyway).
pub(crate) fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What loading found.
#[derive(Debug)]
pub struct Loaded {
    pub overlay: Overlay,
    /// Set when the state file was unreadable or damaged: why, and where
    /// it was moved (None if moving it failed too).
    pub problem: Option<(String, Option<PathBuf>)>,
    /// What the journal added, and why part of it was left out if it was
    /// (logged here already).
    pub journal: Replayed,
}

/// The state directory and the files in it.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    /// Opened (and created, mode 0750) at once when the directory was
    /// configured, else at the first save: a netd that never changes
    /// anything leaves no trace.
    dir: std::sync::OnceLock<Dir>,
    /// The overlay as the files hold it and the open journal; held while
    /// a write runs (on the blocking pool), so that writes never
    /// interleave and the newest is written last.
    writer: parking_lot::Mutex<journal::Writer>,
    /// Names changed since the last write.
    pending: parking_lot::Mutex<journal::Pending>,
    /// Set when the files may have been written by another process (see
    /// [`Store::resync`]).
    stale: std::sync::atomic::AtomicBool,
}

impl Store {
    /// The state directory at `path` (absolute). With `create`, it is
    /// created and opened now, so that an unusable directory is an error
    /// at start; else when first needed.
    pub fn open(path: &Path, create: bool) -> std::io::Result<Store> {
        if !path.is_absolute() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the state directory must be an absolute path",
            ));
        }
        let store = Store {
            path: path.to_path_buf(),
            dir: std::sync::OnceLock::new(),
            writer: parking_lot::Mutex::new(journal::Writer::default()),
            pending: parking_lot::Mutex::new(journal::Pending::default()),
            stale: std::sync::atomic::AtomicBool::new(false),
        };
        if create {
            store.opened()?;
        }
        Ok(store)
    }

    fn opened(&self) -> std::io::Result<&Dir> {
        if let Some(d) = self.dir.get() {
            return Ok(d);
        }
        let d = Dir::open_or_create(&self.path)?;
        check_dir_is_private(&d)?;
        Ok(self.dir.get_or_init(|| d))
    }

    /// The snapshot, `listeners.state`.
    pub fn path(&self) -> PathBuf {
        self.path.join(FILE_NAME)
    }

    /// The journal, `listeners.journal`.
    pub fn journal_path(&self) -> PathBuf {
        self.path.join(JOURNAL_NAME)
    }

    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Read the snapshot and replay the journal on it. Missing: an empty
    /// overlay. A snapshot unreadable or damaged: moved aside as
    /// `listeners.state.corrupt-<unix seconds>` (the journal, which
    /// follows it, too), reported in `problem`, and an empty overlay. A
    /// journal damaged in part or whole: what is whole is applied, the rest
    /// is logged and left out.
    pub fn load(&self) -> Loaded {
        let nothing = |problem| Loaded {
            overlay: Overlay::default(),
            problem,
            journal: Replayed::default(),
        };
        if self.dir.get().is_none() && !self.path.exists() {
            return nothing(None);
        }
        let dir = match self.opened() {
            Ok(d) => d,
            Err(e) => return nothing(Some((format!("cannot use its directory: {e}"), None))),
        };
        let read = dir
            .read_ours(FILE_NAME, MAX_BYTES)
            .map_err(|e| format!("cannot read it: {e}"))
            .and_then(|b| match b {
                None => Ok((Overlay::default(), 0)),
                Some(bytes) => Overlay::decode(&bytes),
            });
        match read {
            Ok((overlay, generation)) => {
                let (overlay, journal) = self.replay(dir, generation, overlay);
                if let Some(why) = &journal.warning {
                    tracing::warn!(path = %self.journal_path().display(), "the state journal {why}");
                }
                if journal.records > 0 {
                    tracing::info!(path = %self.journal_path().display(), records = journal.records, "replayed the state journal");
                }
                Loaded {
                    overlay,
                    problem: None,
                    journal,
                }
            }
            Err(why) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = format!("{FILE_NAME}.corrupt-{secs}");
                let moved = match dir.rename_ours(FILE_NAME, &aside) {
                    Ok(None) => {
                        let _ = dir.sync();
                        Some(dir.path().join(&aside))
                    }
                    _ => None,
                };
                // Its changes are relative to the snapshot just lost.
                if std::fs::symlink_metadata(self.journal_path()).is_ok() {
                    let journal = self.move_aside(dir, JOURNAL_NAME);
                    tracing::warn!(path = %self.journal_path().display(), "the state journal follows the unusable state file and is left out{journal}");
                }
                nothing(Some((why, moved)))
            }
        }
    }

    /// Replace both files with the overlay `current` returns, computed once
    /// no other write is running (so the newest overlay is written last).
    pub fn save_with(&self, current: impl FnOnce() -> Overlay) -> std::io::Result<()> {
        self.note_all();
        self.write_noted(current, |_| Change::Clear)
    }

    /// Replace both files with `overlay`, atomically and durably.
    pub fn save(&self, overlay: &Overlay) -> std::io::Result<()> {
        self.save_with(|| overlay.clone())
    }

    /// Replace the snapshot with `bytes`.
    fn replace(&self, dir: &Dir, bytes: &[u8]) -> std::io::Result<()> {
        self.write_atomically(dir, TMP_NAME, FILE_NAME, bytes)
    }

    /// Replace `name` with `bytes` through `tmp`, atomically and durably
    /// (mode 0600). An error names the step that failed; the temporary
    /// file is removed then (a full disk gets its space back).
    fn write_atomically(
        &self,
        dir: &Dir,
        tmp: &str,
        name: &str,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let written = dir
            .create_file(tmp)
            .map_err(|e| step(e, &format!("creating {tmp}")))
            .and_then(|mut f| {
                f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
                    .and_then(|()| f.write_all(bytes))
                    .and_then(|()| f.sync_all())
                    .map_err(|e| step(e, &format!("writing {tmp}")))
            });
        if let Err(e) = written {
            let _ = dir.remove_ours(tmp);
            return Err(e);
        }
        let renamed = dir
            .rename_ours(tmp, name)
            .map_err(|e| step(e, &format!("renaming {tmp} to {name}")))?;
        if let Some(s) = renamed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is {}; refusing to replace it",
                    dir.path().join(&s.name).display(),
                    s.what
                ),
            ));
        }
        dir.sync()
            .map_err(|e| step(e, "syncing the state directory"))
    }
}

/// `e` with the step that failed in front ("writing x: No space left on
/// device").
pub(crate) fn step(e: std::io::Error, what: &str) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Check who could change the state directory, as sshd checks a home
/// directory (StrictModes): the state file holds the listeners netd starts
/// (as root, at boot) and HTTP tokens.
///
/// - Owned by a user other than netd's or root: refused (its owner could
///   swap entries in it at will).
/// - Writable by group or others: a warning. The files in it are checked
///   one by one (netd reads and replaces only regular files it owns, never
///   through a link), so another writer cannot plant a state file, but it
///   can delete or rename netd's, losing the runtime changes.
fn check_dir_is_private(dir: &Dir) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = dir.metadata()?;
    let euid = crate::sys::euid();
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "it is owned by uid {}, not by netd (uid {euid}) or root; refusing to use it \
                 (chown it to netd's user)",
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        tracing::warn!(
            dir = %dir.path().display(),
            mode = %format!("{mode:04o}"),
            "the state directory is writable by {}: they can delete or move the state file \
             (runtime changes would be lost at the next restart); make it writable by netd's \
             user alone (chmod go-w)",
            if mode & 0o002 != 0 { "other users" } else { "its group" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::listener_spec::Kind;

    fn echo(name: &str, listen: &str) -> Desired {
        Desired {
            name: name.into(),
            spec: proto::ListenerSpec {
                kind: Some(Kind::TcpEcho(proto::TcpEchoSpec {
                    listen: listen.into(),
                    ..Default::default()
                })),
            },
            labels: HashMap::new(),
        }
    }

    #[test]
    fn overlay_is_the_difference_and_puts_it_back() {
        let base = vec![echo("a", "127.0.0.1:1"), echo("b", "127.0.0.1:2")];
        let running = vec![echo("b", "127.0.0.1:3"), echo("c", "127.0.0.1:4")];
        let o = Overlay::between(&base, &running);
        assert_eq!(o.removed, vec!["a".to_string()]);
        assert_eq!(
            o.listeners
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert_eq!(o.on(&base), running);
        assert!(Overlay::between(&base, &base).is_empty());
    }

    #[test]
    fn save_load_round_trip_and_damage_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        assert!(store.load().overlay.is_empty());
        let o = Overlay {
            listeners: vec![echo("x", "127.0.0.1:5")],
            removed: vec!["gone".into()],
        };
        store.save(&o).unwrap();
        let loaded = store.load();
        assert!(loaded.problem.is_none());
        assert_eq!(loaded.overlay, o);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // One flipped byte in the payload.
        let mut bytes = std::fs::read(store.path()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        std::fs::write(store.path(), &bytes).unwrap();
        let loaded = store.load();
        let (why, moved) = loaded.problem.expect("damage reported");
        assert!(why.contains("checksum"), "{why}");
        let moved = moved.expect("moved aside");
        assert!(moved.exists() && !store.path().exists());
        assert!(loaded.overlay.is_empty());
    }

    #[test]
    fn a_symlink_in_place_of_the_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"secret").unwrap();
        std::os::unix::fs::symlink(&target, store.path()).unwrap();
        let loaded = store.load();
        assert!(loaded.problem.is_some());
        assert_eq!(std::fs::read(&target).unwrap(), b"secret");
    }
}
