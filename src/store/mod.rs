//! Persistence behind the [`Store`] trait: calls, rooms, seat reservations
//! and analytics summaries. [`SledStore`] keeps them in sled in the data dir (one node, the
//! default); [`RedisStore`] in Redis, shared by the nodes of a cluster
//! (`cluster.redis_url`). Depends only on `model` and `ids`.
//!
//! The trait is async, because a store across the network (Redis, for a
//! cluster) must not hold a runtime thread while it waits, and callers hold it
//! as `Arc<dyn Store>`. A native `async fn` in a trait is not dyn-compatible, so
//! each method is written by hand to return a [`StoreFuture`] (a boxed
//! future, `futures_util`'s `BoxFuture`): one allocation per call, which is
//! what the `async-trait` crate would generate too, without a proc-macro
//! dependency and with the lifetimes in plain sight. [`Store::is_healthy`]
//! stays synchronous: `/readyz` must answer at once, so an implementation
//! answers from what it last saw.

pub(crate) mod redis_store;
mod sled_store;

pub use redis_store::RedisStore;
pub use sled_store::SledStore;

use crate::ids::{CallId, PeerId, RoomId, UserId};
use crate::model::{CallSession, CallStatus, CallType, Reservation, Room};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Backend(String),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The store cannot be reached now (Redis down); worth retrying.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Which calls `GET /calls/history` wants.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    /// Only calls this user took part in; `None` (admins only) for all calls.
    pub user: Option<UserId>,
    pub call_type: Option<CallType>,
    pub status: Option<CallStatus>,
    pub limit: usize,
    pub offset: usize,
}

/// A page of history, newest first, and how many calls matched in all.
#[derive(Clone, Debug, Default)]
pub struct HistoryPage {
    pub calls: Vec<CallSession>,
    pub total: usize,
}

impl HistoryPage {
    /// The next call of an index walked newest first: counted when it
    /// matches `q`'s filters, kept when it also falls on the page.
    fn offer(&mut self, q: &HistoryQuery, call: CallSession) {
        if q.call_type.is_some_and(|t| t != call.call_type) || q.status.is_some_and(|s| s != call.status) {
            return;
        }
        if self.total >= q.offset && self.calls.len() < q.limit {
            self.calls.push(call);
        }
        self.total += 1;
    }
}

/// What every [`Store`] method returns: resolves once the store has the write
/// (or the answer).
pub type StoreFuture<'a, T> = futures_util::future::BoxFuture<'a, Result<T, StoreError>>;

pub trait Store: Send + Sync + 'static {
    fn put_call<'a>(&'a self, call: &'a CallSession) -> StoreFuture<'a, ()>;
    fn get_call<'a>(&'a self, id: &'a CallId) -> StoreFuture<'a, Option<CallSession>>;
    fn history<'a>(&'a self, q: &'a HistoryQuery) -> StoreFuture<'a, HistoryPage>;
    /// Calls not in a final state that this node wrote last (to settle after
    /// a restart): all of them in a store of its own, its own share in a
    /// shared one, so a node starting never ends the calls of another.
    fn live_calls(&self) -> StoreFuture<'_, Vec<CallSession>>;

    fn put_room<'a>(&'a self, room: &'a Room) -> StoreFuture<'a, ()>;
    fn get_room<'a>(&'a self, id: &'a RoomId) -> StoreFuture<'a, Option<Room>>;
    fn delete_room<'a>(&'a self, id: &'a RoomId) -> StoreFuture<'a, ()>;
    fn rooms(&self) -> StoreFuture<'_, Vec<Room>>;

    /// Seat reservations outlive the node that made them (SPEC 4, 13): kept
    /// until bound, expired or their room deleted ([`Store::delete_room`]
    /// drops a room's).
    fn put_reservation<'a>(&'a self, r: &'a Reservation) -> StoreFuture<'a, ()>;
    fn delete_reservation<'a>(&'a self, room: &'a RoomId, peer: &'a PeerId) -> StoreFuture<'a, ()>;
    /// A room's reservations, expired ones included (the caller has the clock).
    fn reservations<'a>(&'a self, room: &'a RoomId) -> StoreFuture<'a, Vec<Reservation>>;

    /// An analytics summary (JSON) kept with a call or room.
    fn put_analytics<'a>(&'a self, key: &'a str, summary: &'a serde_json::Value) -> StoreFuture<'a, ()>;
    fn get_analytics<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<serde_json::Value>>;

    /// Make every write so far durable.
    fn flush(&self) -> StoreFuture<'_, ()>;
    /// Whether the store is open and answering (for `/readyz`); never waits.
    fn is_healthy(&self) -> bool;
    /// Whether other processes write this store too (a cluster's Redis): a
    /// node must then look there for what it did not write itself.
    fn is_shared(&self) -> bool {
        false
    }
}
