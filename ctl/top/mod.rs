//! `netctl top`: a full-screen live view of one netd or of a fleet.
//!
//! Where to start reading: [`run`] checks for a terminal, starts one feed
//! task per daemon ([`feed`]: GetCaller, WatchStats, WatchEvents, retried
//! when a daemon is down) and runs the screen loop on a thread of its own
//! (drawing and reading keys block, so they stay off the async runtime).
//! [`model`] folds the feeds into rows, history and events; [`view`]
//! draws them (and [`detail`] the selected listener's pane); [`keys`]
//! turns key presses into sorting, filtering, selection and admin actions.
//!
//! The screen is redrawn at most every [`REDRAW_EVERY`], however many
//! messages arrive in between, and only the rows that fit are built. The
//! terminal is restored (raw mode off, alternate screen left, cursor shown)
//! on `q`, Ctrl-C, SIGTERM, SIGINT, SIGHUP, an error and a panic; when the
//! terminal itself goes away, top ends too.

mod detail;
mod feed;
mod keys;
mod model;
mod view;

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use ratatui::crossterm::{cursor, execute, terminal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dial::Dial;
use crate::render;
use model::{Model, Msg};

/// The least time between two redraws.
pub const REDRAW_EVERY: Duration = Duration::from_millis(250);

/// How long the screen loop waits for a key before looking at the feeds.
const POLL: Duration = Duration::from_millis(50);

/// Feed messages taken per turn of the loop at most, so keys stay
/// responsive under a flood (the rest wait in the queue).
const MSGS_PER_TURN: usize = 20_000;

/// Terminal events handled per turn of the loop at most.
const KEYS_PER_TURN: usize = 256;

/// The queue between the feeds and the screen; a feed waits when it is
/// full, and netd then sees a slow reader (it skips samples, never queues).
const QUEUE: usize = 1024;

/// Run `netctl top` against `hosts` (label, how to reach it).
pub async fn run(hosts: Vec<(String, Dial)>, interval: Duration) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        return Err(render::usage(anyhow!(
            "netctl top needs a terminal, and standard output is not one; use `netctl stats --watch` for a stream of samples (one line per listener when piped, JSON lines with -o json)"
        )));
    }
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&interval) {
        return Err(render::usage(anyhow!(
            "--interval must be between 100ms and 1h"
        )));
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for (i, (_, dial)) in hosts.iter().enumerate() {
        tasks.push(tokio::spawn(feed::run(
            i,
            dial.clone(),
            interval,
            tx.clone(),
            stop.clone(),
        )));
    }
    let quit = Arc::new(AtomicBool::new(false));
    tasks.push(tokio::spawn(quit_on_signals(quit.clone())));
    let labels: Vec<String> = hosts.iter().map(|(l, _)| l.clone()).collect();
    let dials: Vec<Dial> = hosts.into_iter().map(|(_, d)| d).collect();
    let screen = Screen {
        model: Model::new(labels),
        ui: keys::Ui::new(),
        rx,
        tx,
        dials,
        interval,
        quit,
        runtime: tokio::runtime::Handle::current(),
        memory: Arc::default(),
    };
    let result = tokio::task::spawn_blocking(move || screen.run()).await;
    stop.cancel();
    for t in tasks {
        t.abort();
    }
    result.context("the screen thread failed")?
}

/// Set `quit` on SIGTERM, SIGINT or SIGHUP (the terminal went away).
async fn quit_on_signals(quit: Arc<AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = hup.recv() => {}
    }
    quit.store(true, Ordering::Relaxed);
}

/// What the terminal has for the screen loop.
enum Input {
    /// A key (or another event) to read.
    Ready,
    Nothing,
    /// It hung up (its window or tmux server went away).
    Gone,
    /// Standard input is not the terminal (crossterm then reads
    /// /dev/tty): ask crossterm, with [`POLL`].
    Unknown,
}

/// Wait up to [`POLL`] for input on the terminal, or notice that it hung
/// up. Only the session leader is sent SIGHUP when a pseudo-terminal
/// closes, so top, started by a shell without job control, must look
/// itself; and crossterm must not read a hung-up terminal (it would spin
/// on end of file).
fn wait_input(stdin_tty: bool) -> Input {
    let mut fds = [
        libc::pollfd {
            fd: libc::STDOUT_FILENO,
            events: 0,
            revents: 0,
        },
        libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let n: libc::nfds_t = if stdin_tty { 2 } else { 1 };
    let wait = if stdin_tty {
        POLL.as_millis() as i32
    } else {
        0
    };
    // SAFETY: `n` valid pollfds of `fds`.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, wait) };
    let hup = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
    if rc > 0 && fds[..n as usize].iter().any(|f| f.revents & hup != 0) {
        Input::Gone
    } else if !stdin_tty {
        Input::Unknown
    } else if rc > 0 && fds[1].revents & libc::POLLIN != 0 {
        Input::Ready
    } else {
        Input::Nothing
    }
}

/// Puts the terminal back when dropped (and from the panic hook).
struct TerminalGuard;

fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        terminal::LeaveAlternateScreen,
        cursor::Show
    );
}

impl TerminalGuard {
    fn enter() -> anyhow::Result<TerminalGuard> {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            hook(info);
        }));
        terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        let guard = TerminalGuard;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )
        .context("cannot switch to the alternate screen")?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// The screen thread's state.
struct Screen {
    model: Model,
    ui: keys::Ui,
    rx: mpsc::Receiver<Msg>,
    /// For the admin actions' results.
    tx: mpsc::Sender<Msg>,
    dials: Vec<Dial>,
    interval: Duration,
    quit: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
    memory: keys::Memory,
}

impl Screen {
    fn run(mut self) -> anyhow::Result<()> {
        let _guard = TerminalGuard::enter()?;
        let backend = ratatui::backend::CrosstermBackend::new(std::io::stdout());
        let mut term = ratatui::Terminal::new(backend).context("cannot set up the terminal")?;
        let stdin_tty = std::io::stdin().is_terminal();
        let mut dirty = true;
        let mut last_draw: Option<Instant> = None;
        while !self.quit.load(Ordering::Relaxed) {
            if dirty && last_draw.is_none_or(|t| t.elapsed() >= REDRAW_EVERY) {
                let (model, ui, interval) = (&mut self.model, &mut self.ui, self.interval);
                term.draw(|f| view::draw(f, model, ui, interval))
                    .context("cannot draw")?;
                last_draw = Some(Instant::now());
                dirty = false;
            }
            // Read keys only once the terminal has some, and never from a
            // terminal that hung up: crossterm would spin on its end of file.
            let ready = match wait_input(stdin_tty) {
                Input::Gone => break,
                Input::Ready => true,
                Input::Nothing => false,
                Input::Unknown => event::poll(POLL).context("cannot read the terminal")?,
            };
            // One read can bring several keys (a paste, a burst): take
            // what crossterm holds.
            for _ in 0..usize::from(ready) * KEYS_PER_TURN {
                if !event::poll(Duration::ZERO).context("cannot read the terminal")? {
                    break;
                }
                match self.on_event(event::read().context("cannot read the terminal")?) {
                    Some(true) => return Ok(()),
                    Some(false) => dirty = true,
                    None => {}
                }
            }
            for _ in 0..MSGS_PER_TURN {
                match self.rx.try_recv() {
                    Ok(Msg::Done(s)) => {
                        self.ui.status = s;
                        dirty = true;
                    }
                    Ok(m) => dirty |= self.model.apply(m),
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }

    /// Handle a terminal event: `Some(true)` to quit, `Some(false)` to
    /// redraw.
    fn on_event(&mut self, ev: Event) -> Option<bool> {
        match ev {
            Event::Key(k) if k.kind != KeyEventKind::Release => {
                match keys::on_key(&mut self.model, &mut self.ui, k) {
                    keys::Outcome::Quit => Some(true),
                    keys::Outcome::Nothing => None,
                    keys::Outcome::Redraw => Some(false),
                    keys::Outcome::Run(t) => {
                        self.start(t);
                        Some(false)
                    }
                }
            }
            Event::Resize(..) => Some(false),
            _ => None,
        }
    }

    /// Carry out an admin action in the background; its result comes back
    /// as [`Msg::Done`].
    fn start(&self, t: keys::Target) {
        let Some(dial) = self.dials.get(t.host).cloned() else {
            return;
        };
        let (tx, memory) = (self.tx.clone(), self.memory.clone());
        self.runtime.spawn(async move {
            let line = keys::run(dial, t, memory).await;
            let _ = tx.send(Msg::Done(line)).await;
        });
    }
}
