//! The domain records the API shows and the store keeps: calls, rooms,
//! participants, tracks. Plain data with serde (camelCase, RFC 3339 times);
//! behaviour lives in `signal`.

use crate::clock::Timestamp;
use crate::ids::{CallId, MessageId, PeerId, RoomId, TrackId, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallType {
    Audio,
    Video,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum CallMode {
    #[default]
    P2p,
    Sfu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallStatus {
    Ringing,
    Active,
    Ended,
    Rejected,
    Missed,
}

impl CallStatus {
    /// Ended, rejected and missed are final: no transition leaves them.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Ended | Self::Rejected | Self::Missed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ringing => "ringing",
            Self::Active => "active",
            Self::Ended => "ended",
            Self::Rejected => "rejected",
            Self::Missed => "missed",
        }
    }

    pub const ALL: [CallStatus; 5] = [Self::Ringing, Self::Active, Self::Ended, Self::Rejected, Self::Missed];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FacingMode {
    User,
    Environment,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Camera {
    pub device_id: Option<String>,
    pub facing_mode: Option<FacingMode>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallParticipant {
    pub user_id: UserId,
    pub audio_muted: bool,
    pub video_muted: bool,
    pub camera: Camera,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub joined_at: Option<Timestamp>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub left_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallSession {
    pub id: CallId,
    pub caller_id: UserId,
    pub callee_id: UserId,
    pub call_type: CallType,
    pub mode: CallMode,
    pub status: CallStatus,
    pub room_id: RoomId,
    pub room_name: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub answered_at: Option<Timestamp>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
    pub end_reason: Option<String>,
    /// Seconds from answer to end (or to now while active); 0 until active.
    pub duration: f64,
    pub participants: Vec<CallParticipant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Audio,
    Video,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TrackSource {
    Camera,
    Microphone,
    Screen,
    ScreenAudio,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackInfo {
    pub id: TrackId,
    pub kind: TrackKind,
    pub source: TrackSource,
    pub muted: bool,
    pub simulcast: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomParticipant {
    pub peer_id: PeerId,
    pub user_id: UserId,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub joined_at: Timestamp,
    pub tracks: Vec<TrackInfo>,
    /// Set by `participant-state` (SPEC 4); not kept across a rejoin on a
    /// new seat.
    #[serde(default)]
    pub hand_raised: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub max_participants: u32,
    pub is_private: bool,
    pub created_by: UserId,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    pub participants: Vec<RoomParticipant>,
    /// The room's chat history, oldest first (at most
    /// `signal::chat::HISTORY` messages; direct messages are never kept).
    /// Stored with the room so a restart keeps it, but never part of the
    /// API's `room`: `GET /rooms/:roomId/messages` lists it, to members only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(ignore)]
    pub messages: Vec<ChatMessage>,
}

/// A seat reserved over REST (`POST /rooms/:id/join`) that `room-join` has
/// not bound yet, as the store keeps it: the node that holds the room next
/// (after a restart, or in a cluster after the room's node died) honours it
/// until `expires_at`. Never part of the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub room_id: RoomId,
    pub seat: RoomParticipant,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: Timestamp,
}

/// Who sent a chat message: `room-message.from`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatSender {
    pub peer_id: PeerId,
    pub user_id: UserId,
    pub name: String,
}

/// One chat message (SPEC 4 `room-message`), as sent to clients and kept in
/// the room's history. The text is relayed exactly as the sender wrote it:
/// clients must show it as text, never as markup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub room_id: RoomId,
    pub id: MessageId,
    pub from: ChatSender,
    pub text: String,
    /// The one participant a direct message went to (it is never kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<PeerId>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}
