//! The request conditions of HTTP faults (`FaultCondition`'s methods,
//! path_prefix, path_exact, path_regex, headers, grpc_service and
//! grpc_method), compiled once when the fault is added ([`Match`]) and
//! checked per request against a [`Request`] view; and the "name: value"
//! header lines the conditions and the `header` type share.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use regex::{Regex, RegexBuilder};

use crate::proto;

/// Methods, header conditions, and each of set/add/remove of a header
/// fault: at most this many.
pub const MAX_ITEMS: usize = 16;
/// Longest regular expression (path or header value), in characters.
pub const MAX_REGEX_LEN: usize = 1000;
/// Compiled size limit of one regular expression.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// What the conditions look at in a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// One header condition.
#[derive(Debug, Clone)]
enum HeaderCond {
    Present(HeaderName),
    Exact(HeaderName, HeaderValue),
    Regex(HeaderName, Regex),
}

impl HeaderCond {
    fn matches(&self, h: &HeaderMap) -> bool {
        match self {
            HeaderCond::Present(n) => h.contains_key(n),
            HeaderCond::Exact(n, v) => h.get_all(n).iter().any(|x| x == v),
            HeaderCond::Regex(n, r) => h
                .get_all(n)
                .iter()
                .any(|x| x.to_str().is_ok_and(|s| r.is_match(s))),
        }
    }
}

/// A fault's request conditions, all of which must hold.
#[derive(Debug, Clone)]
pub struct Match {
    /// As given, for equality (a regex has none).
    source: proto::FaultCondition,
    methods: Vec<http::Method>,
    path_prefix: Option<String>,
    path_exact: Option<String>,
    path_regex: Option<Regex>,
    headers: Vec<HeaderCond>,
    /// gRPC service and method (empty: any method).
    grpc: Option<(String, String)>,
}

impl PartialEq for Match {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

fn regex(field: &str, p: &str) -> Result<Regex, String> {
    if p.chars().count() > MAX_REGEX_LEN {
        return Err(format!("{field}: at most {MAX_REGEX_LEN} characters"));
    }
    RegexBuilder::new(p)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let first = e.to_string();
            let last = first.lines().last().unwrap_or_default().trim().to_string();
            format!("{field}: '{p}' is not a regular expression ({last})")
        })
}

/// A header name, checked.
pub fn header_name(field: &str, n: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(n.trim().as_bytes())
        .map_err(|_| format!("{field}: '{}' is not a header name", n.trim()))
}

/// A header value, checked.
pub fn header_value(field: &str, v: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(v.trim())
        .map_err(|_| format!("{field}: '{}' is not a valid header value", v.trim()))
}

/// "name: value" as a header, checked.
pub fn header_line(field: &str, line: &str) -> Result<(HeaderName, HeaderValue), String> {
    let Some((n, v)) = line.split_once(':') else {
        return Err(format!(
            "{field}: '{line}' is not \"name: value\", e.g. \"x-fault: 1\""
        ));
    };
    Ok((header_name(field, n)?, header_value(field, v)?))
}

fn header_cond(line: &str) -> Result<HeaderCond, String> {
    let field = "headers";
    match line.find([':', '~']) {
        None => Ok(HeaderCond::Present(header_name(field, line)?)),
        Some(i) if line.as_bytes()[i] == b':' => {
            let (n, v) = header_line(field, line)?;
            Ok(HeaderCond::Exact(n, v))
        }
        Some(i) => {
            let n = header_name(field, &line[..i])?;
            Ok(HeaderCond::Regex(n, regex(field, line[i + 1..].trim())?))
        }
    }
}

fn too_many(field: &str, n: usize) -> Result<(), String> {
    if n > MAX_ITEMS {
        return Err(format!("{field}: {n} given; at most {MAX_ITEMS}"));
    }
    Ok(())
}

/// Whether a condition has any of the HTTP fields.
pub fn has_http(c: &proto::FaultCondition) -> bool {
    !(c.methods.is_empty()
        && c.path_prefix.is_empty()
        && c.path_exact.is_empty()
        && c.path_regex.is_empty()
        && c.headers.is_empty()
        && c.grpc_service.is_empty()
        && c.grpc_method.is_empty())
}

impl Match {
    /// The HTTP conditions of `c`, checked (None: it has none).
    pub fn compile(c: &proto::FaultCondition) -> Result<Option<Match>, String> {
        if !has_http(c) {
            return Ok(None);
        }
        too_many("methods", c.methods.len())?;
        too_many("headers", c.headers.len())?;
        let methods = c
            .methods
            .iter()
            .map(|m| {
                let m = m.trim().to_ascii_uppercase();
                http::Method::from_bytes(m.as_bytes())
                    .ok()
                    .filter(|_| !m.is_empty())
                    .ok_or_else(|| format!("methods: '{m}' is not an HTTP method"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let path = |field: &str, p: &str| -> Result<Option<String>, String> {
            if p.is_empty() {
                return Ok(None);
            }
            if !p.starts_with('/') {
                return Err(format!("{field}: '{p}' must start with /"));
            }
            Ok(Some(p.to_string()))
        };
        let grpc = match (c.grpc_service.trim(), c.grpc_method.trim()) {
            ("", "") => None,
            ("", _) => return Err("grpc_method needs grpc_service (\"pkg.Service\")".into()),
            (s, m) => {
                if s.contains('/') || m.contains('/') {
                    return Err(
                        "grpc_service and grpc_method are names without '/' (\"pkg.Service\", \"Method\")"
                            .into(),
                    );
                }
                Some((s.to_string(), m.to_string()))
            }
        };
        Ok(Some(Match {
            source: c.clone(),
            methods,
            path_prefix: path("path_prefix", &c.path_prefix)?,
            path_exact: path("path_exact", &c.path_exact)?,
            path_regex: (!c.path_regex.is_empty())
                .then(|| regex("path_regex", &c.path_regex))
                .transpose()?,
            headers: c
                .headers
                .iter()
                .map(|h| header_cond(h))
                .collect::<Result<_, _>>()?,
            grpc,
        }))
    }

    /// Whether `r` meets every condition.
    pub fn matches(&self, r: &Request<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(r.method) {
            return false;
        }
        if self
            .path_prefix
            .as_deref()
            .is_some_and(|p| !r.path.starts_with(p))
        {
            return false;
        }
        if self.path_exact.as_deref().is_some_and(|p| r.path != p) {
            return false;
        }
        if self
            .path_regex
            .as_ref()
            .is_some_and(|x| !x.is_match(r.path))
        {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(r.headers)) {
            return false;
        }
        if let Some((service, method)) = &self.grpc {
            if !is_grpc(r.headers) {
                return false;
            }
            // "/pkg.Service/Method"
            let Some((s, m)) = r.path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
                return false;
            };
            if s != service || (!method.is_empty() && m != method) {
                return false;
            }
        }
        true
    }
}

/// Whether a request is a gRPC call (content-type application/grpc...).
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(f: impl FnOnce(&mut proto::FaultCondition)) -> Result<Option<Match>, String> {
        let mut c = proto::FaultCondition::default();
        f(&mut c);
        Match::compile(&c)
    }

    #[test]
    fn conditions_match_method_path_headers_and_grpc() {
        let m = cond(|c| {
            c.methods = vec!["post".into()];
            c.path_prefix = "/api".into();
            c.headers = vec![
                "x-test: slow".into(),
                "X-Id~ ^[0-9]+$".into(),
                "x-any".into(),
            ];
        })
        .unwrap()
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-test", HeaderValue::from_static("slow"));
        h.insert("x-id", HeaderValue::from_static("42"));
        h.insert("x-any", HeaderValue::from_static(""));
        let post = http::Method::POST;
        let r = |m, p| Request {
            method: m,
            path: p,
            headers: &h,
        };
        assert!(m.matches(&r(&post, "/api/x")));
        assert!(!m.matches(&r(&http::Method::GET, "/api/x")));
        assert!(!m.matches(&r(&post, "/other")));
        let g = cond(|c| {
            c.grpc_service = "pkg.Svc".into();
            c.grpc_method = "Call".into();
        })
        .unwrap()
        .unwrap();
        let mut gh = HeaderMap::new();
        gh.insert(
            "content-type",
            HeaderValue::from_static("application/grpc+proto"),
        );
        let rq = |p| Request {
            method: &post,
            path: p,
            headers: &gh,
        };
        assert!(g.matches(&rq("/pkg.Svc/Call")));
        assert!(!g.matches(&rq("/pkg.Svc/Other")));
        assert!(!g.matches(&Request {
            method: &post,
            path: "/pkg.Svc/Call",
            headers: &h
        }));
        assert!(cond(|_| {}).unwrap().is_none());
    }

    #[test]
    fn bad_conditions_are_named() {
        let e = cond(|c| c.path_regex = "^/o/[0-9+$".into()).unwrap_err();
        assert!(e.starts_with("path_regex:"), "{e}");
        let e = cond(|c| c.headers = vec!["bad header: 1".into()]).unwrap_err();
        assert!(e.starts_with("headers:"), "{e}");
        let e = cond(|c| c.path_prefix = "api".into()).unwrap_err();
        assert!(e.contains("must start with /"), "{e}");
        let e = cond(|c| c.grpc_method = "Call".into()).unwrap_err();
        assert!(e.contains("grpc_service"), "{e}");
        let e = cond(|c| c.methods = vec!["G ET".into()]).unwrap_err();
        assert!(e.starts_with("methods:"), "{e}");
        assert!(cond(|c| c.path_regex = "x".repeat(1001)).is_err());
    }
}
