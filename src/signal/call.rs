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

use crate::clock::{seconds_between, Timestamp};
use crate::ids::{CallId, RoomId, UserId};
use crate::model::{CallMode, CallParticipant, CallSession, CallStatus, CallType, Camera};

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
}
