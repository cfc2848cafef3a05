//! The call service: live 1:1 calls in memory, every change persisted, events
//! to both parties' connections, and the call timers (ring timeout, reconnect
//! grace) set in the [`super::timers`] scheduler and handled in [`CallService::on_timer`].
//!
//! REST handlers and `/rtc` sessions call the same methods, so a REST action
//! emits the same events as its WebSocket twin.

use super::call::{self, reason, CallError};
use super::hub::{Hub, To};
use super::messages::{SdpType, ServerEvent};
use super::timers::{TimerKey, Timers};
use super::{Actor, SignalError};
use crate::clock;
use crate::ids::{CallId, ConnId, RoomId, UserId};
use crate::metrics::Metrics;
use crate::model::{CallMode, CallParticipant, CallSession, CallStatus, CallType, Camera, FacingMode};
use crate::store::{HistoryPage, HistoryQuery, Store};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// What `POST /calls` and `call-initiate` carry.
#[derive(Clone, Debug)]
pub struct NewCall {
    pub caller_id: UserId,
    pub callee_id: UserId,
    pub call_type: CallType,
    pub room_name: Option<String>,
    pub mode: CallMode,
    pub sdp: Option<String>,
}

/// A mute or camera change.
#[derive(Clone, Debug)]
pub enum MediaChange {
    Audio(bool),
    Video(bool),
    Camera { device_id: Option<String>, facing_mode: Option<FacingMode> },
}

struct LiveCall {
    session: CallSession,
    /// The connection each party uses for this call (the caller's initiating
    /// socket, the callee's accepting one). Relayed events go there only.
    devices: HashMap<UserId, ConnId>,
    /// Parties that had a WebSocket while the call was live: the reconnect
    /// grace applies only to them (SPEC 12).
    seen_online: HashSet<UserId>,
    /// The latest `call-stats` per party and the one before it (P2P
    /// analytics input; two reports give bitrates).
    stats: HashMap<UserId, (Vec<serde_json::Value>, Vec<serde_json::Value>)>,
    /// P2P analytics samples built from `call-stats`, and when the last one was taken.
    samples: std::collections::VecDeque<crate::analytics::report::Sample>,
    last_sample: Option<std::time::Instant>,
}

pub struct CallService {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    metrics: Metrics,
    ring_timeout: Duration,
    reconnect_grace: Duration,
    timers: Timers,
    live: Mutex<HashMap<CallId, LiveCall>>,
}

pub const MAX_ID_LEN: usize = 128;

impl CallService {
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        metrics: Metrics,
        ring_timeout: Duration,
        reconnect_grace: Duration,
        timers: Timers,
    ) -> Arc<Self> {
        Arc::new(Self { store, hub, metrics, ring_timeout, reconnect_grace, timers, live: Mutex::new(HashMap::new()) })
    }

    /// Settle calls that were live when the previous process died: their media
    /// is gone, so they end with `server-restart`.
    pub fn recover(&self) -> Result<usize, SignalError> {
        let now = clock::now();
        let live = self.store.live_calls()?;
        for mut c in live.iter().cloned() {
            c.end(reason::SERVER_RESTART, now)?;
            self.store.put_call(&c)?;
        }
        Ok(live.len())
    }

    pub fn create(&self, actor: &Actor, req: NewCall) -> Result<CallSession, SignalError> {
        if &req.caller_id != actor.user() && !actor.is_admin() {
            return Err(SignalError::Forbidden("callerId must be your own user id (the token's sub)".into()));
        }
        validate_user_id("calleeId", &req.callee_id)?;
        if req.callee_id == req.caller_id {
            return Err(SignalError::BadRequest("calleeId: you cannot call yourself".into()));
        }
        if let Some(n) = &req.room_name {
            if n.is_empty() || n.len() > 128 {
                return Err(SignalError::BadRequest("roomName: 1 to 128 characters".into()));
            }
        }
        let now = clock::now();
        let session = call::new_call(
            CallId::random(),
            req.caller_id.clone(),
            req.callee_id.clone(),
            req.call_type,
            req.mode,
            RoomId::random(),
            req.room_name.clone(),
            now,
        );
        self.store.put_call(&session)?;
        let mut live = LiveCall {
            session: session.clone(),
            devices: HashMap::new(),
            seen_online: HashSet::new(),
            stats: HashMap::new(),
            samples: Default::default(),
            last_sample: None,
        };
        for u in [&req.caller_id, &req.callee_id] {
            if self.hub.is_online(u) {
                live.seen_online.insert(u.clone());
            }
        }
        if let Some(conn) = &actor.conn {
            live.devices.insert(req.caller_id.clone(), conn.clone());
        }
        {
            let mut calls = self.live.lock();
            calls.insert(session.id.clone(), live);
            self.metrics.calls_active.set(calls.len() as i64);
        }
        self.hub.send(
            &req.callee_id,
            To::All,
            &ServerEvent::CallInitiate {
                call_id: session.id.clone(),
                from: req.caller_id.clone(),
                call_type: req.call_type,
                sdp: req.sdp,
                call_session: session.clone(),
            },
        );
        self.timers.start(TimerKey::RingTimeout(session.id.clone()), self.ring_timeout);
        Ok(session)
    }

    /// A call as `actor` may see it: parties and admins only; strangers get
    /// not-found so that call ids do not leak.
    pub fn get(&self, actor: &Actor, id: &CallId) -> Result<CallSession, SignalError> {
        let now = clock::now();
        if let Some(l) = self.live.lock().get(id) {
            return visible(actor, &l.session).map(|c| c.as_of(now));
        }
        match self.store.get_call(id)? {
            Some(c) => visible(actor, &c).map(|c| c.as_of(now)),
            None => Err(not_found()),
        }
    }

    pub fn history(&self, actor: &Actor, mut q: HistoryQuery) -> Result<HistoryPage, SignalError> {
        match (&q.user, actor.is_admin()) {
            (Some(u), false) if u != actor.user() => {
                return Err(SignalError::Forbidden("userId: only admins may read another user's history".into()))
            }
            (None, false) => q.user = Some(actor.user().clone()),
            _ => {}
        }
        let now = clock::now();
        let mut page = self.store.history(&q)?;
        for c in &mut page.calls {
            *c = c.as_of(now);
        }
        Ok(page)
    }

    /// Callee accepts (REST `accept` or `call-accept`).
    pub fn accept(&self, actor: &Actor, id: &CallId) -> Result<CallSession, SignalError> {
        self.with_call(actor, id, |l, now| {
            let changed = l.session.accept(actor.user(), now)?;
            let mut out = Vec::new();
            if changed {
                if let Some(c) = &actor.conn {
                    l.devices.insert(actor.user().clone(), c.clone());
                }
                let ev = ServerEvent::CallAccept {
                    call_id: l.session.id.clone(),
                    from: actor.user().clone(),
                    call_session: l.session.clone(),
                };
                out.push((l.session.caller_id.clone(), Target::Device, ev));
                out.push((
                    actor.user().clone(),
                    Target::Others,
                    ServerEvent::CallAnsweredElsewhere { call_id: l.session.id.clone() },
                ));
            }
            Ok(out)
        })
    }

    /// `call-answer`: relays the SDP answer; a first answer also accepts.
    pub fn answer(&self, actor: &Actor, id: &CallId, sdp: String) -> Result<CallSession, SignalError> {
        self.with_call(actor, id, |l, now| {
            let mut out = Vec::new();
            let me = actor.user().clone();
            if me == l.session.callee_id && l.session.accept(&me, now)? {
                if let Some(c) = &actor.conn {
                    l.devices.insert(me.clone(), c.clone());
                }
                let ev = ServerEvent::CallAnsweredElsewhere { call_id: l.session.id.clone() };
                out.push((me.clone(), Target::Others, ev));
            }
            let other = l.session.other(&me).cloned().ok_or(CallError::NotFound)?;
            out.push((other, Target::Device, ServerEvent::CallAnswer { call_id: l.session.id.clone(), from: me, sdp }));
            Ok(out)
        })
    }

    /// Relay a candidate to the other party: `candidate` as the sender wrote
    /// it (the parser checked it against SPEC 4).
    pub fn ice_candidate(&self, actor: &Actor, id: &CallId, candidate: serde_json::Value) -> Result<(), SignalError> {
        self.relay(actor, id, |call_id, from| ServerEvent::IceCandidate { call_id, from, candidate })
    }

    pub fn sdp_update(&self, actor: &Actor, id: &CallId, sdp: String, sdp_type: SdpType) -> Result<(), SignalError> {
        self.relay(actor, id, |call_id, from| ServerEvent::CallSdpUpdate { call_id, from, sdp, sdp_type })
    }

    pub fn reject(&self, actor: &Actor, id: &CallId, why: Option<String>) -> Result<CallSession, SignalError> {
        self.with_call(actor, id, |l, now| {
            l.session.reject(actor.user(), now)?;
            let call_id = l.session.id.clone();
            Ok(vec![
                (
                    l.session.caller_id.clone(),
                    Target::All,
                    ServerEvent::CallReject { call_id: call_id.clone(), from: actor.user().clone(), reason: why },
                ),
                (actor.user().clone(), Target::Others, ended_event(&l.session)),
            ])
        })
    }

    pub fn hangup(&self, actor: &Actor, id: &CallId) -> Result<CallSession, SignalError> {
        self.with_call(actor, id, |l, now| {
            let why = l.session.hangup(actor.user(), now)?;
            let other = l.session.other(actor.user()).cloned().ok_or(CallError::NotFound)?;
            let ev = ServerEvent::CallHangup {
                call_id: l.session.id.clone(),
                from: actor.user().clone(),
                reason: why.into(),
            };
            Ok(vec![(other, Target::All, ev), (actor.user().clone(), Target::Others, ended_event(&l.session))])
        })
    }

    /// Mute/unmute or camera switch: stored on the participant, pushed to the
    /// other party as `call-participant-updated`.
    pub fn change_media(
        &self,
        actor: &Actor,
        id: &CallId,
        change: MediaChange,
    ) -> Result<CallParticipant, SignalError> {
        let mut updated = None;
        self.with_call(actor, id, |l, _| {
            if !l.session.is_party(actor.user()) {
                return Err(CallError::NotFound);
            }
            if l.session.status.is_final() {
                return Err(CallError::Final(l.session.status.as_str()));
            }
            let p = l.session.participant_mut(actor.user()).ok_or(CallError::NotFound)?;
            match &change {
                MediaChange::Audio(m) => p.audio_muted = *m,
                MediaChange::Video(m) => p.video_muted = *m,
                MediaChange::Camera { device_id, facing_mode } => {
                    p.camera = Camera { device_id: device_id.clone(), facing_mode: *facing_mode }
                }
            }
            let p = p.clone();
            updated = Some(p.clone());
            let other = l.session.other(actor.user()).cloned().ok_or(CallError::NotFound)?;
            let ev = ServerEvent::CallParticipantUpdated { call_id: l.session.id.clone(), participant: p };
            Ok(vec![(other, Target::All, ev)])
        })?;
        Ok(updated.expect("set on success"))
    }

    /// The room of a live `mode: "sfu"` call that `actor` is a party of:
    /// (call, room name, [caller, callee]).
    pub fn sfu_room(&self, actor: &Actor, room: &RoomId) -> Option<(CallId, Option<String>, [UserId; 2])> {
        let calls = self.live.lock();
        calls
            .values()
            .map(|l| &l.session)
            .find(|s| {
                &s.room_id == room
                    && s.mode == crate::model::CallMode::Sfu
                    && s.is_party(actor.user())
                    && !s.status.is_final()
            })
            .map(|s| (s.id.clone(), s.room_name.clone(), [s.caller_id.clone(), s.callee_id.clone()]))
    }

    /// The room of a live `mode: "sfu"` call.
    pub fn sfu_room_of(&self, id: &CallId) -> Option<RoomId> {
        let calls = self.live.lock();
        calls.get(id).filter(|l| l.session.mode == crate::model::CallMode::Sfu).map(|l| l.session.room_id.clone())
    }

    /// `call-stats`: keep the party's latest client-side stats.
    pub fn record_stats(&self, actor: &Actor, id: &CallId, stats: Vec<serde_json::Value>) -> Result<(), SignalError> {
        let mut calls = self.live.lock();
        let l = calls.get_mut(id).filter(|l| l.session.is_party(actor.user())).ok_or_else(not_found)?;
        let slot = l.stats.entry(actor.user().clone()).or_default();
        slot.1 = std::mem::replace(&mut slot.0, stats);
        let summary = client_summary(l);
        drop(calls);
        self.store.put_analytics(&super::room_analytics::key_call(id), &summary)?;
        Ok(())
    }

    /// A user's connection opened: a reconnect grace running for them stops.
    pub fn user_online(&self, user: &UserId) {
        self.timers.cancel(TimerKey::ReconnectGrace(user.clone()));
        for l in self.live.lock().values_mut() {
            if l.session.is_party(user) {
                l.seen_online.insert(user.clone());
            }
        }
    }

    /// A user's last connection closed: after the grace, their live calls end.
    pub fn user_offline(&self, user: &UserId) {
        self.timers.start(TimerKey::ReconnectGrace(user.clone()), self.reconnect_grace);
    }

    /// One of the call timers fired (the others are not ours).
    pub fn on_timer(&self, key: &TimerKey) {
        match key {
            TimerKey::RingTimeout(id) => self.on_ring_timeout(id),
            // A fire may cross the cancel of a reconnect, hence the check.
            TimerKey::ReconnectGrace(user) if !self.hub.is_online(user) => {
                self.end_calls_of(Some(user), reason::DISCONNECTED)
            }
            _ => {}
        }
    }

    /// End every live call (shutdown).
    pub fn end_all(&self, why: &str) {
        self.end_calls_of(None, why);
    }

    fn end_calls_of(&self, user: Option<&UserId>, why: &str) {
        let now = clock::now();
        let ids: Vec<CallId> = self
            .live
            .lock()
            .values()
            .filter(|l| user.is_none_or(|u| l.session.is_party(u) && l.seen_online.contains(u)))
            .map(|l| l.session.id.clone())
            .collect();
        for id in ids {
            let _ = self.server_transition(&id, |s| s.end(why, now));
        }
    }

    fn on_ring_timeout(&self, id: &CallId) {
        let now = clock::now();
        let _ = self.server_transition(id, |s| {
            if s.status == CallStatus::Ringing {
                s.miss(now)
            } else {
                Err(CallError::Conflict("not ringing"))
            }
        });
    }

    /// A transition the server makes on its own: `call-ended` to both parties.
    fn server_transition(
        &self,
        id: &CallId,
        f: impl FnOnce(&mut CallSession) -> Result<(), CallError>,
    ) -> Result<(), SignalError> {
        let mut calls = self.live.lock();
        let Some(l) = calls.get_mut(id) else { return Ok(()) };
        f(&mut l.session)?;
        self.store.put_call(&l.session)?;
        let ev = ended_event(&l.session);
        for u in [&l.session.caller_id, &l.session.callee_id] {
            self.hub.send(u, To::All, &ev);
        }
        self.retire(&mut calls, id);
        Ok(())
    }

    /// Run a user action on a live call: persist, send its events, retire the
    /// call when it reached a final state.
    fn with_call(
        &self,
        actor: &Actor,
        id: &CallId,
        f: impl FnOnce(&mut LiveCall, clock::Timestamp) -> Result<Vec<(UserId, Target, ServerEvent)>, CallError>,
    ) -> Result<CallSession, SignalError> {
        let now = clock::now();
        let mut calls = self.live.lock();
        let Some(l) = calls.get_mut(id) else {
            // Not live: a final call (409 for its parties) or nothing (404).
            return match self.store.get_call(id)? {
                Some(c) if c.is_party(actor.user()) || actor.is_admin() => {
                    Err(CallError::Final(c.status.as_str()).into())
                }
                _ => Err(not_found()),
            };
        };
        if !l.session.is_party(actor.user()) {
            return Err(not_found());
        }
        let before = l.session.clone();
        let events = match f(l, now) {
            Ok(ev) => ev,
            Err(e) => {
                l.session = before;
                return Err(e.into());
            }
        };
        if l.session != before {
            if let Err(e) = self.store.put_call(&l.session) {
                l.session = before;
                return Err(e.into());
            }
        }
        for (user, target, ev) in &events {
            self.deliver(l, user, *target, actor.conn.as_ref(), ev);
        }
        let session = l.session.as_of(now);
        if session.status.is_final() {
            self.retire(&mut calls, id);
        }
        Ok(session)
    }

    fn relay(
        &self,
        actor: &Actor,
        id: &CallId,
        make: impl FnOnce(CallId, UserId) -> ServerEvent,
    ) -> Result<(), SignalError> {
        self.with_call(actor, id, |l, _| {
            let other = l.session.other(actor.user()).cloned().ok_or(CallError::NotFound)?;
            Ok(vec![(other, Target::Device, make(l.session.id.clone(), actor.user().clone()))])
        })
        .map(|_| ())
    }

    fn deliver(&self, l: &LiveCall, user: &UserId, target: Target, actor_conn: Option<&ConnId>, ev: &ServerEvent) {
        let to = match target {
            Target::All => To::All,
            Target::Others => To::AllExcept(actor_conn),
            Target::Device => match l.devices.get(user) {
                Some(c) if self.hub.has_conn(user, c) => To::Only(c),
                _ => To::All,
            },
        };
        self.hub.send(user, to, ev);
    }

    fn retire(&self, calls: &mut HashMap<CallId, LiveCall>, id: &CallId) {
        self.timers.cancel(TimerKey::RingTimeout(id.clone()));
        if let Some(l) = calls.remove(id) {
            self.metrics.calls_total.with_label_values(&[l.session.status.as_str()]).inc();
        }
        self.metrics.calls_active.set(calls.len() as i64);
    }
}

/// Where an event for one user goes.
#[derive(Clone, Copy)]
enum Target {
    /// Every connection of the user.
    All,
    /// The user's connection bound to this call, or all when none is bound.
    Device,
    /// Every connection but the acting one (other devices of the actor).
    Others,
}

fn ended_event(s: &CallSession) -> ServerEvent {
    ServerEvent::CallEnded { call_id: s.id.clone(), status: s.status, end_reason: s.end_reason.clone() }
}

fn not_found() -> SignalError {
    SignalError::NotFound("call not found".into())
}

fn visible<'a>(actor: &Actor, c: &'a CallSession) -> Result<&'a CallSession, SignalError> {
    if c.is_party(actor.user()) || actor.is_admin() {
        Ok(c)
    } else {
        Err(not_found())
    }
}

pub fn validate_user_id(field: &str, id: &UserId) -> Result<(), SignalError> {
    let s = id.as_str();
    if s.is_empty() || s.len() > MAX_ID_LEN || s.chars().any(char::is_control) {
        return Err(SignalError::BadRequest(format!("{field}: 1 to {MAX_ID_LEN} printable characters")));
    }
    Ok(())
}

/// SPEC 8 analytics of a P2P call from its parties' `call-stats`
/// (`source: "client"`); a sample at most every 4 s.
fn client_summary(l: &mut LiveCall) -> serde_json::Value {
    use crate::analytics::report::{self, Quality, MAX_SAMPLES};
    let mut participants = Vec::new();
    let mut scores = Vec::new();
    let mut dirs = Vec::new();
    for user in [&l.session.caller_id, &l.session.callee_id] {
        let Some((stats, previous)) = l.stats.get(user) else { continue };
        let (publish, subscribe) = report::client_streams(stats, previous);
        let quality = report::participant_quality(&publish, &subscribe);
        if let Some(q) = quality {
            scores.push(q.score);
        }
        participants.push(serde_json::json!({
            "userId": user, "peerId": null, "quality": quality, "publish": publish, "subscribe": subscribe,
        }));
        dirs.push((publish, subscribe));
    }
    let score = crate::analytics::score::call_score(&scores);
    let now = std::time::Instant::now();
    if let Some(score) = score {
        if l.last_sample.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(4)) {
            l.last_sample = Some(now);
            let refs: Vec<_> = dirs.iter().map(|(p, s)| (p, s)).collect();
            let at = clock::now().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
            l.samples.push_back(report::sample(at, score, &refs));
            while l.samples.len() > MAX_SAMPLES {
                l.samples.pop_front();
            }
        }
    }
    let s = &l.session;
    serde_json::json!({
        "callId": s.id,
        "roomId": s.room_id,
        "source": "client",
        "status": s.status,
        "duration": s.duration,
        "setupTimeMs": s.answered_at.map(|a| clock::seconds_between(s.created_at, a) * 1000.0),
        "quality": score.map(Quality::of),
        "participants": participants,
        "samples": l.samples,
    })
}
