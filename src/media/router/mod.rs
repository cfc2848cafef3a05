//! A router (mediasoup's name): one room on a worker. It holds the room's
//! participants, their [`Transport`]s, the [`Producer`]s they publish and
//! each producer's [`super::consumer::Consumer`]s, and carries out
//! signaling's commands for the room. It never reads the clock: the worker
//! passes `now` in; it writes only through the worker's [`Io`].
//!
//! - [`negotiate`]: legs, SDP offers and answers, senders and consumers.
//! - [`forward`]: datagrams in, RTP forwarded, RTCP answered, timers.
//! - [`adapt`]: each subscriber's estimate, its allocation across tracks,
//!   dynacast, probe padding (SPEC 5.1).
//! - [`report`]: active speakers and the analytics interval.

mod adapt;
mod forward;
mod negotiate;
mod report;

use super::allocate::Layer;
use super::ids::{LegId, RouterId, Ssrc};
use super::producer::Producer;
use super::transport::Transport;
use super::worker::Io;
use super::{Candidate, PublishTrack, Role};
use crate::ids::{PeerId, RoomId, TrackId};
use crate::model::TrackKind;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// When a subscriber leg connects, keyframes are asked for at once and again
/// after these delays.
const KEYFRAME_FOLLOWUPS: [Duration; 2] = [Duration::from_millis(400), Duration::from_millis(1200)];

/// A participant as the media plane sees it.
struct Participant {
    /// Whether its token may receive media (`canSubscribe`).
    may_subscribe: bool,
    publisher: Option<LegId>,
    subscriber: Option<LegId>,
    /// Announced in `publish-offer`, by mid.
    announced: HashMap<String, PublishTrack>,
    /// The layer of each SSRC of an `a=ssrc-group:SIM` in the publisher's
    /// offer (SPEC 5.1: what the rids say, for publishers that do not send them).
    simulcast_ssrcs: HashMap<u32, Layer>,
}

pub struct Router {
    id: RouterId,
    room: RoomId,
    participants: HashMap<PeerId, Participant>,
    transports: HashMap<LegId, Transport>,
    producers: HashMap<TrackId, Producer>,
    /// Publisher leg and SSRC → producer, for statistics at the socket.
    by_ssrc: HashMap<(LegId, Ssrc), TrackId>,
    /// The last `active-speakers` list sent.
    speakers: Vec<PeerId>,
    /// Repeated keyframe requests for new subscribers: (when, track).
    followups: Vec<(Instant, TrackId)>,
    /// Legs that may have something to say (drained by [`Router::flush`]).
    dirty: Vec<LegId>,
    /// `confer_pli_total` (keyframe requests happen where no [`Io`] is at hand).
    plis: prometheus::IntCounter,
    next_alloc_id: u32,
    /// When layer bitrates are measured and subscribers' layers allocated next.
    next_allocation: Instant,
    /// When layer bitrates were last measured.
    last_measure: Instant,
    /// Reused for parsing transport-wide feedback.
    arrivals: Vec<(u16, Option<i64>)>,
    feedback: Vec<crate::media::bwe::Arrival>,
    /// `track-subscribe` that came before its consumer existed (before the
    /// subscriber answered the offer carrying the track): applied to it then.
    early: HashMap<(PeerId, TrackId), (bool, Option<Layer>)>,
    /// `confer_tracks_paused`, and what this router added to it.
    paused_gauge: prometheus::IntGauge,
    paused: i64,
}

impl Drop for Router {
    fn drop(&mut self) {
        self.paused_gauge.sub(self.paused);
    }
}

impl Router {
    pub fn new(id: RouterId, room: RoomId, metrics: &crate::metrics::MediaMetrics) -> Self {
        Self {
            id,
            room,
            participants: HashMap::new(),
            transports: HashMap::new(),
            producers: HashMap::new(),
            by_ssrc: HashMap::new(),
            speakers: Vec::new(),
            followups: Vec::new(),
            dirty: Vec::new(),
            plis: metrics.pli.clone(),
            next_alloc_id: 0,
            next_allocation: Instant::now(),
            last_measure: Instant::now(),
            arrivals: Vec::new(),
            feedback: Vec::new(),
            early: HashMap::new(),
            paused_gauge: metrics.tracks_paused.clone(),
            paused: 0,
        }
    }

    pub fn room(&self) -> &RoomId {
        &self.room
    }

    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }

    /// A participant joins: it gets everything already published, unless
    /// it may not subscribe.
    pub fn join(&mut self, peer: &PeerId, may_subscribe: bool, io: &mut Io, now: Instant) {
        let p = Participant {
            may_subscribe,
            publisher: None,
            subscriber: None,
            announced: HashMap::new(),
            simulcast_ssrcs: HashMap::new(),
        };
        self.participants.insert(peer.clone(), p);
        // Video first: aiortc fails to route video on a bundle whose first
        // m-section is audio (seen as a late joiner never decoding).
        let mut existing: Vec<(bool, TrackId)> =
            self.producers.values().map(|p| (p.kind == TrackKind::Audio, p.id.clone())).collect();
        existing.sort();
        for (_, t) in existing {
            self.add_sender(peer, &t, io, now);
        }
        self.renegotiate(peer, io, now);
    }

    pub fn leave(&mut self, peer_id: &PeerId, io: &mut Io, now: Instant) {
        let Some(peer) = self.participants.remove(peer_id) else { return };
        let own: Vec<TrackId> = self.producers.values().filter(|p| &p.peer == peer_id).map(|p| p.id.clone()).collect();
        for t in own {
            self.remove_producer(&t, io, now);
        }
        for p in self.producers.values_mut() {
            p.consumers.retain(|c| &c.peer != peer_id);
        }
        self.early.retain(|(p, _), _| p != peer_id);
        for l in [peer.publisher, peer.subscriber].into_iter().flatten() {
            self.close_leg(l, io);
        }
    }

    pub fn candidate(&mut self, peer_id: &PeerId, role: Role, c: Candidate) {
        let Some(peer) = self.participants.get(peer_id) else { return };
        let leg = match role {
            Role::Publisher => peer.publisher,
            Role::Subscriber => peer.subscriber,
        };
        let Some(leg) = leg.and_then(|l| self.transports.get_mut(&l)) else { return };
        let init = rtc::peer_connection::transport::RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_m_line_index,
            username_fragment: c.username_fragment,
            ..Default::default()
        };
        // ICE-lite never checks remote candidates; an unparsable one is harmless.
        if let Err(e) = leg.pc.add_remote_candidate(init) {
            tracing::debug!(error = %e, peer = %peer_id, "media: remote candidate ignored");
        }
    }

    pub fn mute(&mut self, peer: &PeerId, track: &TrackId, muted: bool, now: Instant) {
        if self.producers.get(track).is_some_and(|p| &p.peer == peer) {
            self.set_muted(track, muted, now);
        }
    }

    /// Mute every track of one kind (the call mute routes of `mode: "sfu"`).
    pub fn mute_kind(&mut self, peer: &PeerId, kind: TrackKind, muted: bool, now: Instant) {
        let ids: Vec<TrackId> =
            self.producers.values().filter(|p| &p.peer == peer && p.kind == kind).map(|p| p.id.clone()).collect();
        for t in ids {
            self.set_muted(&t, muted, now);
        }
    }

    fn set_muted(&mut self, track: &TrackId, muted: bool, now: Instant) {
        let Some(p) = self.producers.get_mut(track) else { return };
        let was = p.muted;
        p.muted = muted;
        for c in &mut p.consumers {
            c.forwarder.skip();
        }
        // Unmuting video asks for a keyframe so it resumes at once (SPEC 12).
        if was && !muted && p.kind == TrackKind::Video {
            self.keyframe(track, now);
        }
    }

    /// `track-subscribe`: pause or resume one subscriber's copy, and for a
    /// simulcast track set its ceiling (`quality`); the allocation runs at
    /// the next tick and says which layer it gets.
    pub fn subscribe(
        &mut self,
        peer: &PeerId,
        track: &TrackId,
        subscribe: bool,
        ceiling: Option<Layer>,
        io: &Io,
        now: Instant,
    ) {
        let Some(p) = self.producers.get_mut(track) else { return };
        if !p.consumers.iter().any(|c| &c.peer == peer) {
            let early = self.early.entry((peer.clone(), track.clone())).or_insert((subscribe, ceiling));
            *early = (subscribe, ceiling.or(early.1));
            return;
        }
        for c in p.consumers.iter_mut().filter(|c| &c.peer == peer) {
            let was = c.forwarder.current();
            c.forwarder.set_paused(!subscribe);
            if !subscribe && was.is_some() && p.kind == TrackKind::Video {
                c.reason = super::allocate::Reason::Requested;
                forward::layer_changed(io, c, &p.id, None);
            }
            if let Some(l) = ceiling {
                c.ceiling = l;
            }
        }
        self.next_allocation = now;
        if subscribe {
            self.keyframe(track, now);
        }
    }

    pub fn unpublish(&mut self, peer: &PeerId, tracks: Vec<TrackId>, io: &mut Io, now: Instant) {
        for t in tracks {
            if self.producers.get(&t).is_some_and(|p| &p.peer == peer) {
                self.remove_producer(&t, io, now);
            }
            if let Some(p) = self.participants.get_mut(peer) {
                p.announced.retain(|_, a| a.id != t);
            }
        }
    }

    /// A leg was seen at a new remote address.
    pub fn add_address(&mut self, leg: LegId, from: SocketAddr) {
        if let Some(t) = self.transports.get_mut(&leg) {
            t.addrs.push(from);
        }
    }

    /// The peers in this router (for the worker's bookkeeping on shutdown).
    pub fn peers(&self) -> Vec<PeerId> {
        self.participants.keys().cloned().collect()
    }
}
