//! Rooms (group calls): creation, visibility, seats and deletion. Rooms
//! persist (empty) across restarts; participants live in memory.
//!
//! A REST join reserves a seat (it counts toward `maxParticipants`) for
//! `rooms.reservation_ttl`; the WebSocket `room-join` of the SFU binds it.

use super::hub::{Hub, To};
use super::messages::ServerEvent;
use super::{Actor, SignalError};
use crate::clock;
use crate::ids::{PeerId, RoomId};
use crate::metrics::Metrics;
use crate::model::{Room, RoomParticipant};
use crate::store::Store;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DEFAULT_MAX_PARTICIPANTS: u32 = 16;

#[derive(Clone, Debug)]
pub struct NewRoom {
    pub name: String,
    pub max_participants: Option<u32>,
    pub is_private: bool,
}

struct RoomState {
    room: Room,
    /// Seats reserved over REST and not yet bound by a WebSocket join.
    reservations: HashMap<PeerId, Instant>,
}

pub struct RoomService {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    metrics: Metrics,
    max_participants: u32,
    reservation_ttl: Duration,
    rooms: Mutex<HashMap<RoomId, RoomState>>,
}

impl RoomService {
    /// Load the persisted rooms (empty) and start.
    pub fn open(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        metrics: Metrics,
        max_participants: u32,
        reservation_ttl: Duration,
    ) -> Result<Arc<Self>, SignalError> {
        let rooms: HashMap<RoomId, RoomState> = store
            .rooms()?
            .into_iter()
            .map(|r| (r.id.clone(), RoomState { room: r, reservations: HashMap::new() }))
            .collect();
        metrics.rooms_active.set(rooms.len() as i64);
        Ok(Arc::new(Self { store, hub, metrics, max_participants, reservation_ttl, rooms: Mutex::new(rooms) }))
    }

    pub fn create(&self, actor: &Actor, req: NewRoom) -> Result<Room, SignalError> {
        let name = req.name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(SignalError::BadRequest("name: 1 to 128 printable characters".into()));
        }
        let max = req.max_participants.unwrap_or(DEFAULT_MAX_PARTICIPANTS.min(self.max_participants));
        if !(2..=self.max_participants).contains(&max) {
            return Err(SignalError::BadRequest(format!(
                "maxParticipants: must be between 2 and {}",
                self.max_participants
            )));
        }
        let room = Room {
            id: RoomId::random(),
            name: name.to_owned(),
            max_participants: max,
            is_private: req.is_private,
            created_by: actor.user().clone(),
            created_at: clock::now(),
            participants: Vec::new(),
        };
        self.store.put_room(&room)?;
        let mut rooms = self.rooms.lock();
        rooms.insert(room.id.clone(), RoomState { room: room.clone(), reservations: HashMap::new() });
        self.metrics.rooms_active.set(rooms.len() as i64);
        Ok(room)
    }

    /// Public rooms plus the actor's own (created, joined, or listed in the
    /// token), newest first.
    pub fn list(&self, actor: &Actor, limit: usize, offset: usize) -> (Vec<Room>, usize) {
        let now = Instant::now();
        let mut rooms = self.rooms.lock();
        let mut visible: Vec<Room> = rooms
            .values_mut()
            .filter(|s| !s.room.is_private || may_enter(actor, &s.room))
            .map(|s| {
                expire(s, now);
                s.room.clone()
            })
            .collect();
        visible.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
        let total = visible.len();
        (visible.into_iter().skip(offset).take(limit).collect(), total)
    }

    pub fn get(&self, actor: &Actor, id: &RoomId) -> Result<Room, SignalError> {
        let mut rooms = self.rooms.lock();
        let s = find(&mut rooms, id)?;
        check_access(actor, &s.room)?;
        expire(s, Instant::now());
        Ok(s.room.clone())
    }

    /// Reserve a seat: `POST /rooms/:id/join`.
    pub fn reserve(self: &Arc<Self>, actor: &Actor, id: &RoomId) -> Result<(Room, PeerId), SignalError> {
        let now = Instant::now();
        let mut rooms = self.rooms.lock();
        let s = find(&mut rooms, id)?;
        check_access(actor, &s.room)?;
        expire(s, now);
        if s.room.participants.len() >= s.room.max_participants as usize {
            return Err(SignalError::RoomFull);
        }
        let peer_id = PeerId::random();
        s.room.participants.push(RoomParticipant {
            peer_id: peer_id.clone(),
            user_id: actor.user().clone(),
            name: actor.claims.display_name(),
            joined_at: clock::now(),
            tracks: Vec::new(),
        });
        s.reservations.insert(peer_id.clone(), now + self.reservation_ttl);
        let room = s.room.clone();
        let room_id = room.id.clone();
        let me = Arc::clone(self);
        let ttl = self.reservation_ttl;
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            if let Some(s) = me.rooms.lock().get_mut(&room_id) {
                expire(s, Instant::now());
            }
        });
        Ok((room, peer_id))
    }

    /// `POST /rooms/:id/leave`: the actor's seats in the room are given up.
    pub fn leave(&self, actor: &Actor, id: &RoomId) -> Result<(), SignalError> {
        let mut rooms = self.rooms.lock();
        let s = find(&mut rooms, id)?;
        check_access(actor, &s.room)?;
        let before = s.room.participants.len();
        s.room.participants.retain(|p| &p.user_id != actor.user());
        if s.room.participants.len() == before {
            return Err(SignalError::NotFound("you are not a participant of this room".into()));
        }
        let Room { participants, .. } = &s.room;
        s.reservations.retain(|peer, _| participants.iter().any(|p| &p.peer_id == peer));
        Ok(())
    }

    /// `DELETE /rooms/:id`: creator or admin; participants get `room-deleted`.
    pub fn delete(&self, actor: &Actor, id: &RoomId) -> Result<(), SignalError> {
        let mut rooms = self.rooms.lock();
        let s = find(&mut rooms, id)?;
        if &s.room.created_by != actor.user() && !actor.is_admin() {
            return Err(SignalError::Forbidden("only the room's creator or an admin may delete it".into()));
        }
        self.store.delete_room(id)?;
        let s = rooms.remove(id).expect("found above");
        self.metrics.rooms_active.set(rooms.len() as i64);
        drop(rooms);
        let ev = ServerEvent::RoomDeleted { room_id: id.clone() };
        let mut told = std::collections::HashSet::new();
        for p in &s.room.participants {
            if told.insert(p.user_id.clone()) {
                self.hub.send(&p.user_id, To::All, &ev);
            }
        }
        Ok(())
    }
}

fn find<'a>(rooms: &'a mut HashMap<RoomId, RoomState>, id: &RoomId) -> Result<&'a mut RoomState, SignalError> {
    rooms.get_mut(id).ok_or_else(|| SignalError::NotFound("room not found".into()))
}

fn may_enter(actor: &Actor, room: &Room) -> bool {
    actor.is_admin()
        || &room.created_by == actor.user()
        || actor.claims.lists_room(room.id.as_str(), &room.name)
        || room.participants.iter().any(|p| &p.user_id == actor.user())
}

fn check_access(actor: &Actor, room: &Room) -> Result<(), SignalError> {
    if room.is_private && !may_enter(actor, room) {
        return Err(SignalError::Forbidden(
            "this room is private: it needs its creator, an admin, or a token whose `rooms` lists it".into(),
        ));
    }
    Ok(())
}

/// Drop reservations that were not bound in time.
fn expire(s: &mut RoomState, now: Instant) {
    let expired: Vec<PeerId> = s.reservations.iter().filter(|(_, t)| **t <= now).map(|(p, _)| p.clone()).collect();
    for p in expired {
        s.reservations.remove(&p);
        s.room.participants.retain(|x| x.peer_id != p);
    }
}
