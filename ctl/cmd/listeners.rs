//! `netctl stop`, `drain`, `list` and `status`.

use std::time::Duration;

use netd::proto;

use super::*;
use crate::dial::{reply_listener, status_line};
use crate::render::outln;
use crate::{escape, output};

pub(crate) async fn stop(ctx: &Ctx, name: String) -> anyhow::Result<()> {
    let json = ctx.json;
    let dial = &ctx.dial;
    let mut client = dial.client(false).await?;
    let what = format!("cannot stop '{name}'");
    let req = proto::StopListenerRequest { name: name.clone() };
    let l = reply_listener(&what, client.stop_listener(req).await, |r| r.listener)?;
    if json {
        print_json(&output::listener_json(&l));
    } else {
        let s = l.stats.clone().unwrap_or_default();
        outln!(
            "stopped {} ({}; {} connections, {} datagrams, {} in, {} out)",
            escape::escape(&l.name),
            l.kind().slug(),
            s.connections_total,
            s.datagrams_in,
            output::bytes(s.bytes_in),
            output::bytes(s.bytes_out)
        );
    }
    Ok(())
}

pub(crate) async fn drain(ctx: &Ctx, name: String, timeout: Duration) -> anyhow::Result<()> {
    let json = ctx.json;
    let dial = &ctx.dial;
    // No request deadline: the call returns when the drain ends.
    let mut client = dial.client(true).await?;
    let what = format!("cannot drain '{name}'");
    let req = proto::DrainListenerRequest {
        name: name.clone(),
        timeout: to_proto_duration("--timeout", Some(timeout))?,
    };
    let r = client
        .drain_listener(req)
        .await
        .map_err(|s| status_line(&what, &s))?
        .into_inner();
    let l = r.listener.unwrap_or_default();
    if json {
        print_json(&serde_json::json!({
            "connections_closed": r.connections_closed,
            "listener": output::listener_json(&l),
        }));
    } else {
        let s = l.stats.clone().unwrap_or_default();
        outln!(
            "drained {} ({}; {} connections served, {} closed at the timeout)",
            escape::escape(&l.name),
            l.kind().slug(),
            s.connections_total,
            r.connections_closed
        );
    }
    Ok(())
}

pub(crate) async fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let json = ctx.json;
    let dial = &ctx.dial;
    let mut client = dial.client(false).await?;
    let ls = netd::control::client::list_all(&mut client)
        .await
        .map_err(|s| status_line("cannot list listeners", &s))?;
    if json {
        let items: Vec<_> = ls.iter().map(output::listener_json).collect();
        print_json(&serde_json::json!({ "listeners": items }));
    } else {
        output::list_table(&ls);
    }
    Ok(())
}

pub(crate) async fn status(ctx: &Ctx, name: String) -> anyhow::Result<()> {
    let json = ctx.json;
    let dial = &ctx.dial;
    let mut client = dial.client(false).await?;
    let what = format!("cannot get '{name}'");
    let req = proto::GetListenerRequest { name: name.clone() };
    let l = reply_listener(&what, client.get_listener(req).await, |r| r.listener)?;
    if json {
        print_json(&output::listener_json(&l));
    } else {
        output::status_block(&l);
    }
    Ok(())
}
