//! The axum edge: REST routes, the `/rtc` upgrade, `/metrics`, health, and the
//! OpenAPI document generated from the handlers' annotations (utoipa), so the
//! document cannot drift from the routes. The only module with status codes.

pub mod access;
mod calls;
mod error;
mod extract;
mod misc;
mod rooms;
mod web;
mod ws;

pub use error::{ApiError, ApiJson};
pub use extract::AuthUser;
pub use misc::{IceSettings, TurnHost};

use crate::metrics::Metrics;
use crate::signal::session::Limits;
use crate::signal::Signaling;
use crate::store::Store;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub signal: Arc<Signaling>,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub ice: Arc<IceSettings>,
    pub allow_guests: bool,
    pub metrics_token: Option<String>,
    pub ws_limits: Arc<Limits>,
    /// Set by the app once every socket it needs is bound (`/readyz`).
    pub sockets_ready: Arc<AtomicBool>,
    /// `http.cors_origins`: browser origins allowed to call the API (`*`: any).
    pub cors_origins: Arc<[String]>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "confer", description = "Video and audio calls: signaling, SFU, TURN, analytics. See SPEC.md."),
    modifiers(&BearerAuth),
    components(schemas(error::ErrorBody))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Responses every route shares, added to the document in one place rather
/// than on each handler: 401 wherever a token is required, 400 and 413 wherever
/// a body or query is parsed, 405 and 429 everywhere.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for op in ops.into_iter().flatten() {
                let r = &mut op.responses.responses;
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                if secured {
                    r.entry("401".into()).or_insert_with(|| error("missing, invalid or expired token").into());
                }
                if op.request_body.is_some() || op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                    r.entry("400".into()).or_insert_with(|| error("bad input; the message names the field").into());
                }
                if op.request_body.is_some() {
                    r.entry("413".into()).or_insert_with(|| error("body over 64 KiB").into());
                }
                r.entry("405".into()).or_insert_with(|| error("method not allowed").into());
            }
        }
    }
}

/// Every route with its OpenAPI description.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(calls::router())
        .merge(rooms::router())
        .merge(misc::router())
        .merge(ws::router())
}

/// The router and its OpenAPI document, with the shared responses added.
fn split() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut api) = routes().split_for_parts();
    CommonResponses.modify(&mut api);
    (router, api)
}

/// The OpenAPI document of [`app`]'s routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    split().1
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let (router, api) = split();
    let api = Arc::new(api);
    let router = router
        .route("/openapi.json", axum::routing::get(move || async move { axum::Json(api.as_ref().clone()) }))
        .merge(web::router())
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic));
    // CORS answers preflights before any handler, so they need no token.
    let router = match cors(&state.cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    access::layer(router).with_state(state)
}

/// SPEC 3: `http.cors_origins` (validated by the config) may call the API
/// from a browser with a bearer token; no cookies are involved, so no
/// credentials mode. None: no CORS headers at all.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, access::REQUEST_ID])
            .expose_headers([access::REQUEST_ID])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

/// Count and time every matched request by its route pattern.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
    let started = Instant::now();
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.http_request_duration_seconds.with_label_values(&[&route]).observe(started.elapsed().as_secs_f64());
    m.http_requests_total.with_label_values(&[&route, resp.status().as_str()]).inc();
    resp
}

async fn not_found(State(state): State<AppState>) -> ApiError {
    state.metrics.http_requests_total.with_label_values(&["unmatched", "404"]).inc();
    ApiError::not_found("no such route; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "method not allowed on this route")
}

fn on_panic(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown");
    tracing::error!(panic = what, "handler panicked");
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; the server logged the details",
    )
    .into_response()
}

/// Parse `bytes` as each request body the API accepts (for the fuzz target and
/// tests): every result is a value or a 400 that names where it failed.
#[doc(hidden)]
pub fn parse_every_body(bytes: &[u8]) -> Vec<Result<(), ApiError>> {
    use error::parse_json;
    vec![
        parse_json::<calls::CreateCall>(bytes).map(drop),
        parse_json::<calls::RejectBody>(bytes).map(drop),
        parse_json::<calls::MuteBody>(bytes).map(drop),
        parse_json::<calls::SwitchCameraBody>(bytes).map(drop),
        parse_json::<rooms::CreateRoom>(bytes).map(drop),
        parse_json::<misc::GuestRequest>(bytes).map(drop),
    ]
}

/// The app as a tower service, called with `oneshot` (no socket): routing,
/// auth and error bodies against the real services.
#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    async fn app_on(dir: &std::path::Path) -> (Router, crate::auth::TokenKeys) {
        let (signal, store) = crate::signal::testing::services(dir).await;
        let state = AppState {
            signal,
            store,
            metrics: Metrics::new(),
            ice: Arc::new(IceSettings {
                turn_host: None,
                turn_port: 0,
                turns_port: None,
                secret: b"turn".to_vec(),
                ttl: std::time::Duration::from_secs(3600),
            }),
            allow_guests: false,
            metrics_token: None,
            ws_limits: Arc::new(Limits::default()),
            sockets_ready: Arc::new(AtomicBool::new(true)),
            cors_origins: Arc::from(Vec::<String>::new()),
        };
        (app(state), crate::auth::TokenKeys::new(crate::signal::testing::SECRET))
    }

    async fn call(app: &Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn routes_answer_through_oneshot_with_auth_and_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (app, keys) = app_on(dir.path()).await;
        let token = keys.sign(&crate::auth::Claims::new("alice".into(), std::time::Duration::from_secs(600)));
        let post = |body: &str, auth: bool| {
            let mut r = Request::post("/calls").header("content-type", "application/json");
            if auth {
                r = r.header("authorization", format!("Bearer {token}"));
            }
            r.body(Body::from(body.to_owned())).unwrap()
        };
        let (st, body) = call(&app, post(r#"{"callerId":"alice","calleeId":"bob","callType":"video"}"#, false)).await;
        assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{body}");
        let (st, body) = call(&app, post(r#"{"callerId":"alice","calleeId":"bob","callType":5}"#, true)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("callType"), "{body}");
        let (st, body) = call(&app, post(r#"{"callerId":"alice","calleeId":"bob","callType":"video"}"#, true)).await;
        assert_eq!((st, body["callSession"]["status"].as_str()), (StatusCode::CREATED, Some("ringing")), "{body}");
        let id = body["callSession"]["id"].as_str().unwrap();
        let get = Request::get(format!("/calls/{id}")).header("authorization", format!("Bearer {token}"));
        let (st, body) = call(&app, get.body(Body::empty()).unwrap()).await;
        assert_eq!((st, body["callSession"]["id"].as_str()), (StatusCode::OK, Some(id)), "{body}");
        let (st, _) = call(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
        assert_eq!(st, StatusCode::OK);
    }

    /// SPEC 8's analytics are typed end to end: the document shows their schema.
    #[tokio::test]
    async fn openapi_shows_the_analytics_schema() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = app_on(dir.path()).await;
        let (st, doc) = call(&app, Request::get("/openapi.json").body(Body::empty()).unwrap()).await;
        assert_eq!(st, StatusCode::OK);
        let schemas = &doc["components"]["schemas"];
        let props = |name: &str| schemas[name]["properties"].as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
        let analytics = props("Analytics").unwrap_or_default();
        for k in
            ["callId", "roomId", "source", "status", "duration", "setupTimeMs", "quality", "participants", "samples"]
        {
            assert!(analytics.iter().any(|p| p == k), "Analytics.{k}: {analytics:?}");
        }
        let stream = props("StreamReport").unwrap_or_default();
        for k in [
            "packets",
            "packetsLost",
            "packetLoss",
            "jitterMs",
            "rttMs",
            "bitrateKbps",
            "nackCount",
            "pliCount",
            "firCount",
        ] {
            assert!(stream.iter().any(|p| p == k), "StreamReport.{k}: {stream:?}");
        }
        assert!(!stream.iter().any(|p| p == "intervalLoss"), "an internal field is not in the API: {stream:?}");
        let body = &schemas["AnalyticsBody"]["properties"]["analytics"];
        assert_eq!(body["$ref"], "#/components/schemas/Analytics", "{body}");
    }
}
