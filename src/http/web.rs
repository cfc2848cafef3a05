//! The built-in web client (`GET /`): its files compiled into the binary, so
//! a self-hoster needs no CDN and no asset directory. The scripts are ES
//! modules the browser loads natively (`app.js` imports `calls.js`,
//! `layout.js`, `panel.js` and `prejoin.js`); there is no build step.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const CALLS_JS: &str = include_str!("web/calls.js");
const LAYOUT_JS: &str = include_str!("web/layout.js");
const PANEL_JS: &str = include_str!("web/panel.js");
const PREJOIN_JS: &str = include_str!("web/prejoin.js");
const STYLE: &str = include_str!("web/style.css");
const ICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="7" fill="#4f8cff"/></svg>"##;

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/assets/calls.js", get(|| async { asset("text/javascript; charset=utf-8", CALLS_JS) }))
        .route("/assets/layout.js", get(|| async { asset("text/javascript; charset=utf-8", LAYOUT_JS) }))
        .route("/assets/panel.js", get(|| async { asset("text/javascript; charset=utf-8", PANEL_JS) }))
        .route("/assets/prejoin.js", get(|| async { asset("text/javascript; charset=utf-8", PREJOIN_JS) }))
        .route("/assets/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/favicon.ico", get(|| async { asset("image/svg+xml", ICON) }))
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
