//! What a signaling decision asks for, as data: the pure call steps
//! ([`super::call::Call`]) return [`Effect`]s and the service carries them out
//! in one place, [`Outlets::carry_out`]: the store for persistence, the
//! [`Hub`] for notifications, the [`Timers`] scheduler for timers.
//!
//! This is the seam for running several nodes: a notification names a user,
//! not a socket, so the hub, which delivers to this process's sessions today,
//! is where delivery to the sessions of other nodes plugs in; a store behind
//! the same trait and a cluster-wide owner of the timers slot in beside it.
//! Nothing that decides needs to change.

use super::hub::Hub;
use super::messages::ServerEvent;
use super::timers::{TimerKey, Timers};
use super::SignalError;
use crate::ids::{ConnId, UserId};
use crate::model::CallSession;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

/// Which of a user's connections a notification goes to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// Every connection of the user.
    All,
    /// The connection the user uses for this call, if it is still open;
    /// every connection otherwise (or when none is bound).
    Device(Option<ConnId>),
    /// Every connection but this one (the acting device's other devices).
    AllExcept(Option<ConnId>),
}

/// One thing to do, decided without I/O.
#[derive(Clone, Debug)]
pub enum Effect {
    /// Write the call (it changed).
    Persist(CallSession),
    /// Tell a user.
    Notify {
        to: UserId,
        via: Via,
        event: ServerEvent,
    },
    /// Set (or re-arm) a timer.
    StartTimer(TimerKey, Duration),
    CancelTimer(TimerKey),
}

/// Where effects go.
pub struct Outlets {
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub timers: Timers,
}

impl Outlets {
    /// Carry out one step's effects: the store writes first (a failure stops
    /// there: nothing is committed, sent or timed), then `commit` (the caller
    /// makes the new state visible), then notifications and timers in order.
    pub async fn carry_out(&self, effects: Vec<Effect>, commit: impl FnOnce()) -> Result<(), SignalError> {
        for e in &effects {
            if let Effect::Persist(call) = e {
                self.store.put_call(call).await?;
            }
        }
        commit();
        for e in effects {
            match e {
                Effect::Persist(_) => {}
                Effect::Notify { to, via, event } => {
                    self.hub.notify(&to, &via, &event);
                }
                Effect::StartTimer(key, after) => self.timers.start(key, after),
                Effect::CancelTimer(key) => self.timers.cancel(key),
            }
        }
        Ok(())
    }
}
