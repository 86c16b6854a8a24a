//! splice(2) through a pipe: the proxy's zero-copy forward path on Linux,
//! through rustix's safe wrappers of pipe2, fcntl and splice.

use std::io;
use std::os::fd::AsFd;

/// Pipe capacity asked for (the kernel's default pipe-max-size), and so the
/// most bytes moved per splice(2); a pipe that cannot grow keeps 64 KiB.
///
/// Measured against 64 KiB and 256 KiB (iperf3 through the proxy, 3
/// alternating rounds, the proxy's CPU from /proc/PID/stat): 0.40–0.52,
/// 0.45–0.50 and 0.40–0.52 cores per 10 Gbit/s, no difference. A profile
/// of the proxy during the stream (`perf record -g`) says why: 92% of its
/// CPU is inside splice(2), 70% sending (tcp_sendmsg, with the loopback
/// delivery to the receiving socket that the sender pays for) and 14%
/// receiving; what netd does around those calls does not show. Kept at
/// the largest size for the fewest calls.
pub const PIPE_SIZE: usize = 1024 * 1024;

/// A non-blocking pipe for splicing one direction of a connection.
pub struct Pipe {
    pub read: std::os::fd::OwnedFd,
    pub write: std::os::fd::OwnedFd,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        use rustix::pipe::{PipeFlags, fcntl_setpipe_size, pipe_with};
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // Best effort: fewer, larger splices. Pages are only used while
        // data sits in the pipe.
        let _ = fcntl_setpipe_size(&write, PIPE_SIZE);
        Ok(Pipe { read, write })
    }
}

/// One splice(2) of up to `len` bytes, non-blocking.
pub fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    use rustix::pipe::SpliceFlags;
    let n = rustix::pipe::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
    )?;
    Ok(n)
}
