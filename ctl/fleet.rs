//! Fleet-wide netctl: `list`, `stats [--watch]` and `events` against
//! several daemons at once (`--control` repeated, or NETD_CONTROL holding a
//! comma-separated list).
//!
//! Every daemon is asked in parallel over its own connection, with the same
//! dial flags (TLS files, timeouts) for all; the answers are merged under a
//! HOST column holding the control address as given. A daemon that cannot
//! be reached (or refuses) is one row or line saying so, and its reason on
//! stderr; the others carry on. The exit code is 3 only when no daemon
//! could be reached, 1 when one refused, else 0.
//!
//! A stream (`--watch`, `events`) that breaks is reported once and not
//! retried: netctl is a window onto the fleet, not a collector (history
//! and alerting belong to Prometheus, see docs/fleet.md).

use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use anyhow::anyhow;
use futures_util::future::join_all;
use netd::proto::{self, StatsSample};
use netd::util::addr::ControlAddr;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::cmd::{Ctx, print_json};
use crate::dial::{Dial, status_line};
use crate::escape::escape;
use crate::render::{self, Class, out, outln};
use crate::{Cli, Command, output, stats};

/// One daemon of the fleet: its HOST label and how to reach it.
#[derive(Clone)]
struct Host {
    label: String,
    dial: Dial,
}

/// Run `cli`'s command against every `--control` address.
pub(crate) async fn run(cli: Cli, dial: &Dial) -> anyhow::Result<()> {
    let hosts: Vec<Host> = cli
        .control
        .iter()
        .map(|a: &ControlAddr| Host {
            label: a.to_string(),
            dial: Dial {
                control: Some(a.clone()),
                opts: dial.opts.clone(),
            },
        })
        .collect();
    let ctx = Ctx {
        dial: dial.clone(),
        json: cli.output == crate::Format::Json,
    };
    match cli.command {
        Command::List => list(&ctx, &hosts).await,
        Command::Stats {
            name,
            watch,
            interval,
            count,
            ..
        } => {
            if watch {
                watch_stats(&ctx, &hosts, name, interval, count).await
            } else {
                get_stats(&ctx, &hosts, name).await
            }
        }
        Command::Events { name } => events(&ctx, &hosts, name).await,
        _ => Err(render::usage(anyhow!(
            "this command takes one --control; only list, stats and events take several"
        ))),
    }
}

/// The word for a daemon that failed with `e`.
fn failure_word(e: &anyhow::Error) -> &'static str {
    if render::exit_code(e) == Class::Unreachable as u8 {
        "unreachable"
    } else {
        "error"
    }
}

/// A row for a daemon with no answer: HOST, then `word` in the third
/// column (STATE in both tables), `-` elsewhere.
fn failure_row(host: &str, word: &str, columns: usize) -> Vec<String> {
    let mut row = vec![host.to_string(), "-".into(), "-".into(), word.into()];
    row.resize(columns + 1, "-".into());
    row
}

/// A daemon without an answer, in JSON: `reachable` is false when netd
/// could not be reached, true when it answered with an error.
fn failure_json(host: &str, e: &anyhow::Error) -> Value {
    json!({
        "host": host,
        "reachable": failure_word(e) != "unreachable",
        "error": format!("{e:#}"),
    })
}

/// Say why each daemon failed (stderr), then the exit class: 3 when every
/// daemon was unreachable, 1 when any refused or failed otherwise.
fn finish(failures: &[(&str, &anyhow::Error)], total: usize) -> anyhow::Result<()> {
    for (host, e) in failures {
        eprintln!("netctl: {}: {}", escape(host), escape(&format!("{e:#}")));
    }
    let unreachable = failures
        .iter()
        .filter(|(_, e)| failure_word(e) == "unreachable")
        .count();
    if total > 0 && unreachable == total {
        return Err(render::unreachable(anyhow!(
            "none of the {total} daemons could be reached"
        )));
    }
    if unreachable < failures.len() {
        return Err(render::refused(anyhow!(
            "{} of {total} daemons refused",
            failures.len() - unreachable
        )));
    }
    Ok(())
}

/// Ask every daemon at once; answers in `hosts` order.
async fn ask_all<T, F, Fut>(hosts: &[Host], ask: F) -> Vec<anyhow::Result<T>>
where
    F: Fn(Host) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    join_all(hosts.iter().cloned().map(ask)).await
}

async fn list(ctx: &Ctx, hosts: &[Host]) -> anyhow::Result<()> {
    let answers = ask_all(hosts, |h| async move {
        let mut c = h.dial.client(false).await?;
        netd::control::client::list_all(&mut c)
            .await
            .map_err(|s| status_line("cannot list listeners", &s))
    })
    .await;
    let columns = output::LIST_HEADER.len();
    if ctx.json {
        let mut listeners = Vec::new();
        let mut daemons = Vec::new();
        for (h, a) in hosts.iter().zip(&answers) {
            match a {
                Ok(ls) => {
                    daemons.push(json!({ "host": h.label, "reachable": true }));
                    for l in ls {
                        let mut v = output::listener_json(l);
                        v["host"] = json!(h.label);
                        listeners.push(v);
                    }
                }
                Err(e) => daemons.push(failure_json(&h.label, e)),
            }
        }
        print_json(&json!({ "hosts": daemons, "listeners": listeners }));
    } else {
        let mut header = vec!["HOST"];
        header.extend_from_slice(&output::LIST_HEADER);
        let mut rows = Vec::new();
        for (h, a) in hosts.iter().zip(&answers) {
            match a {
                Ok(ls) if ls.is_empty() => {
                    rows.push(failure_row(&h.label, "(no listeners)", columns))
                }
                Ok(ls) => rows.extend(
                    output::list_rows(ls)
                        .into_iter()
                        .map(|r| with_host(&h.label, r)),
                ),
                Err(e) => rows.push(failure_row(&h.label, failure_word(e), columns)),
            }
        }
        output::table(&header, &rows);
    }
    let failures = failures(hosts, &answers);
    finish(&failures, hosts.len())
}

fn with_host(host: &str, row: Vec<String>) -> Vec<String> {
    std::iter::once(host.to_string()).chain(row).collect()
}

fn failures<'a, T>(
    hosts: &'a [Host],
    answers: &'a [anyhow::Result<T>],
) -> Vec<(&'a str, &'a anyhow::Error)> {
    hosts
        .iter()
        .zip(answers)
        .filter_map(|(h, a)| a.as_ref().err().map(|e| (h.label.as_str(), e)))
        .collect()
}

fn stats_what(name: &Option<String>) -> String {
    match name {
        Some(n) => format!("cannot get stats of '{n}'"),
        None => "cannot get stats".to_string(),
    }
}

/// The merged stats table: HOST, then `netctl stats`' columns.
fn stats_table(hosts: &[Host], samples: &[Option<StatsSample>], down: &[Option<String>]) {
    let mut header = vec!["HOST"];
    header.extend_from_slice(&stats::HEADER);
    let mut rows = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        if let Some(word) = &down[i] {
            rows.push(failure_row(&h.label, word, stats::HEADER.len()));
        } else if let Some(s) = &samples[i] {
            rows.extend(stats::rows(s).into_iter().map(|r| with_host(&h.label, r)));
        }
    }
    output::table(&header, &rows);
}

async fn get_stats(ctx: &Ctx, hosts: &[Host], name: Option<String>) -> anyhow::Result<()> {
    let what = stats_what(&name);
    let name = name.unwrap_or_default();
    let answers = ask_all(hosts, |h| {
        let (what, name) = (what.clone(), name.clone());
        async move {
            let mut c = h.dial.client(false).await?;
            netd::control::client::stats_all(&mut c, &name)
                .await
                .map_err(|s| status_line(&what, &s))
        }
    })
    .await;
    if ctx.json {
        for (h, a) in hosts.iter().zip(&answers) {
            let v = match a {
                Ok(s) => {
                    let mut v = stats::sample_json(s);
                    v["host"] = json!(h.label);
                    v
                }
                Err(e) => failure_json(&h.label, e),
            };
            outln!("{v}");
        }
    } else {
        let down: Vec<Option<String>> = answers
            .iter()
            .map(|a| a.as_ref().err().map(|e| failure_word(e).to_string()))
            .collect();
        let samples: Vec<Option<StatsSample>> =
            answers.iter().map(|a| a.as_ref().ok().cloned()).collect();
        stats_table(hosts, &samples, &down);
    }
    finish(&failures(hosts, &answers), hosts.len())
}

/// What a daemon's stream task reports.
enum Report<T> {
    Item(usize, T),
    /// The stream could not start or broke; the task has ended.
    Down(usize, anyhow::Error),
}

/// Queue between the stream tasks and the printer; a task waits when it
/// is full (the daemon then sees a slow reader, as with one --control).
const QUEUE: usize = 64;

/// Start one task per daemon that opens a stream with `open` and reports
/// its items until it ends.
fn spawn_streams<T, F, Fut>(hosts: &[Host], open: F) -> mpsc::Receiver<Report<T>>
where
    T: Send + 'static,
    F: Fn(Host) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<tonic::Streaming<T>>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    for (i, h) in hosts.iter().cloned().enumerate() {
        let tx = tx.clone();
        let label = h.label.clone();
        let opening = open(h);
        tokio::spawn(async move {
            let mut stream = match opening.await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Report::Down(i, e)).await;
                    return;
                }
            };
            loop {
                let report = match stream.message().await {
                    Ok(Some(item)) => Report::Item(i, item),
                    Ok(None) => Report::Down(
                        i,
                        render::unreachable(anyhow!("{label}: netd ended the stream")),
                    ),
                    Err(s) => Report::Down(i, status_line("stream", &s)),
                };
                let last = matches!(report, Report::Down(..));
                if tx.send(report).await.is_err() || last {
                    return;
                }
            }
        });
    }
    rx
}

async fn watch_stats(
    ctx: &Ctx,
    hosts: &[Host],
    name: Option<String>,
    interval: Duration,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let what = stats_what(&name);
    let req = proto::WatchStatsRequest {
        name: name.unwrap_or_default(),
        interval: Some(
            prost_types::Duration::try_from(interval)
                .map_err(|_| render::usage(anyhow!("--interval is too large")))?,
        ),
    };
    let mut rx = spawn_streams(hosts, |h| {
        let (req, what) = (req.clone(), what.clone());
        async move {
            let mut c = h.dial.client(true).await?;
            Ok(c.watch_stats(req)
                .await
                .map_err(|s| status_line(&what, &s))?
                .into_inner())
        }
    });
    let tty = !ctx.json && std::io::stdout().is_terminal();
    let n = hosts.len();
    let mut samples: Vec<Option<StatsSample>> = vec![None; n];
    let mut views: Vec<stats::View> = (0..n).map(|_| stats::View::default()).collect();
    let mut down: Vec<Option<String>> = vec![None; n];
    let mut errors: Vec<Option<anyhow::Error>> = (0..n).map(|_| None).collect();
    let mut seen = vec![0u64; n];
    let mut header_done = false;
    let closed = crate::render::stdout_closed();
    tokio::pin!(closed);
    while let Some(report) = tokio::select! {
        r = rx.recv() => r,
        // The reader of our output is gone (`| head -1`): done.
        () = &mut closed => return Ok(()),
    } {
        match report {
            Report::Item(i, message) => {
                let Some(s) = views[i].apply(message) else {
                    continue;
                };
                seen[i] += 1;
                if ctx.json {
                    let mut v = stats::sample_json(&s);
                    v["host"] = json!(hosts[i].label);
                    outln!("{v}");
                } else if !tty {
                    if !header_done {
                        outln!("TIME\tHOST\t{}", stats::HEADER.join("\t"));
                        header_done = true;
                    }
                    let t = stats::time(s.time);
                    for r in stats::rows(&s) {
                        let cells: Vec<_> = r.iter().map(|c| escape(c).into_owned()).collect();
                        outln!("{t}\t{}\t{}", escape(&hosts[i].label), cells.join("\t"));
                    }
                }
                samples[i] = Some(s);
            }
            Report::Down(i, e) => {
                let word = failure_word(&e);
                if ctx.json {
                    outln!("{}", failure_json(&hosts[i].label, &e));
                } else if !tty {
                    if !header_done {
                        outln!("TIME\tHOST\t{}", stats::HEADER.join("\t"));
                        header_done = true;
                    }
                    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
                    let row = failure_row(&hosts[i].label, word, stats::HEADER.len());
                    outln!(
                        "{now}\t{}",
                        row.iter()
                            .map(|c| escape(c).into_owned())
                            .collect::<Vec<_>>()
                            .join("\t")
                    );
                }
                down[i] = Some(word.to_string());
                errors[i] = Some(e);
            }
        }
        if tty {
            out!("\x1b[H\x1b[2J");
            outln!(
                "netd stats from {n} daemons every {} (Ctrl-C to quit)\n",
                humantime::format_duration(interval)
            );
            stats_table(hosts, &samples, &down);
        }
        let _ = std::io::stdout().flush();
        let finished = |i: usize| down[i].is_some() || count.is_some_and(|c| seen[i] >= c);
        if (0..n).all(finished) {
            break;
        }
    }
    let failures: Vec<(&str, &anyhow::Error)> = hosts
        .iter()
        .zip(&errors)
        .filter_map(|(h, e)| e.as_ref().map(|e| (h.label.as_str(), e)))
        .collect();
    finish(&failures, n)
}

async fn events(ctx: &Ctx, hosts: &[Host], name: Option<String>) -> anyhow::Result<()> {
    let req = proto::WatchEventsRequest {
        name: name.unwrap_or_default(),
    };
    let mut rx = spawn_streams(hosts, |h| {
        let req = req.clone();
        async move {
            let mut c = h.dial.client(true).await?;
            Ok(c.watch_events(req)
                .await
                .map_err(|s| status_line("cannot watch events", &s))?
                .into_inner())
        }
    });
    let mut errors: Vec<(usize, anyhow::Error)> = Vec::new();
    let closed = crate::render::stdout_closed();
    tokio::pin!(closed);
    while let Some(report) = tokio::select! {
        r = rx.recv() => r,
        // The reader of our output is gone (`| head -1`): done.
        () = &mut closed => return Ok(()),
    } {
        match report {
            Report::Item(i, ev) => {
                if ctx.json {
                    let mut v = stats::event_json(&ev);
                    v["host"] = json!(hosts[i].label);
                    outln!("{v}");
                } else {
                    outln!("{}  {}", escape(&hosts[i].label), stats::event_line(&ev));
                }
            }
            Report::Down(i, e) => {
                if ctx.json {
                    outln!("{}", failure_json(&hosts[i].label, &e));
                } else {
                    outln!(
                        "{}  {}: {}",
                        escape(&hosts[i].label),
                        failure_word(&e),
                        escape(&format!("{e:#}"))
                    );
                }
                errors.push((i, e));
            }
        }
        let _ = std::io::stdout().flush();
    }
    let failures: Vec<(&str, &anyhow::Error)> = errors
        .iter()
        .map(|(i, e)| (hosts[*i].label.as_str(), e))
        .collect();
    finish(&failures, hosts.len())
}
