//! The journal beside the state file: each change to the overlay appended
//! as one record and made durable (fdatasync) before the call that made it
//! returns, so a change costs one small write whatever the number of
//! listeners. The state file (the *snapshot*) is rewritten from the overlay
//! held in memory when the journal outgrows it, and at a clean shutdown;
//! the journal then starts anew.
//!
//! Files in `state_dir`:
//!
//! - `listeners.state`: the snapshot (see [`super::Overlay`]'s encoding),
//!   which records its *generation*, a number one higher at each rewrite;
//! - `listeners.journal`: a header (magic line, the generation of the
//!   snapshot it follows, a checksum of that number), then records
//!   ([`super::record`]).
//!
//! A rewrite goes snapshot first (temporary file, fsync, rename, fsync of
//! the directory), then a new journal the same way. A crash between the
//! two leaves a journal of the previous generation: its changes are all in
//! the new snapshot, so replay skips it. Replay applies only a journal of
//! the snapshot's own generation, record by record in sequence, up to the
//! first that is cut short or damaged (a crash in the middle of an append):
//! that tail is reported and left out, never a reason not to start.
//!
//! After a failed append the journal may end in a partial record, after
//! which later records would never be read; so the next change rewrites
//! both files from the running set instead of appending. The first change
//! after start does the same (it drops what could not be restored, and a
//! damaged tail with it).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write as _;

use super::record::{Change, Record, read_frames};
use super::{Desired, Overlay, Store, fnv1a, step};
use crate::sys::safe_file::Dir;

/// The journal's name in `state_dir`.
pub const JOURNAL_NAME: &str = "listeners.journal";
const JOURNAL_TMP: &str = "listeners.journal.tmp";
const MAGIC: &[u8] = b"netd-journal v1\n";
/// Magic, generation, checksum of the generation.
const HEADER_LEN: usize = MAGIC.len() + 16;
/// The journal is compacted into the snapshot once it is larger than the
/// snapshot and than this: replay reads at most about twice the snapshot.
const MIN_COMPACT_BYTES: u64 = 256 << 10;
/// Largest journal read at start.
const MAX_JOURNAL_BYTES: u64 = 128 << 20;

/// The overlay as the files hold it, and the open journal.
#[derive(Debug, Default)]
pub(super) struct Writer {
    /// Every name the overlay holds something for (never [`Change::Clear`]).
    tracked: BTreeMap<String, Change>,
    /// The snapshot's generation; the journal's header names it.
    generation: u64,
    /// The journal this process appends to, once it has written one.
    journal: Option<File>,
    next_seq: u64,
    journal_bytes: u64,
    snapshot_bytes: u64,
    /// Whether `tracked` is what the running set implies and the files
    /// hold: false at start and after a failed write, when the next write
    /// rewrites everything from the running set.
    synced: bool,
}

/// Names changed since the last write, noted by the callers that changed
/// them (under a lock of its own, never held across file work).
#[derive(Debug, Default)]
pub(super) struct Pending {
    names: HashSet<String>,
    /// Something changed that is not one name (the base, many at once).
    all: bool,
}

impl Writer {
    fn overlay(&self) -> Overlay {
        let mut o = Overlay::default();
        for (name, c) in &self.tracked {
            match c {
                Change::Put(d) => o.listeners.push((**d).clone()),
                Change::Removed => o.removed.push(name.clone()),
                Change::Clear => {}
            }
        }
        o
    }

    fn set(&mut self, name: String, change: Change) {
        match change {
            Change::Clear => {
                self.tracked.remove(&name);
            }
            c => {
                self.tracked.insert(name, c);
            }
        }
    }

    fn track_all(&mut self, overlay: Overlay) {
        self.tracked.clear();
        for d in overlay.listeners {
            self.tracked
                .insert(d.name.clone(), Change::Put(Box::new(d)));
        }
        for n in overlay.removed {
            self.tracked.insert(n, Change::Removed);
        }
    }
}

fn header(generation: u64) -> Vec<u8> {
    let g = generation.to_le_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&g);
    out.extend_from_slice(&fnv1a(&g).to_le_bytes());
    out
}

fn read_header(bytes: &[u8]) -> Option<u64> {
    let rest = bytes.strip_prefix(MAGIC)?;
    if rest.len() < 16 {
        return None;
    }
    let g: [u8; 8] = rest[..8].try_into().ok()?;
    let sum: [u8; 8] = rest[8..16].try_into().ok()?;
    (fnv1a(&g) == u64::from_le_bytes(sum)).then_some(u64::from_le_bytes(g))
}

/// The highest generation the files in `dir` name (the snapshot's, the
/// journal header's); 0 for files missing or unreadable. Blocking.
fn generation_on_disk(dir: &Dir) -> u64 {
    let journal = dir
        .read_ours(JOURNAL_NAME, MAX_JOURNAL_BYTES)
        .ok()
        .flatten()
        .and_then(|b| read_header(&b));
    let snapshot = dir
        .read_ours(super::FILE_NAME, super::MAX_BYTES)
        .ok()
        .flatten()
        .and_then(|b| Overlay::decode(&b).ok())
        .map(|(_, g)| g);
    journal.into_iter().chain(snapshot).max().unwrap_or(0)
}

/// What replaying the journal found, for the log.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Records applied.
    pub records: usize,
    /// Why some or all of it was left out, if it was.
    pub warning: Option<String>,
}

impl Store {
    /// Note that `name`'s entry changed (it is in the registry already);
    /// the next [`Store::write_noted`] records it.
    pub fn note(&self, name: &str) {
        let mut p = self.pending.lock();
        if !p.all {
            p.names.insert(name.to_string());
        }
    }

    /// Note a change that is not one listener's (the base, a plan): the
    /// next write rewrites everything.
    pub fn note_all(&self) {
        let mut p = self.pending.lock();
        p.all = true;
        p.names.clear();
    }

    /// The next write rewrites everything from the running set (the files
    /// may have been written by another process meanwhile: a hand-over
    /// that failed).
    /// Only sets a flag: the writer may be busy (or stuck on a hung
    /// mount), and this is called on the async runtime.
    pub fn resync(&self) {
        self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Make the changes noted so far durable: one record per noted name
    /// whose overlay value (`one`) differs from what the files hold, one
    /// fdatasync for all of them; or, when everything must be rewritten,
    /// the snapshot of `whole` and a new journal. Blocking.
    pub fn write_noted(
        &self,
        whole: impl FnOnce() -> Overlay,
        one: impl Fn(&str) -> Change,
    ) -> std::io::Result<()> {
        let mut w = self.writer.lock();
        let stale = self.stale.swap(false, std::sync::atomic::Ordering::SeqCst);
        if stale {
            w.synced = false;
            w.journal = None;
        }
        let (names, all) = {
            let mut p = self.pending.lock();
            (std::mem::take(&mut p.names), std::mem::take(&mut p.all))
        };
        let dir = self
            .opened()
            .map_err(|e| step(e, "opening the state directory"))?;
        if stale {
            // Another process wrote the files meanwhile, perhaps a later
            // generation: ours must be above theirs, or their journal,
            // left behind by a crash between our two renames, would read
            // as following our snapshot.
            w.generation = w.generation.max(generation_on_disk(dir));
        }
        if all || !w.synced || w.journal.is_none() {
            return self.compact(dir, &mut w, whole());
        }
        let mut changes: Vec<(String, Change)> = names
            .into_iter()
            .filter_map(|n| {
                let now = one(&n);
                let held = w.tracked.get(&n).unwrap_or(&Change::Clear);
                (*held != now).then_some((n, now))
            })
            .collect();
        if changes.is_empty() {
            return Ok(());
        }
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut buf = Vec::with_capacity(changes.len() * 128);
        for (i, (name, c)) in changes.iter().enumerate() {
            Record::new(w.next_seq + i as u64, name, c).frame_into(&mut buf);
        }
        let appended = match w.journal.as_mut() {
            Some(f) => f
                .write_all(&buf)
                .and_then(|()| f.sync_data())
                .map_err(|e| step(e, &format!("appending to {JOURNAL_NAME}"))),
            None => Ok(()),
        };
        if let Err(e) = appended {
            // Best effort: cut a partial record off; the next write
            // rewrites both files anyway.
            if let Some(f) = w.journal.take() {
                let _ = f.set_len(w.journal_bytes);
            }
            w.synced = false;
            return Err(e);
        }
        w.next_seq += changes.len() as u64;
        w.journal_bytes += buf.len() as u64;
        for (name, c) in changes {
            w.set(name, c);
        }
        if w.journal_bytes > w.snapshot_bytes.max(MIN_COMPACT_BYTES) {
            // The records are durable already: a failed compaction only
            // means the next write tries again from the running set.
            let overlay = w.overlay();
            if let Err(e) = self.compact(dir, &mut w, overlay) {
                tracing::warn!(dir = %self.path.display(), error = %e, "cannot compact the state journal into the state file; the next change rewrites both");
            }
        }
        Ok(())
    }

    /// At a clean shutdown: the journal folded into the snapshot, so the
    /// next start reads one file. Nothing is done unless the files are
    /// this process's and in step with it. Blocking.
    pub fn compact_now(&self) -> std::io::Result<()> {
        let mut w = self.writer.lock();
        let stale = self.stale.load(std::sync::atomic::Ordering::SeqCst);
        if stale || !w.synced || w.journal.is_none() || w.next_seq == 1 {
            return Ok(());
        }
        let dir = self
            .opened()
            .map_err(|e| step(e, "opening the state directory"))?;
        let overlay = w.overlay();
        self.compact(dir, &mut w, overlay)
    }

    /// Write `overlay` as the snapshot of the next generation, then a new,
    /// empty journal of that generation.
    fn compact(&self, dir: &Dir, w: &mut Writer, overlay: Overlay) -> std::io::Result<()> {
        w.synced = false;
        w.journal = None;
        let generation = w.generation + 1;
        let bytes = overlay.encode(generation);
        self.replace(dir, &bytes)?;
        w.generation = generation;
        w.snapshot_bytes = bytes.len() as u64;
        w.track_all(overlay);
        // From here the snapshot holds everything: a journal that cannot
        // be started anew (it still names the last generation, so it is
        // skipped at start) makes the next write a full one.
        let journal = self.new_journal(dir, generation).inspect_err(|e| {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot start a new state journal; the next change rewrites the state file");
        });
        if let Ok(f) = journal {
            w.journal = Some(f);
            w.journal_bytes = HEADER_LEN as u64;
            w.next_seq = 1;
            w.synced = true;
        }
        Ok(())
    }

    fn new_journal(&self, dir: &Dir, generation: u64) -> std::io::Result<File> {
        use std::os::unix::fs::PermissionsExt as _;
        self.write_atomically(dir, JOURNAL_TMP, JOURNAL_NAME, &header(generation))?;
        // The open sets the mode of files netd writes elsewhere (0640);
        // this one holds secrets.
        dir.append_file(JOURNAL_NAME)
            .and_then(|f| {
                f.set_permissions(std::fs::Permissions::from_mode(super::FILE_MODE))
                    .map(|()| f)
            })
            .map_err(|e| step(e, &format!("opening {JOURNAL_NAME}")))
    }

    /// The journal's records of generation `generation` applied to
    /// `overlay`; the writer is set to the result. A damaged header or a
    /// journal of another generation is left out whole, a damaged tail
    /// from its first bad record on. Blocking.
    pub(super) fn replay(
        &self,
        dir: &Dir,
        generation: u64,
        overlay: Overlay,
    ) -> (Overlay, Replayed) {
        let mut w = self.writer.lock();
        w.generation = generation;
        w.synced = false;
        w.journal = None;
        w.track_all(overlay);
        let mut out = Replayed::default();
        let bytes = match dir.read_ours(JOURNAL_NAME, MAX_JOURNAL_BYTES) {
            Ok(Some(b)) => b,
            Ok(None) => return (w.overlay(), out),
            Err(e) => {
                out.warning = Some(format!("cannot be read ({e}); it is left out"));
                return (w.overlay(), out);
            }
        };
        let Some(theirs) = read_header(&bytes) else {
            out.warning = Some(format!(
                "has a damaged header; it is left out{}",
                self.move_aside(dir, JOURNAL_NAME)
            ));
            return (w.overlay(), out);
        };
        w.generation = generation.max(theirs);
        if theirs != generation {
            if theirs > generation {
                out.warning = Some(format!(
                    "follows state file generation {theirs}, newer than the state file's \
                     ({generation}); it is left out"
                ));
            }
            // Older: left from before the last compaction, whose snapshot
            // holds all of it.
            return (w.overlay(), out);
        }
        let (records, used, problem) = read_frames(&bytes[HEADER_LEN..], 1);
        for r in records {
            match r.change() {
                Ok((name, c)) => {
                    w.set(name, c);
                    out.records += 1;
                }
                Err(why) => {
                    out.warning = Some(format!(
                        "has an unusable record {} ({why}); it and the rest are left out",
                        out.records + 1
                    ));
                    return (w.overlay(), out);
                }
            }
        }
        if let Some(why) = problem {
            let lost = bytes.len() - HEADER_LEN - used;
            out.warning = Some(format!(
                "ends in a damaged or partial record {why}; the last {lost} bytes are left out \
                 (a crash while a change was being saved: that change was never acknowledged)"
            ));
        }
        (w.overlay(), out)
    }

    /// `name` renamed to `name.corrupt-<unix seconds>`; says where, for a
    /// message (", moved aside to ...").
    pub(super) fn move_aside(&self, dir: &Dir, name: &str) -> String {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = format!("{name}.corrupt-{secs}");
        match dir.rename_ours(name, &aside) {
            Ok(None) => {
                let _ = dir.sync();
                format!(" (moved aside to {})", dir.path().join(&aside).display())
            }
            _ => String::new(),
        }
    }
}

/// `desired` (running, persisted) against `base` (the config's entry of
/// the same name): what the overlay holds for that name.
pub fn change_of(running: Option<Desired>, base: Option<&Desired>) -> Change {
    match (running, base) {
        (Some(r), Some(b)) if *b == r => Change::Clear,
        (Some(r), _) => Change::Put(Box::new(r)),
        (None, Some(_)) => Change::Removed,
        (None, None) => Change::Clear,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{self, listener_spec::Kind};
    use crate::state::Loaded;
    use std::collections::HashMap;

    fn echo(name: &str, port: u16) -> Desired {
        Desired {
            name: name.into(),
            spec: proto::ListenerSpec {
                kind: Some(Kind::TcpEcho(proto::TcpEchoSpec {
                    listen: format!("127.0.0.1:{port}"),
                    ..Default::default()
                })),
            },
            labels: HashMap::new(),
        }
    }

    /// A store whose first (full) write is done, as after the first
    /// change following a start.
    fn started(dir: &std::path::Path, overlay: Overlay) -> Store {
        let store = Store::open(dir, true).unwrap();
        store.load();
        store.save(&overlay).unwrap();
        store
    }

    /// Record `changes` one write each.
    fn change(store: &Store, changes: &[(&str, Change)]) {
        for (name, c) in changes {
            store.note(name);
            store
                .write_noted(|| panic!("a full write"), |_| c.clone())
                .unwrap();
        }
    }

    fn reloaded(dir: &std::path::Path) -> Loaded {
        Store::open(dir, true).unwrap().load()
    }

    #[test]
    fn a_change_is_one_record_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let store = started(dir.path(), Overlay::default());
        let snapshot = std::fs::read(store.path()).unwrap();
        let empty = std::fs::metadata(store.journal_path()).unwrap().len();
        change(
            &store,
            &[
                ("a", Change::Put(Box::new(echo("a", 1)))),
                ("b", Change::Put(Box::new(echo("b", 2)))),
                ("cfg", Change::Removed),
                ("a", Change::Put(Box::new(echo("a", 3)))),
                ("b", Change::Clear),
            ],
        );
        // The snapshot was not touched; the journal grew.
        assert_eq!(std::fs::read(store.path()).unwrap(), snapshot);
        assert!(std::fs::metadata(store.journal_path()).unwrap().len() > empty);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(store.journal_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let loaded = reloaded(dir.path());
        assert!(loaded.problem.is_none() && loaded.journal.warning.is_none());
        assert_eq!(loaded.journal.records, 5);
        assert_eq!(loaded.overlay.listeners, vec![echo("a", 3)]);
        assert_eq!(loaded.overlay.removed, vec!["cfg".to_string()]);
    }

    #[test]
    fn after_a_failed_hand_over_the_next_generation_is_above_the_successors() {
        // We started (generation 1); a successor took the files over and
        // wrote generation 2 with a record of its own; the hand-over failed
        // and we carry on: our full rewrite must not be generation 2 too,
        // or a crash between our snapshot's rename and our journal's would
        // leave their journal read as ours.
        let dir = tempfile::tempdir().unwrap();
        let ours = started(dir.path(), Overlay::default());
        let theirs = started(dir.path(), Overlay::default());
        change(&theirs, &[("x", Change::Put(Box::new(echo("x", 9))))]);
        let their_journal = std::fs::read(theirs.journal_path()).unwrap();
        drop(theirs);
        ours.resync();
        ours.note("a");
        let whole = Overlay {
            listeners: vec![echo("a", 1)],
            ..Default::default()
        };
        ours.write_noted(|| whole.clone(), |_| panic!("a record"))
            .unwrap();
        // The crash: our snapshot renamed, their journal still in place.
        std::fs::write(dir.path().join(JOURNAL_NAME), &their_journal).unwrap();
        let loaded = reloaded(dir.path());
        assert_eq!(loaded.overlay.listeners, vec![echo("a", 1)]);
        assert_eq!(loaded.journal.records, 0);
    }

    #[test]
    fn an_unchanged_value_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = started(dir.path(), Overlay::default());
        change(&store, &[("a", Change::Put(Box::new(echo("a", 1))))]);
        let len = std::fs::metadata(store.journal_path()).unwrap().len();
        change(
            &store,
            &[
                ("a", Change::Put(Box::new(echo("a", 1)))),
                ("z", Change::Clear),
            ],
        );
        assert_eq!(std::fs::metadata(store.journal_path()).unwrap().len(), len);
    }

    #[test]
    fn a_torn_or_damaged_last_record_loses_only_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = started(dir.path(), Overlay::default());
        change(
            &store,
            &[
                ("a", Change::Put(Box::new(echo("a", 1)))),
                ("b", Change::Put(Box::new(echo("b", 2)))),
            ],
        );
        let before_last = std::fs::metadata(store.journal_path()).unwrap().len() as usize;
        change(&store, &[("c", Change::Put(Box::new(echo("c", 3))))]);
        let full = std::fs::read(store.journal_path()).unwrap();
        drop(store);
        let mut damaged: Vec<Vec<u8>> = (before_last + 1..full.len())
            .map(|cut| full[..cut].to_vec())
            .collect();
        for at in before_last..full.len() {
            let mut b = full.clone();
            b[at] ^= 0x10;
            damaged.push(b);
        }
        for bytes in damaged {
            std::fs::write(dir.path().join(JOURNAL_NAME), &bytes).unwrap();
            let loaded = reloaded(dir.path());
            assert!(loaded.problem.is_none());
            let names: Vec<&str> = loaded
                .overlay
                .listeners
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            assert_eq!(names, ["a", "b"], "{} bytes", bytes.len());
            let warning = loaded.journal.warning.expect("a warning");
            assert!(warning.contains("left out"), "{warning}");
        }
        // Cut exactly between records: nothing to warn about.
        std::fs::write(dir.path().join(JOURNAL_NAME), &full[..before_last]).unwrap();
        let loaded = reloaded(dir.path());
        assert!(loaded.journal.warning.is_none());
        assert_eq!(loaded.overlay.listeners.len(), 2);
    }

    #[test]
    fn the_first_write_after_a_start_rewrites_a_damaged_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = started(dir.path(), Overlay::default());
        change(&store, &[("a", Change::Put(Box::new(echo("a", 1))))]);
        let mut bytes = std::fs::read(store.journal_path()).unwrap();
        bytes.extend_from_slice(&[0xff; 7]);
        std::fs::write(store.journal_path(), &bytes).unwrap();
        drop(store);

        let store = Store::open(dir.path(), true).unwrap();
        let loaded = store.load();
        assert!(loaded.journal.warning.is_some());
        // The next change is a full write (the running set), then appends
        // follow whole records again.
        store.note("b");
        let whole = Overlay {
            listeners: vec![echo("a", 1), echo("b", 2)],
            removed: vec![],
        };
        store
            .write_noted(|| whole.clone(), |_| panic!("not one by one"))
            .unwrap();
        change(&store, &[("c", Change::Put(Box::new(echo("c", 3))))]);
        let loaded = reloaded(dir.path());
        assert!(
            loaded.journal.warning.is_none(),
            "{:?}",
            loaded.journal.warning
        );
        assert_eq!(loaded.overlay.listeners.len(), 3);
    }

    #[test]
    fn a_journal_left_from_before_a_rewrite_is_not_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = started(dir.path(), Overlay::default());
        change(&store, &[("a", Change::Put(Box::new(echo("a", 1))))]);
        let old_journal = std::fs::read(store.journal_path()).unwrap();
        // A full write (as `apply --prune` makes) empties the overlay; a
        // crash right after the snapshot's rename leaves the old journal.
        store.save(&Overlay::default()).unwrap();
        std::fs::write(store.journal_path(), &old_journal).unwrap();
        drop(store);
        let loaded = reloaded(dir.path());
        assert!(loaded.overlay.is_empty(), "{:?}", loaded.overlay);
        assert_eq!(loaded.journal.records, 0);
        assert!(loaded.journal.warning.is_none());
    }

    #[test]
    fn a_growing_journal_is_folded_into_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = started(dir.path(), Overlay::default());
        let mut expect = Vec::new();
        // About 60 bytes a record: more than MIN_COMPACT_BYTES in all.
        for i in 0..6000u16 {
            let d = echo(&format!("l{i:05}"), i);
            change(
                &store,
                &[(&d.name.clone(), Change::Put(Box::new(d.clone())))],
            );
            expect.push(d);
        }
        let journal = std::fs::metadata(store.journal_path()).unwrap().len();
        let snapshot = std::fs::metadata(store.path()).unwrap().len();
        assert!(
            journal <= snapshot.max(MIN_COMPACT_BYTES),
            "{journal} {snapshot}"
        );
        assert!(snapshot > 100 * 1024, "{snapshot}");
        let loaded = reloaded(dir.path());
        assert!(loaded.journal.records < 6000, "{}", loaded.journal.records);
        assert_eq!(loaded.overlay.listeners, expect);

        // And at a clean shutdown.
        change(&store, &[("l00000", Change::Clear)]);
        store.compact_now().unwrap();
        assert_eq!(
            std::fs::metadata(store.journal_path()).unwrap().len(),
            HEADER_LEN as u64
        );
        let loaded = reloaded(dir.path());
        assert_eq!(loaded.journal.records, 0);
        assert_eq!(loaded.overlay.listeners, expect[1..]);
    }

    #[test]
    fn a_damaged_snapshot_takes_its_journal_aside_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = started(dir.path(), Overlay::default());
        change(&store, &[("a", Change::Put(Box::new(echo("a", 1))))]);
        let mut bytes = std::fs::read(store.path()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(store.path(), &bytes).unwrap();
        drop(store);
        let loaded = reloaded(dir.path());
        assert!(loaded.problem.is_some());
        assert!(loaded.overlay.is_empty());
        assert!(!dir.path().join(JOURNAL_NAME).exists());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                n.to_string_lossy()
                    .starts_with("listeners.journal.corrupt-")
            })
            .count();
        assert_eq!(aside, 1);
    }

    #[test]
    fn a_symlink_in_place_of_the_journal_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let store = started(dir.path(), Overlay::default());
        drop(store);
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"secret").unwrap();
        std::fs::remove_file(dir.path().join(JOURNAL_NAME)).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(JOURNAL_NAME)).unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let loaded = store.load();
        assert!(loaded.journal.warning.is_some());
        // The next write refuses to replace the link (the snapshot is
        // written; changes are then saved by full writes, with a warning).
        store.save(&Overlay::default()).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"secret");
        assert!(
            std::fs::symlink_metadata(dir.path().join(JOURNAL_NAME))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        store.note("a");
        store
            .write_noted(Overlay::default, |_| panic!("not one by one"))
            .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"secret");
    }
}
