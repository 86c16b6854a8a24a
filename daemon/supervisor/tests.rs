//! Unit tests of the supervisor: restart backoff on a paused clock, name
//! and label validation.

use super::labels::validate_labels;
use super::restart::{BACKOFF_INITIAL, BACKOFF_MAX, STABLE_AFTER};
use super::*;
use crate::proto::{self, EventKind, ListenerState};

/// Make a running TCP listener fail: shut its listening socket down
/// (through the supervisor's duplicate of it), so that accept(2) fails
/// with EINVAL, which the accept loop reports as the socket's failure.
fn break_socket(sup: &Supervisor, name: &str) {
    let g = sup.entry(name).expect("listener exists").current_gen();
    let fds = g.sockets();
    let fd = fds.first().expect("a TCP listener keeps its socket");
    socket2::SockRef::from(fd)
        .shutdown(std::net::Shutdown::Read)
        .expect("shutdown of the listening socket");
}

/// The next event of `kind` for `name`, and the (paused) clock then.
async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<proto::Event>,
    kind: EventKind,
) -> tokio::time::Instant {
    loop {
        let e = rx.recv().await.expect("event bus open");
        if e.kind == kind as i32 {
            return tokio::time::Instant::now();
        }
    }
}

/// Restart backoff on the paused clock: a listener that fails again
/// right after each restart waits 100ms, 200ms, 400ms, ... up to 30s;
/// once it has run for STABLE_AFTER, the next failure waits 100ms again.
#[tokio::test(start_paused = true)]
async fn restart_backoff_doubles_to_its_cap_and_resets_once_stable() {
    let sup = Supervisor::new(Settings::default(), 8);
    let mut events = sup.events().subscribe();
    let spec = proto::ListenerSpec {
        kind: Some(proto::listener_spec::Kind::TcpEcho(proto::TcpEchoSpec {
            listen: "127.0.0.1:0".into(),
            ..Default::default()
        })),
    };
    sup.start("flaky", spec, HashMap::new(), true)
        .await
        .expect("start");
    let mut expected = BACKOFF_INITIAL;
    let mut waits = Vec::new();
    for restart in 1..=12u32 {
        break_socket(&sup, "flaky");
        let failed = next_event(&mut events, EventKind::Failed).await;
        let restarted = next_event(&mut events, EventKind::Restarted).await;
        assert_eq!(restarted - failed, expected, "restart {restart}");
        waits.push(restarted - failed);
        let l = sup.get("flaky").expect("status");
        assert_eq!(l.restarts, restart);
        assert_eq!(l.state, ListenerState::Running as i32);
        expected = (expected * 2).min(BACKOFF_MAX);
    }
    assert_eq!(waits.last(), Some(&BACKOFF_MAX), "capped: {waits:?}");
    // Stable for long enough: the backoff starts over.
    tokio::time::sleep(STABLE_AFTER).await;
    break_socket(&sup, "flaky");
    let failed = next_event(&mut events, EventKind::Failed).await;
    let restarted = next_event(&mut events, EventKind::Restarted).await;
    assert_eq!(restarted - failed, BACKOFF_INITIAL);
    sup.stop("flaky").await.expect("stop");
}

#[test]
fn names() {
    for ok in ["a", "echo-1", "A.b_c", "0", &"x".repeat(63)] {
        assert!(validate_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "-x",
        "_x",
        ".hidden",
        "a/b",
        "a b",
        "é",
        &"x".repeat(64),
    ] {
        assert!(validate_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn labels() {
    let one = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
    assert!(validate_labels(&one("team", "net ops")).is_ok());
    assert!(validate_labels(&one("app.kubernetes.io/name", "netd")).is_ok());
    assert!(validate_labels(&one("k", "\u{1b}[2J")).is_err());
    assert!(validate_labels(&one("k", "a\nb")).is_err());
    assert!(validate_labels(&one("k", "\u{202e}txt")).is_err());
    assert!(validate_labels(&one("k", &"v".repeat(256))).is_err());
    assert!(validate_labels(&one(&"k".repeat(64), "v")).is_err());
    assert!(validate_labels(&one("", "v")).is_err());
    let many: HashMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
    assert!(validate_labels(&many).is_err());
}

/// The kinds that take faults come from the registry; the message reads as
/// it always has.
#[test]
fn the_kinds_that_take_faults_are_named_from_the_registry() {
    use crate::fault::Target;
    assert_eq!(crate::services::fault_kinds(Target::Tcp), ["proxy"]);
    assert_eq!(crate::services::fault_kinds(Target::Udp), ["udp-proxy"]);
    assert_eq!(crate::services::fault_kinds(Target::Http), ["http-proxy"]);
    assert_eq!(
        SupervisorError::NoFaults("e".into(), "tcp-echo").to_string(),
        "listener 'e' is a tcp-echo; faults can be injected into proxy, udp-proxy and http-proxy listeners"
    );
}
