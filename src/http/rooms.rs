//! `/rooms`: group rooms over REST (create, list, read, reserve a seat,
//! leave, delete). Media and the WebSocket join belong to the SFU.

use super::calls::{message, MessageBody};
use super::error::{ApiError, ApiJson};
use super::extract::query_number;
use super::{AppState, AuthUser};
use crate::ids::{PeerId, RoomId};
use crate::model::{ChatMessage, Room};
use crate::signal::rooms::NewRoom;
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
        .routes(routes!(create_room, list_rooms))
        .routes(routes!(get_room, delete_room))
        .routes(routes!(join_room))
        .routes(routes!(leave_room))
        .routes(routes!(room_analytics))
        .routes(routes!(room_messages))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRoom {
    name: String,
    /// 2..`rooms.max_participants`, default 16.
    #[serde(default)]
    max_participants: Option<u32>,
    #[serde(default)]
    is_private: bool,
}

#[derive(Serialize, ToSchema)]
pub struct RoomBody {
    room: Room,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinBody {
    room: Room,
    peer_id: PeerId,
}

#[derive(Serialize, ToSchema)]
pub struct RoomList {
    rooms: Vec<Room>,
    total: usize,
    limit: usize,
    offset: usize,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListParams {
    /// 1..100, default 20.
    limit: Option<u32>,
    offset: Option<u32>,
}

type ErrorBody = super::error::ErrorBody;

/// Create a room; the creator may always enter it.
#[utoipa::path(post, path = "/rooms", request_body = CreateRoom, tag = "rooms", security(("bearer" = [])),
    responses((status = 201, body = RoomBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create_room(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    ApiJson(body): ApiJson<CreateRoom>,
) -> Result<(StatusCode, Json<RoomBody>), ApiError> {
    let room = st
        .signal
        .rooms
        .create(
            &actor,
            NewRoom { name: body.name, max_participants: body.max_participants, is_private: body.is_private },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(RoomBody { room })))
}

/// Public rooms and your own, newest first.
#[utoipa::path(get, path = "/rooms", params(ListParams), tag = "rooms", security(("bearer" = [])),
    responses((status = 200, body = RoomList), (status = 400, body = ErrorBody)))]
async fn list_rooms(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<RoomList>, ApiError> {
    let limit = query_number(&q, "limit", 20, 1..=100)?;
    let offset = query_number(&q, "offset", 0, 0..=1_000_000)?;
    let (rooms, total) = st.signal.rooms.list(&actor, limit, offset).await?;
    Ok(Json(RoomList { rooms, total, limit, offset }))
}

/// One room with its participants and their tracks.
#[utoipa::path(get, path = "/rooms/{roomId}", params(("roomId" = String, Path)), tag = "rooms",
    security(("bearer" = [])),
    responses((status = 200, body = RoomBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_room(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<RoomBody>, ApiError> {
    let room = st.signal.get_room(&actor, &RoomId::from(id)).await?;
    Ok(Json(RoomBody { room }))
}

/// `{analytics}` of SPEC 8.
#[derive(Serialize, ToSchema)]
pub struct AnalyticsBody {
    pub analytics: crate::analytics::report::Analytics,
}

/// Call-quality analytics of the room (SPEC 8): live while it has
/// participants, then the persisted summary.
#[utoipa::path(get, path = "/rooms/{roomId}/analytics", params(("roomId" = String, Path)), tag = "rooms",
    security(("bearer" = [])),
    responses((status = 200, body = AnalyticsBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn room_analytics(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<AnalyticsBody>, ApiError> {
    let analytics = st.signal.room_analytics(&actor, &RoomId::from(id)).await?;
    Ok(Json(AnalyticsBody { analytics }))
}

/// `GET /rooms/:roomId/messages`.
#[derive(Serialize, ToSchema)]
pub struct MessagesBody {
    messages: Vec<ChatMessage>,
}

/// The room's chat history, oldest first: the last 200 `room-message`s sent to
/// everyone (direct messages are never kept). Members only: the room's
/// creator, an admin, or a user holding a seat in it (joined or reserved).
/// Over `/rtc`, `room-message` text is 1 to 4096 bytes, and each participant
/// may send 5 messages/s (burst 10) on top of the connection's limit; above
/// that the server answers `error` with code `rate-limited`.
#[utoipa::path(get, path = "/rooms/{roomId}/messages", params(("roomId" = String, Path)), tag = "rooms",
    security(("bearer" = [])),
    responses((status = 200, body = MessagesBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn room_messages(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MessagesBody>, ApiError> {
    let messages = st.signal.room_messages(&actor, &RoomId::from(id)).await?;
    Ok(Json(MessagesBody { messages }))
}

/// Reserve a seat for 60 s; the WebSocket `room-join` binds it.
#[utoipa::path(post, path = "/rooms/{roomId}/join", params(("roomId" = String, Path)), tag = "rooms",
    security(("bearer" = [])),
    responses((status = 200, body = JoinBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "room-full")))]
async fn join_room(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<JoinBody>, ApiError> {
    let (room, peer_id) = st.signal.reserve_seat(&actor, &RoomId::from(id)).await?;
    Ok(Json(JoinBody { room, peer_id }))
}

/// Give up your seats in the room.
#[utoipa::path(post, path = "/rooms/{roomId}/leave", params(("roomId" = String, Path)), tag = "rooms",
    security(("bearer" = [])),
    responses((status = 200, body = MessageBody), (status = 404, body = ErrorBody)))]
async fn leave_room(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MessageBody>, ApiError> {
    st.signal.leave_room(&actor, &RoomId::from(id)).await?;
    Ok(message("Left room"))
}

/// Delete a room (creator or admin); its participants get `room-deleted`.
#[utoipa::path(delete, path = "/rooms/{roomId}", params(("roomId" = String, Path)), tag = "rooms",
    security(("bearer" = [])),
    responses((status = 200, body = MessageBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_room(
    State(st): State<AppState>,
    AuthUser(actor): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MessageBody>, ApiError> {
    st.signal.delete_room(&actor, &RoomId::from(id)).await?;
    Ok(message("Room deleted"))
}
