//! `GET /rtc`: authenticate (header or `?token=`), upgrade, and hand the
//! socket to [`signal::session`](crate::signal::session) as a stream of frames.

use super::extract::{bearer, query_token};
use super::{ApiError, AppState};
use crate::auth::AuthError;
use crate::signal::session::{self, Frame};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(rtc))
}

/// Frames above this are refused by the WebSocket layer itself; frames between
/// the SPEC's 64 KiB and this get a `too-large` error and the socket stays up.
const HARD_FRAME_LIMIT: usize = 1024 * 1024;
const READ_BUFFER: usize = 4 * 1024;

/// The signaling WebSocket (SPEC 4). Authenticate with `Authorization: Bearer`
/// or `?token=`; 401 before any upgrade. Each connection may send 50
/// messages/s (burst 100); chat (`room-message`, text 1 to 4096 bytes) is
/// further limited per participant to `rooms.chat_rate` messages/s (default 5,
/// burst 10). Over either limit the server answers `error` with code
/// `rate-limited`.
#[utoipa::path(get, path = "/rtc", tag = "signaling",
    params(("token" = Option<String>, Query, description = "access token, for clients that cannot set headers")),
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, body = super::error::ErrorBody, description = "not a WebSocket upgrade"),
        (status = 401, body = super::error::ErrorBody)))]
async fn rtc(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (mut parts, _) = req.into_parts();
    let token = bearer(&parts).map(str::to_owned).or_else(|| query_token(&parts)).ok_or(AuthError::Missing)?;
    let claims = st.signal.keys.verify(&token)?;
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &st)
        .await
        .map_err(|e| ApiError::bad_request(format!("/rtc needs a WebSocket upgrade: {e}")))?;
    Ok(upgrade
        // Signaling is light and connections are many: small eager buffers
        // (tungstenite's default read buffer is 128 KiB per connection).
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(HARD_FRAME_LIMIT)
        .max_frame_size(HARD_FRAME_LIMIT)
        .on_upgrade(move |socket| async move {
            let socket = adapt(socket);
            session::run(socket, claims, &st.signal, &st.ws_limits).await;
        }))
}

/// axum's WebSocket as a `Stream + Sink` of [`Frame`]s.
fn adapt(
    socket: WebSocket,
) -> impl futures_util::Stream<Item = Result<Frame, axum::Error>> + futures_util::Sink<Frame, Error = axum::Error> + Unpin
{
    socket
        .with(|f: Frame| {
            futures_util::future::ready(Ok::<_, axum::Error>(match f {
                Frame::Text(t) => Message::Text(t.into()),
                Frame::Binary(b) => Message::Binary(b.into()),
                Frame::Ping(b) => Message::Ping(b.into()),
                Frame::Pong(b) => Message::Pong(b.into()),
                Frame::Close(c) => Message::Close(c.map(|(code, reason)| CloseFrame { code, reason: reason.into() })),
            }))
        })
        .map(|m| {
            m.map(|m| match m {
                Message::Text(t) => Frame::Text(t.to_string()),
                Message::Binary(b) => Frame::Binary(b.to_vec()),
                Message::Ping(b) => Frame::Ping(b.to_vec()),
                Message::Pong(b) => Frame::Pong(b.to_vec()),
                Message::Close(c) => Frame::Close(c.map(|c| (c.code, c.reason.to_string()))),
            })
        })
}
