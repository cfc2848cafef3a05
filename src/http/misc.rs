//! `/ice-config`, `/auth/guest`, `/healthz`, `/readyz`, `/metrics`.

use super::error::{ApiError, ApiJson};
use super::{AppState, AuthUser};
use crate::auth::Claims;
use crate::ids::{random_token, UserId};
use crate::turn::credentials;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ice_config))
        .routes(routes!(guest))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// What `/ice-config` hands out: where TURN listens and the credential scheme.
#[derive(Clone, Debug)]
pub struct IceSettings {
    /// The host of the `stun:`/`turn:`/`turns:` URLs; `None` when TURN is off.
    pub turn_host: Option<TurnHost>,
    /// The port of the `stun:`/`turn:` URLs.
    pub turn_port: u16,
    /// The port of the `turns:` URL: only when TURN listens on TLS
    /// (`turn.tls_listen`), so no listener that does not exist is advertised.
    pub turns_port: Option<u16>,
    pub secret: Vec<u8>,
    pub ttl: Duration,
}

/// Which host the TURN URLs name (SPEC 12), never a wildcard.
#[derive(Clone, Debug)]
pub enum TurnHost {
    /// `turn.public_host`, the listen IP, or `turn.relay_ip`.
    Fixed(String),
    /// A wildcard listen without `relay_ip`: the host the HTTP request came
    /// in on (the address the client reached confer at), else `fallback`
    /// (the first interface address; for `room-joined`, which has no request).
    FromRequest { fallback: String },
}

/// `Host` as a URL host: the name or IP without the port, when it is
/// plainly one (letters, digits, `.-:` and IPv6 brackets), else None.
pub fn request_host(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(header::HOST)?.to_str().ok()?.trim();
    let host = if h.starts_with('[') { &h[..=h.find(']')?] } else { h.rsplit_once(':').map_or(h, |(host, _)| host) };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        && host.parse::<std::net::Ipv4Addr>().map_or(true, |ip| !ip.is_unspecified())
        && host != "[::]";
    ok.then(|| host.to_owned())
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IceServer {
    urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IceConfig {
    ice_servers: Vec<IceServer>,
    /// Seconds the credentials stay valid.
    ttl: u64,
}

/// STUN and TURN servers with TURN REST API credentials for the caller.
#[utoipa::path(get, path = "/ice-config", tag = "ice", security(("bearer" = [])),
    responses((status = 200, body = IceConfig), (status = 401, body = super::error::ErrorBody)))]
async fn ice_config(State(st): State<AppState>, headers: HeaderMap, AuthUser(actor): AuthUser) -> Json<IceConfig> {
    let host = request_host(&headers);
    Json(IceConfig { ice_servers: st.ice.servers(actor.user(), host.as_deref()), ttl: st.ice.ttl.as_secs() })
}

impl IceSettings {
    /// STUN and TURN (with fresh REST credentials for `user`), as `/ice-config`
    /// and `room-joined` give them; `request_host` is the HTTP request's
    /// host, when there is one.
    pub fn servers(&self, user: &UserId, request_host: Option<&str>) -> Vec<IceServer> {
        let host = match &self.turn_host {
            None => return Vec::new(),
            Some(TurnHost::Fixed(h)) => h.as_str(),
            Some(TurnHost::FromRequest { fallback }) => request_host.unwrap_or(fallback),
        };
        let hp = format!("{host}:{}", self.turn_port);
        let c = credentials::mint(&self.secret, user.as_str(), crate::auth::unix_now() + self.ttl.as_secs());
        let mut urls = vec![format!("turn:{hp}?transport=udp"), format!("turn:{hp}?transport=tcp")];
        if let Some(tls) = self.turns_port {
            urls.push(format!("turns:{host}:{tls}?transport=tcp"));
        }
        vec![
            IceServer { urls: vec![format!("stun:{hp}")], username: None, credential: None },
            IceServer { urls, username: Some(c.username), credential: Some(c.credential) },
        ]
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestRequest {
    /// Display name, 1..64 characters.
    name: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestToken {
    token: String,
    user_id: UserId,
}

pub const GUEST_TTL: Duration = Duration::from_secs(12 * 3600);

/// A guest token (only with `--dev` or `auth.allow_guests`).
#[utoipa::path(post, path = "/auth/guest", request_body = GuestRequest, tag = "auth",
    responses((status = 200, body = GuestToken), (status = 400, body = super::error::ErrorBody),
        (status = 403, body = super::error::ErrorBody)))]
async fn guest(State(st): State<AppState>, ApiJson(req): ApiJson<GuestRequest>) -> Result<Json<GuestToken>, ApiError> {
    if !st.allow_guests {
        return Err(ApiError::forbidden("guest access is off: start with --dev or set auth.allow_guests = true"));
    }
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("name: 1 to 64 printable characters"));
    }
    let user_id = UserId::from(format!("guest-{}", random_token(10)));
    let mut claims = Claims::new(user_id.clone(), GUEST_TTL);
    claims.name = Some(name.to_owned());
    Ok(Json(GuestToken { token: st.signal.keys.sign(&claims), user_id }))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failing: Vec<&'static str>,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok", failing: Vec::new() })
}

/// Readiness: the store is open and every socket is bound.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn readyz(State(st): State<AppState>) -> (StatusCode, Json<Health>) {
    let mut failing = Vec::new();
    if !st.store.is_healthy() {
        failing.push("store");
    }
    if !st.sockets_ready.load(Ordering::Acquire) {
        failing.push("sockets");
    }
    let code = if failing.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(Health { status: if failing.is_empty() { "ready" } else { "not-ready" }, failing }))
}

/// Prometheus metrics (text format); a bearer token when `metrics.token` is set.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, content_type = "text/plain", body = String), (status = 401, body = super::error::ErrorBody)))]
async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    if let Some(want) = &st.metrics_token {
        let got =
            headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "));
        if got.map(str::trim) != Some(want.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "metrics need Authorization: Bearer <metrics.token>",
            ));
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_host_is_the_host_without_port_and_never_a_wildcard() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, h.parse().unwrap());
            request_host(&m)
        };
        assert_eq!(host("198.18.0.1:8080").as_deref(), Some("198.18.0.1"));
        assert_eq!(host("confer.example.com").as_deref(), Some("confer.example.com"));
        assert_eq!(host("[2001:db8::1]:8443").as_deref(), Some("[2001:db8::1]"));
        for bad in ["0.0.0.0:8080", "[::]:8080", "a b", "x\"y:1", ""] {
            assert_eq!(host(bad), None, "{bad:?}");
        }
        assert_eq!(request_host(&HeaderMap::new()), None);
    }

    #[test]
    fn turn_urls_follow_the_request_host_on_a_wildcard() {
        let ice = IceSettings {
            turn_host: Some(TurnHost::FromRequest { fallback: "198.18.0.2".into() }),
            turn_port: 3478,
            turns_port: Some(5349),
            secret: b"s".to_vec(),
            ttl: Duration::from_secs(60),
        };
        let user = UserId::from("alice".to_owned());
        let urls = |host| ice.servers(&user, host).into_iter().flat_map(|s| s.urls).collect::<Vec<_>>();
        assert_eq!(
            urls(Some("198.18.0.1")),
            [
                "stun:198.18.0.1:3478",
                "turn:198.18.0.1:3478?transport=udp",
                "turn:198.18.0.1:3478?transport=tcp",
                "turns:198.18.0.1:5349?transport=tcp"
            ]
        );
        assert_eq!(urls(None)[0], "stun:198.18.0.2:3478");
    }
}
