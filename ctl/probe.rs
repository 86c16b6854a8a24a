//! `netctl probe`: a one-shot TCP or UDP client with connect and read
//! timeouts, for checking that a listener answers.
//!
//! TCP: connect, send the message, half-close, and read until the server
//! closes or the timeout passes (a partial reply is still printed). UDP: send
//! one datagram from a connected socket (so an ICMP "port unreachable" shows
//! up as "connection refused") and wait for one reply.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// Largest reply read.
const MAX_REPLY: usize = 1024 * 1024;

pub struct Reply {
    pub bytes: Vec<u8>,
    pub rtt: Duration,
}

pub async fn tcp(addr: SocketAddr, message: &[u8], limit: Duration) -> anyhow::Result<Reply> {
    let start = Instant::now();
    let mut stream = match timeout(limit, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => bail!(
            "connecting to {addr} timed out after {}",
            humantime::format_duration(limit)
        ),
        Ok(r) => r.with_context(|| format!("cannot connect to {addr}"))?,
    };
    stream
        .write_all(message)
        .await
        .with_context(|| format!("sending to {addr}"))?;
    stream
        .shutdown()
        .await
        .with_context(|| format!("half-closing the connection to {addr}"))?;
    let mut reply = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) if reply.is_empty() => {
                bail!(
                    "no reply from {addr} within {}",
                    humantime::format_duration(limit)
                )
            }
            Err(_) => break,
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                reply.extend_from_slice(&buf[..n]);
                if reply.len() >= MAX_REPLY {
                    break;
                }
            }
            Ok(Err(e)) => return Err(e).with_context(|| format!("reading from {addr}")),
        }
    }
    Ok(Reply {
        bytes: reply,
        rtt: start.elapsed(),
    })
}

pub async fn udp(addr: SocketAddr, message: &[u8], limit: Duration) -> anyhow::Result<Reply> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .context("binding a local UDP socket")?;
    socket
        .connect(addr)
        .await
        .with_context(|| format!("cannot reach {addr}"))?;
    let start = Instant::now();
    socket
        .send(message)
        .await
        .with_context(|| format!("sending to {addr}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = match timeout(limit, socket.recv(&mut buf)).await {
        Err(_) => bail!(
            "no reply from {addr} within {}",
            humantime::format_duration(limit)
        ),
        Ok(r) => r.with_context(|| format!("no reply from {addr}"))?,
    };
    buf.truncate(n);
    Ok(Reply {
        bytes: buf,
        rtt: start.elapsed(),
    })
}
