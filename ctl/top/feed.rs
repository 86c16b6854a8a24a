//! One task per daemon feeding `netctl top`: it connects, asks who the
//! caller is (GetCaller) and the listeners' labels, then forwards the
//! WatchStats and WatchEvents streams as [`Msg`]s. When the daemon cannot
//! be reached or a stream breaks, it reports the reason and tries again
//! (after 1 s, doubling up to 10 s) until top exits.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::anyhow;
use netd::proto;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::model::Msg;
use crate::dial::{Dial, status_line};

/// How often the labels are read again (ListListeners).
const LABELS_EVERY: Duration = Duration::from_secs(10);

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Feed daemon `i` into `tx` until `stop` or until the receiver is gone.
pub async fn run(
    i: usize,
    dial: Dial,
    interval: Duration,
    tx: mpsc::Sender<Msg>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_FIRST;
    while !stop.is_cancelled() {
        let mut was_up = false;
        let result = tokio::select! {
            r = session(i, &dial, interval, &tx, &mut was_up) => r,
            () = stop.cancelled() => return,
        };
        let why = match result {
            Ok(()) => "netd ended the stream".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if tx.send(Msg::Down(i, why)).await.is_err() {
            return;
        }
        if was_up {
            backoff = BACKOFF_FIRST;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life; returns when a stream ends or fails.
async fn session(
    i: usize,
    dial: &Dial,
    interval: Duration,
    tx: &mpsc::Sender<Msg>,
    was_up: &mut bool,
) -> anyhow::Result<()> {
    let closed = || anyhow!("netctl top is closing");
    let mut unary = dial.client(false).await?;
    let mut streams = dial.client(true).await?;
    let (role, who) = match unary.get_caller(proto::GetCallerRequest {}).await {
        Ok(r) => {
            let r = r.into_inner();
            (r.role, r.principal)
        }
        // A netd from before GetCaller: the role is unknown, admin keys
        // are tried and the daemon says no if it must.
        Err(s) if s.code() == tonic::Code::Unimplemented => (String::new(), String::new()),
        Err(s) => return Err(status_line("cannot ask netd who we are", &s)),
    };
    tx.send(Msg::Caller(i, role, who))
        .await
        .map_err(|_| closed())?;
    let interval = prost_types::Duration::try_from(interval)
        .map_err(|_| anyhow!("the interval is too large"))?;
    let mut stats = streams
        .watch_stats(proto::WatchStatsRequest {
            name: String::new(),
            interval: Some(interval),
        })
        .await
        .map_err(|s| status_line("cannot watch stats", &s))?
        .into_inner();
    let mut events = streams
        .watch_events(proto::WatchEventsRequest {
            name: String::new(),
        })
        .await
        .map_err(|s| status_line("cannot watch events", &s))?
        .into_inner();
    tx.send(Msg::Up(i)).await.map_err(|_| closed())?;
    *was_up = true;
    let mut labels_tick = tokio::time::interval(LABELS_EVERY);
    labels_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            m = stats.message() => match m.map_err(|s| status_line("stats stream", &s))? {
                Some(s) => Msg::Stats(i, s),
                None => return Ok(()),
            },
            e = events.message() => match e.map_err(|s| status_line("event stream", &s))? {
                Some(e) => Msg::Event(i, e),
                None => return Ok(()),
            },
            _ = labels_tick.tick() => Msg::Labels(i, labels(&mut unary).await?),
        };
        tx.send(msg).await.map_err(|_| closed())?;
    }
}

/// Every listener's labels as `k=v,k=v` (sorted by key).
async fn labels(
    c: &mut proto::control_client::ControlClient<tonic::transport::Channel>,
) -> anyhow::Result<HashMap<String, String>> {
    let all = netd::control::client::list_all(c)
        .await
        .map_err(|s| status_line("cannot list listeners", &s))?;
    Ok(all
        .into_iter()
        .filter(|l| !l.labels.is_empty())
        .map(|l| {
            let mut kv: Vec<_> = l.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            kv.sort();
            (l.name, kv.join(","))
        })
        .collect())
}
