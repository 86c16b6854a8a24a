//! What the HTTP service answers: the request echo for GET/HEAD, the JSON
//! echo for POST, query-string decoding in the manner of Python's
//! `parse_qs`, and JSON responses. Pure functions of the request; the
//! limits around them are in the parent module.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

/// The answer to a GET or HEAD: what was asked for, echoed.
pub(super) fn request_echo(method: &str, path: &str, query: Option<&str>) -> Value {
    json!({
        "method": method,
        "path": path,
        "query_params": query_params(query.unwrap_or("")),
        "timestamp": SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
    })
}

/// The answer to a POST body (already bounded by `max_body_bytes`): 201
/// with the JSON echoed under `received`, or 400 naming the parse error.
pub(super) fn json_echo(body: &[u8]) -> (StatusCode, Value) {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => (
            StatusCode::CREATED,
            json!({"status": "success", "received": v}),
        ),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            json!({"status": "error", "message": format!("Invalid JSON: {e}")}),
        ),
    }
}

/// The size of a request's header section as HTTP/2 counts it (RFC 9113
/// 6.5.2: name + value + 32 per field), with the request line's method and
/// target counted as the pseudo-headers they would be.
pub(crate) fn header_size<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    req.method().as_str().len() + 32 + target + 32 + fields
}

/// Decode a query string into lists of values per key, like Python's
/// `urllib.parse.parse_qs` (percent-decoding, '+' as space, blank values
/// dropped).
pub fn query_params(query: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if v.is_empty() {
            continue;
        }
        out.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    out
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({"status": "error", "message": message}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_like_parse_qs() {
        let q = query_params("k=v1&k=v2&a%20b=c%26d&plus=x+y&empty=&flag");
        assert_eq!(q["k"], ["v1", "v2"]);
        assert_eq!(q["a b"], ["c&d"]);
        assert_eq!(q["plus"], ["x y"]);
        assert!(!q.contains_key("empty") && !q.contains_key("flag"));
    }

    #[test]
    fn json_echo_keeps_numbers_exact() {
        // Found by fuzz_http_json_echo_round_trips: without serde_json's
        // float_roundtrip this came back as 1165.5805587768557.
        let (status, reply) = json_echo(b"[1165.5805587768555]");
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(reply["received"][0].as_f64(), Some(1165.5805587768555));
        assert_eq!(reply["received"].to_string(), "[1165.5805587768555]");
    }
}

/// Property tests (`fuzz_*`): arbitrary query strings, paths and bodies
/// never panic the query parser or the JSON handling, every answer is
/// JSON, and a valid JSON body is echoed back unchanged.
#[cfg(test)]
mod fuzz {
    use super::*;
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    use proptest::prelude::*;

    /// The bytes `json_response` sends (its body is ready at once).
    fn sent(status: StatusCode, v: &Value) -> Result<Value, TestCaseError> {
        let r = json_response(status, v);
        prop_assert_eq!(r.status(), status);
        let bytes = r
            .into_body()
            .collect()
            .now_or_never()
            .ok_or_else(|| TestCaseError::fail("body not ready"))?
            .map_err(|e| TestCaseError::fail(format!("{e}")))?
            .to_bytes();
        prop_assert_eq!(bytes.last(), Some(&b'\n'));
        serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))
    }

    /// JSON values whose numbers round-trip exactly through text.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (any::<i32>(), 0u32..20)
                .prop_map(|(n, k)| Value::from(n as f64 / f64::from(1u32 << k))),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::vec((any::<String>(), inner), 0..8)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(crate::util::fuzz_support::config(1024))]

        #[test]
        fn fuzz_http_query_params_never_panic(query in any::<String>()) {
            for values in query_params(&query).values() {
                prop_assert!(!values.is_empty() && values.iter().all(|v| !v.is_empty()));
            }
        }

        #[test]
        fn fuzz_http_query_params_round_trip(
            pairs in proptest::collection::vec((any::<String>(), ".+"), 0..8),
        ) {
            let query = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&pairs)
                .finish();
            let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in &pairs {
                want.entry(k.clone()).or_default().push(v.clone());
            }
            prop_assert_eq!(query_params(&query), want);
        }

        #[test]
        fn fuzz_http_get_echo_is_json(target in any::<String>(), raw in any::<bool>()) {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_string(), Some(q.to_string())),
                None => (target.clone(), None),
            };
            // As hyper hands them over (when the target parses), and raw.
            let parsed = http::Uri::try_from(target.as_str()).ok();
            let (path, query) = match (&parsed, raw) {
                (Some(u), false) => (u.path().to_string(), u.query().map(String::from)),
                _ => (path, query),
            };
            let echo = request_echo("GET", &path, query.as_deref());
            let back = sent(StatusCode::OK, &echo)?;
            prop_assert_eq!(back["path"].as_str(), Some(path.as_str()));
            prop_assert_eq!(&back["query_params"], &echo["query_params"]);
        }

        #[test]
        fn fuzz_http_json_body_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let (status, reply) = json_echo(&body);
            prop_assert!(status == StatusCode::CREATED || status == StatusCode::BAD_REQUEST);
            prop_assert_eq!(sent(status, &reply)?, reply);
        }

        #[test]
        fn fuzz_http_json_echo_round_trips(v in json_value(), pretty in any::<bool>()) {
            let body = if pretty {
                serde_json::to_vec_pretty(&v)
            } else {
                serde_json::to_vec(&v)
            }
            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
            let (status, reply) = json_echo(&body);
            prop_assert_eq!(status, StatusCode::CREATED);
            let back = sent(status, &reply)?;
            prop_assert_eq!(&back["received"], &v);
        }
    }
}
