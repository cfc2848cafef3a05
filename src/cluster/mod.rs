//! The nodes of a cluster and where rooms live (SPEC 13), on the cluster's
//! Redis. [`nodes`] is the logic (liveness, least-loaded placement) over a
//! snapshot and a `now`; this file is the Redis side of it. Keys, beside the
//! store's (all under `confer:`):
//! - `confer:node:{id}`: the node's last heartbeat, JSON [`NodeInfo`],
//!   written every 2 s. Liveness is the heartbeat's `atMs` against the
//!   reader's clock ([`nodes::DEAD_AFTER_MS`]); the key's own TTL (30 s) only
//!   clears away nodes that are long gone.
//! - `confer:nodes`: set of node ids, so a reader needs no `SCAN`; an id whose
//!   heartbeat key has expired is removed by whoever reads it.
//! - `confer:placed`: hash, node id → rooms placed on it since its last
//!   heartbeat, which the placement adds to that heartbeat's load so that
//!   rooms placed within one heartbeat do not all go to one node.
//! - `confer:call_node:{call}`: the node holding a live call (its creator,
//!   or the node that took it over), where the parties' actions on it are
//!   relayed; kept a day. A node that is gone (its heartbeat is 6 s old, or
//!   it stopped) has its live calls taken over by the first live node whose
//!   heartbeat comes next: one script moves the store's `confer:calls:live`
//!   entries and these records to it, and that node holds the calls and
//!   their timers from then on.
//! - `confer:room_node:{room}`: the id of the node a room's media lives on
//!   (LiveKit's `room_node_map`). Written only by compare-and-set in one Lua
//!   script, so of two nodes placing one room at once, the second reads the
//!   first one's choice and both agree.
//!
//! A node writes its first heartbeat before it serves anything, marks itself
//! draining at shutdown (it takes no new rooms from then), and removes its
//! heartbeat when it stops, so the others stop placing rooms on it at once
//! rather than after 6 s.
//!
//! The connection is the `redis` crate's `ConnectionManager`, as the store's.

pub mod nodes;
pub mod relay;

use crate::ids::{CallId, NodeId, RoomId};
use crate::signal::placement::{Placed, Placement};
use crate::store::StoreError;
use futures_util::future::BoxFuture;
use nodes::{Decision, Load, NodeInfo, Snapshot, HEARTBEAT_EVERY_MS};
use parking_lot::Mutex;
use prometheus::IntGauge;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NODES: &str = "confer:nodes";
/// Hash, node id → rooms placed on it since its last heartbeat.
const PLACED: &str = "confer:placed";
/// How many nodes ever left (removed their heartbeat): a node that came and
/// went between two of another's heartbeats is never seen, and its calls
/// are looked for when this changes ([`nodes::Takeovers`]).
const LEFT: &str = "confer:nodes:left";
/// How long Redis keeps a heartbeat nobody renews (garbage collection only).
const HEARTBEAT_TTL_MS: u64 = 30_000;
/// Placement attempts before giving up on a room whose placement keeps
/// changing under us (it cannot, short of a node flapping: one retry is the
/// usual most).
const PLACE_ATTEMPTS: usize = 3;

/// `SET KEYS[1] ARGV[2]` if it holds `ARGV[1]` (`""`: if it is unset), and
/// then count the placement in the hash `KEYS[2]`; returns what `KEYS[1]`
/// holds afterwards (nil when it was unset and was expected to hold
/// something: the room was forgotten meanwhile).
const COMPARE_AND_SET: &str = r"
local cur = redis.call('GET', KEYS[1])
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  return ARGV[2]
end
return cur
";

/// Take every live call whose node is not live (`ARGV[3..]`; this node,
/// `ARGV[1]`, among them): the store's live-calls hash (`KEYS[1]`, call id →
/// node) and the call's node record name this node from now on. Returns the
/// calls taken. One script, so of two nodes taking over at once each call
/// goes to one.
const TAKE_OVER: &str = r"
local live = {}
for i = 3, #ARGV do live[ARGV[i]] = true end
local taken = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if not live[all[i + 1]] then
    redis.call('HSET', KEYS[1], all[i], ARGV[1])
    redis.call('SET', 'confer:call_node:' .. all[i], ARGV[1], 'EX', ARGV[2])
    taken[#taken + 1] = all[i]
  end
end
return taken
";

/// The store's hash of live calls (`store/redis_store.rs`), which a takeover
/// rewrites.
const LIVE_CALLS: &str = "confer:calls:live";

fn node_key(id: &NodeId) -> String {
    format!("confer:node:{id}")
}

fn room_key(id: &RoomId) -> String {
    format!("confer:room_node:{id}")
}

fn call_key(id: &CallId) -> String {
    format!("confer:call_node:{id}")
}

/// How long the record of a call's node outlives its creation (a ringing or
/// active call; a call that ended answers `conflict` wherever it is asked).
const CALL_OWNER_TTL_SECS: u64 = 24 * 3600;

fn unavailable(e: redis::RedisError) -> StoreError {
    crate::store::redis_store::count_error("cluster");
    StoreError::Unavailable(format!("Redis (cluster): {e}"))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What a node says about itself besides its load.
pub struct Identity {
    pub id: NodeId,
    pub region: Option<String>,
    pub http_url: String,
    pub media_addr: String,
}

/// Reads this node's load when a heartbeat is due.
pub type LoadFn = Arc<dyn Fn() -> Load + Send + Sync>;

/// Told after each heartbeat: the live nodes (this one included) and the
/// calls this node took over from nodes that are gone.
pub type BeatFn = Arc<dyn Fn(Vec<NodeId>, Vec<CallId>) + Send + Sync>;

/// This node's membership of the cluster.
pub struct Cluster {
    con: ConnectionManager,
    me: Identity,
    draining: std::sync::atomic::AtomicBool,
    load: Mutex<Option<LoadFn>>,
    /// `confer_cluster_nodes`: live nodes in the last snapshot read.
    live_nodes: IntGauge,
    beats: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Cluster {
    /// Connect to the cluster's Redis and write this node's first heartbeat,
    /// so it is live (and can take rooms) before it serves anything.
    pub async fn join(url: &str, me: Identity, live_nodes: IntGauge) -> Result<Arc<Cluster>, StoreError> {
        Self::join_over(crate::store::redis_store::connect(url).await?, me, live_nodes).await
    }

    /// [`Cluster::join`] over a connection already made (the store's, in `app`).
    pub async fn join_over(
        con: ConnectionManager,
        me: Identity,
        live_nodes: IntGauge,
    ) -> Result<Arc<Cluster>, StoreError> {
        for part in ["store", "cluster", "relay"] {
            // Exported at 0 from the start, so a rate over it has a series.
            crate::store::redis_store::REDIS_ERRORS.with_label_values(&[part]);
        }
        let cluster = Arc::new(Cluster {
            con,
            me,
            draining: false.into(),
            load: Mutex::new(None),
            live_nodes,
            beats: Mutex::new(None),
        });
        cluster.beat(Load::default()).await?;
        cluster.refresh_gauge().await?;
        Ok(cluster)
    }

    pub fn id(&self) -> &NodeId {
        &self.me.id
    }

    /// The link room signaling is relayed to other nodes over.
    pub fn relay_link(&self) -> relay::RedisRelay {
        relay::RedisRelay::new(self.con.clone(), self.me.id.clone())
    }

    /// Heartbeats every 2 s from now on, with the load `load` reads; after
    /// each, the live calls of nodes that are gone (dead, or stopped) are
    /// taken over when a node was seen to go (and every minute: see
    /// [`nodes::Takeovers`]), and `news` is told them with the live nodes
    /// (SPEC 13: timers fire once, and a ringing call still goes missed on
    /// time).
    pub fn start_heartbeats(self: &Arc<Self>, load: LoadFn, news: BeatFn) {
        *self.load.lock() = Some(load.clone());
        let me = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(HEARTBEAT_EVERY_MS));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await; // the first heartbeat was written by join
            let mut failing = false;
            let mut takeovers = nodes::Takeovers::default();
            loop {
                every.tick().await;
                let Some(me) = me.upgrade() else { break };
                let result = async {
                    me.beat(load()).await?;
                    let snapshot = me.refresh_gauge().await?;
                    let mut live: Vec<NodeId> = snapshot.live(now_ms()).map(|n| n.id.clone()).collect();
                    if !live.contains(&me.me.id) {
                        live.push(me.me.id.clone());
                    }
                    let now = now_ms();
                    let calls = if takeovers.due(&snapshot, now) {
                        let calls = me.take_over(&snapshot).await?;
                        takeovers.looked(&snapshot, now);
                        calls
                    } else {
                        takeovers.skipped();
                        Vec::new()
                    };
                    if !calls.is_empty() {
                        tracing::info!(node = %me.me.id, calls = calls.len(), "cluster: took over the live calls of nodes that are gone");
                    }
                    news(live, calls);
                    Ok::<(), StoreError>(())
                }
                .await;
                match result {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!(node = %me.me.id, "cluster: heartbeats reach Redis again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(node = %me.me.id, error = %e, "cluster: cannot write this node's heartbeat; the others will count it dead after 6 s");
                    }
                    Err(_) => {}
                }
            }
        });
        *self.beats.lock() = Some(task);
    }

    /// Write this node's heartbeat.
    async fn beat(&self, load: Load) -> Result<(), StoreError> {
        let info = NodeInfo {
            id: self.me.id.clone(),
            region: self.me.region.clone(),
            http_url: self.me.http_url.clone(),
            media_addr: self.me.media_addr.clone(),
            load,
            draining: self.draining.load(std::sync::atomic::Ordering::Acquire),
            at_ms: now_ms(),
        };
        let json = serde_json::to_string(&info).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut p = redis::pipe();
        p.set_options(
            node_key(&self.me.id),
            json,
            redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(HEARTBEAT_TTL_MS)),
        )
        .ignore()
        .sadd(NODES, self.me.id.as_str())
        .ignore()
        // The load just written shows the rooms placed here so far (one placed
        // between the load's reading and this goes uncounted for a beat: a
        // hint, not a ledger).
        .hdel(PLACED, self.me.id.as_str())
        .ignore();
        p.exec_async(&mut self.con.clone()).await.map_err(unavailable)
    }

    /// Every node's last heartbeat.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut con = self.con.clone();
        let ids: Vec<String> = con.smembers(NODES).await.map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Snapshot::default());
        }
        let mut keys: Vec<String> = ids.iter().map(|id| format!("confer:node:{id}")).collect();
        keys.push(LEFT.to_owned());
        let mut values: Vec<Option<String>> = con.mget(&keys).await.map_err(unavailable)?;
        let left = values.pop().flatten().and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut nodes = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for (id, v) in ids.iter().zip(values) {
            match v.map(|v| serde_json::from_str::<NodeInfo>(&v)) {
                Some(Ok(n)) => nodes.push(n),
                Some(Err(e)) => {
                    tracing::warn!(node = %id, error = %e, "cluster: unreadable heartbeat (another version?); node ignored")
                }
                None => gone.push(id.as_str()),
            }
        }
        if !gone.is_empty() {
            let _: Result<(), _> = con.srem(NODES, &gone).await;
        }
        let placed: std::collections::HashMap<String, u32> = con.hgetall(PLACED).await.map_err(unavailable)?;
        let placed_since_beat = placed.into_iter().map(|(k, v)| (NodeId::from(k), v)).collect();
        Ok(Snapshot { nodes, placed_since_beat, left })
    }

    async fn refresh_gauge(&self) -> Result<Snapshot, StoreError> {
        let s = self.snapshot().await?;
        self.live_nodes.set(s.live(now_ms()).count() as i64);
        Ok(s)
    }

    /// Take over the live calls of every node that `snapshot` does not show
    /// live (this node counts as live whatever it says).
    pub async fn take_over(&self, snapshot: &Snapshot) -> Result<Vec<CallId>, StoreError> {
        let now = now_ms();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(TAKE_OVER).arg(1).arg(LIVE_CALLS).arg(self.me.id.as_str()).arg(CALL_OWNER_TTL_SECS);
        cmd.arg(self.me.id.as_str());
        for n in snapshot.live(now) {
            cmd.arg(n.id.as_str());
        }
        let taken: Vec<String> = cmd.query_async(&mut self.con.clone()).await.map_err(unavailable)?;
        Ok(taken.into_iter().map(CallId::from).collect())
    }

    /// Where `room` is, placing it first if it is not on a live node.
    pub async fn place_room(&self, room: &RoomId) -> Result<Placed, StoreError> {
        let key = room_key(room);
        for _ in 0..PLACE_ATTEMPTS {
            let mut con = self.con.clone();
            let current: Option<String> = con.get(&key).await.map_err(unavailable)?;
            let current = current.map(NodeId::from);
            let snapshot = self.snapshot().await?;
            let now = now_ms();
            let node = match nodes::decide(current.as_ref(), &snapshot, &self.me.id, now) {
                Decision::Keep(node) => node,
                Decision::NoNode => {
                    return Err(StoreError::Unavailable("no live cluster node takes rooms".into()));
                }
                Decision::Place { expected, to } => {
                    let expected = expected.as_ref().map_or("", NodeId::as_str);
                    // EVAL, not the crate's Script (EVALSHA, a feature more): a
                    // placement is once per room, the script a few bytes.
                    let held: Option<String> = redis::cmd("EVAL")
                        .arg(COMPARE_AND_SET)
                        .arg(2)
                        .arg(&key)
                        .arg(PLACED)
                        .arg(expected)
                        .arg(to.as_str())
                        .query_async(&mut con)
                        .await
                        .map_err(unavailable)?;
                    let Some(held) = held else { continue };
                    let held = NodeId::from(held);
                    if held == to {
                        tracing::info!(%room, node = %to, "cluster: room placed");
                    } else if !snapshot.is_live(&held, now) {
                        continue; // placed meanwhile on a node we think dead: look again
                    }
                    held
                }
            };
            if node == self.me.id {
                return Ok(Placed::Here);
            }
            let url = snapshot.get(&node).map(|n| n.http_url.clone()).unwrap_or_default();
            return Ok(Placed::Elsewhere { node, url });
        }
        Err(StoreError::Unavailable(format!("the placement of room {room} kept changing; try again")))
    }

    /// Shutdown begins: take no new rooms (the others see it at the next read).
    pub async fn drain(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Release);
        let load = self.load.lock().clone().map(|f| f()).unwrap_or_default();
        if let Err(e) = self.beat(load).await {
            tracing::warn!(error = %e, "cluster: could not announce the drain");
        }
    }

    /// Shutdown ends: remove the heartbeat, so this node is gone at once.
    pub async fn leave(&self) {
        if let Some(t) = self.beats.lock().take() {
            t.abort();
        }
        let mut p = redis::pipe();
        p.del(node_key(&self.me.id)).ignore().srem(NODES, self.me.id.as_str()).ignore().incr(LEFT, 1).ignore();
        match p.exec_async(&mut self.con.clone()).await {
            Ok(()) => tracing::info!(node = %self.me.id, "cluster: left"),
            Err(e) => {
                tracing::warn!(error = %e, "cluster: could not remove this node's heartbeat; it is dead to the others in 6 s")
            }
        }
    }
}

impl Placement for Cluster {
    fn place<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<Placed, StoreError>> {
        Box::pin(self.place_room(room))
    }

    fn forget<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let _: () = self.con.clone().del(room_key(room)).await.map_err(unavailable)?;
            Ok(())
        })
    }

    fn room_elsewhere<'a>(&'a self, room: &'a RoomId) -> BoxFuture<'a, Result<Option<NodeId>, StoreError>> {
        Box::pin(async move {
            let node: Option<String> = self.con.clone().get(room_key(room)).await.map_err(unavailable)?;
            Ok(node.map(NodeId::from).filter(|n| n != &self.me.id))
        })
    }

    fn own_call<'a>(&'a self, call: &'a CallId) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let _: () = self
                .con
                .clone()
                .set_ex(call_key(call), self.me.id.as_str(), CALL_OWNER_TTL_SECS)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn call_owner<'a>(&'a self, call: &'a CallId) -> BoxFuture<'a, Result<Option<NodeId>, StoreError>> {
        Box::pin(async move {
            let node: Option<String> = self.con.clone().get(call_key(call)).await.map_err(unavailable)?;
            Ok(node.map(NodeId::from))
        })
    }
}
