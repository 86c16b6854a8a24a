//! What the process around netd asks of it while it runs: stop, reload
//! the config, reopen the access log. `netd`'s `main` turns Unix signals
//! into these; a test running netd in-process gives a shutdown future.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;

/// One request to the running daemon. The name says where it came from
/// ("SIGTERM"), for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Drain and exit; a second one during the drain closes the
    /// connections at once.
    Shutdown(&'static str),
    /// Re-read the config file and apply it.
    Reload(&'static str),
    /// Open the access log again by name (after logrotate moved it).
    ReopenLog(&'static str),
}

type Installer = Box<dyn FnOnce() -> anyhow::Result<mpsc::Receiver<Signal>> + Send>;

/// Where [`super::run`] takes its [`Signal`]s from: a shutdown future, a
/// stream of signals, or both.
pub struct Signals {
    shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Called once netd is about to say it is ready (a handler installed
    /// then takes SIGHUP, whose default action would kill netd, before
    /// systemd may send one).
    install: Option<Installer>,
    stream: Option<mpsc::Receiver<Signal>>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals")
            .field("shutdown", &self.shutdown.is_some())
            .field("stream", &(self.install.is_some() || self.stream.is_some()))
            .finish()
    }
}

impl Signals {
    /// Shut down when `shutdown` resolves; nothing else is asked.
    pub fn shutdown_on(shutdown: impl Future<Output = ()> + Send + 'static) -> Signals {
        Signals {
            shutdown: Some(Box::pin(shutdown)),
            install: None,
            stream: None,
        }
    }

    /// Take signals from the receiver `install` returns, called once when
    /// netd has started and is about to say so.
    pub fn from_stream(
        install: impl FnOnce() -> anyhow::Result<mpsc::Receiver<Signal>> + Send + 'static,
    ) -> Signals {
        Signals {
            shutdown: None,
            install: Some(Box::new(install)),
            stream: None,
        }
    }

    /// Start taking signals from the stream, if there is one.
    pub(super) fn install(&mut self) -> anyhow::Result<()> {
        if let Some(install) = self.install.take() {
            self.stream = Some(install()?);
        }
        Ok(())
    }

    /// The next signal; pending for ever once the shutdown future has
    /// resolved and the stream has ended (or if there are neither).
    pub(super) async fn next(&mut self) -> Signal {
        enum Got {
            Shutdown,
            Signal(Option<Signal>),
        }
        // At most twice round: each branch that ends is not polled again.
        for _ in 0..3 {
            let Signals {
                shutdown, stream, ..
            } = self;
            let got = tokio::select! {
                () = async { match shutdown { Some(f) => f.await, None => std::future::pending().await } } => Got::Shutdown,
                s = async { match stream { Some(r) => r.recv().await, None => std::future::pending().await } } => Got::Signal(s),
            };
            match got {
                Got::Shutdown => {
                    self.shutdown = None;
                    return Signal::Shutdown("shutdown requested");
                }
                Got::Signal(Some(s)) => return s,
                Got::Signal(None) => self.stream = None,
            }
        }
        std::future::pending().await
    }
}
