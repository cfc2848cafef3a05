//! Redis-backed [`Store`], shared by the nodes of a cluster (SPEC 13). Keys,
//! all under `confer:`:
//! - `confer:call:{id}`: JSON call
//! - `confer:calls`: sorted set of every call (the admins' history index)
//! - `confer:user_calls:{user}`: sorted set of a user's calls
//! - `confer:calls:live`: hash, call id → id of the node that wrote it last,
//!   for calls not in a final state (each node settles its own on restart)
//! - `confer:rooms`: hash, room id → JSON room (stored empty, as in sled)
//! - `confer:reservations:{room}`: hash, peer id → JSON [`Reservation`], a seat
//!   reserved and not yet bound; the key expires with its last reservation
//! - `confer:analytics:{key}`: JSON summary
//!
//! The history indexes give the same pages as sled's: scored by the call's
//! start in whole microseconds (exact in an f64 until the year 2255), the
//! member is the nanoseconds within that microsecond (three digits) and the
//! call id, so calls that share a score still sort as sled sorts them, by
//! nanosecond, then id. `ZREVRANGE` walks them newest first.
//!
//! A call and its index entries change in one `MULTI`/`EXEC`, and every
//! method resolves only after Redis answered, so an acknowledged write is in
//! Redis. Durability beyond that is Redis's: with `appendonly yes` and
//! `appendfsync everysec` a crash of Redis loses at most the last second
//! (SPEC 7, 13); [`Store::flush`] has nothing to add (`WAIT` is about
//! replicas, which this does not assume).
//!
//! The connection is the `redis` crate's `ConnectionManager` (one multiplexed
//! connection that reconnects by itself). A task pings every second and keeps
//! the answer for [`Store::is_healthy`], so `/readyz` never waits on Redis;
//! the pings are also what reconnects an idle node after an outage.

use super::{HistoryPage, HistoryQuery, Store, StoreError, StoreFuture};
use crate::ids::{CallId, NodeId, PeerId, RoomId, UserId};
use crate::model::{CallSession, Reservation, Room};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CALLS: &str = "confer:calls";
const LIVE: &str = "confer:calls:live";
const ROOMS: &str = "confer:rooms";
/// Calls fetched per `MGET` while a filtered history walks its index.
const BATCH: usize = 200;
/// How often the health task pings, and how long it waits for the answer.
const PING_EVERY: Duration = Duration::from_secs(1);

pub struct RedisStore {
    con: ConnectionManager,
    node: NodeId,
    healthy: Arc<AtomicBool>,
    pinger: tokio::task::JoinHandle<()>,
}

fn call_key(id: &CallId) -> String {
    format!("confer:call:{id}")
}

fn user_calls_key(user: &UserId) -> String {
    format!("confer:user_calls:{user}")
}

fn reservations_key(room: &RoomId) -> String {
    format!("confer:reservations:{room}")
}

fn analytics_key(key: &str) -> String {
    format!("confer:analytics:{key}")
}

/// A call's score and member in the history indexes (see the module doc).
fn index_entry(call: &CallSession) -> (f64, String) {
    let ns = call.created_at.unix_timestamp_nanos();
    let micros = ns.div_euclid(1000) as f64;
    (micros, format!("{:03}{}", ns.rem_euclid(1000), call.id))
}

fn id_of_member(member: &str) -> CallId {
    CallId::from(member.get(3..).unwrap_or_default())
}

/// `confer_redis_errors_total{part}`: Redis commands that failed, by the part
/// of confer that sent them (`store`, `cluster`, `relay`). One counter for
/// the process, registered by every [`crate::metrics::Metrics`].
pub static REDIS_ERRORS: std::sync::LazyLock<prometheus::IntCounterVec> = std::sync::LazyLock::new(|| {
    prometheus::IntCounterVec::new(
        prometheus::Opts::new("confer_redis_errors_total", "Redis commands that failed (cluster only), by part"),
        &["part"],
    )
    .expect("a valid metric")
});

/// Count a failed Redis command of `part`.
pub(crate) fn count_error(part: &str) {
    REDIS_ERRORS.with_label_values(&[part]).inc();
}

/// A connection lost or refused is worth retrying (`unavailable`); anything
/// else Redis said is a fault.
fn redis_error(e: RedisError) -> StoreError {
    count_error("store");
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        StoreError::Unavailable(format!("Redis: {e}"))
    } else {
        StoreError::Backend(format!("Redis: {e}"))
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt { key: key.to_owned(), reason: e.to_string() })
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(e.to_string()))
}

/// A reconnecting connection to `url` (`cluster.redis_url`), as the store
/// and the cluster's heartbeats use it.
pub(crate) async fn connect(url: &str) -> Result<ConnectionManager, StoreError> {
    let client = redis::Client::open(url).map_err(|e| StoreError::Backend(format!("cluster.redis_url: {e}")))?;
    // Fail a request within about a second while Redis is away (it then
    // answers 503 `unavailable`) rather than queue it behind long retries.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(400));
    ConnectionManager::new_with_config(client, config).await.map_err(redis_error)
}

impl RedisStore {
    /// Connect to `url` (`cluster.redis_url`) as `node`. Fails when the URL
    /// is not a Redis URL or Redis does not answer: a node does not start
    /// without its cluster's store (as LiveKit does not).
    pub async fn open(url: &str, node: NodeId) -> Result<Self, StoreError> {
        Ok(Self::with_connection(connect(url).await?, node))
    }

    /// The store over `con`, a connection [`connect`] made. The cluster's
    /// heartbeats share it (`app`): the store's once-a-second ping then
    /// reconnects it for both after an outage, so `/readyz` 200 means what
    /// the cluster needs answers too (with a connection of its own, the
    /// cluster's first command after Redis came back failed on the stale
    /// reconnect while `/readyz` already said 200).
    pub fn with_connection(con: ConnectionManager, node: NodeId) -> Self {
        let healthy = Arc::new(AtomicBool::new(true));
        let pinger = tokio::spawn(ping_loop(con.clone(), healthy.clone()));
        Self { con, node, healthy, pinger }
    }

    fn con(&self) -> ConnectionManager {
        self.con.clone()
    }

    /// The calls stored under `ids`, in that order; ids without a call are skipped.
    async fn calls(&self, ids: &[CallId]) -> Result<Vec<CallSession>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(call_key).collect();
        let values: Vec<Option<Vec<u8>>> = self.con().mget(&keys).await.map_err(redis_error)?;
        keys.iter().zip(values).filter_map(|(k, v)| v.map(|v| decode(k, &v))).collect()
    }

    async fn put_call_now(&self, call: &CallSession) -> Result<(), StoreError> {
        let value = encode(call)?;
        let (score, member) = index_entry(call);
        let mut p = redis::pipe();
        p.atomic()
            .set(call_key(&call.id), value)
            .zadd(CALLS, &member, score)
            .zadd(user_calls_key(&call.caller_id), &member, score)
            .zadd(user_calls_key(&call.callee_id), &member, score);
        if call.status.is_final() {
            p.hdel(LIVE, call.id.as_str());
        } else {
            p.hset(LIVE, call.id.as_str(), self.node.as_str());
        }
        p.exec_async(&mut self.con()).await.map_err(redis_error)
    }

    async fn history_now(&self, q: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let key = match &q.user {
            Some(u) => user_calls_key(u),
            None => CALLS.to_owned(),
        };
        let mut con = self.con();
        if q.call_type.is_none() && q.status.is_none() {
            // Unfiltered: the page straight from the index, and its size.
            if q.limit == 0 {
                let total: usize = con.zcard(&key).await.map_err(redis_error)?;
                return Ok(HistoryPage { calls: Vec::new(), total });
            }
            let (start, stop) = (q.offset as isize, (q.offset + q.limit - 1) as isize);
            let (total, members): (usize, Vec<String>) = redis::pipe()
                .atomic()
                .zcard(&key)
                .zrevrange(&key, start, stop)
                .query_async(&mut con)
                .await
                .map_err(redis_error)?;
            let ids: Vec<CallId> = members.iter().map(|m| id_of_member(m)).collect();
            return Ok(HistoryPage { calls: self.calls(&ids).await?, total });
        }
        // Filtered: walk the whole index newest first, as sled does.
        let members: Vec<String> = con.zrevrange(&key, 0, -1).await.map_err(redis_error)?;
        let mut page = HistoryPage::default();
        for batch in members.chunks(BATCH) {
            let ids: Vec<CallId> = batch.iter().map(|m| id_of_member(m)).collect();
            for call in self.calls(&ids).await? {
                page.offer(q, call);
            }
        }
        Ok(page)
    }

    async fn live_calls_now(&self) -> Result<Vec<CallSession>, StoreError> {
        let owners: HashMap<String, String> = self.con().hgetall(LIVE).await.map_err(redis_error)?;
        let mut ids: Vec<CallId> =
            owners.into_iter().filter(|(_, node)| node == self.node.as_str()).map(|(id, _)| id.into()).collect();
        ids.sort();
        let calls = self.calls(&ids).await?;
        Ok(calls.into_iter().filter(|c| !c.status.is_final()).collect())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let v: Option<Vec<u8>> = self.con().get(key).await.map_err(redis_error)?;
        v.map(|v| decode(key, &v)).transpose()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.pinger.abort();
    }
}

/// Keep `healthy` to whether Redis answered the last ping; log the changes.
async fn ping_loop(mut con: ConnectionManager, healthy: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answer = tokio::time::timeout(PING_EVERY, redis::cmd("PING").query_async::<String>(&mut con)).await;
        let error = match answer {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer to PING within {PING_EVERY:?}")),
        };
        let was = healthy.swap(error.is_none(), Ordering::Release);
        match (was, error) {
            (true, Some(e)) => tracing::error!(error = %e, "Redis is not answering: /readyz says 503 until it does"),
            (false, None) => tracing::info!("Redis answers again"),
            _ => {}
        }
    }
}

impl Store for RedisStore {
    fn put_call<'a>(&'a self, call: &'a CallSession) -> StoreFuture<'a, ()> {
        Box::pin(self.put_call_now(call))
    }

    fn get_call<'a>(&'a self, id: &'a CallId) -> StoreFuture<'a, Option<CallSession>> {
        Box::pin(async move { self.get_json(&call_key(id)).await })
    }

    fn history<'a>(&'a self, q: &'a HistoryQuery) -> StoreFuture<'a, HistoryPage> {
        Box::pin(self.history_now(q))
    }

    fn live_calls(&self) -> StoreFuture<'_, Vec<CallSession>> {
        Box::pin(self.live_calls_now())
    }

    fn put_room<'a>(&'a self, room: &'a Room) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut stored = room.clone();
            stored.participants.clear();
            let value = encode(&stored)?;
            self.con().hset(ROOMS, room.id.as_str(), value).await.map_err(redis_error)
        })
    }

    fn get_room<'a>(&'a self, id: &'a RoomId) -> StoreFuture<'a, Option<Room>> {
        Box::pin(async move {
            let v: Option<Vec<u8>> = self.con().hget(ROOMS, id.as_str()).await.map_err(redis_error)?;
            v.map(|v| decode(id.as_str(), &v)).transpose()
        })
    }

    fn delete_room<'a>(&'a self, id: &'a RoomId) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut p = redis::pipe();
            p.atomic().hdel(ROOMS, id.as_str()).ignore().del(reservations_key(id)).ignore();
            p.exec_async(&mut self.con()).await.map_err(redis_error)
        })
    }

    fn rooms(&self) -> StoreFuture<'_, Vec<Room>> {
        Box::pin(async move {
            let values: Vec<Vec<u8>> = self.con().hvals(ROOMS).await.map_err(redis_error)?;
            values.iter().map(|v| decode(ROOMS, v)).collect()
        })
    }

    fn put_reservation<'a>(&'a self, r: &'a Reservation) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let key = reservations_key(&r.room_id);
            // Every reservation lasts `rooms.reservation_ttl`, so the newest
            // expires last: the key goes a second after it.
            let gone_ms = (r.expires_at.unix_timestamp_nanos() / 1_000_000) as i64 + 1000;
            let mut p = redis::pipe();
            p.atomic().hset(&key, r.seat.peer_id.as_str(), encode(r)?).ignore().pexpire_at(&key, gone_ms).ignore();
            p.exec_async(&mut self.con()).await.map_err(redis_error)
        })
    }

    fn delete_reservation<'a>(&'a self, room: &'a RoomId, peer: &'a PeerId) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.con().hdel(reservations_key(room), peer.as_str()).await.map_err(redis_error) })
    }

    fn reservations<'a>(&'a self, room: &'a RoomId) -> StoreFuture<'a, Vec<Reservation>> {
        Box::pin(async move {
            let key = reservations_key(room);
            let values: Vec<Vec<u8>> = self.con().hvals(&key).await.map_err(redis_error)?;
            values.iter().map(|v| decode(&key, v)).collect()
        })
    }

    fn put_analytics<'a>(&'a self, key: &'a str, summary: &'a serde_json::Value) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let value = encode(summary)?;
            self.con().set(analytics_key(key), value).await.map_err(redis_error)
        })
    }

    fn get_analytics<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<serde_json::Value>> {
        Box::pin(async move { self.get_json(&analytics_key(key)).await })
    }

    fn flush(&self) -> StoreFuture<'_, ()> {
        // Every write was answered after Redis applied it; its AOF does the rest.
        Box::pin(async { Ok(()) })
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn is_shared(&self) -> bool {
        true
    }
}
