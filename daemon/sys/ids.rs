//! Safe wrappers for the libc calls that need no more than their arguments
//! to be sound, so that the modules calling them stay free of `unsafe`
//! (rustix covers geteuid; the NSS look-ups, getgrouplist and
//! SO_PEERGROUPS it does not).
#![allow(unsafe_code)]

/// The effective user id of this process.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The uid of the user `name`, from the passwd database (NSS).
pub fn user_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero is a valid passwd (pointers null, numbers 0).
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r with valid pointers to our own buffers; the
    // result is only read when `out` is non-null.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    (rc == 0 && !out.is_null()).then_some(pw.pw_uid)
}

/// The gid of the group `name`, from the group database (NSS).
pub fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: all-zero is a valid group (pointers null, numbers 0).
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r with valid pointers to our own buffers; the
    // result is only read when `out` is non-null.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut gr,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    (rc == 0 && !out.is_null()).then_some(gr.gr_gid)
}

/// The supplementary groups of the peer of a Unix socket (SO_PEERGROUPS,
/// Linux 4.13+); empty where unsupported.
pub fn peer_groups(socket: std::os::fd::BorrowedFd<'_>) -> Vec<libc::gid_t> {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into our buffer and
        // stores the size it needs (or wrote) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65_536 {
            groups.resize(n, 0);
            continue;
        }
        groups.clear();
        break;
    }
    groups
}

/// The name and primary gid of the user `uid`, from the passwd database
/// (NSS); None if the uid has no entry.
pub fn user_of_uid(uid: u32) -> Option<(String, u32)> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero is a valid passwd (pointers null, numbers 0).
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r with valid pointers to our own buffers; the
    // result is only read when `out` is non-null.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated by getpwuid_r.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    Some((name.to_string_lossy().into_owned(), pw.pw_gid))
}

/// The groups of user `name` whose primary group is `gid` (that one
/// included), from the group database (NSS); at most 65536.
pub fn groups_of_user(name: &str, gid: u32) -> Vec<u32> {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return vec![gid];
    };
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    // Retried when the list grew between two calls; a few times at most.
    for _ in 0..4 {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: getgrouplist writes at most `n` gids into our buffer and
        // stores the number it has (or needs) in `n`.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        let n = usize::try_from(n).unwrap_or(0);
        if rc >= 0 {
            groups.truncate(n.min(groups.len()));
            return groups;
        }
        if n <= groups.len() || n > 65_536 {
            return vec![gid];
        }
        groups.resize(n, 0);
    }
    vec![gid]
}
