//! sled-backed [`Store`]. Trees:
//! - `calls`: call id → JSON call
//! - `calls_by_time`: created-at (ns, big-endian) ++ call id → () (all calls, newest last)
//! - `user_calls`: user id ++ 0x00 ++ created-at ++ call id → () (a user's calls)
//! - `rooms`: room id → JSON room (participants are not persisted: rooms restart empty)
//! - `reservations`: room id ++ 0x00 ++ peer id → JSON [`Reservation`] (a seat
//!   reserved over REST and not yet bound, honoured again after a restart)
//! - `analytics`: key → JSON summary
//!
//! A call and its index entries are written in one transaction. sled flushes
//! its log every 200 ms here, so a `kill -9` loses at most that much (SPEC 7:
//! at most one second).

use super::{HistoryPage, HistoryQuery, Store, StoreError, StoreFuture};
use crate::ids::{CallId, PeerId, RoomId, UserId};
use crate::model::{CallSession, Reservation, Room};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::Path;

pub struct SledStore {
    db: sled::Db,
    calls: sled::Tree,
    calls_by_time: sled::Tree,
    user_calls: sled::Tree,
    rooms: sled::Tree,
    reservations: sled::Tree,
    analytics: sled::Tree,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path.join("db"))
            .flush_every_ms(Some(200))
            .open()
            .map_err(|e| StoreError::Backend(format!("cannot open store at {}: {e}", path.display())))?;
        Ok(Self {
            calls: db.open_tree("calls").map_err(backend)?,
            calls_by_time: db.open_tree("calls_by_time").map_err(backend)?,
            user_calls: db.open_tree("user_calls").map_err(backend)?,
            rooms: db.open_tree("rooms").map_err(backend)?,
            reservations: db.open_tree("reservations").map_err(backend)?,
            analytics: db.open_tree("analytics").map_err(backend)?,
            db,
        })
    }
}

fn time_key(call: &CallSession) -> [u8; 16] {
    (call.created_at.unix_timestamp_nanos() as u128).to_be_bytes()
}

fn user_prefix(user: &UserId) -> Vec<u8> {
    let mut k = user.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

fn user_key(user: &UserId, call: &CallSession) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(&time_key(call));
    k.extend_from_slice(call.id.as_str().as_bytes());
    k
}

fn by_time_key(call: &CallSession) -> Vec<u8> {
    let mut k = time_key(call).to_vec();
    k.extend_from_slice(call.id.as_str().as_bytes());
    k
}

/// A room's keys in `reservations`: its id and a 0x00 (ids never hold one).
fn room_prefix(room: &RoomId) -> Vec<u8> {
    let mut k = room.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

fn reservation_key(room: &RoomId, peer: &PeerId) -> Vec<u8> {
    let mut k = room_prefix(room);
    k.extend_from_slice(peer.as_str().as_bytes());
    k
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v)
        .map_err(|e| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: e.to_string() })
}

impl SledStore {
    /// Index keys (newest first) of the calls a query may return.
    fn index(&self, user: Option<&UserId>) -> Box<dyn Iterator<Item = Result<CallId, StoreError>> + '_> {
        match user {
            Some(u) => {
                let plen = user_prefix(u).len() + 16;
                Box::new(self.user_calls.scan_prefix(user_prefix(u)).rev().map(move |r| {
                    let (k, _) = r.map_err(backend)?;
                    Ok(CallId::from(String::from_utf8_lossy(&k[plen..]).into_owned()))
                }))
            }
            None => Box::new(self.calls_by_time.iter().rev().map(|r| {
                let (k, _) = r.map_err(backend)?;
                Ok(CallId::from(String::from_utf8_lossy(&k[16..]).into_owned()))
            })),
        }
    }
}

impl SledStore {
    fn call(&self, id: &CallId) -> Result<Option<CallSession>, StoreError> {
        match self.calls.get(id.as_str()).map_err(backend)? {
            Some(v) => decode(id.as_str().as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    fn put_call_now(&self, call: &CallSession) -> Result<(), StoreError> {
        let value = serde_json::to_vec(call).map_err(backend)?;
        let id = call.id.as_str().as_bytes();
        let t_key = by_time_key(call);
        let caller_key = user_key(&call.caller_id, call);
        let callee_key = user_key(&call.callee_id, call);
        (&self.calls, &self.calls_by_time, &self.user_calls)
            .transaction(|(calls, by_time, user_calls)| {
                calls.insert(id, value.as_slice())?;
                by_time.insert(t_key.as_slice(), &[])?;
                user_calls.insert(caller_key.as_slice(), &[])?;
                user_calls.insert(callee_key.as_slice(), &[])?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| backend(format!("{e:?}")))
    }

    fn history_now(&self, q: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let mut page = HistoryPage::default();
        for id in self.index(q.user.as_ref()) {
            if let Some(call) = self.call(&id?)? {
                page.offer(q, call);
            }
        }
        Ok(page)
    }

    fn live_calls_now(&self) -> Result<Vec<CallSession>, StoreError> {
        let mut out = Vec::new();
        for r in self.calls.iter() {
            let (k, v) = r.map_err(backend)?;
            let call: CallSession = decode(&k, &v)?;
            if !call.status.is_final() {
                out.push(call);
            }
        }
        Ok(out)
    }

    fn put_room_now(&self, room: &Room) -> Result<(), StoreError> {
        let mut stored = room.clone();
        stored.participants.clear();
        let v = serde_json::to_vec(&stored).map_err(backend)?;
        self.rooms.insert(room.id.as_str(), v).map_err(backend)?;
        Ok(())
    }

    fn get_room_now(&self, id: &RoomId) -> Result<Option<Room>, StoreError> {
        match self.rooms.get(id.as_str()).map_err(backend)? {
            Some(v) => decode(id.as_str().as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    fn rooms_now(&self) -> Result<Vec<Room>, StoreError> {
        self.rooms
            .iter()
            .map(|r| {
                let (k, v) = r.map_err(backend)?;
                decode(&k, &v)
            })
            .collect()
    }

    fn delete_room_now(&self, id: &RoomId) -> Result<(), StoreError> {
        self.rooms.remove(id.as_str()).map_err(backend)?;
        let mut batch = sled::Batch::default();
        for k in self.reservations.scan_prefix(room_prefix(id)).keys() {
            batch.remove(k.map_err(backend)?);
        }
        self.reservations.apply_batch(batch).map_err(backend)
    }

    fn put_reservation_now(&self, r: &Reservation) -> Result<(), StoreError> {
        let v = serde_json::to_vec(r).map_err(backend)?;
        self.reservations.insert(reservation_key(&r.room_id, &r.seat.peer_id), v).map_err(backend)?;
        Ok(())
    }

    fn reservations_now(&self, room: &RoomId) -> Result<Vec<Reservation>, StoreError> {
        self.reservations
            .scan_prefix(room_prefix(room))
            .map(|r| {
                let (k, v) = r.map_err(backend)?;
                decode(&k, &v)
            })
            .collect()
    }

    fn put_analytics_now(&self, key: &str, summary: &serde_json::Value) -> Result<(), StoreError> {
        let v = serde_json::to_vec(summary).map_err(backend)?;
        self.analytics.insert(key, v).map_err(backend)?;
        Ok(())
    }

    fn get_analytics_now(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        match self.analytics.get(key).map_err(backend)? {
            Some(v) => decode(key.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }
}

/// sled answers from memory and its write-ahead log (it syncs in the
/// background every 200 ms), so each call runs inline, as the future is
/// polled: microseconds, less than a hop to a blocking thread would cost.
/// The exception is [`Store::flush`], an fsync that waits on the disk: it
/// goes to the blocking pool.
impl Store for SledStore {
    fn put_call<'a>(&'a self, call: &'a CallSession) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.put_call_now(call) })
    }

    fn get_call<'a>(&'a self, id: &'a CallId) -> StoreFuture<'a, Option<CallSession>> {
        Box::pin(async move { self.call(id) })
    }

    fn history<'a>(&'a self, q: &'a HistoryQuery) -> StoreFuture<'a, HistoryPage> {
        Box::pin(async move { self.history_now(q) })
    }

    fn live_calls(&self) -> StoreFuture<'_, Vec<CallSession>> {
        Box::pin(async move { self.live_calls_now() })
    }

    fn put_room<'a>(&'a self, room: &'a Room) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.put_room_now(room) })
    }

    fn get_room<'a>(&'a self, id: &'a RoomId) -> StoreFuture<'a, Option<Room>> {
        Box::pin(async move { self.get_room_now(id) })
    }

    fn delete_room<'a>(&'a self, id: &'a RoomId) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.delete_room_now(id) })
    }

    fn rooms(&self) -> StoreFuture<'_, Vec<Room>> {
        Box::pin(async move { self.rooms_now() })
    }

    fn put_reservation<'a>(&'a self, r: &'a Reservation) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.put_reservation_now(r) })
    }

    fn delete_reservation<'a>(&'a self, room: &'a RoomId, peer: &'a PeerId) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.reservations.remove(reservation_key(room, peer)).map(|_| ()).map_err(backend) })
    }

    fn reservations<'a>(&'a self, room: &'a RoomId) -> StoreFuture<'a, Vec<Reservation>> {
        Box::pin(async move { self.reservations_now(room) })
    }

    fn put_analytics<'a>(&'a self, key: &'a str, summary: &'a serde_json::Value) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.put_analytics_now(key, summary) })
    }

    fn get_analytics<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<serde_json::Value>> {
        Box::pin(async move { self.get_analytics_now(key) })
    }

    fn flush(&self) -> StoreFuture<'_, ()> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || db.flush()).await.map_err(backend)?.map(|_| ()).map_err(backend)
        })
    }

    fn is_healthy(&self) -> bool {
        self.db.was_recovered() || self.db.size_on_disk().is_ok()
    }
}
