//! Signaling's timers in one scheduler: a keyed set of deadlines owned by one
//! task (tokio-util's `DelayQueue`), started and cancelled by a typed
//! [`TimerKey`]. Starting a key that is already set re-arms it (the new
//! deadline replaces the old one), so an owner never needs a generation
//! counter to tell a stale timer from the current one.
//!
//! A fired key comes out of the receiver [`Timers::spawn`] returns; the
//! composition root hands it to [`super::Signaling::on_timer`], which routes it
//! to the service that owns it. A fire and a cancel can cross (the key was on
//! its way out when the cancel came in), so an owner checks its state when a
//! key fires, as it does for any event.
//!
//! This is the one place that owns signaling's timers: a cluster-wide owner
//! (timers that fire once across nodes and are taken over when a node dies)
//! replaces this task behind the same `start`/`cancel` handle.

use crate::ids::{CallId, PeerId, RoomId, UserId};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::time::{delay_queue, DelayQueue};

/// What a timer is for; at most one timer per key is set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TimerKey {
    /// A ringing call becomes `missed` unless it is answered first.
    RingTimeout(CallId),
    /// A user's last WebSocket closed: their live calls end as `disconnected`
    /// unless they come back (per user, since the grace covers all their calls).
    ReconnectGrace(UserId),
    /// A REST seat reservation that `room-join` has not bound.
    ReservationExpiry(RoomId, PeerId),
    /// A joined participant's WebSocket dropped: the seat goes unless it rejoins.
    SeatGrace(RoomId, PeerId),
    /// A room's chat history has messages not yet written ([`super::chat`]).
    ChatPersist(RoomId),
}

enum Command {
    Start(TimerKey, Instant),
    Cancel(TimerKey),
}

/// The handle to the scheduler; cheap to clone. The task ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Timers {
    tx: mpsc::UnboundedSender<Command>,
}

impl Timers {
    /// Start the scheduler task (needs a tokio runtime). Fired keys come out of
    /// the receiver, each once.
    pub fn spawn() -> (Timers, mpsc::UnboundedReceiver<TimerKey>) {
        let (tx, commands) = mpsc::unbounded_channel();
        let (fired_tx, fired) = mpsc::unbounded_channel();
        tokio::spawn(run(commands, fired_tx));
        (Timers { tx }, fired)
    }

    /// Fire `key` after `after`, replacing a deadline it already has.
    pub fn start(&self, key: TimerKey, after: Duration) {
        // The deadline is taken now, not when the task reads the command.
        let _ = self.tx.send(Command::Start(key, Instant::now() + after));
    }

    /// Forget `key`'s deadline, if it has one.
    pub fn cancel(&self, key: TimerKey) {
        let _ = self.tx.send(Command::Cancel(key));
    }
}

async fn run(mut commands: mpsc::UnboundedReceiver<Command>, fired: mpsc::UnboundedSender<TimerKey>) {
    let mut queue: DelayQueue<TimerKey> = DelayQueue::new();
    let mut keys: HashMap<TimerKey, delay_queue::Key> = HashMap::new();
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Start(key, at)) => match keys.get(&key) {
                    Some(k) => queue.reset_at(k, at),
                    None => {
                        let k = queue.insert_at(key.clone(), at);
                        keys.insert(key, k);
                    }
                },
                Some(Command::Cancel(key)) => {
                    if let Some(k) = keys.remove(&key) {
                        queue.remove(&k);
                    }
                }
                None => return,
            },
            Some(expired) = std::future::poll_fn(|cx| queue.poll_expired(cx)), if !queue.is_empty() => {
                let key = expired.into_inner();
                keys.remove(&key);
                if fired.send(key).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ring(id: &str) -> TimerKey {
        TimerKey::RingTimeout(id.into())
    }

    /// Let the scheduler task read its commands and fire what is due.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fires_once_at_its_deadline() {
        let (timers, mut fired) = Timers::spawn();
        timers.start(ring("c"), 30 * S);
        tokio::time::sleep(29 * S).await;
        settle().await;
        assert!(fired.try_recv().is_err(), "not before its deadline");
        tokio::time::sleep(S).await;
        settle().await;
        assert_eq!(fired.try_recv().ok(), Some(ring("c")));
        tokio::time::sleep(60 * S).await;
        settle().await;
        assert!(fired.try_recv().is_err(), "once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_timer_does_not_fire() {
        let (timers, mut fired) = Timers::spawn();
        timers.start(ring("a"), 10 * S);
        timers.start(ring("b"), 10 * S);
        timers.cancel(ring("a"));
        timers.cancel(ring("never-set"));
        tokio::time::sleep(20 * S).await;
        settle().await;
        assert_eq!(fired.try_recv().ok(), Some(ring("b")));
        assert!(fired.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn re_arming_replaces_the_deadline() {
        let (timers, mut fired) = Timers::spawn();
        let grace = TimerKey::ReconnectGrace("alice".into());
        timers.start(grace.clone(), 20 * S);
        tokio::time::sleep(15 * S).await;
        timers.start(grace.clone(), 20 * S);
        tokio::time::sleep(10 * S).await;
        settle().await;
        assert!(fired.try_recv().is_err(), "the first deadline was replaced");
        tokio::time::sleep(10 * S).await;
        settle().await;
        assert_eq!(fired.try_recv().ok(), Some(grace));
        assert!(fired.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn keys_fire_in_deadline_order_and_may_be_set_again_after_firing() {
        let (timers, mut fired) = Timers::spawn();
        let seat = TimerKey::SeatGrace("r".into(), "p".into());
        timers.start(seat.clone(), 5 * S);
        timers.start(ring("c"), 2 * S);
        tokio::time::sleep(6 * S).await;
        settle().await;
        assert_eq!(fired.try_recv().ok(), Some(ring("c")));
        assert_eq!(fired.try_recv().ok(), Some(seat.clone()));
        timers.start(seat.clone(), 5 * S);
        tokio::time::sleep(6 * S).await;
        settle().await;
        assert_eq!(fired.try_recv().ok(), Some(seat));
    }
}
