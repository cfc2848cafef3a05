//! Rooms (group calls): creation, visibility, seats and deletion. Rooms
//! persist (empty) across restarts; participants live in memory.
//!
//! A REST join reserves a seat (it counts toward `maxParticipants`) for
//! `rooms.reservation_ttl`; the WebSocket `room-join` of the SFU binds it.
//! Either way a seat is one [`Participant`] record, `Reserved` or `Live`.
//! A reservation is also in the store until it is bound or expires, so it
//! outlives the node that made it: the node holding the room next (this one
//! after a restart; in a cluster, the one the room is placed on after its
//! node died) takes it in ([`RoomService::take_reservations`]) and its
//! expiry timer with it, so the expiry fires once, there (SPEC 13).
//! What happens once a participant is joined over `/rtc` lives in
//! [`super::rooms_live`].

use super::hub::{Hub, To};
use super::messages::ServerEvent;
use super::placement::{Placed, Placement};
use super::room_analytics::AnalyticsWrites;
use super::rooms_live::Live;
use super::timers::{TimerKey, Timers};
use super::{Actor, SignalError};
use crate::clock;
use crate::ids::{PeerId, RoomId};
use crate::metrics::Metrics;
use crate::model::{Reservation, Room, RoomParticipant};
use crate::store::{Store, StoreError};
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

/// One seat in a room, reserved or joined: what `GET /rooms/:id` shows of it
/// and how it is held.
pub(super) struct Participant {
    pub(super) seat: RoomParticipant,
    pub(super) presence: Presence,
}

pub(super) enum Presence {
    /// Reserved over REST until this instant ([`TimerKey::ReservationExpiry`]);
    /// `room-join` with its `peerId` binds it.
    Reserved { until: Instant },
    /// Joined over `/rtc`.
    Live(Live),
}

impl Participant {
    pub(super) fn peer(&self) -> &PeerId {
        &self.seat.peer_id
    }

    pub(super) fn live(&self) -> Option<&Live> {
        match &self.presence {
            Presence::Live(l) => Some(l),
            Presence::Reserved { .. } => None,
        }
    }

    pub(super) fn live_mut(&mut self) -> Option<&mut Live> {
        match &mut self.presence {
            Presence::Live(l) => Some(l),
            Presence::Reserved { .. } => None,
        }
    }
}

pub(super) struct RoomState {
    /// The room; its `participants` stay empty here (they are [`Self::participants`])
    /// and are filled in by [`Self::view`].
    pub(super) room: Room,
    /// Every seat, in the order `room.participants` lists them.
    pub(super) participants: Vec<Participant>,
    /// Users a `mode: "sfu"` call lets in; such a room is not persisted and
    /// goes away with its last participant.
    pub(super) call_parties: Option<[crate::ids::UserId; 2]>,
    /// The `mode: "sfu"` call this room belongs to.
    pub(super) call: Option<crate::ids::CallId>,
    /// Quality analytics while participants are joined.
    pub(super) analytics: Option<super::room_analytics::RoomAnalytics>,
    /// `room.messages` has changed since the store last got the room
    /// ([`super::chat`]).
    pub(super) chat_unsaved: bool,
    /// This node has taken in the room's stored reservations
    /// ([`RoomService::take_reservations`]); cleared when the room is found
    /// placed on another node, so a takeover takes them in again.
    pub(super) reservations_taken: bool,
}

impl RoomState {
    pub(super) fn new(mut room: Room) -> Self {
        // A persisted room is stored empty; seats live in memory only.
        room.participants.clear();
        Self {
            room,
            participants: Vec::new(),
            call_parties: None,
            call: None,
            analytics: None,
            chat_unsaved: false,
            reservations_taken: false,
        }
    }

    /// The room as the API shows it, with its seats and without its chat
    /// (members read that from `GET /rooms/:roomId/messages`).
    pub(super) fn view(&self) -> Room {
        let room = &self.room;
        Room {
            id: room.id.clone(),
            name: room.name.clone(),
            max_participants: room.max_participants,
            is_private: room.is_private,
            created_by: room.created_by.clone(),
            created_at: room.created_at,
            participants: self.participants.iter().map(|p| p.seat.clone()).collect(),
            messages: Vec::new(),
        }
    }

    pub(super) fn seat(&self, peer: &PeerId) -> Option<&Participant> {
        self.participants.iter().find(|p| p.peer() == peer)
    }

    pub(super) fn seat_mut(&mut self, peer: &PeerId) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| p.peer() == peer)
    }

    /// The joined participants: seat and binding.
    pub(super) fn joined(&self) -> impl Iterator<Item = (&RoomParticipant, &Live)> {
        self.participants.iter().filter_map(|p| p.live().map(|l| (&p.seat, l)))
    }

    pub(super) fn has_joined(&self) -> bool {
        self.joined().next().is_some()
    }

    pub(super) fn is_full(&self) -> bool {
        self.participants.len() >= self.room.max_participants as usize
    }
}

/// Builds the `iceServers` of `room-joined` for a user (the same list as
/// `GET /ice-config`).
pub type IceServersFn = Arc<dyn Fn(&crate::ids::UserId) -> serde_json::Value + Send + Sync>;

pub struct RoomService {
    pub(super) store: Arc<dyn Store>,
    pub(super) hub: Arc<Hub>,
    pub(super) metrics: Metrics,
    max_participants: u32,
    reservation_ttl: Duration,
    pub(super) chat_rate: (f64, f64),
    pub(super) rooms: Mutex<HashMap<RoomId, RoomState>>,
    pub(super) media: Option<crate::media::MediaHandle>,
    pub(super) ice_servers: IceServersFn,
    /// How long a joined participant whose WebSocket dropped keeps its seat.
    pub(super) grace: Duration,
    pub(super) timers: Timers,
    placement: Option<Arc<dyn Placement>>,
}

/// What [`RoomService::open`] needs beyond the store, hub and metrics.
pub struct RoomOptions {
    pub max_participants: u32,
    pub reservation_ttl: Duration,
    /// `room-message`s per second and burst, per participant ([`super::chat`]).
    pub chat_rate: (f64, f64),
    pub media: Option<crate::media::MediaHandle>,
    pub ice_servers: IceServersFn,
    pub grace: Duration,
    pub timers: Timers,
    /// In a cluster, where rooms go (SPEC 13); None on a single node.
    pub placement: Option<Arc<dyn Placement>>,
}

impl RoomService {
    /// Load the persisted rooms (empty) and start.
    pub async fn open(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        metrics: Metrics,
        opts: RoomOptions,
    ) -> Result<Arc<Self>, SignalError> {
        let rooms: HashMap<RoomId, RoomState> =
            store.rooms().await?.into_iter().map(|r| (r.id.clone(), RoomState::new(r))).collect();
        metrics.rooms_active.set(rooms.len() as i64);
        let ids: Vec<RoomId> = rooms.keys().cloned().collect();
        let service = Arc::new(Self {
            store,
            hub,
            metrics,
            max_participants: opts.max_participants,
            reservation_ttl: opts.reservation_ttl,
            chat_rate: opts.chat_rate,
            rooms: Mutex::new(rooms),
            media: opts.media,
            ice_servers: opts.ice_servers,
            grace: opts.grace,
            timers: opts.timers,
            placement: opts.placement,
        });
        // A store of one's own: every room is this node's, so its
        // reservations from before a restart are back at once (in a
        // cluster, when the room is placed here: [`Self::claim`]).
        if !service.store.is_shared() {
            for id in &ids {
                service.take_reservations(id).await?;
            }
        }
        Ok(service)
    }

    pub async fn create(&self, actor: &Actor, req: NewRoom) -> Result<Room, SignalError> {
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
            messages: Vec::new(),
        };
        self.store.put_room(&room).await?;
        let mut rooms = self.rooms.lock();
        rooms.insert(room.id.clone(), RoomState::new(room.clone()));
        self.metrics.rooms_active.set(rooms.len() as i64);
        Ok(room)
    }

    /// In a cluster, a room another node created is in the shared store but
    /// not here yet: bring it in (empty, as after a restart). Nothing to do
    /// with a store of one's own, where every room was loaded at start.
    pub async fn load(&self, id: &RoomId) -> Result<(), SignalError> {
        if !self.store.is_shared() || self.rooms.lock().contains_key(id) {
            return Ok(());
        }
        if let Some(room) = self.store.get_room(id).await? {
            self.adopt(vec![room]);
        }
        Ok(())
    }

    /// [`Self::load`] for every room of the shared store.
    async fn load_all(&self) -> Result<(), SignalError> {
        if self.store.is_shared() {
            let stored = self.store.rooms().await?;
            self.adopt(stored);
        }
        Ok(())
    }

    fn adopt(&self, stored: Vec<Room>) {
        let mut rooms = self.rooms.lock();
        for room in stored {
            rooms.entry(room.id.clone()).or_insert_with(|| RoomState::new(room));
        }
        self.metrics.rooms_active.set(rooms.len() as i64);
    }

    /// Public rooms plus the actor's own (created, joined, or listed in the
    /// token), newest first.
    pub async fn list(&self, actor: &Actor, limit: usize, offset: usize) -> Result<(Vec<Room>, usize), SignalError> {
        self.load_all().await?;
        let now = Instant::now();
        let mut rooms = self.rooms.lock();
        let mut visible: Vec<Room> = rooms
            .values_mut()
            .filter(|s| !s.room.is_private || may_enter(actor, s))
            .map(|s| {
                expire(s, now);
                s.view()
            })
            .collect();
        visible.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
        let total = visible.len();
        Ok((visible.into_iter().skip(offset).take(limit).collect(), total))
    }

    pub async fn get(&self, actor: &Actor, id: &RoomId) -> Result<Room, SignalError> {
        self.load(id).await?;
        let mut rooms = self.rooms.lock();
        let s = find(&mut rooms, id)?;
        check_access(actor, s)?;
        expire(s, Instant::now());
        Ok(s.view())
    }

    /// Before a seat is reserved or joined: bring the room in ([`Self::load`])
    /// and, in a cluster, place its media if it is not on a live node. A room
    /// on another node is [`SignalError::OnOtherNode`], which the caller
    /// relays to that node ([`super::relay`], [`super::ask`]).
    pub async fn claim(&self, id: &RoomId) -> Result<(), SignalError> {
        self.load(id).await?;
        if !self.rooms.lock().contains_key(id) {
            return Ok(()); // not-found comes from the caller, as without a cluster
        }
        if let Some(placement) = &self.placement {
            if let Placed::Elsewhere { node, url } = placement.place(id).await? {
                if let Some(s) = self.rooms.lock().get_mut(id) {
                    s.reservations_taken = false;
                }
                return Err(SignalError::OnOtherNode { node, url });
            }
        }
        self.take_reservations(id).await
    }

    /// Once per holding of a room: its stored reservations become seats
    /// here until they expire, with their expiry timers (those that expired
    /// meanwhile, or no longer fit in the room, are dropped from the store).
    /// One store read the first time a room is claimed, none after.
    pub(super) async fn take_reservations(&self, id: &RoomId) -> Result<(), SignalError> {
        if self.rooms.lock().get(id).is_none_or(|s| s.reservations_taken) {
            return Ok(());
        }
        let stored = match self.store.reservations(id).await {
            Ok(stored) => stored,
            // An unreadable record costs its seat, not the room.
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::warn!(room = %id, error = %e, "seat reservations not taken in");
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        let (wall, now) = (clock::now(), Instant::now());
        let mut stale = Vec::new();
        {
            let mut rooms = self.rooms.lock();
            let Some(s) = rooms.get_mut(id) else { return Ok(()) };
            if std::mem::replace(&mut s.reservations_taken, true) {
                return Ok(()); // taken in meanwhile
            }
            for r in stored {
                let peer = r.seat.peer_id.clone();
                if s.seat(&peer).is_some() {
                    continue; // made here, and already a seat
                }
                match Duration::try_from(r.expires_at - wall) {
                    Ok(left) if !left.is_zero() && !s.is_full() => {
                        let presence = Presence::Reserved { until: now + left };
                        s.participants.push(Participant { seat: r.seat, presence });
                        self.timers.start(TimerKey::ReservationExpiry(id.clone(), peer), left);
                    }
                    _ => stale.push(peer),
                }
            }
        }
        for peer in &stale {
            self.forget_reservation(id, peer).await;
        }
        Ok(())
    }

    /// A reservation bound, expired or given up: out of the store. A failure
    /// leaves a record that expires by itself (Redis) or is dropped at the
    /// next [`Self::take_reservations`] (sled), so it is only logged.
    pub(super) async fn forget_reservation(&self, room: &RoomId, peer: &PeerId) {
        if let Err(e) = self.store.delete_reservation(room, peer).await {
            tracing::warn!(%room, %peer, error = %e, "could not remove a seat reservation from the store");
        }
    }

    /// In a cluster, the node `id` is placed on when it is not this one.
    pub async fn held_elsewhere(&self, id: &RoomId) -> Result<Option<crate::ids::NodeId>, SignalError> {
        match &self.placement {
            Some(p) => Ok(p.room_elsewhere(id).await?),
            None => Ok(None),
        }
    }

    /// What this node holds, for its cluster heartbeat: rooms with anyone in
    /// them, and their seats (reserved or joined).
    pub fn occupancy(&self) -> (u32, u32) {
        let rooms = self.rooms.lock();
        let occupied = rooms.values().filter(|s| !s.participants.is_empty());
        occupied.fold((0, 0), |(r, p), s| (r + 1, p + s.participants.len() as u32))
    }

    /// Reserve a seat: `POST /rooms/:id/join`.
    pub async fn reserve(&self, actor: &Actor, id: &RoomId) -> Result<(Room, PeerId), SignalError> {
        self.claim(id).await?;
        let (view, kept) = self.reserve_now(actor, id)?;
        let peer_id = kept.seat.peer_id.clone();
        // Answered once the store has it, so a node that takes the room
        // over honours it; not held under the lock.
        if let Err(e) = self.store.put_reservation(&kept).await {
            self.timers.cancel(TimerKey::ReservationExpiry(id.clone(), peer_id.clone()));
            if let Some(s) = self.rooms.lock().get_mut(id) {
                s.participants.retain(|p| p.peer() != &peer_id || p.live().is_some());
            }
            return Err(e.into());
        }
        Ok((view, peer_id))
    }

    /// [`Self::reserve`] under the lock: the seat taken, and its record.
    fn reserve_now(&self, actor: &Actor, id: &RoomId) -> Result<(Room, Reservation), SignalError> {
        let now = Instant::now();
        let mut rooms = self.rooms.lock();
        let s = find(&mut rooms, id)?;
        check_access(actor, s)?;
        expire(s, now);
        if s.is_full() {
            return Err(SignalError::RoomFull);
        }
        let peer_id = PeerId::random();
        let seat = super::rooms_live::seat(actor, &peer_id);
        let expires_at = seat.joined_at + self.reservation_ttl;
        let kept = Reservation { room_id: id.clone(), seat: seat.clone(), expires_at };
        s.participants.push(Participant { seat, presence: Presence::Reserved { until: now + self.reservation_ttl } });
        self.timers.start(TimerKey::ReservationExpiry(id.clone(), peer_id), self.reservation_ttl);
        Ok((s.view(), kept))
    }

    /// One of the room timers fired (the others are not ours).
    pub async fn on_timer(&self, key: &TimerKey) {
        match key {
            TimerKey::ReservationExpiry(room, peer) => {
                if let Some(s) = self.rooms.lock().get_mut(room) {
                    // Bound meanwhile: the seat is live and stays.
                    s.participants.retain(|p| p.peer() != peer || p.live().is_some());
                }
                self.forget_reservation(room, peer).await;
            }
            TimerKey::SeatGrace(room, peer) => self.on_seat_grace(room, peer).await,
            TimerKey::ChatPersist(room) => self.on_chat_persist(room).await,
            _ => {}
        }
    }

    /// `POST /rooms/:id/leave`: the actor's seats in the room are given up.
    pub async fn leave(&self, actor: &Actor, id: &RoomId) -> Result<(), SignalError> {
        let writes = {
            let mut rooms = self.rooms.lock();
            let s = find(&mut rooms, id)?;
            check_access(actor, s)?;
            let before = s.participants.len();
            let live: Vec<PeerId> = s
                .joined()
                .filter(|(seat, _)| &seat.user_id == actor.user())
                .map(|(seat, _)| seat.peer_id.clone())
                .collect();
            let mut writes = AnalyticsWrites::default();
            for p in live {
                writes.add(self.remove_live(s, &p));
            }
            s.participants.retain(|p| &p.seat.user_id != actor.user());
            if s.participants.len() == before {
                return Err(SignalError::NotFound("you are not a participant of this room".into()));
            }
            writes
        };
        writes.write(self.store.as_ref()).await;
        Ok(())
    }

    /// `DELETE /rooms/:id`: creator or admin; participants get `room-deleted`.
    pub async fn delete(&self, actor: &Actor, id: &RoomId) -> Result<(), SignalError> {
        self.load(id).await?;
        {
            let mut rooms = self.rooms.lock();
            let s = find(&mut rooms, id)?;
            if &s.room.created_by != actor.user() && !actor.is_admin() {
                return Err(SignalError::Forbidden("only the room's creator or an admin may delete it".into()));
            }
        }
        // The lock is not held across the write: the room stays (and may
        // take joins) until the store has its deletion, then goes.
        self.store.delete_room(id).await?;
        self.deleted(id).await;
        if let Some(placement) = &self.placement {
            if let Err(e) = placement.forget(id).await {
                // Harmless: the next room with this id does not exist (ids are random).
                tracing::warn!(room = %id, error = %e, "could not remove a deleted room's placement");
            }
        }
        Ok(())
    }

    /// A room the store no longer has (deleted here or, in a cluster, on
    /// another node): it goes from memory and the media plane, and its
    /// participants get `room-deleted`.
    pub async fn deleted(&self, id: &RoomId) {
        let removed = {
            let mut rooms = self.rooms.lock();
            let removed = rooms.remove(id);
            self.metrics.rooms_active.set(rooms.len() as i64);
            removed
        };
        // Gone meanwhile: a concurrent delete finished first.
        let Some(mut s) = removed else { return };
        let joined: Vec<PeerId> = s.joined().map(|(seat, _)| seat.peer_id.clone()).collect();
        for p in &joined {
            self.metrics.participants_active.dec();
            if let Some(m) = &self.media {
                m.send(crate::media::Command::Leave { peer: p.clone() });
            }
            if let Some(a) = s.analytics.as_mut() {
                a.left(p);
            }
        }
        let seats: Vec<RoomParticipant> = s.participants.drain(..).map(|p| p.seat).collect();
        self.finish_analytics(&mut s).write(self.store.as_ref()).await;
        let ev = ServerEvent::RoomDeleted { room_id: id.clone() };
        let mut told = std::collections::HashSet::new();
        for p in &seats {
            if told.insert(p.user_id.clone()) {
                self.hub.send(&p.user_id, To::All, &ev);
            }
        }
    }
}

pub(super) fn find<'a>(
    rooms: &'a mut HashMap<RoomId, RoomState>,
    id: &RoomId,
) -> Result<&'a mut RoomState, SignalError> {
    rooms.get_mut(id).ok_or_else(|| SignalError::NotFound("room not found".into()))
}

pub(super) fn may_enter(actor: &Actor, s: &RoomState) -> bool {
    let room = &s.room;
    actor.is_admin()
        || s.call_parties.as_ref().is_some_and(|p| p.contains(actor.user()))
        || &room.created_by == actor.user()
        || actor.claims.lists_room(room.id.as_str(), &room.name)
        || s.participants.iter().any(|p| &p.seat.user_id == actor.user())
}

pub(super) fn check_access(actor: &Actor, s: &RoomState) -> Result<(), SignalError> {
    if s.room.is_private && !may_enter(actor, s) {
        return Err(SignalError::Forbidden(
            "this room is private: it needs its creator, an admin, or a token whose `rooms` lists it".into(),
        ));
    }
    Ok(())
}

/// Drop reservations that were not bound in time.
pub(super) fn expire(s: &mut RoomState, now: Instant) {
    s.participants.retain(|p| !matches!(p.presence, Presence::Reserved { until } if until <= now));
}
