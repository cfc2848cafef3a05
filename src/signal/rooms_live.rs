//! Rooms over `/rtc` (SPEC 4, room events): joining binds a seat to a
//! connection, publish/subscribe negotiation and candidates go to the media
//! plane, and what the media plane reports goes back to the right connection
//! or to everyone else in the room.
//!
//! Signaling gives tracks their ids (from the `mid`s of `publish-offer`) and
//! keeps the room model that `GET /rooms/:id` shows; the SFU only moves media.

use super::hub::To;
use super::messages::PcRole;
use super::messages::{IceCandidate, ServerEvent, Speaker, TrackAnnouncement};
use super::room_analytics::AnalyticsWrites;
use super::rooms::{check_access, expire, find, Participant, Presence, RoomService, RoomState};
use super::timers::TimerKey;
use super::{Actor, SignalError};
use crate::clock;
use crate::ids::{CallId, ConnId, PeerId, RoomId, TrackId, UserId};
use crate::media::{self, Command, MediaError, MediaEvent, Role};
use crate::model::{Room, RoomParticipant, TrackInfo, TrackKind, TrackSource};
use std::collections::HashMap;
use std::time::Instant;

/// How a joined participant is bound: its connection and announced tracks
/// (the seat itself is the [`super::rooms::Participant`] record).
#[derive(Debug)]
pub struct Live {
    pub conn: ConnId,
    /// The WebSocket dropped; the seat is kept for the grace
    /// ([`TimerKey::SeatGrace`]).
    pub dropped: bool,
    /// Announced tracks by mid: (id, source, simulcast).
    pub mids: HashMap<String, (TrackId, TrackSource, bool)>,
    /// `room-message`'s own rate limit ([`super::chat`]).
    pub chat: super::ratelimit::TokenBucket,
}

/// A new seat for `actor` as `peer`, with no tracks yet.
pub(super) fn seat(actor: &Actor, peer: &PeerId) -> RoomParticipant {
    RoomParticipant {
        peer_id: peer.clone(),
        user_id: actor.user().clone(),
        name: actor.claims.display_name(),
        joined_at: clock::now(),
        tracks: Vec::new(),
        hand_raised: false,
    }
}

impl RoomService {
    fn media(&self) -> Result<&media::MediaHandle, SignalError> {
        self.media.as_ref().ok_or_else(|| SignalError::NotImplemented("this server runs without the SFU".into()))
    }

    /// Send `ev` to every joined participant of the room but `except`.
    pub(super) fn tell_room(&self, s: &RoomState, except: Option<&PeerId>, ev: &ServerEvent) {
        for (seat, l) in s.joined() {
            if Some(&seat.peer_id) != except && !l.dropped {
                self.hub.send(&seat.user_id, To::Only(&l.conn), ev);
            }
        }
    }

    /// `room-join`: bind a reservation (`peerId`), rebind one's own seat after
    /// a reconnect, or take a new seat. A reservation bound leaves the store
    /// after the seat is live (not under the lock).
    pub async fn join_ws(
        &self,
        actor: &Actor,
        room_id: &RoomId,
        peer_id: Option<PeerId>,
    ) -> Result<ServerEvent, SignalError> {
        let (joined, bound) = self.join_seat(actor, room_id, peer_id)?;
        if let Some(peer) = bound {
            self.forget_reservation(room_id, &peer).await;
        }
        Ok(joined)
    }

    /// [`Self::join_ws`] under the lock: the answer, and the reservation it
    /// bound.
    fn join_seat(
        &self,
        actor: &Actor,
        room_id: &RoomId,
        peer_id: Option<PeerId>,
    ) -> Result<(ServerEvent, Option<PeerId>), SignalError> {
        let media = self.media()?.clone();
        let Some(conn) = actor.conn.clone() else {
            return Err(SignalError::BadRequest("room-join needs a WebSocket".into()));
        };
        let mut rooms = self.rooms.lock();
        let s = find(&mut rooms, room_id)?;
        check_access(actor, s)?;
        expire(s, Instant::now());
        let live = Live { conn, dropped: false, mids: HashMap::new(), chat: self.chat_bucket() };
        let mut bound = None;
        let peer = match peer_id {
            Some(p) => {
                let Some(reserved) = s.seat(&p) else {
                    return Err(SignalError::NotFound(
                        "peerId: no such reservation in this room (it may have expired)".into(),
                    ));
                };
                if &reserved.seat.user_id != actor.user() {
                    return Err(SignalError::Forbidden("peerId: that seat belongs to another user".into()));
                }
                if reserved.live().is_some() {
                    // A reconnect: the old PeerConnections go, the seat stays,
                    // and so does a raised hand.
                    let hand_raised = self.drop_live(s, &p).is_some_and(|old| old.seat.hand_raised);
                    media.send(Command::Leave { peer: p.clone() });
                    let again = RoomParticipant { hand_raised, ..seat(actor, &p) };
                    s.participants.push(Participant { seat: again, presence: Presence::Live(live) });
                    self.timers.cancel(TimerKey::SeatGrace(room_id.clone(), p.clone()));
                } else {
                    s.seat_mut(&p).expect("found above").presence = Presence::Live(live);
                    self.timers.cancel(TimerKey::ReservationExpiry(room_id.clone(), p.clone()));
                    bound = Some(p.clone());
                }
                p
            }
            None => {
                if s.is_full() {
                    return Err(SignalError::RoomFull);
                }
                let p = PeerId::random();
                s.participants.push(Participant { seat: seat(actor, &p), presence: Presence::Live(live) });
                p
            }
        };
        let call = s.call.clone();
        s.analytics.get_or_insert_with(|| super::room_analytics::RoomAnalytics::new(call)).joined(actor.user(), &peer);
        self.metrics.participants_active.inc();
        let subscribe = actor.claims.can_subscribe;
        media.send(Command::Join { room: room_id.clone(), peer: peer.clone(), subscribe });
        let me = s.seat(&peer).map(|p| p.seat.clone()).expect("seated above");
        self.tell_room(s, Some(&peer), &ServerEvent::ParticipantJoined { room_id: room_id.clone(), participant: me });
        let joined = ServerEvent::RoomJoined {
            req_id: None,
            room_id: room_id.clone(),
            peer_id: peer,
            room: s.view(),
            ice_servers: (self.ice_servers)(actor.user()),
        };
        Ok((joined, bound))
    }

    /// The actor's joined seat in a room, found by its connection.
    pub(super) fn my_peer<'a>(
        actor: &Actor,
        s: &'a mut RoomState,
    ) -> Result<(PeerId, &'a mut Participant), SignalError> {
        let conn = actor.conn.as_ref();
        s.participants
            .iter_mut()
            .find(|p| p.live().is_some_and(|l| Some(&l.conn) == conn))
            .map(|p| (p.peer().clone(), p))
            .ok_or_else(|| {
                SignalError::Conflict("you have not joined this room on this connection: send room-join".into())
            })
    }

    /// `publish-offer`: the tracks list is all of the publisher's tracks; a
    /// track no longer listed is unpublished. A token with `canPublish:
    /// false` is refused (SPEC 2) before anything reaches the media plane.
    pub fn publish(
        &self,
        actor: &Actor,
        room_id: &RoomId,
        sdp: String,
        tracks: Vec<TrackAnnouncement>,
    ) -> Result<(), SignalError> {
        if !actor.claims.can_publish {
            return Err(SignalError::Forbidden("publish-offer: this token may not publish (canPublish: false)".into()));
        }
        let media = self.media()?.clone();
        if sdp.trim().is_empty() {
            return Err(SignalError::BadRequest("sdp: must be an SDP offer".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &tracks {
            if t.mid.is_empty() || !seen.insert(&t.mid) {
                return Err(SignalError::BadRequest(format!("tracks: mid {:?} is empty or listed twice", t.mid)));
            }
        }
        let mut rooms = self.rooms.lock();
        let s = find(&mut rooms, room_id)?;
        let (peer, me) = Self::my_peer(actor, s)?;
        let live = me.live_mut().expect("joined");
        let mut announced = Vec::new();
        let mut mids = HashMap::new();
        for t in tracks {
            let id = live.mids.get(&t.mid).map(|x| x.0.clone()).unwrap_or_else(TrackId::random);
            let simulcast = t.simulcast.unwrap_or(false);
            mids.insert(t.mid.clone(), (id.clone(), t.source, simulcast));
            announced.push(media::PublishTrack { mid: t.mid, id, source: t.source });
        }
        let gone: Vec<TrackId> =
            live.mids.values().filter(|(id, ..)| !mids.values().any(|m| &m.0 == id)).map(|x| x.0.clone()).collect();
        live.mids = mids;
        if !gone.is_empty() {
            media.send(Command::Unpublish { peer: peer.clone(), tracks: gone.clone() });
            me.seat.tracks.retain(|t| !gone.contains(&t.id));
            for t in gone {
                let ev = ServerEvent::TrackUnpublished { room_id: room_id.clone(), peer_id: peer.clone(), track_id: t };
                self.tell_room(s, Some(&peer), &ev);
            }
        }
        media.send(Command::Publish { peer, sdp, tracks: announced });
        Ok(())
    }

    pub fn subscribe_answer(&self, actor: &Actor, room_id: &RoomId, sdp: String) -> Result<(), SignalError> {
        let media = self.media()?.clone();
        let mut rooms = self.rooms.lock();
        let (peer, _) = Self::my_peer(actor, find(&mut rooms, room_id)?)?;
        media.send(Command::SubscribeAnswer { peer, sdp });
        Ok(())
    }

    pub fn ice_candidate(
        &self,
        actor: &Actor,
        room_id: &RoomId,
        pc: PcRole,
        c: IceCandidate,
    ) -> Result<(), SignalError> {
        let media = self.media()?.clone();
        let mut rooms = self.rooms.lock();
        let (peer, _) = Self::my_peer(actor, find(&mut rooms, room_id)?)?;
        let candidate = media::Candidate {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_m_line_index: c.sdp_m_line_index.and_then(|i| u16::try_from(i).ok()),
            username_fragment: c.username_fragment,
        };
        media.send(Command::Candidate { peer, role: pc.into(), candidate });
        Ok(())
    }

    /// `track-mute`: only one's own tracks; everyone else sees `participant-updated`.
    pub fn track_mute(&self, actor: &Actor, room_id: &RoomId, track: &TrackId, muted: bool) -> Result<(), SignalError> {
        let media = self.media()?.clone();
        let mut rooms = self.rooms.lock();
        let s = find(&mut rooms, room_id)?;
        let (peer, me) = Self::my_peer(actor, s)?;
        if !me.live().is_some_and(|l| l.mids.values().any(|(id, ..)| id == track)) {
            return Err(SignalError::NotFound("trackId: not one of your tracks in this room".into()));
        }
        if let Some(t) = me.seat.tracks.iter_mut().find(|t| &t.id == track) {
            t.muted = muted;
        }
        let participant = me.seat.clone();
        media.send(Command::Mute { peer: peer.clone(), track: track.clone(), muted });
        self.tell_room(s, Some(&peer), &ServerEvent::ParticipantUpdated { room_id: room_id.clone(), participant });
        Ok(())
    }

    /// `track-subscribe`; a token with `canSubscribe: false` receives no
    /// media at all (the media plane never offers it any), so asking is
    /// `forbidden`.
    pub fn track_subscribe(
        &self,
        actor: &Actor,
        room_id: &RoomId,
        track: TrackId,
        subscribe: bool,
        ceiling: Option<media::allocate::Layer>,
    ) -> Result<(), SignalError> {
        if !actor.claims.can_subscribe {
            return Err(SignalError::Forbidden(
                "track-subscribe: this token may not receive media (canSubscribe: false)".into(),
            ));
        }
        let media = self.media()?.clone();
        let mut rooms = self.rooms.lock();
        let s = find(&mut rooms, room_id)?;
        if !s.participants.iter().any(|p| p.seat.tracks.iter().any(|t| t.id == track)) {
            return Err(SignalError::NotFound("trackId: no such track in this room".into()));
        }
        let (peer, _) = Self::my_peer(actor, s)?;
        media.send(Command::Subscribe { peer, track, subscribe, ceiling });
        Ok(())
    }

    /// `room-leave`.
    pub async fn leave_ws(&self, actor: &Actor, room_id: &RoomId) -> Result<(), SignalError> {
        let writes = {
            let mut rooms = self.rooms.lock();
            let s = find(&mut rooms, room_id)?;
            let (peer, _) = Self::my_peer(actor, s)?;
            let writes = self.remove_live(s, &peer);
            self.remove_if_finished_call(&mut rooms, room_id);
            writes
        };
        writes.write(self.store.as_ref()).await;
        Ok(())
    }

    /// A joined participant leaves: the others hear `track-unpublished` for
    /// each of its tracks and `participant-left`; its media stops. The
    /// room's summary, if this was the last one, is for the caller to write
    /// once the rooms lock is released.
    pub(super) fn remove_live(&self, s: &mut RoomState, peer: &PeerId) -> AnalyticsWrites {
        let Some(p) = self.drop_live(s, peer) else { return AnalyticsWrites::default() };
        if let Some(m) = &self.media {
            m.send(Command::Leave { peer: peer.clone() });
        }
        let room_id = s.room.id.clone();
        for t in p.seat.tracks {
            let ev = ServerEvent::TrackUnpublished { room_id: room_id.clone(), peer_id: peer.clone(), track_id: t.id };
            self.tell_room(s, Some(peer), &ev);
        }
        self.tell_room(s, Some(peer), &ServerEvent::ParticipantLeft { room_id, peer_id: peer.clone() });
        if let Some(a) = s.analytics.as_mut() {
            a.left(peer);
        }
        self.finish_analytics(s)
    }

    /// Take a joined participant's seat out of the room (a reserved one stays).
    fn drop_live(&self, s: &mut RoomState, peer: &PeerId) -> Option<Participant> {
        let i = s.participants.iter().position(|p| p.peer() == peer && p.live().is_some())?;
        self.metrics.participants_active.dec();
        Some(s.participants.remove(i))
    }

    fn remove_if_finished_call(&self, rooms: &mut HashMap<RoomId, RoomState>, room_id: &RoomId) {
        if rooms.get(room_id).is_some_and(|s| s.call_parties.is_some() && !s.has_joined()) {
            rooms.remove(room_id);
        }
    }

    /// A WebSocket closed: its joined seats are kept for the grace period,
    /// then given up unless the user joined again.
    pub fn conn_closed(&self, conn: &ConnId) {
        for (room_id, s) in self.rooms.lock().iter_mut() {
            for p in &mut s.participants {
                let peer = p.peer().clone();
                if let Some(l) = p.live_mut().filter(|l| &l.conn == conn) {
                    l.dropped = true;
                    self.timers.start(TimerKey::SeatGrace(room_id.clone(), peer), self.grace);
                }
            }
        }
    }

    /// A dropped participant's grace ran out: it leaves unless it rejoined.
    pub(super) async fn on_seat_grace(&self, room_id: &RoomId, peer: &PeerId) {
        let writes = {
            let mut rooms = self.rooms.lock();
            let Some(s) = rooms.get_mut(room_id) else { return };
            let mut writes = AnalyticsWrites::default();
            if s.seat(peer).and_then(Participant::live).is_some_and(|l| l.dropped) {
                tracing::debug!(%room_id, %peer, "participant's WebSocket did not come back; leaving the room");
                writes = self.remove_live(s, peer);
            }
            self.remove_if_finished_call(&mut rooms, room_id);
            writes
        };
        writes.write(self.store.as_ref()).await;
    }

    /// A `mode: "sfu"` call's room: private, two seats, for its two parties.
    pub fn ensure_call_room(&self, room_id: &RoomId, call: &CallId, name: Option<&str>, parties: [UserId; 2]) {
        let mut rooms = self.rooms.lock();
        if rooms.contains_key(room_id) {
            return;
        }
        let room = Room {
            id: room_id.clone(),
            name: name.map(str::to_owned).unwrap_or_else(|| format!("call {call}")),
            max_participants: 2,
            is_private: true,
            created_by: parties[0].clone(),
            created_at: clock::now(),
            participants: Vec::new(),
            messages: Vec::new(),
        };
        let mut s = RoomState::new(room);
        s.call_parties = Some(parties);
        s.call = Some(call.clone());
        rooms.insert(room_id.clone(), s);
    }

    /// The call mute routes in `mode: "sfu"`: stop (or resume) forwarding one
    /// kind of media from `user` in the call's room.
    pub fn call_mute(&self, room_id: &RoomId, user: &UserId, kind: TrackKind, muted: bool) {
        let Some(media) = &self.media else { return };
        let mut rooms = self.rooms.lock();
        let Some(s) = rooms.get_mut(room_id) else { return };
        let peers: Vec<PeerId> =
            s.joined().filter(|(seat, _)| &seat.user_id == user).map(|(seat, _)| seat.peer_id.clone()).collect();
        for peer in peers {
            media.send(Command::MuteKind { peer: peer.clone(), kind, muted });
            if let Some(p) = s.seat_mut(&peer) {
                for t in p.seat.tracks.iter_mut().filter(|t| t.kind == kind) {
                    t.muted = muted;
                }
                let ev = ServerEvent::ParticipantUpdated { room_id: room_id.clone(), participant: p.seat.clone() };
                self.tell_room(s, Some(&peer), &ev);
            }
        }
    }

    /// Deliver what the media plane reports.
    pub fn on_media(&self, ev: MediaEvent) {
        let mut rooms = self.rooms.lock();
        let peer = match &ev {
            MediaEvent::PublishAnswer { peer, .. }
            | MediaEvent::SubscribeOffer { peer, .. }
            | MediaEvent::LocalCandidate { peer, .. }
            | MediaEvent::TrackPublished { peer, .. }
            | MediaEvent::LayerChanged { peer, .. }
            | MediaEvent::PublishLayers { peer, .. }
            | MediaEvent::Error { peer, .. } => peer.clone(),
            MediaEvent::Stats { room, peers } => {
                if let Some(s) = rooms.get_mut(room) {
                    self.on_stats(s, peers.clone());
                }
                return;
            }
            MediaEvent::ActiveSpeakers { room, speakers } => {
                if let Some(s) = rooms.get(room) {
                    let speakers = speakers.iter().map(|(p, l)| Speaker { peer_id: p.clone(), level: *l }).collect();
                    self.tell_room(s, None, &ServerEvent::ActiveSpeakers { room_id: room.clone(), speakers });
                }
                return;
            }
        };
        let Some(s) = rooms.values_mut().find(|s| s.seat(&peer).is_some_and(|p| p.live().is_some())) else {
            return;
        };
        let room_id = s.room.id.clone();
        let me = s.seat(&peer).expect("found above");
        let live = me.live().expect("joined");
        let (user, conn) = (me.seat.user_id.clone(), live.conn.clone());
        let to_peer = |e: ServerEvent| {
            self.hub.send(&user, To::Only(&conn), &e);
        };
        match ev {
            MediaEvent::PublishAnswer { sdp, .. } => to_peer(ServerEvent::PublishAnswer { room_id, sdp }),
            MediaEvent::SubscribeOffer { sdp, .. } => to_peer(ServerEvent::SubscribeOffer { room_id, sdp }),
            MediaEvent::LayerChanged { track, layer, reason, .. } => to_peer(ServerEvent::SubscriptionUpdate {
                room_id,
                track_id: track,
                layer: layer.map(media::allocate::Layer::rid),
                reason: reason.name(),
            }),
            MediaEvent::PublishLayers { track, layers, .. } => to_peer(ServerEvent::PublishLayers {
                room_id,
                track_id: track,
                layers: layers.into_iter().map(media::allocate::Layer::rid).collect(),
            }),
            MediaEvent::Error { error, .. } => {
                let (code, message) = media_error(error);
                to_peer(ServerEvent::error(code, message, None))
            }
            MediaEvent::LocalCandidate { role, candidate, mid, .. } => to_peer(ServerEvent::RoomIceCandidate {
                room_id,
                pc: role.into(),
                candidate: IceCandidate { candidate, sdp_mid: mid, sdp_m_line_index: Some(0), username_fragment: None },
            }),
            MediaEvent::TrackPublished { track, kind, .. } => {
                let Some((_, source, simulcast)) = live.mids.values().find(|(id, ..)| *id == track).cloned() else {
                    return;
                };
                let info = TrackInfo { id: track, kind, source, muted: false, simulcast };
                if let Some(p) = s.seat_mut(&peer) {
                    p.seat.tracks.retain(|t| t.id != info.id);
                    p.seat.tracks.push(info.clone());
                }
                self.tell_room(s, None, &ServerEvent::TrackPublished { room_id, peer_id: peer, track: info });
            }
            MediaEvent::ActiveSpeakers { .. } | MediaEvent::Stats { .. } => {}
        }
    }

    /// Shutdown: the media plane closes every PeerConnection.
    /// Every joined participant's (user, connection), in every room here.
    pub fn joined_conns(&self) -> Vec<(UserId, ConnId)> {
        let rooms = self.rooms.lock();
        rooms.values().flat_map(|s| s.joined().map(|(seat, l)| (seat.user_id.clone(), l.conn.clone()))).collect()
    }

    pub fn shutdown_media(&self) {
        if let Some(m) = &self.media {
            m.send(Command::Shutdown);
        }
    }
}

/// What a client is told when the media plane could not do what it asked.
fn media_error(e: MediaError) -> (&'static str, &'static str) {
    match e {
        MediaError::NotJoined => ("bad-request", "publish-offer: join the room first"),
        MediaError::NoOfferPending => ("conflict", "subscribe-answer: no subscribe-offer is waiting for an answer"),
        MediaError::BadOffer => ("bad-request", "sdp: not a usable offer"),
        MediaError::BadAnswer => ("bad-request", "sdp: not a usable answer"),
        MediaError::CannotCreate => ("internal", "the server could not create a PeerConnection; try again"),
        MediaError::Failed(Role::Publisher) => ("internal", "the publisher PeerConnection failed; rejoin the room"),
        MediaError::Failed(Role::Subscriber) => ("internal", "the subscriber PeerConnection failed; rejoin the room"),
    }
}
