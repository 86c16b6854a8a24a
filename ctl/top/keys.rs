//! The keys of `netctl top` and the admin actions they lead to (drain,
//! stop, fault on/off), each behind a y/n confirmation and offered only to
//! an admin caller: a viewer's key press is refused in the status line
//! without a call (netd would refuse it too).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::anyhow;
use netd::proto;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::model::{Col, Model};
use crate::dial::{Dial, status_line};
use crate::escape::escape;

/// The drain timeout of the drain key (as `netctl drain`'s default).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Characters a filter may hold.
const FILTER_MAX: usize = 128;

/// The one-line key summary under the table.
pub const HELP_LINE: &str =
    "q quit  ? help  / filter  1-9,0 s S sort  r reverse  ↑↓ PgUp PgDn Home End select";

/// The help overlay (`?`): every key.
pub const HELP: &[&str] = &[
    "netctl top: keys",
    "",
    "  q, Ctrl-C         quit",
    "  Esc               clear the filter, close an overlay, cancel",
    "  ↑ ↓ k j           select the previous / next listener",
    "  PgUp PgDn         a page up / down;  Home End  first / last",
    "  1-9, 0            sort by NAME KIND STATE IN/s OUT/s CONN|DG/s ACTIVE",
    "                    ERRORS FAULT, 0: LAST 1m (again: reverse)",
    "  s S               sort by the next / previous column (HOST too)",
    "  r                 reverse the order",
    "  Enter             show / hide the detail pane on a small terminal",
    "  /                 filter: name, kind or label (key=value) containing",
    "                    the text; Enter keeps it, Esc clears it",
    "  d                 drain the selected listener (admin)",
    "  x                 stop the selected listener (admin)",
    "  f                 switch a fault of it off (toxicity 0) or on (admin)",
    "  y / n             confirm / cancel an action",
    "",
    "FAULT: firing = a fault's counters rose in the last 10 s; on = it has faults.",
    "Press any key to close.",
];

/// The toxicity each fault had when top switched it off, by (daemon,
/// listener, fault), to give it back when switched on again.
pub type Memory = std::sync::Arc<parking_lot::Mutex<HashMap<(usize, String, String), Option<f64>>>>;

/// What an admin key does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Drain,
    Stop,
    /// Switch fault `2` off (toxicity 0) or back on.
    Fault(String),
}

/// An action on one listener of one daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub host: usize,
    pub listener: String,
    pub action: Action,
}

impl Target {
    pub fn describe(&self) -> String {
        let l = escape(&self.listener);
        match &self.action {
            Action::Drain => format!("drain '{l}' (connections closed after 30s)"),
            Action::Stop => format!("stop '{l}'"),
            Action::Fault(f) => format!("switch fault '{}' of '{l}' off or on", escape(f)),
        }
    }
}

/// The input mode.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    /// Typing a filter (the text so far).
    Filter(String),
    /// Waiting for y/n.
    Confirm(Target),
    /// Waiting for the number of a fault of the listener (host, name).
    PickFault(usize, String, Vec<String>),
    Help,
}

/// What the loop must do after a key.
pub enum Outcome {
    Nothing,
    Redraw,
    Quit,
    Run(Target),
}

/// The state of the input beside the model.
pub struct Ui {
    pub mode: Mode,
    pub status: String,
    /// Rows of the table area at the last draw (for paging).
    pub page: usize,
    /// Enter: show the detail pane on a terminal too small for it to sit
    /// beside or under a full table (the table shrinks to a few rows).
    pub detail: bool,
}

impl Ui {
    pub fn new() -> Self {
        Ui {
            mode: Mode::Normal,
            status: String::new(),
            page: 10,
            detail: false,
        }
    }
}

/// The column a digit sorts by: 1-9 the table's columns after HOST in
/// order (NAME to FAULT), 0 the sparkline (LAST 1m).
fn digit_col(c: char) -> Option<Col> {
    match c.to_digit(10)? {
        0 => Some(Col::Trend),
        d => Col::ALL.get(d as usize).copied(),
    }
}

/// Handle one key press.
pub fn on_key(model: &mut Model, ui: &mut Ui, key: KeyEvent) -> Outcome {
    if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
        return Outcome::Quit;
    }
    match std::mem::replace(&mut ui.mode, Mode::Normal) {
        Mode::Help => Outcome::Redraw,
        Mode::Filter(mut text) => {
            match key.code {
                KeyCode::Enter => {}
                KeyCode::Esc => model.set_filter(String::new()),
                KeyCode::Backspace => {
                    text.pop();
                    model.set_filter(text.clone());
                    ui.mode = Mode::Filter(text);
                }
                KeyCode::Char(c) if !c.is_control() && text.chars().count() < FILTER_MAX => {
                    text.push(c);
                    model.set_filter(text.clone());
                    ui.mode = Mode::Filter(text);
                }
                _ => ui.mode = Mode::Filter(text),
            }
            Outcome::Redraw
        }
        Mode::Confirm(t) => match key.code {
            KeyCode::Char('y' | 'Y') => {
                ui.status = format!("{}...", t.describe());
                Outcome::Run(t)
            }
            _ => {
                ui.status = "cancelled".into();
                Outcome::Redraw
            }
        },
        Mode::PickFault(host, listener, faults) => {
            let n = match key.code {
                KeyCode::Char(c) => c.to_digit(10).map(|d| d as usize),
                _ => None,
            };
            match n.and_then(|n| n.checked_sub(1)).and_then(|i| faults.get(i)) {
                Some(f) => {
                    ui.mode = Mode::Confirm(Target {
                        host,
                        listener,
                        action: Action::Fault(f.clone()),
                    })
                }
                None => ui.status = "cancelled".into(),
            }
            Outcome::Redraw
        }
        Mode::Normal => normal(model, ui, key),
    }
}

fn normal(model: &mut Model, ui: &mut Ui, key: KeyEvent) -> Outcome {
    let page = ui.page.max(1) as isize;
    match key.code {
        KeyCode::Char('q') => return Outcome::Quit,
        KeyCode::Esc => model.set_filter(String::new()),
        KeyCode::Enter => ui.detail = !ui.detail,
        KeyCode::Char('?') | KeyCode::F(1) => ui.mode = Mode::Help,
        KeyCode::Char('/') => ui.mode = Mode::Filter(model.filter.clone()),
        KeyCode::Up | KeyCode::Char('k') => model.move_by(-1, ui.page),
        KeyCode::Down | KeyCode::Char('j') => model.move_by(1, ui.page),
        KeyCode::PageUp => model.move_by(-page, ui.page),
        KeyCode::PageDown => model.move_by(page, ui.page),
        KeyCode::Home | KeyCode::Char('g') => model.move_by(isize::MIN / 2, ui.page),
        KeyCode::End | KeyCode::Char('G') => model.move_by(isize::MAX / 2, ui.page),
        KeyCode::Char('r') => model.reverse(),
        KeyCode::Char(c @ ('s' | 'S')) => {
            let cols = &Col::ALL;
            let i = cols.iter().position(|c| *c == model.sort).unwrap_or(0);
            let n = cols.len();
            let next = if c == 's' {
                (i + 1) % n
            } else {
                (i + n - 1) % n
            };
            model.sort_by(cols[next]);
        }
        KeyCode::Char(c) if c.is_ascii_digit() => {
            if let Some(col) = digit_col(c) {
                model.sort_by(col);
            }
        }
        KeyCode::Char(c @ ('d' | 'x' | 'f')) => admin_key(model, ui, c),
        _ => return Outcome::Nothing,
    }
    Outcome::Redraw
}

/// Why admin keys are greyed out for daemon `h`, if they are.
pub fn refusal(model: &Model, h: usize) -> Option<String> {
    let host = &model.hosts[h];
    match &host.caller {
        Some((role, who)) if role != "admin" && !role.is_empty() => Some(format!(
            "needs the admin role; netd gives {} the {role} role",
            if who.is_empty() { "you" } else { who }
        )),
        _ => None,
    }
}

fn admin_key(model: &mut Model, ui: &mut Ui, c: char) {
    let Some((h, l)) = model.selection() else {
        ui.status = "no listener selected".into();
        return;
    };
    let name = l.name.clone();
    let faults: Vec<String> = l
        .totals
        .iter()
        .flat_map(|t| &t.faults)
        .map(|f| f.name.clone())
        .collect();
    let verb = match c {
        'd' => "drain",
        'x' => "stop",
        _ => "fault on/off",
    };
    if let Some(why) = refusal(model, h) {
        ui.status = format!("refused: {verb} {why}");
        return;
    }
    let action = match c {
        'd' => Action::Drain,
        'x' => Action::Stop,
        _ => match faults.len() {
            0 => {
                ui.status = format!("'{}' has no faults", escape(&name));
                return;
            }
            1 => Action::Fault(faults[0].clone()),
            _ => {
                ui.mode = Mode::PickFault(h, name, faults);
                return;
            }
        },
    };
    ui.mode = Mode::Confirm(Target {
        host: h,
        listener: name,
        action,
    });
}

/// Carry out `t` on the daemon behind `dial`; the status line it leaves.
/// `memory` holds the toxicity a fault had when top switched it off.
pub async fn run(dial: Dial, t: Target, memory: Memory) -> String {
    let result = match &t.action {
        Action::Stop => stop(&dial, &t.listener).await,
        Action::Drain => drain(&dial, &t.listener).await,
        Action::Fault(f) => toggle_fault(&dial, t.host, &t.listener, f, &memory).await,
    };
    match result {
        Ok(s) => s,
        Err(e) => format!("{e:#}"),
    }
}

async fn stop(dial: &Dial, name: &str) -> anyhow::Result<String> {
    let mut c = dial.client(false).await?;
    c.stop_listener(proto::StopListenerRequest { name: name.into() })
        .await
        .map_err(|s| status_line(&format!("cannot stop '{}'", escape(name)), &s))?;
    Ok(format!("stopped '{}'", escape(name)))
}

async fn drain(dial: &Dial, name: &str) -> anyhow::Result<String> {
    let mut c = dial.client(true).await?;
    let r = c
        .drain_listener(proto::DrainListenerRequest {
            name: name.into(),
            timeout: prost_types::Duration::try_from(DRAIN_TIMEOUT).ok(),
        })
        .await
        .map_err(|s| status_line(&format!("cannot drain '{}'", escape(name)), &s))?
        .into_inner();
    Ok(format!(
        "drained '{}' ({} closed at the timeout)",
        escape(name),
        r.connections_closed
    ))
}

async fn toggle_fault(
    dial: &Dial,
    host: usize,
    listener: &str,
    fault: &str,
    memory: &Memory,
) -> anyhow::Result<String> {
    let what = format!(
        "cannot switch fault '{}' of '{}'",
        escape(fault),
        escape(listener)
    );
    let mut c = dial.client(false).await?;
    let list = c
        .list_faults(proto::ListFaultsRequest {
            listener: listener.into(),
        })
        .await
        .map_err(|s| status_line(&what, &s))?
        .into_inner();
    let Some(mut f) = list
        .faults
        .into_iter()
        .find_map(|s| s.fault.filter(|f| f.name == fault))
    else {
        return Err(anyhow!("{what}: it is gone"));
    };
    let key = (host, listener.to_string(), fault.to_string());
    let off = f.toxicity != Some(0.0);
    if off {
        memory.lock().insert(key, f.toxicity);
        f.toxicity = Some(0.0);
    } else {
        f.toxicity = memory.lock().remove(&key).flatten();
    }
    c.update_fault(proto::UpdateFaultRequest {
        listener: listener.into(),
        fault: Some(f),
    })
    .await
    .map_err(|s| status_line(&what, &s))?;
    Ok(if off {
        format!(
            "fault '{}' of '{}' is off (toxicity 0); f again to switch it on",
            escape(fault),
            escape(listener)
        )
    } else {
        format!("fault '{}' of '{}' is on", escape(fault), escape(listener))
    })
}
