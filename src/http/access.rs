//! The access log and request ids, through tower-http: `x-request-id` is kept
//! from the request or generated (a UUID) and echoed in the response, and
//! every response is logged once at `info` on the target [`TARGET`] with the
//! method, the route template (`/calls/{callId}`), status, latency and
//! request id. Never the path or the query: they carry ids, and `/rtc` its
//! `?token=`.

use axum::extract::MatchedPath;
use axum::http::{HeaderName, Request, Response};
use axum::Router;
use std::time::Duration;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

/// The target of the access log, for `RUST_LOG` (`confer::http::access=off`).
pub const TARGET: &str = "confer::http::access";

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `router` with request ids and the access log around every route (and the
/// fallback, logged as route `unmatched`).
pub fn layer<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    let trace = TraceLayer::new_for_http()
        .make_span_with(make_span)
        .on_request(())
        .on_response(on_response)
        // The response line already has the status; 5xx are logged with context where they arise.
        .on_failure(());
    // Outermost first: set the id, log with it, echo it.
    router
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(trace)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

fn make_span<B>(req: &Request<B>) -> Span {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
    let request_id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
    tracing::info_span!(target: TARGET, "http", method = %req.method(), route, request_id)
}

fn on_response<B>(resp: &Response<B>, latency: Duration, _span: &Span) {
    let latency_ms = (latency.as_secs_f64() * 1e6).round() / 1e3;
    tracing::info!(target: TARGET, status = resp.status().as_u16(), latency_ms, "request");
}
