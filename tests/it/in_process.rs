//! `netd::process::server::run` driven in-process, as a library: it serves
//! its endpoints from the config (a control socket in a temporary
//! directory, `/metrics` on loopback), and returns cleanly once the
//! shutdown future it was given resolves.

use std::time::Duration;

use netd::process::server::{Signals, Startup, run};
use netd::proto;
use netd::util::addr::ControlAddr;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{DEADLINE, free_tcp_port, wait_until_async};

/// `GET /metrics` on `port`, the whole response as text.
async fn scrape(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: netd\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the request");
    let mut text = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut text))
        .await
        .expect("the response within the deadline")
        .expect("read the response");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_in_process_and_stops_when_the_shutdown_future_resolves() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("netd.sock");
    let port = free_tcp_port();
    let text = format!(
        "state_dir = \"{}\"\nshutdown_grace = \"1s\"\n\
         [metrics]\nlisten = \"127.0.0.1:{port}\"\n\
         [[listener]]\nname = \"echo\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("state").display()
    );
    let config = netd::config::Config::parse(&text, "in-process.toml").expect("config");
    let control = ControlAddr::Unix(socket.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(run(
        config,
        control.clone(),
        None,
        Startup::default(),
        Signals::shutdown_on(async {
            let _ = stopped.await;
        }),
    ));

    // The control plane answers on the socket once netd has started.
    let list = |control: ControlAddr| async move {
        let mut client = netd::control::client::control_client(&control).await.ok()?;
        let reply = client
            .list_listeners(proto::ListListenersRequest::default())
            .await
            .ok()?;
        Some(reply.into_inner().listeners)
    };
    wait_until_async("the control plane answers", || {
        let control = control.clone();
        async move { list(control).await.is_some() }
    })
    .await;
    let listeners = list(control.clone()).await.expect("ListListeners");
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["echo"], "{listeners:?}");
    assert_eq!(listeners[0].state(), proto::ListenerState::Running);

    let metrics = scrape(port).await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("netd_listener_up{listener=\"echo\""),
        "{metrics}"
    );

    stop.send(()).expect("netd is still running");
    let result = tokio::time::timeout(DEADLINE + Duration::from_secs(5), daemon)
        .await
        .expect("run returns after the shutdown future resolved")
        .expect("the daemon task");
    assert!(result.is_ok(), "{result:?}");
    assert!(!socket.exists(), "the control socket file is removed");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "/metrics no longer accepts"
    );
}
