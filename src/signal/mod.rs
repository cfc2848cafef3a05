//! Signaling: calls, rooms and the `/rtc` WebSocket sessions.
//!
//! Pure state machines ([`call`]) sit under services ([`calls::CallService`],
//! [`rooms::RoomService`]) that persist through the [`crate::store::Store`]
//! trait and reach clients through the [`hub::Hub`]'s per-connection queues.
//! A call action returns [`effects::Effect`]s (persist, notify these users,
//! start/cancel this timer) that the service carries out in one place; the
//! hub delivers locally today, and is where delivery to other nodes plugs in.
//! Their timers live in one scheduler ([`timers`]); a fired timer comes back
//! through [`Signaling::on_timer`] to the service that set it.
//! Nothing here touches a socket or knows an HTTP status code; [`SignalError`]
//! carries the SPEC's error codes and `http` maps them to statuses.

pub mod ask;
pub mod call;
pub mod calls;
pub mod chat;
pub mod effects;
pub mod hub;
pub mod messages;
pub mod placement;
pub mod ratelimit;
pub mod relay;
pub mod room_analytics;
pub mod rooms;
pub mod rooms_live;
pub mod session;
#[cfg(test)]
pub(crate) mod testing;
pub mod timers;

use crate::auth::Claims;
use crate::ids::{ConnId, UserId};
use crate::store::StoreError;

/// Who is acting: the token's claims and, over `/rtc`, the connection.
#[derive(Clone, Debug)]
pub struct Actor {
    pub claims: Claims,
    pub conn: Option<ConnId>,
}

impl Actor {
    pub fn user(&self) -> &UserId {
        &self.claims.sub
    }

    pub fn is_admin(&self) -> bool {
        self.claims.admin
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("room is full")]
    RoomFull,
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    NotImplemented(String),
    /// In a cluster, the room's media is on another node. A `room-join` is
    /// relayed there ([`relay`]), a REST seat reservation asked of it
    /// ([`ask`]); it reaches a client (`unavailable`) only where neither can be.
    #[error("room is served by cluster node {node} at {url}: reserve the seat there, or send room-join over /rtc to any node")]
    OnOtherNode { node: crate::ids::NodeId, url: String },
    /// Something this needs in the cluster does not answer (SPEC 13).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SignalError {
    /// The SPEC 12 error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::NotFound(_) => "not-found",
            Self::Forbidden(_) => "forbidden",
            Self::Conflict(_) => "conflict",
            Self::RoomFull => "room-full",
            Self::RateLimited(_) => "rate-limited",
            Self::NotImplemented(_) => "not-implemented",
            Self::OnOtherNode { .. } | Self::Unavailable(_) => "unavailable",
            Self::Store(StoreError::Unavailable(_)) => "unavailable",
            Self::Store(_) => "internal",
        }
    }

    /// The message a client may see (never internals).
    pub fn public_message(&self) -> String {
        match self {
            Self::Store(StoreError::Unavailable(_)) => {
                "the store this needs (the cluster's Redis) is unavailable; try again shortly".into()
            }
            Self::Store(_) => "internal error; the server logged the details".into(),
            e => e.to_string(),
        }
    }
}

impl From<call::CallError> for SignalError {
    fn from(e: call::CallError) -> Self {
        use call::CallError::*;
        match e {
            NotFound => Self::NotFound("call not found".into()),
            NotAllowed(_) => Self::Forbidden(e.to_string()),
            Final(_) | Conflict(_) => Self::Conflict(e.to_string()),
        }
    }
}

/// Everything a session or a REST handler needs from signaling.
pub struct Signaling {
    pub calls: std::sync::Arc<calls::CallService>,
    pub rooms: std::sync::Arc<rooms::RoomService>,
    pub hub: std::sync::Arc<hub::Hub>,
    pub keys: crate::auth::TokenKeys,
    pub metrics: crate::metrics::Metrics,
    /// In a cluster: how room messages reach the node a room is on.
    pub relay: Option<std::sync::Arc<dyn relay::RelayLink>>,
    /// Other nodes' clients in rooms placed here.
    pub remote: relay::RemoteConns,
}

impl Signaling {
    /// Graceful shutdown, in SPEC 1's order: tell every client (to reconnect,
    /// in a cluster: `reconnect`), end every live call with `server-shutdown`
    /// (alone; in a cluster another node takes them over, SPEC 13), then
    /// close every socket.
    pub async fn shutdown(&self, reconnect: bool) {
        let notice = messages::ServerEvent::ServerShutdown { reconnect: reconnect.then_some(true) };
        self.hub.broadcast(&notice);
        // Other nodes' clients in a room here lose the room: they are told
        // and their sockets closed, so they reconnect and rejoin (the room
        // is placed again). Those here only for a call are not: the call
        // moves to another node.
        let relayed_in_rooms: Vec<_> = self
            .rooms
            .joined_conns()
            .into_iter()
            .filter(|(u, c)| self.hub.send_remote(u, c, hub::Outbound::Text(notice.to_text().into())))
            .collect();
        if !reconnect {
            self.calls.end_all(call::reason::SERVER_SHUTDOWN).await;
        }
        self.rooms.shutdown_media();
        self.rooms.persist_all_history().await;
        self.hub.close_all(session::CLOSE_GOING_AWAY, "server shutdown");
        for (u, c) in &relayed_in_rooms {
            self.hub.send_remote(u, c, hub::Outbound::Close(session::CLOSE_GOING_AWAY, "server shutdown"));
        }
    }

    /// A scheduler timer fired: the service that set it handles it.
    pub async fn on_timer(&self, key: timers::TimerKey) {
        use timers::TimerKey::*;
        match &key {
            RingTimeout(_) | ReconnectGrace(_) => self.calls.on_timer(&key).await,
            ReservationExpiry(..) | SeatGrace(..) | ChatPersist(_) => self.rooms.on_timer(&key).await,
        }
    }

    /// `GET /calls/:id/analytics`: a `mode: "sfu"` call's room analytics
    /// (live, else persisted), or a P2P call's from its clients' `call-stats`.
    pub async fn call_analytics(
        &self,
        actor: &Actor,
        id: &crate::ids::CallId,
    ) -> Result<crate::analytics::report::Analytics, SignalError> {
        let session = self.calls.get(actor, id).await?;
        let live = (session.mode == crate::model::CallMode::Sfu)
            .then(|| self.rooms.call_analytics(&session.room_id))
            .flatten();
        let mut v = match live {
            Some(v) => v,
            None => self.rooms.stored_analytics(&room_analytics::key_call(id)).await?,
        };
        v.call_id = Some(session.id.clone());
        v.status = session.status.as_str().into();
        v.duration = session.duration;
        v.setup_time_ms = session.answered_at.map(|a| crate::clock::seconds_between(session.created_at, a) * 1000.0);
        Ok(v)
    }

    /// The call mute routes, on the node holding the call: stored on the
    /// participant and pushed to the other party; in `mode: "sfu"` the SFU
    /// also stops forwarding that media.
    pub(crate) async fn mute_call_here(
        &self,
        actor: &Actor,
        id: &crate::ids::CallId,
        kind: crate::model::TrackKind,
        mute: bool,
    ) -> Result<(), SignalError> {
        let change = match kind {
            crate::model::TrackKind::Audio => calls::MediaChange::Audio(mute),
            crate::model::TrackKind::Video => calls::MediaChange::Video(mute),
        };
        self.calls.change_media(actor, id, change).await?;
        if let Some(room) = self.calls.sfu_room_of(id) {
            self.rooms.call_mute(&room, actor.user(), kind, mute);
        }
        Ok(())
    }
}
