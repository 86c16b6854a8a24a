//! Where netctl's output goes, and how it ends.
//!
//! Everything netctl prints goes through [`out!`]/[`outln!`]: when stdout
//! is a closed pipe (`netctl events | head`), netctl stops quietly and
//! exits 0 instead of panicking, as ripgrep and other Unix tools do.
//!
//! Exit codes by class (also in `--help` and docs/netctl.md): 0 success, 1
//! refused by netd (an error status from the daemon, or a probe that got
//! no answer), 2 usage (bad flags or input, found before anything is
//! sent), 3 netd unreachable (no connection, or the connection failed; with
//! several --control, none of them could be reached: see `fleet`).

use std::io::Write as _;

/// The class of a failure, which decides netctl's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Refused = 1,
    Usage = 2,
    Unreachable = 3,
}

/// An error with its class; anything without one exits 1.
#[derive(Debug)]
pub struct Classified {
    pub class: Class,
    pub error: anyhow::Error,
}

impl std::fmt::Display for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Classified {}

pub fn usage(e: impl Into<anyhow::Error>) -> anyhow::Error {
    Classified {
        class: Class::Usage,
        error: e.into(),
    }
    .into()
}

pub fn unreachable(e: impl Into<anyhow::Error>) -> anyhow::Error {
    Classified {
        class: Class::Unreachable,
        error: e.into(),
    }
    .into()
}

pub fn refused(e: impl Into<anyhow::Error>) -> anyhow::Error {
    Classified {
        class: Class::Refused,
        error: e.into(),
    }
    .into()
}

/// The exit code for `e`: its class, or 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|c| c.downcast_ref::<Classified>())
        .map_or(1, |c| c.class as u8)
}

/// Write to stdout; on a closed pipe, exit 0 at once.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("netctl: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Resolves when standard output is a pipe whose reader has gone
/// (`netctl events | head -1` once head has its line). The streaming
/// commands wait for it beside their next message, so they end (exit 0)
/// when the reader does, not when the next message finds the pipe closed,
/// which for `events` may be hours later. Never resolves for a terminal, a
/// file, or anything else epoll cannot watch: there, a write error is the
/// only sign.
pub async fn stdout_closed() {
    use std::os::fd::AsFd as _;
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;
    // A pipe's write end reports EPOLLERR once no reader is left.
    let watch = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| {
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and is
            // the same descriptor for as long as it is registered.
            #[allow(unsafe_code)]
            unsafe { AsyncFd::register_with_interest(fd, Interest::ERROR) }.ok()
        });
    if let Some(fd) = watch {
        if fd.ready(Interest::ERROR).await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// `print!` that stops quietly on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => { $crate::render::write_out(format_args!($($arg)*)) };
}

/// `println!` that stops quietly on a closed pipe.
macro_rules! outln {
    () => { $crate::render::write_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::render::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {out, outln};
