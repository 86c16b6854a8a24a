//! HTTP faults on the http-proxy's requests: decided before a request is
//! forwarded ([`before`]: abort, delay, request headers) and applied to
//! its response ([`after`]: delay, slow_body, reset, response headers,
//! replace_body).
//!
//! The engine is being built: today no HTTP fault compiles, so a request
//! passes untouched.

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::HttpProxy;
use super::forward::Body;
use crate::services::ServiceCtx;
use crate::services::http_server::Peer;

/// What the faults will do to a request's response.
#[derive(Debug, Default)]
pub struct After {}

/// The faults for a request about to be forwarded: `Err` is the answer
/// that takes its place (an abort).
pub async fn before(
    _proxy: &HttpProxy,
    _ctx: &ServiceCtx,
    _req: &mut Request<Incoming>,
    _peer: &Peer,
) -> Result<After, Response<Body>> {
    Ok(After::default())
}

/// The faults on the response.
pub async fn after(_after: After, resp: Response<Body>) -> Response<Body> {
    resp
}
