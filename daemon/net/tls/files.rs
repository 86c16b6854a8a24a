//! Reading TLS material a listener is pointed at, under netd's file rules.
//!
//! - Certificates and CA bundles are public: read as any file netd is
//!   pointed at ([`crate::sys::safe_file::read_regular`]: regular files
//!   only, bounded, never blocking on a FIFO).
//! - A private key must be a regular file owned by netd's effective user or
//!   by root, closed to others (no `o+rwx`; group-readable is allowed, as
//!   Kubernetes secret volumes with `defaultMode: 0440` are), and when the
//!   path is a symbolic link it must resolve inside the link's own
//!   directory (the `..data/` indirection of Kubernetes secret volumes is
//!   a link within the directory the operator pointed at; a link to
//!   `/etc/shadow` is not, nor is certbot's `live/NAME/`→`../../archive/`,
//!   see docs/tls.md). The file is then opened
//!   without following a link. Its bytes are never logged.
//!
//! All of it is blocking file-system work: call it off the runtime.

use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest certificate chain, CA bundle or key read (a system CA
/// bundle is about 200 KiB).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// A public PEM file (certificate chain, CA bundle).
pub fn read_public(path: &Path) -> io::Result<Vec<u8>> {
    crate::sys::safe_file::read_regular(path, MAX_PEM_BYTES)
}

/// A private key file, under the rules of the module doc.
pub fn read_key(path: &Path) -> io::Result<Vec<u8>> {
    let target = resolve_within_dir(path)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&target)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file",
        ));
    }
    let euid = crate::sys::euid();
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it belongs to uid {}, neither netd's user (uid {euid}) nor root; \
                 a key others control is not used",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o007 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it has mode {:o}, open to others; a private key must not be (chmod o-rwx)",
                meta.mode() & 0o777
            ),
        ));
    }
    if meta.len() > MAX_PEM_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is {} bytes, more than {MAX_PEM_BYTES}", meta.len()),
        ));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    use std::io::Read as _;
    (&file).take(MAX_PEM_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it grew past the size allowed",
        ));
    }
    Ok(buf)
}

/// `path` itself when it is not a symbolic link; else where it leads,
/// which must be inside the link's own directory.
fn resolve_within_dir(path: &Path) -> io::Result<PathBuf> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_symlink() {
        return Ok(path.to_path_buf());
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = std::fs::canonicalize(dir.unwrap_or(Path::new(".")))?;
    let target = std::fs::canonicalize(path)?;
    if !target.starts_with(&dir) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it is a symbolic link to {}, outside its directory {}; \
                 point at the key itself",
                target.display(),
                dir.display()
            ),
        ));
    }
    Ok(target)
}

/// What identifies the current contents of the files a TLS config was
/// built from, to notice a change on disk: device, inode, size, mtime and
/// ctime of each (following links, so a Kubernetes `..data` swap shows).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stamp(Vec<Option<FileId>>);

/// dev, ino, size, mtime (s, ns), ctime (s, ns) of one file.
type FileId = (u64, u64, u64, i64, i64, i64, i64);

impl Stamp {
    pub fn of(paths: &[&Path]) -> Stamp {
        Stamp(
            paths
                .iter()
                .map(|p| {
                    std::fs::metadata(p).ok().map(|m| {
                        (
                            m.dev(),
                            m.ino(),
                            m.size(),
                            m.mtime(),
                            m.mtime_nsec(),
                            m.ctime(),
                            m.ctime_nsec(),
                        )
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_open_to_others_or_linked_outside_its_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, b"secret").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key(&key).unwrap(), b"secret");

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).unwrap();
        let e = read_key(&key).unwrap_err().to_string();
        assert!(e.contains("open to others"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();

        // A link within the directory (Kubernetes' ..data) is followed.
        let sub = dir.path().join("..data");
        std::fs::create_dir(&sub).unwrap();
        std::fs::rename(&key, sub.join("key.pem")).unwrap();
        std::os::unix::fs::symlink("..data/key.pem", &key).unwrap();
        assert_eq!(read_key(&key).unwrap(), b"secret");

        // A link leading out of it is not.
        let other = tempfile::tempdir().unwrap();
        let outside = other.path().join("k");
        std::fs::write(&outside, b"x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("evil.pem");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let e = read_key(&link).unwrap_err().to_string();
        assert!(e.contains("outside its directory"), "{e}");
    }
}
