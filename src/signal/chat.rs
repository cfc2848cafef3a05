//! Chat and participant state in a room (SPEC 4: `room-message`,
//! `participant-state`, `GET /rooms/:roomId/messages`).
//!
//! Only a participant joined on this connection may send. A message goes to
//! every joined participant, the sender included; with `to`, to that
//! participant and the sender only. The room keeps its last [`HISTORY`]
//! messages to everyone on its record ([`crate::model::Room::messages`]), so
//! the store keeps them with the room; a direct message is delivered and never
//! kept, so the history holds exactly what every member may read.
//!
//! Besides the connection's token bucket (SPEC 12), each participant has a
//! chat bucket (`rooms.chat_rate` messages/s, default 5, with a burst of
//! `rooms.chat_burst`, default 10); a message over it gets `error`
//! `rate-limited` and goes nowhere.
//!
//! The history is written at most once per [`PERSIST_DELAY`] per room (a
//! [`TimerKey::ChatPersist`] after the first unsaved message), not once per
//! message: a whole room record of up to 200 × 4 KiB per message would let a
//! chatty room load the disk. Shutdown writes what is still unsaved.

use super::hub::To;
use super::messages::ServerEvent;
use super::ratelimit::TokenBucket;
use super::rooms::{find, RoomService, RoomState};
use super::timers::TimerKey;
use super::{Actor, SignalError};
use crate::clock;
use crate::ids::{MessageId, PeerId, RoomId};
use crate::model::{ChatMessage, ChatSender, Room};
use std::time::{Duration, Instant};

/// Messages a room keeps.
pub const HISTORY: usize = 200;
/// The longest text, in bytes of UTF-8.
pub const MAX_TEXT: usize = 4096;
/// How long an unsaved history may wait for its write.
const PERSIST_DELAY: Duration = Duration::from_millis(500);

/// `text` must be 1..=[`MAX_TEXT`] bytes.
fn check_text(text: &str) -> Result<(), SignalError> {
    if text.is_empty() || text.len() > MAX_TEXT {
        return Err(SignalError::BadRequest(format!(
            "room-message: text: must be 1 to {MAX_TEXT} bytes, got {}",
            text.len()
        )));
    }
    Ok(())
}

/// Who may read a room's history: its creator, an admin, a party of its
/// call, or anyone holding a seat in it now (joined or reserved).
fn is_member(actor: &Actor, s: &RoomState) -> bool {
    actor.is_admin()
        || &s.room.created_by == actor.user()
        || s.call_parties.as_ref().is_some_and(|p| p.contains(actor.user()))
        || s.participants.iter().any(|p| &p.seat.user_id == actor.user())
}

impl RoomService {
    /// A fresh chat bucket for a participant who just joined.
    pub(super) fn chat_bucket(&self) -> TokenBucket {
        TokenBucket::new(self.chat_rate.0, self.chat_rate.1, Instant::now())
    }

    /// `room-message`.
    pub fn send_message(
        &self,
        actor: &Actor,
        room_id: &RoomId,
        text: String,
        to: Option<PeerId>,
    ) -> Result<(), SignalError> {
        check_text(&text)?;
        let mut rooms = self.rooms.lock();
        let s = find(&mut rooms, room_id)?;
        let (peer, me) = Self::my_peer(actor, s)?;
        let from = ChatSender { peer_id: peer.clone(), user_id: me.seat.user_id.clone(), name: me.seat.name.clone() };
        if let Some(to) = &to {
            if s.seat(to).and_then(|p| p.live()).is_none() {
                return Err(SignalError::NotFound("room-message: to: no such participant in this room".into()));
            }
        }
        let live = s.seat_mut(&peer).and_then(|p| p.live_mut()).expect("joined: found above");
        if !live.chat.take(Instant::now()) {
            return Err(SignalError::RateLimited(format!(
                "room-message: more than {} chat messages per second; slow down",
                self.chat_rate.0
            )));
        }
        let msg = ChatMessage { room_id: room_id.clone(), id: MessageId::random(), from, text, to, at: clock::now() };
        let ev = ServerEvent::RoomMessage(msg.clone());
        match &msg.to {
            Some(to) => {
                self.tell_peer(s, to, &ev);
                if to != &peer {
                    self.tell_peer(s, &peer, &ev);
                }
            }
            None => {
                self.tell_room(s, None, &ev);
                let history = &mut s.room.messages;
                history.push(msg);
                if history.len() > HISTORY {
                    history.drain(..history.len() - HISTORY);
                }
                self.history_changed(s);
            }
        }
        Ok(())
    }

    /// `GET /rooms/:roomId/messages`: the history, oldest first, to members.
    pub fn messages(&self, actor: &Actor, room_id: &RoomId) -> Result<Vec<ChatMessage>, SignalError> {
        let mut rooms = self.rooms.lock();
        let s = find(&mut rooms, room_id)?;
        super::rooms::expire(s, Instant::now());
        if !is_member(actor, s) {
            return Err(SignalError::Forbidden(
                "only the room's participants, its creator or an admin may read its messages".into(),
            ));
        }
        Ok(s.room.messages.clone())
    }

    /// `participant-state`: one's own seat; the others see `participant-updated`
    /// when something changed.
    pub fn participant_state(
        &self,
        actor: &Actor,
        room_id: &RoomId,
        hand_raised: Option<bool>,
    ) -> Result<(), SignalError> {
        let mut rooms = self.rooms.lock();
        let s = find(&mut rooms, room_id)?;
        let (peer, me) = Self::my_peer(actor, s)?;
        let mut changed = false;
        if let Some(h) = hand_raised {
            changed |= std::mem::replace(&mut me.seat.hand_raised, h) != h;
        }
        if changed {
            let participant = me.seat.clone();
            self.tell_room(s, Some(&peer), &ServerEvent::ParticipantUpdated { room_id: room_id.clone(), participant });
        }
        Ok(())
    }

    /// Send `ev` to one joined participant, if its WebSocket is up.
    fn tell_peer(&self, s: &RoomState, peer: &PeerId, ev: &ServerEvent) {
        if let Some((seat, l)) = s.joined().find(|(seat, _)| &seat.peer_id == peer) {
            if !l.dropped {
                self.hub.send(&seat.user_id, To::Only(&l.conn), ev);
            }
        }
    }

    /// The history has a message not yet written: write it soon. A call's
    /// room is not persisted, and neither is its chat.
    fn history_changed(&self, s: &mut RoomState) {
        if s.call_parties.is_some() || s.chat_unsaved {
            return;
        }
        s.chat_unsaved = true;
        self.timers.start(TimerKey::ChatPersist(s.room.id.clone()), PERSIST_DELAY);
    }

    /// [`TimerKey::ChatPersist`] fired.
    pub(super) async fn on_chat_persist(&self, room_id: &RoomId) {
        let room = self.rooms.lock().get_mut(room_id).and_then(unsaved);
        if let Some(room) = room {
            self.persist_history(room).await;
        }
    }

    /// Shutdown: write every history not yet written.
    pub async fn persist_all_history(&self) {
        let rooms: Vec<Room> = self.rooms.lock().values_mut().filter_map(unsaved).collect();
        for room in rooms {
            self.persist_history(room).await;
        }
    }

    /// Written from a copy taken under the rooms lock, with no lock held
    /// across the store write. A `DELETE` that fell in between (it removes the
    /// room from memory, then from the store) would be undone by this write:
    /// if the room is gone from memory afterwards, it is deleted again.
    async fn persist_history(&self, room: Room) {
        if let Err(e) = self.store.put_room(&room).await {
            // Delivered already; the next message tries again.
            tracing::error!(error = %e, room = %room.id, "cannot persist the room's chat history");
            if let Some(s) = self.rooms.lock().get_mut(&room.id) {
                s.chat_unsaved = true;
            }
            return;
        }
        let deleted = !self.rooms.lock().contains_key(&room.id);
        if deleted {
            if let Err(e) = self.store.delete_room(&room.id).await {
                tracing::error!(error = %e, room = %room.id, "cannot delete a room deleted while its chat was written");
            }
        }
    }
}

/// The room's record, when its history has a message not yet written (and it
/// is now counted as written).
fn unsaved(s: &mut RoomState) -> Option<Room> {
    std::mem::take(&mut s.chat_unsaved).then(|| s.room.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_one_to_4096_bytes() {
        assert!(check_text("a").is_ok());
        assert!(check_text(&"é".repeat(2048)).is_ok(), "4096 bytes of two-byte characters");
        for bad in [String::new(), "a".repeat(4097), "é".repeat(2049)] {
            let e = check_text(&bad).unwrap_err();
            assert_eq!(e.code(), "bad-request");
            assert!(e.to_string().contains("text"), "{e}");
        }
    }
}
