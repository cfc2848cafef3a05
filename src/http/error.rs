//! The HTTP edge's one error type, [`ApiError`], and the body extractors that
//! speak the same format: `{"error": {"code": "...", "message": "..."}}`.
//! The only place that turns domain errors into status codes.

use crate::auth::AuthError;
use crate::signal::SignalError;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// One of the SPEC 12 codes (`bad-request`, `unauthorized`, `not-found`, ...).
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }
    pub fn too_large() -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", "request body is over the 64 KiB limit")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        (self.status, Json(body)).into_response()
    }
}

impl From<SignalError> for ApiError {
    fn from(e: SignalError) -> Self {
        let status = match &e {
            SignalError::BadRequest(_) => StatusCode::BAD_REQUEST,
            SignalError::NotFound(_) => StatusCode::NOT_FOUND,
            SignalError::Forbidden(_) => StatusCode::FORBIDDEN,
            SignalError::Conflict(_) | SignalError::RoomFull => StatusCode::CONFLICT,
            SignalError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            SignalError::OnOtherNode { .. } | SignalError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            SignalError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            SignalError::Store(inner @ crate::store::StoreError::Unavailable(_)) => {
                tracing::warn!(error = %inner, "store unavailable");
                StatusCode::SERVICE_UNAVAILABLE
            }
            SignalError::Store(inner) => {
                tracing::error!(error = %inner, "store failure");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self::new(status, e.code(), e.public_message())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = if e == AuthError::Expired { "token-expired" } else { "unauthorized" };
        Self::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

/// A JSON body whose errors name the offending field (`calleeId: missing
/// field`, `maxParticipants: invalid type`) and come in the API's error shape.
pub struct ApiJson<T>(pub T);

/// Like [`ApiJson`], but an empty body is `None` (for optional bodies).
pub struct OptionalJson<T>(pub Option<T>);

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large()
        } else {
            ApiError::bad_request(format!("could not read the request body: {rej}"))
        }
    })
}

/// A whole body as a `T` ([`crate::json`]): not JSON, bytes after the value
/// (whitespace is fine) and a field of the wrong shape are each a 400 saying
/// which, the last naming the field and what it expects.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = crate::json::whole_value(bytes).map_err(|e| match e {
        crate::json::ValueError::Trailing { .. } => ApiError::bad_request(format!("body has {e}; send one JSON value")),
        crate::json::ValueError::Syntax(_) => ApiError::bad_request(format!("body is not valid JSON: {e}")),
    })?;
    crate::json::from_value(&value).map_err(|e| match e.path_text().as_str() {
        "" => ApiError::bad_request(format!("body: {}", e.message)),
        path => ApiError::bad_request(format!("{path}: {}", e.message)),
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("body: a JSON object is required"));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        parse_json::<Option<T>>(&bytes).map(OptionalJson)
    }
}
