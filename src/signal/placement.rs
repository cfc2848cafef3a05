//! Which node a room's media lives on, and which node holds a live call
//! (SPEC 13). Signaling asks before a seat is reserved or joined, and before
//! it acts on a call it does not hold; the answer comes from the cluster
//! (Redis) in `app`'s wiring, and is always "here" on a single node, where no
//! [`Placement`] is given. Kept a trait so `signal` knows no Redis type.

use crate::ids::{CallId, NodeId, RoomId};
use crate::store::StoreError;
use futures_util::future::BoxFuture;

/// Where a room is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placed {
    Here,
    /// On another live node, which a client reaches at `url`.
    Elsewhere {
        node: NodeId,
        url: String,
    },
}

pub trait Placement: Send + Sync {
    /// Place `room` if it is not on a live node, and say where it is.
    /// `Err(StoreError::Unavailable)` when the cluster cannot be asked.
    fn place<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<Placed, StoreError>>;

    /// `room` is gone (deleted): forget its placement.
    fn forget<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The node `room` is placed on when that is another node than this one
    /// (`None`: here, or not placed); nothing is placed.
    fn room_elsewhere<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<Option<NodeId>, StoreError>>;

    /// This node holds `call` (it created it): the others send its parties'
    /// actions here.
    fn own_call<'a>(&'a self, call: &'a CallId) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The node holding `call`, if one was recorded (`None`: no such live call).
    fn call_owner<'a>(&'a self, call: &'a CallId) -> BoxFuture<'a, Result<Option<NodeId>, StoreError>>;
}
