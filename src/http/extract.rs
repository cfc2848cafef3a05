//! Request authentication: `Authorization: Bearer <token>`, or `?token=` where
//! a browser cannot set headers (the `/rtc` upgrade).

use super::{ApiError, AppState};
use crate::auth::{AuthError, Claims};
use crate::signal::Actor;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;

/// The authenticated caller of a REST route.
pub struct AuthUser(pub Actor);

impl AuthUser {
    pub fn claims(&self) -> &Claims {
        &self.0.claims
    }
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let h = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// The `token` query parameter, if any.
pub fn query_token(parts: &Parts) -> Option<String> {
    let q = axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(&parts.uri).ok()?;
    q.0.get("token").cloned()
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(AuthError::Missing)?;
        let claims = state.signal.keys.verify(token)?;
        Ok(AuthUser(Actor { claims, conn: None }))
    }
}

/// A whole-number query parameter in `range`, `default` when absent; a 400
/// naming the parameter otherwise.
pub fn query_number(
    q: &std::collections::HashMap<String, String>,
    key: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ApiError> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().ok().filter(|n| range.contains(n)).ok_or_else(|| {
            ApiError::bad_request(format!("{key}: must be a whole number in {}..{}", range.start(), range.end()))
        }),
    }
}
