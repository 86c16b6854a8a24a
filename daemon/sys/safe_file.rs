//! Files netd writes for a caller (pcap captures, the access log), confined
//! to one directory it was given (`capture_dir`, the access log's directory) and opened so that nothing already in that
//! directory can redirect, block or hijack the write.
//!
//! What this module guarantees:
//!
//! - [`resolve_name`] accepts only a plain file name, or an absolute path
//!   whose parent is exactly the directory (compared lexically; `..` is
//!   refused), so a caller cannot name anything outside it.
//! - Every file operation goes through the directory's descriptor (openat,
//!   fstatat, renameat, unlinkat) with a single-component name, so nothing
//!   outside the directory is touched, even if a path leading to it is
//!   swapped later.
//! - [`Dir::create_file`] never follows a symbolic link (O_NOFOLLOW), never
//!   blocks (a FIFO, device or socket is refused before it is opened, and
//!   the open is O_NONBLOCK in case one appears meanwhile) and never
//!   truncates before checking: the descriptor it returns is a regular file
//!   owned by netd's effective uid with no other hard links, and only then
//!   is it set to mode 0640 and truncated.
//! - [`Dir::rename_ours`] and [`Dir::remove_ours`] act only on regular files
//!   owned by netd's effective uid (checked with fstatat without following
//!   links, source and target alike); anything else is left alone and
//!   reported back as [`Skipped`].
//!
//! Not covered: an entry swapped between that check and the rename or
//! unlink by someone else who can write to the directory. The directory is
//! meant to be writable by netd alone; it is created with mode 0750.
//!
//! [`read_regular`] reads a file netd is pointed at (config, token file,
//! TLS material) with the same refusals, without the directory confinement.
//!
//! Everything here is blocking file-system work: call it off the async
//! runtime, through [`off_runtime`] (the blocking pool, with a deadline).
//! The calls that take a directory descriptor are rustix's (no `unsafe`).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, Mode, OFlags, Stat};
use rustix::io::Errno;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Mode of the files created here.
pub const FILE_MODE: u32 = 0o640;
/// Mode of the directory (and its parents) when netd creates it.
pub const DIR_MODE: u32 = 0o750;
/// Longest file name (NAME_MAX on Linux).
pub const MAX_NAME_BYTES: usize = 255;

/// Check that `name` is one plain path component: not empty, not `.` or
/// `..`, no `/`, no control characters, at most 255 bytes.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the file name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("'{name}' is not a file name"));
    }
    if name.contains('/') {
        return Err("a relative path must be a plain file name (no '/')".into());
    }
    if name.chars().any(char::is_control) {
        return Err("the file name contains a control character".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "the file name is longer than {MAX_NAME_BYTES} bytes"
        ));
    }
    Ok(())
}

/// The file name `value` stands for in `dir`: `value` itself if it is a
/// plain file name, or the last component of an absolute path whose parent
/// is exactly `dir` (lexically: `//` and `.` components are ignored, `..`
/// is refused). The error says why, without naming `dir`.
pub fn resolve_name<'a>(dir: &Path, value: &'a str) -> Result<&'a str, String> {
    if !value.starts_with('/') {
        check_file_name(value)?;
        return Ok(value);
    }
    // Split at the last '/' by hand: Path::file_name would read "d/x/." as
    // "x" and "d/x/" as "x".
    let (parent, name) = value.rsplit_once('/').unwrap_or(("", value));
    let parent = if parent.is_empty() { "/" } else { parent };
    if name == ".."
        || Path::new(parent)
            .components()
            .any(|c| c == Component::ParentDir)
    {
        return Err("'..' is not allowed".into());
    }
    check_file_name(name)?;
    if Path::new(parent) != dir {
        return Err("it is not directly in capture_dir".into());
    }
    Ok(name)
}

/// Whether an entry of the directory may be renamed over or removed.
#[derive(Debug, PartialEq, Eq)]
enum Slot {
    Missing,
    Ours,
    /// Anything else, described for a person ("a symbolic link", ...).
    Foreign(String),
}

/// An entry that was left alone, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub what: String,
}

/// An open directory; names given to its methods are single components
/// (see [`check_file_name`]).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Open the directory at `path` (O_DIRECTORY), creating it and its
    /// missing parents with mode 0750 first if it does not exist.
    pub fn open_or_create(path: &Path) -> io::Result<Dir> {
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(path)
        };
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(path)?;
                open()?
            }
            other => other?,
        };
        Ok(Dir {
            fd: file.into(),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// fstat of the directory itself (its owner and mode).
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        File::from(self.fd.try_clone()?).metadata()
    }

    /// Open `name` for writing, creating it (mode 0640) if missing, and
    /// truncate it, once it is known to be a regular file owned by netd
    /// with no other links. Symbolic links, FIFOs, devices, sockets,
    /// directories, other users' files and hard-linked files are refused
    /// with an error saying which ("it is a symbolic link; refusing to
    /// follow it"), and left as they were.
    pub fn create_file(&self, name: &str) -> io::Result<File> {
        let file = self.open_ours(name, OFlags::empty())?;
        file.set_len(0)?;
        Ok(file)
    }

    /// Open `name` for appending (O_APPEND), creating it (mode 0640) if
    /// missing, with the same refusals as [`Dir::create_file`]; what it
    /// holds is kept. For logs that outlive a restart (the access log).
    pub fn append_file(&self, name: &str) -> io::Result<File> {
        self.open_ours(name, OFlags::APPEND)
    }

    /// The checks and the open shared by [`Dir::create_file`] and
    /// [`Dir::append_file`]; `extra` is added to the open flags.
    fn open_ours(&self, name: &str, extra: OFlags) -> io::Result<File> {
        let cname = c_name(name)?;
        if let Some(st) = self.stat_at(&cname)? {
            refuse_unless_regular(st.st_mode)?;
        }
        let flags = OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::NOCTTY
            | OFlags::CLOEXEC
            | extra;
        let fd = match rustix::fs::openat(&self.fd, cname.as_c_str(), flags, Mode::from(FILE_MODE))
        {
            Ok(fd) => fd,
            Err(Errno::LOOP) => {
                return Err(refused("it is a symbolic link; refusing to follow it"));
            }
            // A FIFO without a reader (or a device) appeared since the
            // check above.
            Err(errno @ (Errno::NXIO | Errno::NODEV)) => {
                let e = io::Error::from(errno);
                return Err(match self.stat_at(&cname) {
                    Ok(Some(st)) => refuse_unless_regular(st.st_mode).err().unwrap_or(e),
                    _ => e,
                });
            }
            Err(errno) => return Err(errno.into()),
        };
        let file = File::from(fd);
        let meta = file.metadata()?;
        refuse_unless_regular(meta.mode())?;
        let euid = crate::sys::euid();
        if meta.uid() != euid {
            return Err(refused(&format!(
                "it is owned by uid {}, not by netd (uid {euid}); refusing to overwrite it",
                meta.uid()
            )));
        }
        if meta.nlink() > 1 {
            return Err(refused(&format!(
                "it has {} hard links; refusing to overwrite it",
                meta.nlink()
            )));
        }
        if meta.mode() & 0o7777 != FILE_MODE {
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        }
        Ok(file)
    }

    /// Remove `name` if it is a regular file owned by netd. Returns what was
    /// left alone instead, if anything; a missing entry is not an error.
    pub fn remove_ours(&self, name: &str) -> io::Result<Option<Skipped>> {
        let cname = c_name(name)?;
        match self.slot(&cname)? {
            Slot::Missing => Ok(None),
            Slot::Foreign(what) => Ok(Some(skipped(name, what))),
            Slot::Ours => {
                rustix::fs::unlinkat(&self.fd, cname.as_c_str(), AtFlags::empty())
                    .map_err(io::Error::from)
                    .or_else(ignore_missing)?;
                Ok(None)
            }
        }
    }

    /// Rename `from` to `to` (replacing `to`) if `from` is a regular file
    /// owned by netd and `to` is missing or one too. Returns the entry that
    /// was in the way instead, if any; a missing `from` is not an error.
    pub fn rename_ours(&self, from: &str, to: &str) -> io::Result<Option<Skipped>> {
        let (cfrom, cto) = (c_name(from)?, c_name(to)?);
        match self.slot(&cfrom)? {
            Slot::Missing => return Ok(None),
            Slot::Foreign(what) => return Ok(Some(skipped(from, what))),
            Slot::Ours => {}
        }
        if let Slot::Foreign(what) = self.slot(&cto)? {
            return Ok(Some(skipped(to, what)));
        }
        rustix::fs::renameat(&self.fd, cfrom.as_c_str(), &self.fd, cto.as_c_str())
            .map_err(io::Error::from)
            .or_else(ignore_missing)?;
        Ok(None)
    }

    /// Read all of `name` if it is a regular file owned by netd, at most
    /// `max` bytes (more is an error). None if it does not exist. Never
    /// follows a symbolic link and never blocks on a FIFO or device.
    pub fn read_ours(&self, name: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let cname = c_name(name)?;
        match self.slot(&cname)? {
            Slot::Missing => return Ok(None),
            Slot::Foreign(what) => {
                return Err(refused(&format!("it is {what}; refusing to read it")));
            }
            Slot::Ours => {}
        }
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let file = match rustix::fs::openat(&self.fd, cname.as_c_str(), flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::NOENT) => return Ok(None),
            Err(errno) => return Err(errno.into()),
        };
        let meta = file.metadata()?;
        read_bounded(file, &meta, max).map(Some)
    }

    /// fsync the directory itself, so that a rename in it is durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }

    fn slot(&self, name: &CString) -> io::Result<Slot> {
        let Some(st) = self.stat_at(name)? else {
            return Ok(Slot::Missing);
        };
        if let Some(what) = non_regular(st.st_mode) {
            return Ok(Slot::Foreign(what.into()));
        }
        if st.st_uid != crate::sys::euid() {
            return Ok(Slot::Foreign(format!(
                "a file owned by uid {}, not by netd",
                st.st_uid
            )));
        }
        Ok(Slot::Ours)
    }

    /// lstat of an entry of the directory; None if there is none.
    fn stat_at(&self, name: &CString) -> io::Result<Option<Stat>> {
        match rustix::fs::statat(&self.fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(errno) => Err(errno.into()),
        }
    }
}

/// Read all of the regular file at `path`, at most `max` bytes (more is an
/// error), for files netd is pointed at rather than ones it owns: the
/// config file, token files, TLS material. Symbolic links are followed
/// (config management links files into place); the open never blocks:
/// it is O_NONBLOCK, so a FIFO opens at once with no writer and is then
/// refused, as are devices, sockets and directories (checked with fstat
/// on the open descriptor, before anything is read). `/dev/null` reads as
/// empty (`--config /dev/null`). The error says why,
/// without the path: callers name the file.
///
/// Blocking file-system work nonetheless (a hung NFS or FUSE mount can
/// stall any call): on the async runtime, run it through [`off_runtime`].
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    // /dev/null (`--config /dev/null`): empty, and never blocks.
    if meta.file_type().is_char_device() && meta.rdev() == libc::makedev(1, 3) {
        return Ok(Vec::new());
    }
    read_bounded(file, &meta, max)
}

/// The whole of an open regular file of at most `max` bytes (`meta` is its
/// fstat): refused if it is not a regular file, is larger, or grows past
/// `max` while being read.
fn read_bounded(file: File, meta: &std::fs::Metadata, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    refuse_unless_regular(meta.mode())?;
    if meta.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is {} bytes, more than the {max} allowed", meta.len()),
        ));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it grew past the {max} bytes allowed"),
        ));
    }
    Ok(buf)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "it is not UTF-8 text"))
}

/// File-system calls started by [`off_runtime`] and not yet returned,
/// including ones abandoned at their deadline (a hung mount).
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Most such calls at once: a mount that hangs every call abandons at
/// most this many blocking-pool threads; later calls fail at once.
pub const MAX_IN_FLIGHT: usize = 16;

/// Run blocking file-system work `f` on the blocking pool and wait for it
/// at most `deadline`. The async runtime never waits on the file system:
/// past the deadline the call is reported as failed (TimedOut) and its
/// thread abandoned, since a call stuck in the kernel (a hung NFS or FUSE
/// path) cannot be interrupted; it finishes, or not, on its own. While
/// [`MAX_IN_FLIGHT`] such calls are unfinished, new ones fail at once
/// rather than pile up threads. `what` names the work in errors.
pub async fn off_runtime<T, F>(what: &str, deadline: std::time::Duration, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    use std::sync::atomic::Ordering::SeqCst;
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            IN_FLIGHT.fetch_sub(1, SeqCst);
        }
    }
    if IN_FLIGHT.fetch_add(1, SeqCst) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, SeqCst);
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "{what}: {MAX_IN_FLIGHT} earlier file-system calls have not returned \
                 (a hung mount?); not trying again until they do"
            ),
        ));
    }
    let done = Done;
    let task = tokio::task::spawn_blocking(move || {
        let _done = done;
        f()
    });
    match tokio::time::timeout(deadline, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(io::Error::other(format!(
            "{what}: the blocking task failed: {e}"
        ))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{what}: no answer from the file system within {} (a hung mount?); gave up",
                humantime::format_duration(deadline)
            ),
        )),
    }
}

fn c_name(name: &str) -> io::Result<CString> {
    check_file_name(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the file name contains NUL"))
}

/// An entry that vanished between the check and the call: nothing to do.
fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn refused(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

fn skipped(name: &str, what: String) -> Skipped {
    Skipped {
        name: name.to_string(),
        what,
    }
}

/// What an entry is, if it is not a regular file.
fn non_regular(mode: libc::mode_t) -> Option<&'static str> {
    match mode & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFLNK => Some("a symbolic link"),
        libc::S_IFIFO => Some("a FIFO"),
        libc::S_IFCHR => Some("a character device"),
        libc::S_IFBLK => Some("a block device"),
        libc::S_IFSOCK => Some("a socket"),
        libc::S_IFDIR => Some("a directory"),
        _ => Some("not a regular file"),
    }
}

fn refuse_unless_regular(mode: libc::mode_t) -> io::Result<()> {
    match non_regular(mode) {
        None => Ok(()),
        Some("a symbolic link") => Err(refused("it is a symbolic link; refusing to follow it")),
        Some(what) => Err(refused(&format!(
            "it is {what}, not a regular file; refusing to open it"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_only_directly_in_the_dir() {
        let dir = Path::new("/var/lib/netd/captures");
        assert_eq!(resolve_name(dir, "cap.pcap"), Ok("cap.pcap"));
        assert_eq!(resolve_name(dir, "..x"), Ok("..x"));
        assert_eq!(
            resolve_name(dir, "/var/lib/netd/captures/cap.pcap"),
            Ok("cap.pcap")
        );
        assert_eq!(
            resolve_name(dir, "/var/lib//netd/./captures/cap.pcap"),
            Ok("cap.pcap")
        );
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "./x",
            "x/",
            "a\nb",
            "a\u{7f}b",
            "/tmp/x.pcap",
            "/var/lib/netd/captures/../x",
            "/var/lib/netd/captures/sub/x",
            "/var/lib/netd/captures/",
            "/var/lib/netd/captures/.",
            "/var/lib/netd/captures/..",
            "/var/lib/netd/captures/sub/../x",
            "/var/lib/netd/captures",
            "/x",
        ] {
            assert!(resolve_name(dir, bad).is_err(), "{bad:?} accepted");
        }
        let long = "x".repeat(256);
        assert!(resolve_name(dir, &long).is_err());
        assert!(resolve_name(dir, &"x".repeat(255)).is_ok());
    }

    #[test]
    fn files_are_created_checked_and_rotated_only_when_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b");
        let dir = Dir::open_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().mode() & 0o777,
            DIR_MODE & !current_umask()
        );

        let mut f = dir.create_file("x").unwrap();
        io::Write::write_all(&mut f, b"data").unwrap();
        assert_eq!(
            std::fs::metadata(path.join("x")).unwrap().mode() & 0o777,
            0o640
        );
        // Reopening truncates our own file.
        dir.create_file("x").unwrap();
        assert_eq!(std::fs::metadata(path.join("x")).unwrap().len(), 0);

        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        std::os::unix::fs::symlink(&outside, path.join("link")).unwrap();
        let e = dir.create_file("link").unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::hard_link(&outside, path.join("hard")).unwrap();
        let e = dir.create_file("hard").unwrap_err().to_string();
        assert!(e.contains("hard links"), "{e}");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        std::fs::create_dir(path.join("d")).unwrap();
        let e = dir.create_file("d").unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");

        // Rotation moves ours, never over or from a foreign entry.
        assert_eq!(dir.rename_ours("x", "x.1").unwrap(), None);
        assert!(path.join("x.1").exists() && !path.join("x").exists());
        let s = dir.rename_ours("x.1", "link").unwrap().unwrap();
        assert_eq!(
            (s.name.as_str(), s.what.as_str()),
            ("link", "a symbolic link")
        );
        assert!(path.join("x.1").exists());
        assert!(dir.remove_ours("link").unwrap().is_some());
        assert!(std::fs::symlink_metadata(path.join("link")).is_ok());
        assert_eq!(dir.remove_ours("x.1").unwrap(), None);
        assert!(!path.join("x.1").exists());
        assert_eq!(dir.remove_ours("never").unwrap(), None);
        assert_eq!(dir.rename_ours("never", "x").unwrap(), None);
    }

    #[test]
    fn read_regular_refuses_what_could_block() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "data").unwrap();
        assert_eq!(read_regular(&file, 4).unwrap(), b"data");
        let e = read_regular(&file, 3).unwrap_err().to_string();
        assert!(e.contains("more than the 3 allowed"), "{e}");
        assert!(read_regular(Path::new("/dev/null"), 4).unwrap().is_empty());
        // A FIFO with no writer: the open returns at once, then it is
        // refused (a blocking open would hang this test).
        let fifo = tmp.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from(0o600),
            0,
        )
        .unwrap();
        let e = read_regular(&fifo, 4).unwrap_err().to_string();
        assert!(e.contains("a FIFO, not a regular file"), "{e}");
        let e = read_regular(tmp.path(), 4).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let e = read_regular(Path::new("/dev/zero"), 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a character device"), "{e}");
    }

    /// A call that does not return (a hung mount, here a thread waiting
    /// on a channel) is reported as failed at its deadline; the runtime
    /// goes on, and later calls work.
    #[tokio::test]
    async fn off_runtime_gives_up_at_the_deadline() {
        let (release, hung) = std::sync::mpsc::channel::<()>();
        let e = off_runtime(
            "reading x",
            std::time::Duration::from_millis(50),
            move || {
                let _ = hung.recv();
                Ok(())
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("reading x: no answer"), "{e}");
        let v = off_runtime("y", std::time::Duration::from_secs(20), || Ok(7))
            .await
            .unwrap();
        assert_eq!(v, 7);
        release.send(()).unwrap();
    }

    /// This process's umask, read without changing it.
    fn current_umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }
}
