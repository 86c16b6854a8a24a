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
//! on `q`, Ctrl-C, SIGTERM, SIGINT, SIGHUP, an error and a panic.

mod detail;
mod feed;
mod keys;
mod model;
mod view;

use std::collections::HashMap;
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

type Memory = Arc<parking_lot::Mutex<HashMap<(usize, String, String), Option<f64>>>>;

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
    memory: Memory,
}

impl Screen {
    fn run(mut self) -> anyhow::Result<()> {
        let _guard = TerminalGuard::enter()?;
        let backend = ratatui::backend::CrosstermBackend::new(std::io::stdout());
        let mut term = ratatui::Terminal::new(backend).context("cannot set up the terminal")?;
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
            if event::poll(POLL).context("cannot read the terminal")? {
                match event::read().context("cannot read the terminal")? {
                    Event::Key(k) if k.kind != KeyEventKind::Release => {
                        match keys::on_key(&mut self.model, &mut self.ui, k) {
                            keys::Outcome::Quit => break,
                            keys::Outcome::Nothing => {}
                            keys::Outcome::Redraw => dirty = true,
                            keys::Outcome::Run(t) => {
                                self.start(t);
                                dirty = true;
                            }
                        }
                    }
                    Event::Resize(..) => dirty = true,
                    _ => {}
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
