//! Persistence behind the [`Store`] trait: calls, rooms and analytics
//! summaries. The one implementation, [`SledStore`], keeps them in sled in the
//! data dir. Depends only on `model` and `ids`.

mod sled_store;

pub use sled_store::SledStore;

use crate::ids::{CallId, RoomId, UserId};
use crate::model::{CallSession, CallStatus, CallType, Room};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Backend(String),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
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

pub trait Store: Send + Sync + 'static {
    fn put_call(&self, call: &CallSession) -> Result<(), StoreError>;
    fn get_call(&self, id: &CallId) -> Result<Option<CallSession>, StoreError>;
    fn history(&self, q: &HistoryQuery) -> Result<HistoryPage, StoreError>;
    /// Calls not in a final state (to settle after a restart).
    fn live_calls(&self) -> Result<Vec<CallSession>, StoreError>;

    fn put_room(&self, room: &Room) -> Result<(), StoreError>;
    fn get_room(&self, id: &RoomId) -> Result<Option<Room>, StoreError>;
    fn delete_room(&self, id: &RoomId) -> Result<(), StoreError>;
    fn rooms(&self) -> Result<Vec<Room>, StoreError>;

    /// An analytics summary (JSON) kept with a call or room.
    fn put_analytics(&self, key: &str, summary: &serde_json::Value) -> Result<(), StoreError>;
    fn get_analytics(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError>;

    /// Make every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Whether the store is open and answering (for `/readyz`).
    fn is_healthy(&self) -> bool;
}
