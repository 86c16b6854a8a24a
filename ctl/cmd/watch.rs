//! The streaming commands: `netctl stats [--watch]`, `sniff`, `events`.

use std::time::Duration;

use anyhow::anyhow;
use netd::proto;

use super::*;
use crate::dial::status_line;
use crate::render::{self, outln};
use crate::stats;

pub(crate) async fn stats(
    ctx: &Ctx,
    name: Option<String>,
    watch: bool,
    interval: Duration,
    count: Option<u64>,
    spark: bool,
) -> anyhow::Result<()> {
    let json = ctx.json;
    let dial = &ctx.dial;
    let mut client = dial.client(watch).await?;
    let what = match &name {
        Some(n) => format!("cannot get stats of '{n}'"),
        None => "cannot get stats".to_string(),
    };
    let name = name.unwrap_or_default();
    if !watch {
        let sample = netd::control::client::stats_all(&mut client, &name)
            .await
            .map_err(|s| status_line(&what, &s))?;
        if json {
            outln!("{}", stats::sample_json(&sample));
        } else {
            stats::print_table(&sample);
        }
        return Ok(());
    }
    let req = proto::WatchStatsRequest {
        name,
        interval: Some(
            prost_types::Duration::try_from(interval)
                .map_err(|_| render::usage(anyhow!("--interval is too large")))?,
        ),
    };
    let mut stream = client
        .watch_stats(req)
        .await
        .map_err(|s| status_line(&what, &s))?
        .into_inner();
    let mut watcher = stats::Watcher::new(interval, spark);
    let mut view = stats::View::default();
    let mut seen = 0u64;
    let closed = render::stdout_closed();
    tokio::pin!(closed);
    loop {
        let message = tokio::select! {
            m = stream.message() => m.map_err(|s| status_line("stats stream", &s))?,
            () = &mut closed => return Ok(()),
        };
        let Some(message) = message else { break };
        let Some(sample) = view.apply(message) else {
            continue;
        };
        if json {
            outln!("{}", stats::sample_json(&sample));
        } else {
            watcher.show(&sample);
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}

pub(crate) async fn sniff(ctx: &Ctx, name: String, count: Option<u64>) -> anyhow::Result<()> {
    let json = ctx.json;
    let dial = &ctx.dial;
    let mut client = dial.client(true).await?;
    let mut stream = client
        .watch_packets(proto::WatchPacketsRequest { name: name.clone() })
        .await
        .map_err(|s| status_line(&format!("cannot sniff '{name}'"), &s))?
        .into_inner();
    let mut seen = 0u64;
    let closed = render::stdout_closed();
    tokio::pin!(closed);
    loop {
        let p = tokio::select! {
            m = stream.message() => m.map_err(|s| status_line("packet stream", &s))?,
            () = &mut closed => return Ok(()),
        };
        let Some(p) = p else { break };
        if json {
            outln!("{}", stats::packet_json(&p));
        } else {
            outln!("{}", stats::packet_line(&p));
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}

pub(crate) async fn events(ctx: &Ctx, name: Option<String>) -> anyhow::Result<()> {
    let json = ctx.json;
    let dial = &ctx.dial;
    let mut client = dial.client(true).await?;
    let mut stream = client
        .watch_events(proto::WatchEventsRequest {
            name: name.unwrap_or_default(),
        })
        .await
        .map_err(|s| status_line("cannot watch events", &s))?
        .into_inner();
    let closed = render::stdout_closed();
    tokio::pin!(closed);
    loop {
        let ev = tokio::select! {
            m = stream.message() => m.map_err(|s| status_line("event stream", &s))?,
            () = &mut closed => return Ok(()),
        };
        let Some(ev) = ev else { break };
        if json {
            outln!("{}", stats::event_json(&ev));
        } else {
            outln!("{}", stats::event_line(&ev));
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
    Ok(())
}
