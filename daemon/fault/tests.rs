//! The fault layer's unit tests: compiling against each target, the
//! table, per-connection and per-request decisions.

use super::*;
use crate::proto::fault::Kind;

fn latency(name: &str, ms: u64) -> proto::Fault {
    proto::Fault {
        name: name.into(),
        kind: Some(Kind::Latency(proto::LatencyFault {
            latency: Some(prost_types::Duration {
                seconds: 0,
                nanos: (ms * 1_000_000) as i32,
            }),
            jitter: None,
        })),
        ..Default::default()
    }
}

#[test]
fn types_are_checked_against_the_listener_kind() {
    let loss = proto::Fault {
        name: "l".into(),
        kind: Some(Kind::Loss(proto::LossFault {
            probability: 0.3,
            ..Default::default()
        })),
        ..Default::default()
    };
    assert!(compile(&loss, Target::Udp).is_ok());
    let e = compile(&loss, Target::Tcp).unwrap_err().message;
    assert!(e.contains("type loss is for a udp-proxy"), "{e}");
    let mut bad = loss.clone();
    if let Some(Kind::Loss(l)) = &mut bad.kind {
        l.probability = 1.5;
    }
    assert!(
        compile(&bad, Target::Udp)
            .unwrap_err()
            .message
            .contains("0 to 1")
    );
    let none = proto::Fault {
        name: "x".into(),
        ..Default::default()
    };
    assert!(
        compile(&none, Target::Tcp)
            .unwrap_err()
            .message
            .contains("type is required")
    );
    let mut bad_name = latency("../x", 1);
    bad_name.name = "../x".into();
    assert!(compile(&bad_name, Target::Tcp).is_err());
    let mut nan = latency("n", 1);
    nan.toxicity = Some(f64::NAN);
    assert!(compile(&nan, Target::Tcp).is_err());
}

fn abort(name: &str, status: u32) -> proto::Fault {
    proto::Fault {
        name: name.into(),
        kind: Some(Kind::Abort(proto::AbortFault {
            http_status: status,
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[test]
fn http_types_and_conditions_are_for_the_http_proxy_only() {
    assert!(compile(&abort("a", 503), Target::Http).is_ok());
    let e = compile(&abort("a", 503), Target::Tcp).unwrap_err().message;
    assert!(
        e.contains("type abort is for an http-proxy listener; a proxy (TCP) takes"),
        "{e}"
    );
    // TCP toxics act beneath an http-proxy's HTTP, as TCP actions.
    let c = compile(&latency("l", 1), Target::Http).unwrap();
    assert!(c.action.tcp().is_some() && c.action.http().is_none());
    let loss = proto::Fault {
        name: "l".into(),
        kind: Some(Kind::Loss(proto::LossFault {
            probability: 0.5,
            ..Default::default()
        })),
        ..Default::default()
    };
    let e = compile(&loss, Target::Http).unwrap_err().message;
    assert!(e.contains("type loss is for a udp-proxy listener"), "{e}");
    let mut cond = latency("l", 1);
    cond.when = Some(proto::FaultCondition {
        path_prefix: "/api".into(),
        ..Default::default()
    });
    let e = compile(&cond, Target::Tcp).unwrap_err().message;
    assert!(e.contains("conditions of HTTP faults"), "{e}");
    let mut bytes = abort("a", 503);
    bytes.when = Some(proto::FaultCondition {
        after_bytes: 10,
        ..Default::default()
    });
    let e = compile(&bytes, Target::Http).unwrap_err().message;
    assert!(e.contains("after_bytes"), "{e}");
    for (status, ok) in [(199, false), (200, true), (599, true), (600, false)] {
        assert_eq!(
            compile(&abort("a", status), Target::Http).is_ok(),
            ok,
            "{status}"
        );
    }
}

#[test]
fn an_http_proxy_holds_128_faults_a_proxy_32() {
    let t = FaultTable::new(Target::Http);
    for i in 0..MAX_HTTP_FAULTS {
        t.add(abort(&format!("a{i}"), 503)).unwrap();
    }
    assert_eq!(t.add(abort("over", 503)).unwrap_err(), TableError::Full);
    let many: Vec<_> = (0..=MAX_FAULTS)
        .map(|i| latency(&format!("l{i}"), 1))
        .collect();
    assert!(compile_all(&many, Target::Tcp).is_err());
    assert!(compile_all(&many[..MAX_FAULTS], Target::Tcp).is_ok());
}

#[test]
fn requests_are_decided_by_conditions_every_nth_and_toxicity() {
    let mut f = abort("a", 503);
    f.when = Some(proto::FaultCondition {
        path_prefix: "/api".into(),
        every_nth: 2,
        ..Default::default()
    });
    let a = Active::new(compile(&f, Target::Http).unwrap(), f, Arc::default());
    let mut rng = Rng::seeded(3);
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let h = ::http::HeaderMap::new();
    let get = ::http::Method::GET;
    let req = |path| http::Request {
        method: &get,
        path,
        headers: &h,
    };
    assert!(!a.decide_request(ip, &req("/other"), &mut rng));
    let hits: Vec<bool> = (0..4)
        .map(|_| a.decide_request(ip, &req("/api/x"), &mut rng))
        .collect();
    assert_eq!(hits, [false, true, false, true]);
    assert_eq!(a.counters.requests_affected.load(Relaxed), 2);
}

#[test]
fn table_keeps_counters_across_updates_and_versions_move() {
    let t = FaultTable::new(Target::Tcp);
    assert_eq!(t.version(), 0);
    let a = t.add(latency("a", 10)).unwrap();
    assert!(t.version() > 0);
    a.counters.bytes_delayed.fetch_add(5, Relaxed);
    assert_eq!(
        t.add(latency("a", 1)).unwrap_err(),
        TableError::Exists("a".into())
    );
    let v = t.version();
    let b = t.update(latency("a", 20)).unwrap();
    assert!(t.version() > v);
    assert_eq!(b.counters.bytes_delayed.load(Relaxed), 5);
    assert_ne!(a.id, b.id);
    t.add(latency("b", 1)).unwrap();
    // replace_all keeps an unchanged fault as it is.
    let specs = t.specs();
    let before = t.current();
    t.replace_all(&specs).unwrap();
    assert!(Arc::ptr_eq(&before, &t.current()));
    let gone = t.remove(Some("a")).unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(t.specs().len(), 1);
    assert_eq!(
        t.remove(Some("a")).unwrap_err(),
        TableError::NotFound("a".into())
    );
    t.remove(None).unwrap();
    assert!(t.current().is_empty());
    assert!(t.version() > 0);
}

#[test]
fn decide_honours_network_every_nth_and_toxicity() {
    let mut f = latency("x", 1);
    f.when = Some(proto::FaultCondition {
        client_cidr: "127.0.0.2/32".into(),
        every_nth: 2,
        ..Default::default()
    });
    let c = compile(&f, Target::Tcp).unwrap();
    let a = Active::new(c, f, Arc::default());
    let mut rng = Rng::seeded(1);
    let one: IpAddr = "127.0.0.1".parse().unwrap();
    let two: IpAddr = "127.0.0.2".parse().unwrap();
    assert!(!a.decide(one, &mut rng));
    let hits: Vec<bool> = (0..6).map(|_| a.decide(two, &mut rng)).collect();
    assert_eq!(hits, [false, true, false, true, false, true]);
    let mut half = latency("h", 1);
    half.toxicity = Some(0.5);
    let a = Active::new(compile(&half, Target::Tcp).unwrap(), half, Arc::default());
    let n = (0..10_000).filter(|_| a.decide(one, &mut rng)).count();
    assert!((4_500..5_500).contains(&n), "{n}");
}
