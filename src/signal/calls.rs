//! The call service: live 1:1 calls in memory, every change persisted, events
//! to both parties' connections, and the call timers (ring timeout, reconnect
//! grace) set in the [`super::timers`] scheduler and handled in [`CallService::on_timer`].
//!
//! REST handlers and `/rtc` sessions call the same methods, so a REST action
//! emits the same events as its WebSocket twin.
//!
//! Each action is decided by the pure [`Call`] on a copy of the live call and
//! comes back as [`Effect`]s, which [`Outlets::carry_out`] performs: the
//! write first, then the commit to memory, then the hub and the timers. The
//! service lock (`live`) is held only to read and to commit; what orders one
//! call's actions (and their events) is that call's own gate, so no other call
//! waits on its store write. (In a cluster that gate is where a per-call lock
//! or compare-and-set in the shared store goes.)

use super::call::{self, reason, Call, CallError};
use super::effects::{Effect, Outlets};
use super::hub::Hub;
use super::messages::{SdpType, ServerEvent};
use super::timers::{TimerKey, Timers};
use super::{Actor, SignalError};
use crate::clock;
use crate::ids::{CallId, RoomId, UserId};
use crate::metrics::Metrics;
use crate::model::{CallMode, CallParticipant, CallSession, CallType};
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

pub use super::call::MediaChange;

struct LiveCall {
    /// What the call's actions decide on.
    call: Call,
    /// Taken for the whole of one action on this call (decide, write, send),
    /// so its steps reach the store and the clients in the order they were
    /// decided. Only this call's actions wait on it. An async mutex: it is
    /// held across the store write.
    gate: Arc<tokio::sync::Mutex<()>>,
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
    out: Outlets,
    metrics: Metrics,
    ring_timeout: Duration,
    reconnect_grace: Duration,
    /// The service lock: held only to read or commit a call, never across a
    /// store write or a send.
    live: Mutex<HashMap<CallId, LiveCall>>,
    /// In a cluster: where each live call is held (this node, for the calls
    /// it creates), so the other nodes relay their parties' actions here.
    placement: Option<Arc<dyn super::placement::Placement>>,
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
        placement: Option<Arc<dyn super::placement::Placement>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            out: Outlets { store, hub, timers },
            metrics,
            ring_timeout,
            reconnect_grace,
            live: Mutex::new(HashMap::new()),
            placement,
        })
    }

    /// In a cluster, the node holding `id` when it is not this one (`None`
    /// here, alone, or when no node holds it: the action then fails here as
    /// for any call that is not live).
    pub async fn held_elsewhere(&self, id: &CallId) -> Result<Option<crate::ids::NodeId>, SignalError> {
        let Some(placement) = &self.placement else { return Ok(None) };
        if self.live.lock().contains_key(id) {
            return Ok(None);
        }
        Ok(placement.call_owner(id).await?)
    }

    /// Settle calls that were live when the previous process died: their media
    /// is gone, so they end with `server-restart`.
    pub async fn recover(&self) -> Result<usize, SignalError> {
        let now = clock::now();
        let live = self.out.store.live_calls().await?;
        for mut c in live.iter().cloned() {
            c.end(reason::SERVER_RESTART, now)?;
            self.out.store.put_call(&c).await?;
        }
        Ok(live.len())
    }

    pub async fn create(&self, actor: &Actor, req: NewCall) -> Result<CallSession, SignalError> {
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
        let (call, effects) = Call::start(session.clone(), actor.conn.as_ref(), req.sdp, self.ring_timeout);
        let mut live = LiveCall {
            call,
            gate: Arc::default(),
            seen_online: HashSet::new(),
            stats: HashMap::new(),
            samples: Default::default(),
            last_sample: None,
        };
        for u in [&req.caller_id, &req.callee_id] {
            if self.out.hub.is_online(u) {
                live.seen_online.insert(u.clone());
            }
        }
        // Recorded before anyone hears of the call, so that a party on
        // another node who answers at once finds it.
        if let Some(placement) = &self.placement {
            placement.own_call(&session.id).await?;
        }
        self.out
            .carry_out(effects, || {
                let mut calls = self.live.lock();
                calls.insert(session.id.clone(), live);
                self.metrics.calls_active.set(calls.len() as i64);
            })
            .await?;
        Ok(session)
    }

    /// A call as `actor` may see it: parties and admins only; strangers get
    /// not-found so that call ids do not leak.
    pub async fn get(&self, actor: &Actor, id: &CallId) -> Result<CallSession, SignalError> {
        let now = clock::now();
        let live = self.live.lock().get(id).map(|l| l.call.session.clone());
        if let Some(s) = live {
            return visible(actor, &s).map(|c| c.as_of(now));
        }
        match self.out.store.get_call(id).await? {
            Some(c) => visible(actor, &c).map(|c| c.as_of(now)),
            None => Err(not_found()),
        }
    }

    pub async fn history(&self, actor: &Actor, mut q: HistoryQuery) -> Result<HistoryPage, SignalError> {
        match (&q.user, actor.is_admin()) {
            (Some(u), false) if u != actor.user() => {
                return Err(SignalError::Forbidden("userId: only admins may read another user's history".into()))
            }
            (None, false) => q.user = Some(actor.user().clone()),
            _ => {}
        }
        let now = clock::now();
        let mut page = self.out.store.history(&q).await?;
        for c in &mut page.calls {
            *c = c.as_of(now);
        }
        Ok(page)
    }

    /// Callee accepts (REST `accept` or `call-accept`).
    pub async fn accept(&self, actor: &Actor, id: &CallId) -> Result<CallSession, SignalError> {
        self.with_call(actor, id, |c, now| c.accept(actor.user(), actor.conn.as_ref(), now)).await
    }

    /// `call-answer`: relays the SDP answer; a first answer also accepts.
    pub async fn answer(&self, actor: &Actor, id: &CallId, sdp: String) -> Result<CallSession, SignalError> {
        self.with_call(actor, id, |c, now| c.answer(actor.user(), actor.conn.as_ref(), sdp, now)).await
    }

    /// Relay a candidate to the other party: `candidate` as the sender wrote
    /// it (the parser checked it against SPEC 4).
    pub async fn ice_candidate(
        &self,
        actor: &Actor,
        id: &CallId,
        candidate: serde_json::Value,
    ) -> Result<(), SignalError> {
        self.relay(actor, id, |call_id, from| ServerEvent::IceCandidate { call_id, from, candidate }).await
    }

    pub async fn sdp_update(
        &self,
        actor: &Actor,
        id: &CallId,
        sdp: String,
        sdp_type: SdpType,
    ) -> Result<(), SignalError> {
        self.relay(actor, id, |call_id, from| ServerEvent::CallSdpUpdate { call_id, from, sdp, sdp_type }).await
    }

    pub async fn reject(&self, actor: &Actor, id: &CallId, why: Option<String>) -> Result<CallSession, SignalError> {
        self.with_call(actor, id, |c, now| c.reject(actor.user(), actor.conn.as_ref(), why, now)).await
    }

    pub async fn hangup(&self, actor: &Actor, id: &CallId) -> Result<CallSession, SignalError> {
        self.with_call(actor, id, |c, now| c.hangup(actor.user(), actor.conn.as_ref(), now)).await
    }

    /// Mute/unmute or camera switch: stored on the participant, pushed to the
    /// other party as `call-participant-updated`.
    pub async fn change_media(
        &self,
        actor: &Actor,
        id: &CallId,
        change: MediaChange,
    ) -> Result<CallParticipant, SignalError> {
        let session = self.with_call(actor, id, |c, _| c.change_media(actor.user(), &change)).await?;
        session.participant(actor.user()).cloned().ok_or_else(not_found)
    }

    /// The room of a live `mode: "sfu"` call that `actor` is a party of:
    /// (call, room name, [caller, callee]).
    pub fn sfu_room(&self, actor: &Actor, room: &RoomId) -> Option<(CallId, Option<String>, [UserId; 2])> {
        let calls = self.live.lock();
        calls
            .values()
            .map(|l| &l.call.session)
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
        calls
            .get(id)
            .filter(|l| l.call.session.mode == crate::model::CallMode::Sfu)
            .map(|l| l.call.session.room_id.clone())
    }

    /// `call-stats`: keep the party's latest client-side stats.
    pub async fn record_stats(
        &self,
        actor: &Actor,
        id: &CallId,
        stats: Vec<serde_json::Value>,
    ) -> Result<(), SignalError> {
        let summary = {
            let mut calls = self.live.lock();
            let l = calls.get_mut(id).filter(|l| l.call.session.is_party(actor.user())).ok_or_else(not_found)?;
            let slot = l.stats.entry(actor.user().clone()).or_default();
            slot.1 = std::mem::replace(&mut slot.0, stats);
            client_summary(l)
        };
        self.out.store.put_analytics(&super::room_analytics::key_call(id), &summary.to_json()).await?;
        Ok(())
    }

    /// Hold calls another node held until it went away (SPEC 13): read from
    /// the store, live here from now on, a ringing one's timeout set for what
    /// was left of it (at once, when that has passed). Their parties'
    /// sockets were on the node that went; they find the call here through
    /// its node record when they act on it.
    pub async fn adopt(&self, ids: Vec<CallId>) {
        for id in ids {
            let session = match self.out.store.get_call(&id).await {
                Ok(Some(s)) if !s.status.is_final() => s,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(call = %id, error = %e, "cluster: could not read a call taken over");
                    continue;
                }
            };
            let ringing_left = (session.status == crate::model::CallStatus::Ringing).then(|| {
                let rang = clock::seconds_between(session.created_at, clock::now()).max(0.0);
                self.ring_timeout.saturating_sub(Duration::from_secs_f64(rang))
            });
            let gone: Vec<UserId>;
            {
                let mut calls = self.live.lock();
                if calls.contains_key(&id) {
                    continue;
                }
                // The reconnect grace applies to the parties with a socket
                // now, and to both parties of an accepted call: one with no
                // socket anywhere had them on the node that went (its grace
                // starts below). A ringing callee never seen online is left
                // to the ring timeout.
                let parties = [&session.caller_id, &session.callee_id];
                let accepted = session.status == crate::model::CallStatus::Active;
                gone = parties.into_iter().filter(|u| accepted && !self.out.hub.is_online(u)).cloned().collect();
                let seen_online =
                    parties.into_iter().filter(|u| self.out.hub.is_online(u) || gone.contains(*u)).cloned().collect();
                calls.insert(
                    id.clone(),
                    LiveCall {
                        call: Call { session, devices: HashMap::new() },
                        gate: Arc::default(),
                        seen_online,
                        stats: HashMap::new(),
                        samples: Default::default(),
                        last_sample: None,
                    },
                );
                self.metrics.calls_active.set(calls.len() as i64);
            }
            if let Some(left) = ringing_left {
                self.out.timers.start(TimerKey::RingTimeout(id.clone()), left);
            }
            for user in &gone {
                self.user_offline(user);
            }
            tracing::info!(call = %id, "cluster: holding a call whose node is gone");
        }
    }

    /// A user's connection opened: a reconnect grace running for them stops.
    pub fn user_online(&self, user: &UserId) {
        self.out.timers.cancel(TimerKey::ReconnectGrace(user.clone()));
        for l in self.live.lock().values_mut() {
            if l.call.session.is_party(user) {
                l.seen_online.insert(user.clone());
            }
        }
    }

    /// A user's last connection closed: after the grace, their live calls end.
    pub fn user_offline(&self, user: &UserId) {
        self.out.timers.start(TimerKey::ReconnectGrace(user.clone()), self.reconnect_grace);
    }

    /// One of the call timers fired (the others are not ours).
    pub async fn on_timer(&self, key: &TimerKey) {
        match key {
            TimerKey::RingTimeout(id) => self.on_ring_timeout(id).await,
            // A fire may cross the cancel of a reconnect, hence the check.
            TimerKey::ReconnectGrace(user) if !self.out.hub.is_online(user) => {
                self.end_calls_of(Some(user), reason::DISCONNECTED).await
            }
            _ => {}
        }
    }

    /// End every live call (shutdown).
    pub async fn end_all(&self, why: &str) {
        self.end_calls_of(None, why).await;
    }

    async fn end_calls_of(&self, user: Option<&UserId>, why: &str) {
        let ids: Vec<CallId> = self
            .live
            .lock()
            .values()
            .filter(|l| user.is_none_or(|u| l.call.session.is_party(u) && l.seen_online.contains(u)))
            .map(|l| l.call.session.id.clone())
            .collect();
        for id in ids {
            self.server_transition(&id, why).await;
        }
    }

    async fn on_ring_timeout(&self, id: &CallId) {
        let _ = self.transition(id, None, |c, now| c.ring_timeout(now)).await;
    }

    /// A transition the server makes on its own: `call-ended` to both parties.
    async fn server_transition(&self, id: &CallId, why: &str) {
        let _ = self.transition(id, None, |c, now| c.end(why, now)).await;
    }

    /// Run a party's action on a live call.
    async fn with_call(
        &self,
        actor: &Actor,
        id: &CallId,
        f: impl FnOnce(&mut Call, clock::Timestamp) -> Result<Vec<Effect>, CallError>,
    ) -> Result<CallSession, SignalError> {
        self.transition(id, Some(actor), f).await
    }

    /// One action on a live call (by `party`, or by the server when `None`):
    /// decided on a copy of the call, its effects carried out (the store
    /// first; a failed write changes nothing), committed, then sent. Only the
    /// call's own gate is held throughout; the service lock is taken to read
    /// and to commit. A call that reached a final state is retired.
    async fn transition(
        &self,
        id: &CallId,
        party: Option<&Actor>,
        f: impl FnOnce(&mut Call, clock::Timestamp) -> Result<Vec<Effect>, CallError>,
    ) -> Result<CallSession, SignalError> {
        let gate = self.live.lock().get(id).map(|l| Arc::clone(&l.gate));
        let Some(gate) = gate else { return Err(self.not_live(party, id).await) };
        let _turn = gate.lock().await;
        let call = self.live.lock().get(id).map(|l| l.call.clone());
        // None: retired by the action we waited for.
        let Some(mut call) = call else { return Err(self.not_live(party, id).await) };
        if party.is_some_and(|a| !call.session.is_party(a.user())) {
            return Err(not_found());
        }
        let now = clock::now();
        let effects = f(&mut call, now)?;
        let session = call.session.as_of(now);
        self.out
            .carry_out(effects, || {
                let mut calls = self.live.lock();
                if let Some(l) = calls.get_mut(id) {
                    l.call = call;
                }
                if session.status.is_final() {
                    self.retire(&mut calls, id);
                }
            })
            .await?;
        Ok(session)
    }

    /// The error for an action on a call that is not live: a final call is
    /// 409 for its parties (and admins), anything else 404.
    async fn not_live(&self, party: Option<&Actor>, id: &CallId) -> SignalError {
        let Some(actor) = party else { return not_found() };
        match self.out.store.get_call(id).await {
            Ok(Some(c)) if c.is_party(actor.user()) || actor.is_admin() => CallError::Final(c.status.as_str()).into(),
            Ok(_) => not_found(),
            Err(e) => e.into(),
        }
    }

    async fn relay(
        &self,
        actor: &Actor,
        id: &CallId,
        make: impl FnOnce(CallId, UserId) -> ServerEvent,
    ) -> Result<(), SignalError> {
        self.with_call(actor, id, |c, _| c.relay(actor.user(), make)).await.map(|_| ())
    }

    fn retire(&self, calls: &mut HashMap<CallId, LiveCall>, id: &CallId) {
        if let Some(l) = calls.remove(id) {
            self.metrics.calls_total.with_label_values(&[l.call.session.status.as_str()]).inc();
        }
        self.metrics.calls_active.set(calls.len() as i64);
    }
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
fn client_summary(l: &mut LiveCall) -> crate::analytics::report::Analytics {
    use crate::analytics::report::{self, Analytics, ParticipantReport, Quality, Source, MAX_SAMPLES};
    let at =
        |t: Option<clock::Timestamp>| t.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
    let mut participants = Vec::new();
    let mut scores = Vec::new();
    let mut dirs = Vec::new();
    for user in [&l.call.session.caller_id, &l.call.session.callee_id] {
        let Some((stats, previous)) = l.stats.get(user) else { continue };
        let (publish, subscribe) = report::client_streams(stats, previous);
        let quality = report::participant_quality(&publish, &subscribe);
        if let Some(q) = quality {
            scores.push(q.score);
        }
        let party = l.call.session.participant(user);
        participants.push(ParticipantReport {
            user_id: user.clone(),
            peer_id: None,
            joined_at: at(party.and_then(|p| p.joined_at)),
            left_at: at(party.and_then(|p| p.left_at)),
            quality,
            publish: publish.clone(),
            subscribe: subscribe.clone(),
            bandwidth_estimate_kbps: None,
        });
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
    let s = &l.call.session;
    Analytics {
        call_id: Some(s.id.clone()),
        room_id: s.room_id.clone(),
        source: Source::Client,
        status: s.status.as_str().into(),
        started_at: None,
        duration: s.duration,
        setup_time_ms: s.answered_at.map(|a| clock::seconds_between(s.created_at, a) * 1000.0),
        quality: score.map(Quality::of),
        participants,
        samples: l.samples.iter().cloned().collect(),
    }
}
