//! `/calls`: 1:1 calls over REST. Each action goes through the same
//! [`CallService`](crate::signal::calls::CallService) method as its `/rtc`
//! twin, so both emit the same events.

use super::error::{ApiError, ApiJson, OptionalJson};
use super::extract::query_number;
use super::{AppState, AuthUser};
use crate::ids::{CallId, RoomId, UserId};
use crate::model::{CallMode, CallSession, CallStatus, CallType, FacingMode};
use crate::signal::calls::NewCall;
use crate::store::HistoryQuery;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_call))
        .routes(routes!(call_history))
        .routes(routes!(get_call))
        .routes(routes!(accept_call))
        .routes(routes!(reject_call))
        .routes(routes!(hangup_call))
        .routes(routes!(mute_audio))
        .routes(routes!(mute_video))
        .routes(routes!(switch_camera))
        .routes(routes!(call_analytics))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateCall {
    caller_id: UserId,
    callee_id: UserId,
    call_type: CallType,
    #[serde(default)]
    room_name: Option<String>,
    #[serde(default)]
    mode: Option<CallMode>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallCreated {
    call_session: CallSession,
    room_id: RoomId,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallSessionBody {
    call_session: CallSession,
}

#[derive(Serialize, ToSchema)]
pub struct MessageBody {
    pub message: String,
}

pub fn message(m: &str) -> Json<MessageBody> {
    Json(MessageBody { message: m.to_owned() })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteBody {
    mute: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SwitchCameraBody {
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    facing_mode: Option<FacingMode>,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryBody {
    calls: Vec<CallSession>,
    total: usize,
    limit: usize,
    offset: usize,
}

/// Query of `GET /calls/history` (parsed by hand so errors name the field).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct HistoryParams {
    /// 1..100, default 20.
    limit: Option<u32>,
    offset: Option<u32>,
    /// `audio` or `video`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    call_type: Option<CallType>,
    status: Option<CallStatus>,
    /// Admins only: another user's history.
    #[serde(rename = "userId")]
    #[param(rename = "userId")]
    user_id: Option<String>,
}

/// Start a call: the callee's connected devices get `call-initiate`.
#[utoipa::path(post, path = "/calls", request_body = CreateCall, tag = "calls",
    security(("bearer" = [])),
    responses((status = 201, body = CallCreated), (status = 400, body = super::error::ErrorBody),
        (status = 401, body = super::error::ErrorBody), (status = 403, body = super::error::ErrorBody)))]
async fn create_call(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    ApiJson(body): ApiJson<CreateCall>,
) -> Result<(StatusCode, Json<CallCreated>), ApiError> {
    let req = NewCall {
        caller_id: body.caller_id,
        callee_id: body.callee_id,
        call_type: body.call_type,
        room_name: body.room_name,
        mode: body.mode.unwrap_or_default(),
        sdp: None,
    };
    let s = st.signal.calls.create(&actor, req).await?;
    Ok((StatusCode::CREATED, Json(CallCreated { room_id: s.room_id.clone(), call_session: s })))
}

/// The caller's call history, newest first.
#[utoipa::path(get, path = "/calls/history", params(HistoryParams), tag = "calls", security(("bearer" = [])),
    responses((status = 200, body = HistoryBody), (status = 400, body = super::error::ErrorBody),
        (status = 403, body = super::error::ErrorBody)))]
async fn call_history(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<HistoryBody>, ApiError> {
    let limit = query_number(&q, "limit", 20, 1..=100)?;
    let offset = query_number(&q, "offset", 0, 0..=1_000_000)?;
    let call_type = match q.get("type") {
        None => None,
        Some(t) => Some(
            serde_json::from_value::<CallType>(t.as_str().into())
                .map_err(|_| ApiError::bad_request("type: must be audio or video"))?,
        ),
    };
    let status = match q.get("status") {
        None => None,
        Some(s) => Some(
            serde_json::from_value::<CallStatus>(s.as_str().into())
                .map_err(|_| ApiError::bad_request("status: must be ringing, active, ended, rejected or missed"))?,
        ),
    };
    let user = q.get("userId").map(|u| UserId::from(u.as_str()));
    let page = st.signal.calls.history(&actor, HistoryQuery { user, call_type, status, limit, offset }).await?;
    Ok(Json(HistoryBody { calls: page.calls, total: page.total, limit, offset }))
}

/// One call, for its parties (and admins).
#[utoipa::path(get, path = "/calls/{callId}", params(("callId" = String, Path)), tag = "calls",
    security(("bearer" = [])),
    responses((status = 200, body = CallSessionBody), (status = 404, body = super::error::ErrorBody)))]
async fn get_call(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<CallSessionBody>, ApiError> {
    let call_session = st.signal.calls.get(&actor, &CallId::from(id)).await?;
    Ok(Json(CallSessionBody { call_session }))
}

/// The callee accepts; the caller gets `call-accept`, the callee's other devices `call-answered-elsewhere`.
#[utoipa::path(put, path = "/calls/{callId}/accept", params(("callId" = String, Path)), tag = "calls",
    security(("bearer" = [])),
    responses((status = 200, body = CallSessionBody), (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
async fn accept_call(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<CallSessionBody>, ApiError> {
    let call_session = st.signal.accept_call(&actor, &CallId::from(id)).await?;
    Ok(Json(CallSessionBody { call_session }))
}

/// The callee rejects a ringing call.
#[utoipa::path(put, path = "/calls/{callId}/reject", params(("callId" = String, Path)), tag = "calls",
    request_body(content = Option<RejectBody>), security(("bearer" = [])),
    responses((status = 200, body = MessageBody), (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
async fn reject_call(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<RejectBody>,
) -> Result<Json<MessageBody>, ApiError> {
    let reason = body.and_then(|b| b.reason);
    if reason.as_ref().is_some_and(|r| r.len() > 256) {
        return Err(ApiError::bad_request("reason: at most 256 characters"));
    }
    st.signal.reject_call(&actor, &CallId::from(id), reason).await?;
    Ok(message("Call rejected"))
}

/// Either party ends the call (a caller hanging up while ringing cancels it).
#[utoipa::path(put, path = "/calls/{callId}/hangup", params(("callId" = String, Path)), tag = "calls",
    security(("bearer" = [])),
    responses((status = 200, body = MessageBody), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
async fn hangup_call(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MessageBody>, ApiError> {
    st.signal.hangup_call(&actor, &CallId::from(id)).await?;
    Ok(message("Call ended"))
}

/// Mute or unmute your audio; the other party gets `call-participant-updated`.
#[utoipa::path(put, path = "/calls/{callId}/mute-audio", params(("callId" = String, Path)), tag = "calls",
    request_body = MuteBody, security(("bearer" = [])),
    responses((status = 200, body = MessageBody), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
async fn mute_audio(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MuteBody>,
) -> Result<Json<MessageBody>, ApiError> {
    st.signal.mute_call(&actor, &CallId::from(id), crate::model::TrackKind::Audio, body.mute).await?;
    Ok(message(if body.mute { "Audio muted" } else { "Audio unmuted" }))
}

/// Mute or unmute your video; the other party gets `call-participant-updated`.
#[utoipa::path(put, path = "/calls/{callId}/mute-video", params(("callId" = String, Path)), tag = "calls",
    request_body = MuteBody, security(("bearer" = [])),
    responses((status = 200, body = MessageBody), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
async fn mute_video(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MuteBody>,
) -> Result<Json<MessageBody>, ApiError> {
    st.signal.mute_call(&actor, &CallId::from(id), crate::model::TrackKind::Video, body.mute).await?;
    Ok(message(if body.mute { "Video muted" } else { "Video unmuted" }))
}

/// Record a camera switch; the other party gets `call-participant-updated`.
#[utoipa::path(put, path = "/calls/{callId}/switch-camera", params(("callId" = String, Path)), tag = "calls",
    request_body(content = Option<SwitchCameraBody>), security(("bearer" = [])),
    responses((status = 200, body = MessageBody), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
async fn switch_camera(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<SwitchCameraBody>,
) -> Result<Json<MessageBody>, ApiError> {
    let (device_id, facing_mode) = body.map(|b| (b.device_id, b.facing_mode)).unwrap_or_default();
    if device_id.as_ref().is_some_and(|d| d.len() > 256) {
        return Err(ApiError::bad_request("deviceId: at most 256 characters"));
    }
    st.signal.switch_camera(&actor, &CallId::from(id), device_id, facing_mode).await?;
    Ok(message("Camera switched"))
}

/// Call-quality analytics (SPEC 8): a `mode: "sfu"` call's from the SFU, a P2P
/// call's from its clients' `call-stats` (`source: "client"`).
#[utoipa::path(get, path = "/calls/{callId}/analytics", params(("callId" = String, Path)), tag = "calls",
    security(("bearer" = [])),
    responses((status = 200, body = super::rooms::AnalyticsBody), (status = 404, body = super::error::ErrorBody)))]
async fn call_analytics(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<super::rooms::AnalyticsBody>, ApiError> {
    let analytics = st.signal.call_analytics(&actor, &CallId::from(id)).await?;
    Ok(Json(super::rooms::AnalyticsBody { analytics }))
}
