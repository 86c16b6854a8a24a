//! The HTTP JSON service with a real HTTP client (reqwest) and raw sockets:
//! echo semantics, errors, limits, auth, rate limiting, hostile input,
//! keep-alive, h2c and counters.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::{Netd, bound_addr, wait_until_async};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn start_http(netd: &Netd, name: &str, extra: &[&str]) -> SocketAddr {
    let mut args = vec!["start", "http", name, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    bound_addr(netd, name)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// Read one HTTP/1.1 response with a Content-Length body: (head, body).
fn read_response(conn: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).unwrap(), 1, "connection closed");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    (head, body)
}

fn http_stats(netd: &Netd, name: &str) -> Value {
    netd.netctl_json(&["status", name])["stats"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_echoes_method_path_and_parsed_query() {
    let netd = Netd::start("");
    let addr = start_http(&netd, "h", &[]);
    let r = client()
        .get(format!(
            "http://{addr}/a/b?k=v1&k=v2&caf%C3%A9=cr%C3%A8me+br%C3%BBl%C3%A9e&sp%20ace=1&blank="
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(
        v["query_params"],
        json!({"k": ["v1", "v2"], "café": ["crème brûlée"], "sp ace": ["1"]})
    );
    let ts = v["timestamp"].as_f64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - ts).abs() < 60.0, "timestamp {ts} vs now {now}");

    // HEAD: the GET's headers, no body.
    let r = client()
        .head(format!("http://{addr}/a/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let len: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(len > 0);
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_json_invalid_json_405_and_413() {
    let netd = Netd::start("");
    let addr = start_http(&netd, "h", &[]);
    let c = client();
    let r = c
        .post(format!("http://{addr}/items"))
        .body(r#"{"a":[1,2,{"b":null}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "success", "received": {"a": [1, 2, {"b": null}]}})
    );

    let r = c
        .post(format!("http://{addr}/items"))
        .body("{\"a\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "error");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid JSON: EOF while parsing"),
        "{v}"
    );

    for method in [
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let r = c
            .request(method.clone(), format!("http://{addr}/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(r.headers()["allow"], "GET, HEAD, POST");
    }

    // 2 MiB against the 1 MiB default: 413, declared up front...
    let big = vec![b' '; 2 * 1024 * 1024];
    let r = c
        .post(format!("http://{addr}/big"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The unread body leaves the connection unusable: netd says it closes.
    assert_eq!(r.headers()["connection"], "close");
    // ...or streamed without a length (chunked).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..32).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
    let body = reqwest::Body::wrap_stream(tokio_stream::iter(chunks));
    let r = c
        .post(format!("http://{addr}/big"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // And the service is fine afterwards.
    assert_eq!(
        c.get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

/// A client that sends a whole oversized body before it reads (as curl and
/// most simple clients do) still gets the 413: netd half-closes after the
/// response and drains the rest instead of resetting the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_sent_in_full_still_gets_its_413() {
    let netd = Netd::start("");
    let addr = start_http(&netd, "h", &["--max-body", "1024"]);
    let body = vec![b'x'; 32 * 1024 * 1024];
    let reply = tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            conn,
            "POST /up HTTP/1.1\r\nHost: netd\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        conn.write_all(&body).expect("netd reset the connection");
        let mut reply = String::new();
        conn.read_to_string(&mut reply)
            .expect("netd reset the connection");
        reply
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
    assert!(reply.contains("body larger than 1024 bytes"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_auth_and_the_token_stays_secret() {
    let netd = Netd::start("");
    let token_file = netd.dir.path().join("token");
    std::fs::write(&token_file, "s3cret-t0ken\n").unwrap();
    let addr = start_http(&netd, "h", &["--token-file", token_file.to_str().unwrap()]);
    let c = client();
    let url = format!("http://{addr}/private");

    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"netd\"");
    let r = c.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    let r = c
        .get(&url)
        .bearer_auth("s3cret-t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .post(&url)
        .bearer_auth("s3cret-t0ken")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let status = netd.netctl_ok(&["status", "h"]);
    let json = netd.netctl_ok(&["-o", "json", "status", "h"]);
    let list = netd.netctl_ok(&["-o", "json", "list"]);
    for text in [&status, &json, &list, &netd.log()] {
        assert!(!text.contains("s3cret"), "the token leaked: {text}");
    }
    assert!(status.contains("auth=bearer token"), "{status}");
    assert_eq!(http_stats(&netd, "h")["http"]["unauthorized"], 2);

    let e = netd.netctl_err(&[
        "start",
        "http",
        "bad",
        "--listen",
        "127.0.0.1:0",
        "--token",
        "has space",
    ]);
    assert!(
        e.contains("token must be") && !e.contains("has space"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_429_then_recovery() {
    let netd = Netd::start("");
    let addr = start_http(&netd, "h", &["--rate-limit", "5/s"]);
    let c = client();
    let url = format!("http://{addr}/");
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let r = c.get(&url).send().await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = Some(
                r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
        }
        statuses.push(r.status());
    }
    assert_eq!(statuses[0], StatusCode::OK);
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert!(retry_after.unwrap() >= 1);
    // After the window the client is served again.
    wait_until_async("rate limit recovery", || async {
        c.get(&url).send().await.unwrap().status() == StatusCode::OK
    })
    .await;
    assert!(
        http_stats(&netd, "h")["http"]["rate_limited"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_400_and_slow_loris_is_cut_off() {
    let netd = Netd::start("");
    let addr = start_http(&netd, "h", &["--header-timeout", "500ms"]);

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"THIS IS NOT HTTP\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");

    // Headers that never finish: the connection is closed, not held.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let mut buf = Vec::new();
    match slow.read_to_end(&mut buf) {
        Ok(_) => {}
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "not cut off: {e}"
        ),
    }
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("200 OK"), "{text}");
    // A client that connects and says nothing at all is cut off too.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match silent.read(&mut [0u8; 16]) {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "not cut off: {e}"
        ),
    }

    // The service keeps serving.
    let r = client()
        .get(format!("http://{addr}/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    crate::common::wait_until("connections closed", || {
        http_stats(&netd, "h")["connections_active"] == 0
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_h2c_and_counters() {
    let netd = Netd::start("");
    let addr = start_http(&netd, "h", &[]);
    // Five requests, one after another, on one raw connection (a pooling
    // client may open a second connection if the first is not back in its
    // pool yet).
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for i in 0..5 {
        write!(conn, "GET /n/{i} HTTP/1.1\r\nHost: netd\r\n\r\n").unwrap();
        let (head, body) = read_response(&mut conn);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["path"], format!("/n/{i}"));
    }
    let s = http_stats(&netd, "h");
    assert_eq!(
        s["connections_total"], 1,
        "keep-alive: five requests on one connection"
    );

    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(format!("http://{addr}/h2?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        r.json::<Value>().await.unwrap()["query_params"],
        json!({"x": ["1"]})
    );

    let c = client();
    let r = c
        .post(format!("http://{addr}/"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .post(format!("http://{addr}/"))
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let s = http_stats(&netd, "h");
    let h = &s["http"];
    assert_eq!(h["requests"], 8);
    assert_eq!(h["responses_2xx"], 7);
    assert_eq!(h["responses_4xx"], 1);
    assert_eq!(h["responses_5xx"], 0);
    assert_eq!(s["bytes_in"], 6, "request body bytes: {{}} and nope");
    assert!(h["latency_p99_ms"].as_f64().unwrap() > 0.0);
    assert!(h["latency_p50_ms"].as_f64().unwrap() <= h["latency_p99_ms"].as_f64().unwrap());
}

#[test]
fn http_from_config_with_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("tok");
    std::fs::write(&token, "abc123").unwrap();
    let netd = Netd::start(&format!(
        "[[listener]]\nname = \"api\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\nrate_limit = \"100/s\"\nmax_body_bytes = 1000\nheader_read_timeout = \"2s\"\nrequest_timeout = \"5s\"\n",
        token.display()
    ));
    let spec = netd.netctl_json(&["status", "api"])["spec"].clone();
    assert_eq!(spec["auth"], "bearer token");
    assert_eq!(spec["rate_limit"], "100/s");
    assert_eq!(spec["max_body_bytes"], 1000);
    assert!(
        !netd
            .netctl_ok(&["-o", "json", "status", "api"])
            .contains("abc123")
    );
}

/// `token = "..."` in the config file is the token itself; the placeholder
/// `netctl export` writes in its place stops netd at start, naming the
/// listener, and so does a config that gives both `token` and `token_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_from_config_with_literal_token_and_the_export_placeholder_refused() {
    let http = |opt: &str| {
        format!("[[listener]]\nname = \"api\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n{opt}\n")
    };
    let netd = Netd::start(&http("token = \"lit3ral-t0ken\""));
    let url = format!("http://{}/x", bound_addr(&netd, "api"));
    let c = client();
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .get(&url)
        .bearer_auth("lit3ral-t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let json = netd.netctl_ok(&["-o", "json", "status", "api"]);
    assert!(!json.contains("lit3ral"), "{json}");

    for (opt, needle) in [
        (
            "token = \"<redacted>\"",
            "listener 'api': token = \"<redacted>\" is a placeholder written by netctl export",
        ),
        (
            "token = \"a\"\ntoken_file = \"/nonexistent\"",
            "listener 'api': token and token_file are both set",
        ),
    ] {
        let (out, path) = crate::common::netd_exit(&http(opt), &[]);
        let out = out.expect("netd refuses the config and exits");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("{path}:5: {needle}")),
            "{opt}: {stderr}"
        );
    }
}

/// Generated raw HTTP/1 requests (random methods, targets, versions,
/// headers, bodies, line endings, or plain bytes), each on its own
/// connection, write side then shut: every answer netd gives is a
/// well-formed status line (never a 500), it closes every connection
/// within the deadline, and it still serves afterwards. 256 requests, or
/// `PROPTEST_CASES` for a long run.
#[test]
fn fuzz_http_raw_requests_get_status_lines() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let netd = Netd::start("");
    let addr = start_http(&netd, "h", &["--max-body", "4096"]);

    let token = proptest::sample::select(
        &[
            "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "get", "G\0T", "", "PRI", "🦀",
        ][..],
    );
    let target = prop_oneof![
        proptest::sample::select(
            &["/", "*", "/a?b=c&b=d", "/%zz?%", "//x?=&=", "http://h/p?q"][..]
        )
        .prop_map(String::from),
        "/[ -~]{0,40}",
        any::<String>(),
    ];
    let version = proptest::sample::select(
        &[
            "HTTP/1.1",
            "HTTP/1.0",
            "HTTP/2.0",
            "HTTP/1.1x",
            "",
            "HTTP/9",
        ][..],
    );
    let header = (
        proptest::sample::select(
            &[
                "Host",
                "Content-Length",
                "Transfer-Encoding",
                "Content-Type",
                "Authorization",
                "Connection",
                "Expect",
                "X-\u{e9}",
                "",
                " Host",
            ][..],
        ),
        prop_oneof![
            proptest::sample::select(
                &[
                    "0",
                    "5",
                    "-1",
                    "99999999999999999999",
                    "chunked",
                    "close",
                    "100-continue",
                    "application/json",
                    "Bearer x"
                ][..]
            )
            .prop_map(String::from),
            "[ -~]{0,20}",
        ],
    );
    let body = prop_oneof![
        Just(b"{\"a\":[1,2.5,null]}".to_vec()),
        Just(b"5\r\nhello\r\n0\r\n\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ];
    let structured = (
        token,
        target,
        version,
        proptest::collection::vec(header, 0..5),
        body,
        any::<bool>(),
    )
        .prop_map(|(method, target, version, headers, body, crlf)| {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut r = format!("{method} {target} {version}{eol}").into_bytes();
            for (k, v) in headers {
                r.extend_from_slice(format!("{k}: {v}{eol}").as_bytes());
            }
            r.extend_from_slice(eol.as_bytes());
            r.extend_from_slice(&body);
            r
        });
    let request = prop_oneof![4 => structured, 1 => proptest::collection::vec(any::<u8>(), 0..128)];

    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        // Each case is a connection to the daemon: do not persist seeds
        // from here (tests/ has no source-parallel folder of its own).
        failure_persistence: None,
        ..Config::default()
    });
    let answered = std::cell::Cell::new(0u32);
    let result = runner.run(&request, |req| {
        let mut conn = TcpStream::connect(addr).map_err(|e| TestCaseError::fail(e.to_string()))?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok();
        conn.set_write_timeout(Some(Duration::from_secs(2))).ok();
        // The server may answer and close before reading all of it.
        let _ = conn.write_all(&req);
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            prop_assert!(
                std::time::Instant::now() < deadline,
                "connection still open after 10 s for {:?}",
                String::from_utf8_lossy(&req)
            );
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            }
        }
        if !got.is_empty() {
            answered.set(answered.get() + 1);
            let line = got.split(|&b| b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let status = line
                .strip_prefix("HTTP/1.1 ")
                .or_else(|| line.strip_prefix("HTTP/1.0 "))
                .and_then(|rest| rest.get(..3))
                .and_then(|s| s.parse::<u16>().ok());
            prop_assert!(
                status.is_some_and(|s| (100..600).contains(&s) && s != 500),
                "{:?} answered {:?}",
                String::from_utf8_lossy(&req),
                line
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("{} of {cases} generated requests answered", answered.get());
    // Still serving.
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /alive HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut conn);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
