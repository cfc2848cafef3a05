//! REST on any node (SPEC 13): an action on a room or a call that another
//! node holds is asked of that node ([`Relayed::Ask`]) and its answer
//! ([`Relayed::Answer`]) is what the REST handler returns, so a request
//! reaches the same live state, and emits the same events, whichever node
//! took it. The asking node waits at most [`ASK_TIMEOUT`]; the answering
//! node runs the action as its own REST handler would, with the claims the
//! asking node verified.
//!
//! Reads (a room, its chat, its analytics) fall back to this node's view of
//! the shared store when the holding node does not answer (it died: the room
//! is placed again at its next join); writes answer `unavailable`.

use super::relay::{unix_micros, Relayed};
use super::{Actor, SignalError, Signaling};
use crate::auth::Claims;
use crate::ids::{CallId, NodeId, PeerId, RoomId};
use crate::model::{CallParticipant, CallSession, ChatMessage, FacingMode, Room, TrackKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// How long a node waits for another's answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// An action another node carries out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "kebab-case")]
pub enum Ask {
    RoomReserve { room: RoomId },
    RoomLeave { room: RoomId },
    RoomGet { room: RoomId },
    RoomMessages { room: RoomId },
    RoomAnalytics { room: RoomId },
    CallAccept { call: CallId },
    CallReject { call: CallId, reason: Option<String> },
    CallHangup { call: CallId },
    CallMute { call: CallId, kind: TrackKind, mute: bool },
    CallCamera { call: CallId, device_id: Option<String>, facing_mode: Option<FacingMode> },
}

/// A refused ask: the SPEC 12 code and the public message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: String,
    pub message: String,
}

impl From<Refusal> for SignalError {
    fn from(r: Refusal) -> Self {
        let m = r.message;
        match r.code.as_str() {
            "bad-request" => Self::BadRequest(m),
            "not-found" => Self::NotFound(m),
            "forbidden" => Self::Forbidden(m),
            "conflict" => Self::Conflict(m),
            "room-full" => Self::RoomFull,
            "rate-limited" => Self::RateLimited(m),
            "not-implemented" => Self::NotImplemented(m),
            "unavailable" => Self::Unavailable(m),
            _ => Self::Store(crate::store::StoreError::Backend(format!("another node answered: {m}"))),
        }
    }
}

fn to_value<T: Serialize>(v: T) -> Result<Value, SignalError> {
    serde_json::to_value(v).map_err(|e| SignalError::Store(crate::store::StoreError::Backend(e.to_string())))
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, SignalError> {
    serde_json::from_value(v).map_err(|e| {
        SignalError::Store(crate::store::StoreError::Backend(format!("unreadable answer from another node: {e}")))
    })
}

/// A seat reservation's answer.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Seat {
    room: Room,
    peer_id: PeerId,
}

impl Signaling {
    /// Ask `node` to carry out `ask` as `actor`.
    async fn ask(&self, node: &NodeId, actor: &Actor, ask: Ask) -> Result<Value, SignalError> {
        let Some(link) = &self.relay else { return Err(SignalError::Unavailable("no cluster".into())) };
        let (id, answer) = self.remote.expect_answer();
        let msg = Relayed::Ask {
            from: link.node().clone(),
            id,
            claims: actor.claims.clone(),
            ask,
            sent_at_us: unix_micros(),
        };
        let sent = link.send(node, &msg).await;
        let unavailable = || {
            SignalError::Unavailable(format!(
                "the cluster node holding this ({node}) does not answer; try again shortly"
            ))
        };
        let changed = self.remote.reached(node, sent.is_ok());
        if let Err(e) = sent {
            self.remote.forget_answer(id);
            if changed {
                tracing::warn!(%node, error = %e, "cluster: cannot reach another node (what it holds answers unavailable; logged again when it answers)");
            }
            return Err(unavailable());
        }
        if changed {
            tracing::info!(%node, "cluster: another node is reachable again");
        }
        match tokio::time::timeout(ASK_TIMEOUT, answer).await {
            Ok(Ok(result)) => result.map_err(SignalError::from),
            _ => {
                self.remote.forget_answer(id);
                Err(unavailable())
            }
        }
    }

    /// Another node asks: carry it out and answer.
    pub(super) fn on_ask(self: &Arc<Self>, from: NodeId, id: u64, claims: Claims, ask: Ask, sent_at_us: u64) {
        let Some(link) = self.relay.clone() else { return };
        let signal = self.clone();
        tokio::spawn(async move {
            let waited = unix_micros().saturating_sub(sent_at_us);
            signal.metrics.cluster_relay_seconds.observe(waited as f64 / 1e6);
            let actor = Actor { claims, conn: None };
            let result = signal.answer(&actor, ask).await.map_err(|e| {
                if let SignalError::Store(inner) = &e {
                    tracing::error!(error = %inner, "store failure answering another node");
                }
                Refusal { code: e.code().into(), message: e.public_message() }
            });
            if let Err(e) = link.send(&from, &Relayed::Answer { id, result }).await {
                tracing::warn!(node = %from, error = %e, "cluster: cannot answer another node");
            }
        });
    }

    /// Carry out `ask` here, as the REST handler would.
    async fn answer(&self, actor: &Actor, ask: Ask) -> Result<Value, SignalError> {
        use super::calls::MediaChange;
        match ask {
            Ask::RoomReserve { room } => {
                let (room, peer_id) = self.rooms.reserve(actor, &room).await?;
                to_value(Seat { room, peer_id })
            }
            Ask::RoomLeave { room } => self.rooms.leave(actor, &room).await.map(|()| Value::Null),
            Ask::RoomGet { room } => to_value(self.rooms.get(actor, &room).await?),
            Ask::RoomMessages { room } => to_value(self.rooms.messages(actor, &room)?),
            Ask::RoomAnalytics { room } => to_value(self.rooms.analytics(actor, &room).await?),
            Ask::CallAccept { call } => to_value(self.calls.accept(actor, &call).await?),
            Ask::CallReject { call, reason } => to_value(self.calls.reject(actor, &call, reason).await?),
            Ask::CallHangup { call } => to_value(self.calls.hangup(actor, &call).await?),
            Ask::CallMute { call, kind, mute } => {
                self.mute_call_here(actor, &call, kind, mute).await.map(|()| Value::Null)
            }
            Ask::CallCamera { call, device_id, facing_mode } => {
                to_value(self.calls.change_media(actor, &call, MediaChange::Camera { device_id, facing_mode }).await?)
            }
        }
    }

    /// A read of a room another node may hold: asked of it, else (it does not
    /// answer) read here.
    async fn room_read(&self, actor: &Actor, room: &RoomId, ask: Ask) -> Result<Option<Value>, SignalError> {
        let Some(node) = self.rooms.held_elsewhere(room).await? else { return Ok(None) };
        match self.ask(&node, actor, ask).await {
            Err(SignalError::Unavailable(_)) => Ok(None),
            other => other.map(Some),
        }
    }

    /// `POST /rooms/:id/join` on any node.
    pub async fn reserve_seat(&self, actor: &Actor, room: &RoomId) -> Result<(Room, PeerId), SignalError> {
        match self.rooms.reserve(actor, room).await {
            Err(SignalError::OnOtherNode { node, .. }) if self.relay.is_some() => {
                let seat: Seat = from_value(self.ask(&node, actor, Ask::RoomReserve { room: room.clone() }).await?)?;
                Ok((seat.room, seat.peer_id))
            }
            other => other,
        }
    }

    /// `POST /rooms/:id/leave` on any node.
    pub async fn leave_room(&self, actor: &Actor, room: &RoomId) -> Result<(), SignalError> {
        if let Some(node) = self.rooms.held_elsewhere(room).await? {
            match self.ask(&node, actor, Ask::RoomLeave { room: room.clone() }).await {
                Err(SignalError::Unavailable(_)) => {}
                other => return other.map(drop),
            }
        }
        self.rooms.leave(actor, room).await
    }

    /// `GET /rooms/:id` on any node.
    pub async fn get_room(&self, actor: &Actor, room: &RoomId) -> Result<Room, SignalError> {
        match self.room_read(actor, room, Ask::RoomGet { room: room.clone() }).await? {
            Some(v) => from_value(v),
            None => self.rooms.get(actor, room).await,
        }
    }

    /// `GET /rooms/:id/messages` on any node.
    pub async fn room_messages(&self, actor: &Actor, room: &RoomId) -> Result<Vec<ChatMessage>, SignalError> {
        match self.room_read(actor, room, Ask::RoomMessages { room: room.clone() }).await? {
            Some(v) => from_value(v),
            None => {
                self.rooms.load(room).await?;
                self.rooms.messages(actor, room)
            }
        }
    }

    /// `GET /rooms/:id/analytics` on any node.
    pub async fn room_analytics(
        &self,
        actor: &Actor,
        room: &RoomId,
    ) -> Result<crate::analytics::report::Analytics, SignalError> {
        match self.room_read(actor, room, Ask::RoomAnalytics { room: room.clone() }).await? {
            Some(v) => from_value(v),
            None => self.rooms.analytics(actor, room).await,
        }
    }

    /// A REST action on a call, by the node holding it.
    async fn call_action<T: serde::de::DeserializeOwned>(
        &self,
        actor: &Actor,
        call: &CallId,
        ask: Ask,
    ) -> Result<Option<T>, SignalError> {
        match self.calls.held_elsewhere(call).await? {
            Some(node) => from_value(self.ask(&node, actor, ask).await?).map(Some),
            None => Ok(None),
        }
    }

    /// `PUT /calls/:id/accept` on any node.
    pub async fn accept_call(&self, actor: &Actor, call: &CallId) -> Result<CallSession, SignalError> {
        match self.call_action(actor, call, Ask::CallAccept { call: call.clone() }).await? {
            Some(s) => Ok(s),
            None => self.calls.accept(actor, call).await,
        }
    }

    /// `PUT /calls/:id/reject` on any node.
    pub async fn reject_call(
        &self,
        actor: &Actor,
        call: &CallId,
        reason: Option<String>,
    ) -> Result<CallSession, SignalError> {
        let ask = Ask::CallReject { call: call.clone(), reason: reason.clone() };
        match self.call_action(actor, call, ask).await? {
            Some(s) => Ok(s),
            None => self.calls.reject(actor, call, reason).await,
        }
    }

    /// `PUT /calls/:id/hangup` on any node.
    pub async fn hangup_call(&self, actor: &Actor, call: &CallId) -> Result<CallSession, SignalError> {
        match self.call_action(actor, call, Ask::CallHangup { call: call.clone() }).await? {
            Some(s) => Ok(s),
            None => self.calls.hangup(actor, call).await,
        }
    }

    /// The call mute routes on any node.
    pub async fn mute_call(
        &self,
        actor: &Actor,
        call: &CallId,
        kind: TrackKind,
        mute: bool,
    ) -> Result<(), SignalError> {
        let ask = Ask::CallMute { call: call.clone(), kind, mute };
        match self.call_action::<Value>(actor, call, ask).await? {
            Some(_) => Ok(()),
            None => self.mute_call_here(actor, call, kind, mute).await,
        }
    }

    /// `PUT /calls/:id/switch-camera` on any node.
    pub async fn switch_camera(
        &self,
        actor: &Actor,
        call: &CallId,
        device_id: Option<String>,
        facing_mode: Option<FacingMode>,
    ) -> Result<CallParticipant, SignalError> {
        let ask = Ask::CallCamera { call: call.clone(), device_id: device_id.clone(), facing_mode };
        match self.call_action(actor, call, ask).await? {
            Some(p) => Ok(p),
            None => {
                let change = super::calls::MediaChange::Camera { device_id, facing_mode };
                self.calls.change_media(actor, call, change).await
            }
        }
    }
}
