//! Drawing `netctl top`: a title line, the table (only the rows that fit
//! are built), the detail pane when there is room (right of the table on a
//! wide terminal, under it on a tall one, left out otherwise), and three
//! lines at the bottom: the admin keys, the status or prompt, the help.
//!
//! Columns have fixed widths but NAME (and HOST), which take what is left;
//! when the terminal is too narrow the sparkline goes first, then FAULT,
//! ERRORS, ACTIVE and STATE, so nothing wraps.

use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};

use super::detail;
use super::keys::{self, Mode, Ui};
use super::model::{self, Col, HostState, Model, RowId};
use crate::escape::escape;

/// Sparkline width, in blocks (3 s each).
pub const SPARK_WIDTH: u16 = 20;
const NAME_MIN: u16 = 12;
const NAME_MAX: u16 = 40;
const HOST_WIDTH: u16 = 16;
/// The detail pane goes right of the table from this width, under it from
/// this height.
const SIDE_PANE_MIN_WIDTH: u16 = 160;
const SIDE_PANE_WIDTH: u16 = 58;
const BOTTOM_PANE_MIN_HEIGHT: u16 = 34;
const BOTTOM_PANE_HEIGHT: u16 = 14;
/// Below [`BOTTOM_PANE_MIN_HEIGHT`], Enter shows the pane under a table of
/// this many lines (header included), when the body has this many.
const SMALL_TABLE_HEIGHT: u16 = 5;
const SMALL_PANE_MIN_HEIGHT: u16 = 12;

fn width_of(c: Col) -> u16 {
    match c {
        Col::Host => HOST_WIDTH,
        Col::Name => NAME_MIN,
        Col::Kind => 10,
        Col::State => 8,
        Col::In | Col::Out => 7,
        Col::Rate => 9,
        Col::Active | Col::Errors | Col::Fault => 6,
        Col::Trend => SPARK_WIDTH,
    }
}

/// The columns that fit `width`, with their widths.
pub fn columns(fleet: bool, width: u16) -> Vec<(Col, u16)> {
    let mut cols: Vec<Col> = Col::ALL
        .iter()
        .copied()
        .filter(|c| fleet || *c != Col::Host)
        .collect();
    let need = |cols: &[Col]| -> u16 { cols.iter().map(|c| width_of(*c) + 1).sum::<u16>() };
    for drop in [Col::Trend, Col::Fault, Col::Errors, Col::Active, Col::State] {
        if need(&cols) <= width {
            break;
        }
        cols.retain(|c| *c != drop);
    }
    let spare = width.saturating_sub(need(&cols));
    cols.iter()
        .map(|&c| {
            let w = match c {
                Col::Name => (NAME_MIN + spare).min(NAME_MAX),
                _ => width_of(c),
            };
            (c, w)
        })
        .collect()
}

/// A rate, compact: 512, 12.3K, 1.2M (per second; bytes or events).
pub fn compact(v: f64) -> String {
    let v = if v.is_finite() && v > 0.0 { v } else { 0.0 };
    if v < 1000.0 {
        if v > 0.0 && v < 10.0 && v.fract() != 0.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.0}")
        }
    } else {
        let mut v = v;
        let mut unit = ' ';
        for u in ['K', 'M', 'G', 'T', 'P'] {
            if v < 1000.0 {
                break;
            }
            v /= 1000.0;
            unit = u;
        }
        if v < 100.0 {
            format!("{v:.1}{unit}")
        } else {
            format!("{v:.0}{unit}")
        }
    }
}

fn cell_for(host: &HostState, l: &netd::proto::ListenerStatsSample, c: Col) -> Cell<'static> {
    let t = l.totals.as_ref();
    let counts = netd::services::show::counts_connections(model::kind_of(l));
    match c {
        Col::Host => Cell::from(escape(&host.label).into_owned()),
        Col::Name => Cell::from(escape(&l.name).into_owned()),
        Col::Kind => Cell::from(model::kind_of(l).slug()),
        Col::State => {
            let s = model::state_of(l).slug();
            let color = match s {
                "running" => Color::Green,
                "failed" => Color::Red,
                _ => Color::Yellow,
            };
            Cell::from(Span::styled(s, Style::default().fg(color)))
        }
        Col::In => Cell::from(compact(l.rates.map_or(0.0, |r| r.bytes_in_per_sec))),
        Col::Out => Cell::from(compact(l.rates.map_or(0.0, |r| r.bytes_out_per_sec))),
        Col::Rate => Cell::from(compact(model::events_per_sec(l))),
        Col::Active if counts => Cell::from(t.map_or(0, |t| t.connections_active).to_string()),
        Col::Active => Cell::from("-"),
        Col::Errors => {
            let e = t.map_or(0, |t| t.errors);
            let style = if e > 0 {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            };
            Cell::from(Span::styled(e.to_string(), style))
        }
        Col::Fault => match model::fault_level(host, l) {
            2 => Cell::from(Span::styled(
                "firing",
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
            )),
            1 => Cell::from(Span::styled("on", Style::default().fg(Color::Yellow))),
            _ => Cell::from(""),
        },
        Col::Trend => Cell::from(Span::styled(
            host.hist
                .get(&l.name)
                .map(|h| h.render(SPARK_WIDTH as usize, host.now()))
                .unwrap_or_default(),
            Style::default().fg(Color::Cyan),
        )),
    }
}

/// The row of a daemon with nothing to list.
fn host_row(host: &HostState, cols: &[(Col, u16)]) -> Row<'static> {
    let (word, text, color) = match (&host.down, &host.sample) {
        (Some(e), _) => ("down", format!("unreachable: {e}"), Color::Red),
        (None, None) => ("-", "connecting...".to_string(), Color::Yellow),
        (None, Some(_)) => ("-", "(no listeners)".to_string(), Color::DarkGray),
    };
    let cells: Vec<Cell> = cols
        .iter()
        .map(|(c, _)| match c {
            Col::Host => Cell::from(escape(&host.label).into_owned()),
            Col::Name => Cell::from(escape(&text).into_owned()),
            Col::State => Cell::from(word),
            _ => Cell::from(""),
        })
        .collect();
    Row::new(cells).style(Style::default().fg(color))
}

/// Draw the whole screen.
pub fn draw(f: &mut Frame, model: &mut Model, ui: &mut Ui, interval: std::time::Duration) {
    let area = f.area();
    let [title, body, admin, status, help] = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Min(1),
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(area);
    let (table_area, pane) = if area.width >= SIDE_PANE_MIN_WIDTH {
        let [t, p] = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Min(40), Constraint::Length(SIDE_PANE_WIDTH)])
            .areas(body);
        (t, Some(p))
    } else if area.height >= BOTTOM_PANE_MIN_HEIGHT {
        let [t, p] = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Min(5), Constraint::Length(BOTTOM_PANE_HEIGHT)])
            .areas(body);
        (t, Some(p))
    } else if ui.detail && body.height >= SMALL_PANE_MIN_HEIGHT {
        // A small terminal, the pane asked for with Enter: a few rows of
        // the table (the selection stays visible), the pane below.
        let [t, p] = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Length(SMALL_TABLE_HEIGHT), Constraint::Min(5)])
            .areas(body);
        (t, Some(p))
    } else {
        (body, None)
    };
    ui.page = table_area.height.saturating_sub(1).max(1) as usize;
    model.scroll_to_selection(ui.page);
    draw_table(f, model, table_area);
    f.render_widget(Paragraph::new(title_line(model, interval)), title);
    if let Some(p) = pane {
        draw_detail(f, model, p);
    }
    f.render_widget(Paragraph::new(admin_line(model)), admin);
    let mut line = status_line(ui);
    if ui.mode == Mode::Normal && ui.status.is_empty() {
        // Without a pane, the selected unreachable daemon's error here.
        let sel = model.selected;
        if let Some(RowId::Host(h)) = model.rows().get(sel).copied() {
            if let Some(e) = &model.hosts[h].down {
                line = Line::from(Span::styled(
                    format!("{}: {}", escape(&model.hosts[h].label), escape(e)),
                    Style::default().fg(Color::Red),
                ));
            }
        }
    }
    f.render_widget(Paragraph::new(line), status);
    f.render_widget(
        Paragraph::new(keys::HELP_LINE).style(Style::default().fg(Color::DarkGray)),
        help,
    );
    if ui.mode == Mode::Help {
        draw_help(f, area);
    }
}

fn title_line(model: &mut Model, interval: std::time::Duration) -> Line<'static> {
    let total = model.listener_count();
    let shown = model
        .rows()
        .iter()
        .filter(|r| matches!(r, RowId::Listener(..)))
        .count();
    let arrow = if model.desc { "▼" } else { "▲" };
    let mut s = format!(
        "netctl top: {total} listeners, {shown} shown, sort {} {arrow}, every {}",
        model.sort.header(),
        humantime::format_duration(interval)
    );
    if !model.filter.is_empty() {
        s.push_str(&format!(", filter \"{}\"", escape(&model.filter)));
    }
    if model.fleet {
        let down = model.hosts.iter().filter(|h| h.down.is_some()).count();
        s.push_str(&format!(", {} daemons ({down} down)", model.hosts.len()));
    } else if let Some((role, who)) = &model.hosts[0].caller {
        if !role.is_empty() {
            s.push_str(&format!(", {} as {role}", escape(who)));
        }
    }
    Line::from(Span::styled(
        s,
        Style::default().add_modifier(Modifier::BOLD),
    ))
}

fn draw_table(f: &mut Frame, model: &mut Model, area: Rect) {
    let cols = columns(model.fleet, area.width);
    let height = area.height.saturating_sub(1) as usize;
    let (offset, selected) = (model.offset, model.selected);
    let visible: Vec<RowId> = model
        .rows()
        .iter()
        .skip(offset)
        .take(height)
        .copied()
        .collect();
    let header = Row::new(cols.iter().map(|(c, _)| {
        let mut h = c.header().to_string();
        if *c == model.sort {
            h.push(if model.desc { '▼' } else { '▲' });
        }
        Cell::from(h)
    }))
    .style(Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let rows: Vec<Row> = visible
        .iter()
        .enumerate()
        .map(|(n, r)| {
            let row = match *r {
                RowId::Host(h) => host_row(&model.hosts[h], &cols),
                RowId::Listener(h, i) => {
                    let host = &model.hosts[h];
                    match host.listener(i) {
                        Some(l) => Row::new(cols.iter().map(|(c, _)| cell_for(host, l, *c))),
                        None => Row::new(Vec::<Cell>::new()),
                    }
                }
            };
            if offset + n == selected {
                row.style(Style::default().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        })
        .collect();
    let widths: Vec<Constraint> = cols.iter().map(|(_, w)| Constraint::Length(*w)).collect();
    f.render_widget(
        Table::new(rows, widths).header(header).column_spacing(1),
        area,
    );
}

fn draw_detail(f: &mut Frame, model: &mut Model, area: Rect) {
    let sel = model.selected;
    let lines = match model.rows().get(sel).copied() {
        Some(RowId::Listener(h, i)) => {
            let host = &model.hosts[h];
            match host.listener(i) {
                Some(l) => {
                    let mut v = Vec::new();
                    if model.fleet {
                        v.push(Line::from(format!("host {}", escape(&host.label))));
                    }
                    v.extend(detail::lines(host, l));
                    v
                }
                None => Vec::new(),
            }
        }
        Some(RowId::Host(h)) => {
            let host = &model.hosts[h];
            let mut v = vec![Line::from(format!("host {}", escape(&host.label)))];
            if let Some(e) = &host.down {
                v.push(Line::from(format!("unreachable (retrying): {}", escape(e))));
            }
            v
        }
        None => vec![Line::from("no listener selected")],
    };
    let block = Block::default().borders(Borders::ALL).title(" detail ");
    f.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false }),
        area,
    );
}

fn admin_line(model: &mut Model) -> Line<'static> {
    let host = model.selection().map(|(h, _)| h).unwrap_or(0);
    let keys = "d drain  x stop  f fault on/off";
    match keys::refusal(model, host) {
        None => Line::from(Span::raw(keys)),
        Some(why) => Line::from(vec![
            Span::styled(keys, Style::default().fg(Color::DarkGray)),
            Span::styled(
                format!("  ({})", escape(&why)),
                Style::default().fg(Color::DarkGray),
            ),
        ]),
    }
}

fn status_line(ui: &Ui) -> Line<'static> {
    match &ui.mode {
        Mode::Filter(t) => Line::from(format!("filter: {}█", escape(t))),
        Mode::Confirm(t) => Line::from(Span::styled(
            format!("{}? y/n", t.describe()),
            Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        )),
        Mode::PickFault(_, l, faults) => Line::from(Span::styled(
            format!(
                "which fault of '{}'? {}",
                escape(l),
                faults
                    .iter()
                    .enumerate()
                    .map(|(i, f)| format!("{} {}", i + 1, escape(f)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Style::default().fg(Color::Yellow),
        )),
        _ => Line::from(escape(&ui.status).into_owned()),
    }
}

fn draw_help(f: &mut Frame, area: Rect) {
    let w = 80.min(area.width);
    let h = (keys::HELP.len() as u16 + 2).min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, r);
    let lines: Vec<Line> = keys::HELP.iter().map(|l| Line::from(*l)).collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL)),
        r,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the width, the columns chosen fit it (with their spacing),
    /// NAME stays, and the sparkline is the first to go.
    #[test]
    fn columns_fit_the_width() {
        for fleet in [false, true] {
            for width in 80..260u16 {
                let cols = columns(fleet, width);
                let used: u16 = cols.iter().map(|(_, w)| w + 1).sum();
                assert!(used <= width, "{width}: {used}");
                assert!(cols.iter().any(|(c, _)| *c == Col::Name));
            }
            assert!(!columns(fleet, 80).iter().any(|(c, _)| *c == Col::Trend));
            assert!(columns(fleet, 140).iter().any(|(c, _)| *c == Col::Trend));
        }
    }

    #[test]
    fn compact_rates() {
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(2.5), "2.5");
        assert_eq!(compact(512.0), "512");
        assert_eq!(compact(23_900.0), "23.9K");
        assert_eq!(compact(1_240_000.0), "1.2M");
        assert_eq!(compact(f64::NAN), "0");
    }
}
