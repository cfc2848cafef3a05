//! The call state machine, without I/O: a [`CallSession`] takes an action, the
//! acting user and `now`, and either changes state or says why it cannot.
//!
//! ```text
//! ringing ──accept/answer──▶ active ──hangup──▶ ended
//!    │ reject ─▶ rejected       └─ disconnect/shutdown ─▶ ended
//!    │ caller hangup ─▶ ended (canceled)
//!    └ ring timeout ─▶ missed
//! ```
//! Final states (`ended`, `rejected`, `missed`) accept nothing: [`CallError::Final`].
//!
//! A [`Call`] (the session and the connection each party uses for it) runs the
//! SPEC 4 actions on top of that and returns what to do as
//! [`Effect`]s: persist the call, notify these users, start or cancel this
//! timer. The service carries them out; nothing here sends or writes.

use super::effects::{Effect, Via};
use super::messages::ServerEvent;
use super::timers::TimerKey;
use crate::clock::{seconds_between, Timestamp};
use crate::ids::{CallId, ConnId, RoomId, UserId};
use crate::model::{CallMode, CallParticipant, CallSession, CallStatus, CallType, Camera, FacingMode};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CallError {
    #[error("call not found")]
    NotFound,
    #[error("only the {0} may do this")]
    NotAllowed(&'static str),
    #[error("the call is already {0}")]
    Final(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
}

/// Why a call ended, as `endReason` shows it.
pub mod reason {
    pub const HANGUP: &str = "hangup";
    pub const CANCELED: &str = "canceled";
    pub const REJECTED: &str = "rejected";
    pub const TIMEOUT: &str = "timeout";
    pub const DISCONNECTED: &str = "disconnected";
    pub const SERVER_SHUTDOWN: &str = "server-shutdown";
    pub const SERVER_RESTART: &str = "server-restart";
}

fn participant(user: UserId) -> CallParticipant {
    CallParticipant {
        user_id: user,
        audio_muted: false,
        video_muted: false,
        camera: Camera::default(),
        joined_at: None,
        left_at: None,
    }
}

/// A new ringing call. (Eight plain values read better here than a one-use struct.)
#[allow(clippy::too_many_arguments)]
pub fn new_call(
    id: CallId,
    caller: UserId,
    callee: UserId,
    call_type: CallType,
    mode: CallMode,
    room_id: RoomId,
    room_name: Option<String>,
    now: Timestamp,
) -> CallSession {
    let mut caller_p = participant(caller.clone());
    caller_p.joined_at = Some(now);
    CallSession {
        id,
        caller_id: caller,
        callee_id: callee.clone(),
        call_type,
        mode,
        status: CallStatus::Ringing,
        room_id,
        room_name,
        created_at: now,
        answered_at: None,
        ended_at: None,
        end_reason: None,
        duration: 0.0,
        participants: vec![caller_p, participant(callee)],
    }
}

impl CallSession {
    pub fn is_party(&self, user: &UserId) -> bool {
        &self.caller_id == user || &self.callee_id == user
    }

    /// The other party, if `user` is one.
    pub fn other(&self, user: &UserId) -> Option<&UserId> {
        if &self.caller_id == user {
            Some(&self.callee_id)
        } else if &self.callee_id == user {
            Some(&self.caller_id)
        } else {
            None
        }
    }

    pub fn participant_mut(&mut self, user: &UserId) -> Option<&mut CallParticipant> {
        self.participants.iter_mut().find(|p| &p.user_id == user)
    }

    pub fn participant(&self, user: &UserId) -> Option<&CallParticipant> {
        self.participants.iter().find(|p| &p.user_id == user)
    }

    fn check_live(&self) -> Result<(), CallError> {
        if self.status.is_final() {
            Err(CallError::Final(self.status.as_str()))
        } else {
            Ok(())
        }
    }

    /// The callee accepts (REST accept, `call-accept`, or a first `call-answer`).
    /// Accepting an active call again is a no-op, so a late `call-answer` after
    /// `call-accept` is fine. Returns whether the state changed.
    pub fn accept(&mut self, by: &UserId, now: Timestamp) -> Result<bool, CallError> {
        if by != &self.callee_id {
            return Err(CallError::NotAllowed("callee"));
        }
        self.check_live()?;
        if self.status == CallStatus::Active {
            return Ok(false);
        }
        self.status = CallStatus::Active;
        self.answered_at = Some(now);
        if let Some(p) = self.participant_mut(by) {
            p.joined_at = Some(now);
        }
        Ok(true)
    }

    pub fn reject(&mut self, by: &UserId, now: Timestamp) -> Result<(), CallError> {
        if by != &self.callee_id {
            return Err(CallError::NotAllowed("callee"));
        }
        self.check_live()?;
        if self.status == CallStatus::Active {
            return Err(CallError::Conflict("an active call cannot be rejected; hang up instead"));
        }
        self.finish(CallStatus::Rejected, reason::REJECTED, now);
        Ok(())
    }

    /// Either party hangs up; a caller hanging up while ringing cancels.
    /// Returns the reason recorded.
    pub fn hangup(&mut self, by: &UserId, now: Timestamp) -> Result<&'static str, CallError> {
        if !self.is_party(by) {
            return Err(CallError::NotFound);
        }
        self.check_live()?;
        let why = if self.status == CallStatus::Ringing { reason::CANCELED } else { reason::HANGUP };
        self.finish(CallStatus::Ended, why, now);
        Ok(why)
    }

    /// No answer in time. Only a ringing call can be missed.
    pub fn miss(&mut self, now: Timestamp) -> Result<(), CallError> {
        self.check_live()?;
        if self.status != CallStatus::Ringing {
            return Err(CallError::Conflict("only a ringing call can be missed"));
        }
        self.finish(CallStatus::Missed, reason::TIMEOUT, now);
        Ok(())
    }

    /// End a live call for a server reason (disconnect, shutdown, restart).
    pub fn end(&mut self, why: &str, now: Timestamp) -> Result<(), CallError> {
        self.check_live()?;
        self.finish(CallStatus::Ended, why, now);
        Ok(())
    }

    fn finish(&mut self, status: CallStatus, why: &str, now: Timestamp) {
        self.status = status;
        self.ended_at = Some(now);
        self.end_reason = Some(why.to_owned());
        self.duration = self.answered_at.map(|a| seconds_between(a, now)).unwrap_or(0.0);
        for p in &mut self.participants {
            if p.joined_at.is_some() && p.left_at.is_none() {
                p.left_at = Some(now);
            }
        }
    }

    /// A copy with `duration` as of `now` (it grows while the call is active).
    pub fn as_of(&self, now: Timestamp) -> CallSession {
        let mut c = self.clone();
        if c.status == CallStatus::Active {
            c.duration = c.answered_at.map(|a| seconds_between(a, now)).unwrap_or(0.0);
        }
        c
    }
}

/// A mute or camera change.
#[derive(Clone, Debug)]
pub enum MediaChange {
    Audio(bool),
    Video(bool),
    Camera { device_id: Option<String>, facing_mode: Option<FacingMode> },
}

/// A live call as its actions see it.
#[derive(Clone, Debug)]
pub struct Call {
    pub session: CallSession,
    /// The connection each party uses for this call (the caller's initiating
    /// socket, the callee's accepting one). Relayed events go there only.
    pub devices: HashMap<UserId, ConnId>,
}

impl Call {
    /// A new ringing call: persist it, ring the callee's every connection,
    /// and start the ring timeout.
    pub fn start(
        session: CallSession,
        caller_conn: Option<&ConnId>,
        sdp: Option<String>,
        ring_timeout: Duration,
    ) -> (Call, Vec<Effect>) {
        let mut devices = HashMap::new();
        if let Some(c) = caller_conn {
            devices.insert(session.caller_id.clone(), c.clone());
        }
        let s = &session;
        let effects = vec![
            Effect::Persist(s.clone()),
            Effect::Notify {
                to: s.callee_id.clone(),
                via: Via::All,
                event: ServerEvent::CallInitiate {
                    call_id: s.id.clone(),
                    from: s.caller_id.clone(),
                    call_type: s.call_type,
                    sdp,
                    call_session: s.clone(),
                },
            },
            Effect::StartTimer(TimerKey::RingTimeout(s.id.clone()), ring_timeout),
        ];
        (Call { session, devices }, effects)
    }

    /// Run one action: `f` changes the call and lists its notifications; a
    /// changed session is persisted first, and a call that stopped ringing
    /// cancels its ring timeout. On error the call is as it was.
    fn step(&mut self, f: impl FnOnce(&mut Call) -> Result<Vec<Effect>, CallError>) -> Result<Vec<Effect>, CallError> {
        let before = self.clone();
        let notes = match f(self) {
            Ok(n) => n,
            Err(e) => {
                *self = before;
                return Err(e);
            }
        };
        let mut effects = Vec::with_capacity(notes.len() + 2);
        if self.session != before.session {
            effects.push(Effect::Persist(self.session.clone()));
        }
        if before.session.status == CallStatus::Ringing && self.session.status != CallStatus::Ringing {
            effects.push(Effect::CancelTimer(TimerKey::RingTimeout(self.session.id.clone())));
        }
        effects.extend(notes);
        Ok(effects)
    }

    fn device(&self, user: &UserId) -> Via {
        Via::Device(self.devices.get(user).cloned())
    }

    fn other_of(&self, user: &UserId) -> Result<UserId, CallError> {
        self.session.other(user).cloned().ok_or(CallError::NotFound)
    }

    fn ended(&self) -> ServerEvent {
        let s = &self.session;
        ServerEvent::CallEnded { call_id: s.id.clone(), status: s.status, end_reason: s.end_reason.clone() }
    }

    /// `call-ended` to every connection of both parties.
    fn ended_to_both(&self) -> Vec<Effect> {
        let ev = self.ended();
        [&self.session.caller_id, &self.session.callee_id]
            .into_iter()
            .map(|u| Effect::Notify { to: u.clone(), via: Via::All, event: ev.clone() })
            .collect()
    }

    /// The callee accepts (REST accept or `call-accept`) from `conn`.
    pub fn accept(&mut self, by: &UserId, conn: Option<&ConnId>, now: Timestamp) -> Result<Vec<Effect>, CallError> {
        self.step(|c| {
            if !c.session.accept(by, now)? {
                return Ok(Vec::new());
            }
            if let Some(conn) = conn {
                c.devices.insert(by.clone(), conn.clone());
            }
            let s = &c.session;
            let accept = ServerEvent::CallAccept { call_id: s.id.clone(), from: by.clone(), call_session: s.clone() };
            Ok(vec![
                Effect::Notify { to: s.caller_id.clone(), via: c.device(&s.caller_id), event: accept },
                Effect::Notify {
                    to: by.clone(),
                    via: Via::AllExcept(conn.cloned()),
                    event: ServerEvent::CallAnsweredElsewhere { call_id: s.id.clone() },
                },
            ])
        })
    }

    /// `call-answer`: relays the SDP answer; the callee's first answer also accepts.
    pub fn answer(
        &mut self,
        by: &UserId,
        conn: Option<&ConnId>,
        sdp: String,
        now: Timestamp,
    ) -> Result<Vec<Effect>, CallError> {
        self.step(|c| {
            let mut out = Vec::new();
            if by == &c.session.callee_id && c.session.accept(by, now)? {
                if let Some(conn) = conn {
                    c.devices.insert(by.clone(), conn.clone());
                }
                let event = ServerEvent::CallAnsweredElsewhere { call_id: c.session.id.clone() };
                out.push(Effect::Notify { to: by.clone(), via: Via::AllExcept(conn.cloned()), event });
            }
            let other = c.other_of(by)?;
            let event = ServerEvent::CallAnswer { call_id: c.session.id.clone(), from: by.clone(), sdp };
            out.push(Effect::Notify { via: c.device(&other), to: other, event });
            Ok(out)
        })
    }

    /// Relay an event (`ice-candidate`, `call-sdp-update`) to the other
    /// party's device for this call.
    pub fn relay(
        &mut self,
        by: &UserId,
        make: impl FnOnce(CallId, UserId) -> ServerEvent,
    ) -> Result<Vec<Effect>, CallError> {
        self.step(|c| {
            let other = c.other_of(by)?;
            let event = make(c.session.id.clone(), by.clone());
            Ok(vec![Effect::Notify { via: c.device(&other), to: other, event }])
        })
    }

    pub fn reject(
        &mut self,
        by: &UserId,
        conn: Option<&ConnId>,
        why: Option<String>,
        now: Timestamp,
    ) -> Result<Vec<Effect>, CallError> {
        self.step(|c| {
            c.session.reject(by, now)?;
            let s = &c.session;
            let event = ServerEvent::CallReject { call_id: s.id.clone(), from: by.clone(), reason: why };
            Ok(vec![
                Effect::Notify { to: s.caller_id.clone(), via: Via::All, event },
                Effect::Notify { to: by.clone(), via: Via::AllExcept(conn.cloned()), event: c.ended() },
            ])
        })
    }

    pub fn hangup(&mut self, by: &UserId, conn: Option<&ConnId>, now: Timestamp) -> Result<Vec<Effect>, CallError> {
        self.step(|c| {
            let why = c.session.hangup(by, now)?;
            let other = c.other_of(by)?;
            let event = ServerEvent::CallHangup { call_id: c.session.id.clone(), from: by.clone(), reason: why.into() };
            Ok(vec![
                Effect::Notify { to: other, via: Via::All, event },
                Effect::Notify { to: by.clone(), via: Via::AllExcept(conn.cloned()), event: c.ended() },
            ])
        })
    }

    /// Mute/unmute or camera switch: stored on the participant, pushed to the
    /// other party as `call-participant-updated` (even when nothing changed).
    pub fn change_media(&mut self, by: &UserId, change: &MediaChange) -> Result<Vec<Effect>, CallError> {
        self.step(|c| {
            c.session.check_live()?;
            let p = c.session.participant_mut(by).ok_or(CallError::NotFound)?;
            match change {
                MediaChange::Audio(m) => p.audio_muted = *m,
                MediaChange::Video(m) => p.video_muted = *m,
                MediaChange::Camera { device_id, facing_mode } => {
                    p.camera = Camera { device_id: device_id.clone(), facing_mode: *facing_mode }
                }
            }
            let participant = p.clone();
            let other = c.other_of(by)?;
            let event = ServerEvent::CallParticipantUpdated { call_id: c.session.id.clone(), participant };
            Ok(vec![Effect::Notify { to: other, via: Via::All, event }])
        })
    }

    /// The ring timeout fired: a call still ringing is missed.
    pub fn ring_timeout(&mut self, now: Timestamp) -> Result<Vec<Effect>, CallError> {
        self.step(|c| {
            c.session.miss(now)?;
            Ok(c.ended_to_both())
        })
    }

    /// The server ends a live call (disconnect, shutdown).
    pub fn end(&mut self, why: &str, now: Timestamp) -> Result<Vec<Effect>, CallError> {
        self.step(|c| {
            c.session.end(why, now)?;
            Ok(c.ended_to_both())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn ringing() -> (CallSession, Timestamp) {
        let t0 = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let c =
            new_call("c".into(), "alice".into(), "bob".into(), CallType::Video, CallMode::P2p, "r".into(), None, t0);
        (c, t0)
    }

    #[test]
    fn accept_then_hangup_records_duration() {
        let (mut c, t0) = ringing();
        assert_eq!(c.accept(&"alice".into(), t0), Err(CallError::NotAllowed("callee")));
        assert_eq!(c.accept(&"bob".into(), t0 + Duration::seconds(2)), Ok(true));
        assert_eq!(c.accept(&"bob".into(), t0 + Duration::seconds(3)), Ok(false));
        assert_eq!(c.as_of(t0 + Duration::seconds(5)).duration, 3.0);
        assert_eq!(c.hangup(&"alice".into(), t0 + Duration::seconds(12)), Ok(reason::HANGUP));
        assert_eq!(c.status, CallStatus::Ended);
        assert_eq!(c.duration, 10.0);
        assert!(c.participants.iter().all(|p| p.left_at.is_some()));
    }

    #[test]
    fn final_states_refuse_everything() {
        let (mut c, t0) = ringing();
        c.reject(&"bob".into(), t0).unwrap();
        assert_eq!(c.status, CallStatus::Rejected);
        assert_eq!(c.accept(&"bob".into(), t0), Err(CallError::Final("rejected")));
        assert_eq!(c.hangup(&"alice".into(), t0), Err(CallError::Final("rejected")));
        assert_eq!(c.miss(t0), Err(CallError::Final("rejected")));
        assert_eq!(c.duration, 0.0);
    }

    #[test]
    fn caller_hangup_while_ringing_cancels_and_strangers_are_not_found() {
        let (mut c, t0) = ringing();
        assert_eq!(c.hangup(&"mallory".into(), t0), Err(CallError::NotFound));
        assert_eq!(c.hangup(&"alice".into(), t0), Ok(reason::CANCELED));
        assert_eq!(c.end_reason.as_deref(), Some("canceled"));
    }

    #[test]
    fn active_call_cannot_be_rejected_or_missed() {
        let (mut c, t0) = ringing();
        c.accept(&"bob".into(), t0).unwrap();
        assert!(matches!(c.reject(&"bob".into(), t0), Err(CallError::Conflict(_))));
        assert!(matches!(c.miss(t0), Err(CallError::Conflict(_))));
        c.end(reason::DISCONNECTED, t0).unwrap();
        assert_eq!(c.end_reason.as_deref(), Some("disconnected"));
    }

    #[test]
    fn ring_timeout_misses() {
        let (mut c, t0) = ringing();
        c.miss(t0 + Duration::seconds(30)).unwrap();
        assert_eq!((c.status, c.end_reason.as_deref()), (CallStatus::Missed, Some("timeout")));
    }

    /// The SPEC 4 call flows as the effects a [`Call`] returns.
    mod effects {
        use super::*;
        use crate::signal::effects::{Effect, Via};

        const RING: std::time::Duration = std::time::Duration::from_secs(30);

        /// One line per effect: `persist <status>`, `start|cancel <timer>`,
        /// `<user> <via> <event type>`.
        fn shape(effects: &[Effect]) -> Vec<String> {
            effects
                .iter()
                .map(|e| match e {
                    Effect::Persist(c) => format!("persist {}", c.status.as_str()),
                    Effect::StartTimer(k, d) => format!("start {k:?} {}s", d.as_secs()),
                    Effect::CancelTimer(k) => format!("cancel {k:?}"),
                    Effect::Notify { to, via, event } => {
                        let v: serde_json::Value = serde_json::from_str(&event.to_text()).unwrap();
                        let via = match via {
                            Via::All => "all".to_owned(),
                            Via::Device(c) => format!("device {}", c.as_ref().map_or("-", |c| c.as_str())),
                            Via::AllExcept(c) => format!("except {}", c.as_ref().map_or("-", |c| c.as_str())),
                        };
                        format!("{to} {via} {}", v["type"].as_str().unwrap())
                    }
                })
                .collect()
        }

        fn started() -> (Call, Timestamp) {
            let (session, t0) = ringing();
            let (call, effects) = Call::start(session, Some(&"a1".into()), Some("offer".into()), RING);
            assert_eq!(
                shape(&effects),
                ["persist ringing", "bob all call-initiate", "start RingTimeout(CallId(\"c\")) 30s"]
            );
            (call, t0)
        }

        fn bob() -> UserId {
            "bob".into()
        }

        fn alice() -> UserId {
            "alice".into()
        }

        #[test]
        fn accept_persists_stops_the_ring_and_tells_the_caller_s_device_and_the_other_devices() {
            let (mut c, t0) = started();
            let fx = c.accept(&bob(), Some(&"b1".into()), t0).unwrap();
            assert_eq!(
                shape(&fx),
                [
                    "persist active",
                    "cancel RingTimeout(CallId(\"c\"))",
                    "alice device a1 call-accept",
                    "bob except b1 call-answered-elsewhere",
                ]
            );
            assert_eq!(c.devices.get(&bob()).map(ConnId::as_str), Some("b1"));
            assert!(c.accept(&bob(), Some(&"b2".into()), t0).unwrap().is_empty(), "a second accept does nothing");
            assert_eq!(c.accept(&alice(), None, t0).unwrap_err(), CallError::NotAllowed("callee"));
        }

        #[test]
        fn a_first_answer_accepts_and_later_answers_only_relay() {
            let (mut c, t0) = started();
            let fx = c.answer(&bob(), Some(&"b1".into()), "answer".into(), t0).unwrap();
            assert_eq!(
                shape(&fx),
                [
                    "persist active",
                    "cancel RingTimeout(CallId(\"c\"))",
                    "bob except b1 call-answered-elsewhere",
                    "alice device a1 call-answer",
                ]
            );
            let fx = c.answer(&alice(), Some(&"a1".into()), "re-answer".into(), t0).unwrap();
            assert_eq!(shape(&fx), ["bob device b1 call-answer"]);
        }

        #[test]
        fn relays_go_to_the_other_party_s_device_and_change_nothing() {
            let (mut c, t0) = started();
            let before = c.session.clone();
            let fx = c
                .relay(&alice(), |call_id, from| ServerEvent::CallSdpUpdate {
                    call_id,
                    from,
                    sdp: "x".into(),
                    sdp_type: crate::signal::messages::SdpType::Offer,
                })
                .unwrap();
            assert_eq!(shape(&fx), ["bob device - call-sdp-update"], "no device bound yet: all of bob's");
            assert_eq!(c.session, before);
            c.accept(&bob(), Some(&"b1".into()), t0).unwrap();
            let fx = c.relay(&alice(), |call_id, _| ServerEvent::CallAnsweredElsewhere { call_id }).unwrap();
            assert_eq!(shape(&fx), ["bob device b1 call-answered-elsewhere"]);
            assert_eq!(
                c.relay(&"mallory".into(), |_, _| ServerEvent::ServerShutdown { reconnect: None }).unwrap_err(),
                CallError::NotFound
            );
        }

        #[test]
        fn reject_tells_the_caller_everywhere_and_the_callee_s_other_devices_it_ended() {
            let (mut c, t0) = started();
            let fx = c.reject(&bob(), Some(&"b1".into()), Some("busy".into()), t0).unwrap();
            assert_eq!(
                shape(&fx),
                [
                    "persist rejected",
                    "cancel RingTimeout(CallId(\"c\"))",
                    "alice all call-reject",
                    "bob except b1 call-ended",
                ]
            );
            let before = c.session.clone();
            assert_eq!(c.hangup(&alice(), None, t0).unwrap_err(), CallError::Final("rejected"));
            assert_eq!(c.session, before, "a refused action changes nothing");
        }

        #[test]
        fn hangup_while_ringing_cancels_and_an_active_hangup_has_no_timer_left() {
            let (mut c, t0) = started();
            let fx = c.hangup(&alice(), Some(&"a1".into()), t0).unwrap();
            assert_eq!(
                shape(&fx),
                [
                    "persist ended",
                    "cancel RingTimeout(CallId(\"c\"))",
                    "bob all call-hangup",
                    "alice except a1 call-ended",
                ]
            );
            let (mut c, t0) = started();
            c.accept(&bob(), None, t0).unwrap();
            let fx = c.hangup(&bob(), None, t0).unwrap();
            assert_eq!(shape(&fx), ["persist ended", "alice all call-hangup", "bob except - call-ended"]);
        }

        #[test]
        fn the_ring_timeout_misses_a_ringing_call_only() {
            let (mut c, t0) = started();
            let fx = c.ring_timeout(t0).unwrap();
            assert_eq!(
                shape(&fx),
                ["persist missed", "cancel RingTimeout(CallId(\"c\"))", "alice all call-ended", "bob all call-ended"]
            );
            let (mut c, t0) = started();
            c.accept(&bob(), None, t0).unwrap();
            assert!(matches!(c.ring_timeout(t0), Err(CallError::Conflict(_))));
            let fx = c.end(reason::DISCONNECTED, t0).unwrap();
            assert_eq!(shape(&fx), ["persist ended", "alice all call-ended", "bob all call-ended"]);
        }

        #[test]
        fn a_media_change_is_stored_and_pushed_even_when_it_changes_nothing() {
            let (mut c, _) = started();
            let fx = c.change_media(&alice(), &MediaChange::Audio(true)).unwrap();
            assert_eq!(shape(&fx), ["persist ringing", "bob all call-participant-updated"]);
            assert!(c.session.participant(&alice()).unwrap().audio_muted);
            let fx = c.change_media(&alice(), &MediaChange::Audio(true)).unwrap();
            assert_eq!(shape(&fx), ["bob all call-participant-updated"]);
        }
    }
}
