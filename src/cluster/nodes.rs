//! Who is alive and where a room goes (SPEC 13), as pure logic over a
//! [`Snapshot`] of the nodes' heartbeats and a `now`: no Redis, no clock.
//! [`super::Cluster`] reads the snapshot, asks [`decide`], and makes the
//! answer stick with one atomic compare-and-set, so that two nodes racing to
//! place one room agree on the winner's choice.

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// How often a node writes its heartbeat.
pub const HEARTBEAT_EVERY_MS: u64 = 2_000;
/// A heartbeat this old is a dead node's (SPEC 13: three missed beats).
pub const DEAD_AFTER_MS: u64 = 6_000;

/// What a node says about itself every [`HEARTBEAT_EVERY_MS`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub id: NodeId,
    pub region: Option<String>,
    /// The URL a client opens on this node (its `listening` address).
    pub http_url: String,
    /// The first SFU worker's UDP address.
    pub media_addr: String,
    pub load: Load,
    /// Draining (SIGTERM): alive, but takes no new rooms.
    pub draining: bool,
    /// When the heartbeat was written: Unix milliseconds of the writer's clock.
    pub at_ms: u64,
}

/// A node's load, as of its last heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Load {
    /// Rooms with anyone in them (reserved or joined).
    pub rooms: u32,
    /// Seats taken in those rooms, reserved or joined.
    pub participants: u32,
    /// RTP packets forwarded per second over the last heartbeat period.
    pub packets_per_second: u64,
    /// Process CPU over the last heartbeat period, in cores (1.0 = one core busy).
    pub cpu: f64,
}

impl Load {
    /// The placement order: participants are what a room costs (each one a
    /// publisher and subscriptions), then rooms, then forwarded packets.
    /// CPU is reported for operators but not compared: it lags a placement by
    /// a heartbeat and is noisy, which would make placements flap.
    fn cmp_for_placement(&self, other: &Load) -> Ordering {
        (self.participants, self.rooms, self.packets_per_second).cmp(&(
            other.participants,
            other.rooms,
            other.packets_per_second,
        ))
    }
}

/// Every heartbeat read at one moment, and the rooms placed on each node
/// since its last heartbeat (which that heartbeat's load cannot show yet).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeInfo>,
    pub placed_since_beat: std::collections::HashMap<NodeId, u32>,
    /// Nodes that ever left the cluster (stopped, removing their heartbeat).
    pub left: u64,
}

impl Snapshot {
    /// Whether `node`'s heartbeat is younger than [`DEAD_AFTER_MS`] at `now_ms`.
    /// A heartbeat from the future (clocks a little apart) counts as fresh.
    pub fn is_live(&self, node: &NodeId, now_ms: u64) -> bool {
        self.get(node).is_some_and(|n| is_fresh(n, now_ms))
    }

    pub fn get(&self, node: &NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| &n.id == node)
    }

    /// The nodes alive at `now_ms`.
    pub fn live(&self, now_ms: u64) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(move |n| is_fresh(n, now_ms))
    }

    /// A node's load counting the rooms placed on it since its heartbeat,
    /// each as a room with one seat: without them, every room placed within
    /// one heartbeat period would go to the same node.
    pub fn load_of(&self, n: &NodeInfo) -> Load {
        let pending = self.placed_since_beat.get(&n.id).copied().unwrap_or(0);
        Load { rooms: n.load.rooms + pending, participants: n.load.participants + pending, ..n.load }
    }

    /// Where a new room goes: the live, not draining node with the least
    /// [`Load`] ([`Self::load_of`]). Ties go to `asking` (the node that
    /// received the join, which then needs no relay), then to the smallest
    /// id, so the answer depends on nothing but the snapshot.
    pub fn least_loaded(&self, asking: &NodeId, now_ms: u64) -> Option<&NodeId> {
        self.live(now_ms)
            .filter(|n| !n.draining)
            .min_by(|a, b| {
                self.load_of(a)
                    .cmp_for_placement(&self.load_of(b))
                    .then_with(|| (&b.id == asking).cmp(&(&a.id == asking)))
                    .then_with(|| a.id.as_str().cmp(b.id.as_str()))
            })
            .map(|n| &n.id)
    }
}

fn is_fresh(n: &NodeInfo, now_ms: u64) -> bool {
    now_ms.saturating_sub(n.at_ms) < DEAD_AFTER_MS
}

/// What to do with a room's placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It is placed on a live node: it stays there (even a draining one,
    /// until that node is gone: its participants are still on it).
    Keep(NodeId),
    /// Not placed, or placed on a dead node: place it on `to`, if the
    /// placement is still `expected` when the write lands.
    Place { expected: Option<NodeId>, to: NodeId },
    /// No live node takes rooms (all draining, or no heartbeat at all).
    NoNode,
}

/// The placement of a room currently placed on `current` (None: nowhere),
/// asked by `asking` at `now_ms`.
pub fn decide(current: Option<&NodeId>, snapshot: &Snapshot, asking: &NodeId, now_ms: u64) -> Decision {
    if let Some(node) = current.filter(|n| snapshot.is_live(n, now_ms)) {
        return Decision::Keep(node.clone());
    }
    match snapshot.least_loaded(asking, now_ms) {
        Some(to) => Decision::Place { expected: current.cloned(), to: to.clone() },
        None => Decision::NoNode,
    }
}

/// Heartbeats between two looks for gone nodes' live calls when no node was
/// seen to go (a call a node wrote in the moment it died, a node that went
/// while this one could not read the heartbeats).
pub const SWEEP_EVERY_BEATS: u32 = 30;

/// When a heartbeat looks for the live calls of nodes that are gone (the
/// takeover, an `HGETALL` of every live call in the cluster: too much to run
/// on every beat of every node): at the first beat, when the snapshot shows
/// a dead node not looked for yet (a killed node's heartbeat stays readable,
/// and dead, for most of its 30 s TTL), when a node has left (its heartbeat
/// removed at once, so it may never have been seen: [`Snapshot::left`]
/// counts them), and every [`SWEEP_EVERY_BEATS`] beats.
#[derive(Clone, Debug, Default)]
pub struct Takeovers {
    /// The dead nodes and the count of nodes left, at the last look.
    seen: Option<(Vec<NodeId>, u64)>,
    beats_since: u32,
}

impl Takeovers {
    /// Whether this beat, reading `snapshot` at `now_ms`, should look.
    pub fn due(&self, snapshot: &Snapshot, now_ms: u64) -> bool {
        let Some((dead, left)) = &self.seen else { return true };
        self.beats_since + 1 >= SWEEP_EVERY_BEATS
            || snapshot.left != *left
            || snapshot.nodes.iter().any(|n| !is_fresh(n, now_ms) && !dead.contains(&n.id))
    }

    /// A look at `snapshot` succeeded (it took over what there was).
    pub fn looked(&mut self, snapshot: &Snapshot, now_ms: u64) {
        let dead = snapshot.nodes.iter().filter(|n| !is_fresh(n, now_ms)).map(|n| n.id.clone()).collect();
        self.seen = Some((dead, snapshot.left));
        self.beats_since = 0;
    }

    /// A beat that did not look.
    pub fn skipped(&mut self) {
        self.beats_since += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, participants: u32, rooms: u32, at_ms: u64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            region: None,
            http_url: format!("http://{id}/"),
            media_addr: "127.0.0.1:7882".into(),
            load: Load { rooms, participants, packets_per_second: 0, cpu: 0.0 },
            draining: false,
            at_ms,
        }
    }

    fn snap(nodes: Vec<NodeInfo>) -> Snapshot {
        Snapshot { nodes, ..Snapshot::default() }
    }

    fn id(s: &str) -> NodeId {
        s.into()
    }

    #[test]
    fn gone_nodes_calls_are_looked_for_when_a_node_goes_and_now_and_then() {
        let at = |id: &str, at_ms| node(id, 0, 0, at_ms);
        let snap = |nodes: Vec<NodeInfo>, left| Snapshot { left, ..snap(nodes) };
        let now = 100_000;
        let mut t = Takeovers::default();
        let two = snap(vec![at("a", now), at("b", now)], 0);
        assert!(t.due(&two, now), "the first beat looks (a node may have gone before this one came)");
        t.looked(&two, now);
        assert!(!t.due(&two, now));
        t.skipped();
        let three = snap(vec![at("a", now), at("b", now), at("c", now)], 0);
        assert!(!t.due(&three, now), "a node coming is nothing to take over");
        t.skipped();
        // b killed: its heartbeat stays, dead.
        let b_dead = snap(vec![at("a", now), at("b", now - DEAD_AFTER_MS), at("c", now)], 0);
        assert!(!t.due(&b_dead, now - 1), "not dead yet");
        assert!(t.due(&b_dead, now), "b died");
        assert!(t.due(&b_dead, now), "a look that failed (Redis) is due again");
        t.looked(&b_dead, now);
        assert!(!t.due(&b_dead, now + 2_000), "b looked for once");
        // c stops: its heartbeat goes at once; the count of nodes left says so.
        let c_left = snap(vec![at("a", now)], 1);
        assert!(t.due(&c_left, now + 2_000), "c left");
        t.looked(&c_left, now + 2_000);
        for _ in 0..SWEEP_EVERY_BEATS - 1 {
            assert!(!t.due(&c_left, now + 4_000));
            t.skipped();
        }
        assert!(t.due(&c_left, now + 4_000), "a sweep every {SWEEP_EVERY_BEATS} beats");
    }

    #[test]
    fn a_node_is_dead_six_seconds_after_its_last_heartbeat() {
        let s = snap(vec![node("a", 0, 0, 10_000)]);
        assert!(s.is_live(&id("a"), 10_000));
        assert!(s.is_live(&id("a"), 15_999));
        assert!(!s.is_live(&id("a"), 16_000));
        assert!(!s.is_live(&id("b"), 10_000), "a node without a heartbeat is not live");
        // A clock a little behind the writer's: still live.
        assert!(s.is_live(&id("a"), 9_000));
    }

    #[test]
    fn a_new_room_goes_to_the_least_loaded_live_node() {
        let s = snap(vec![node("a", 8, 2, 2_000), node("b", 3, 1, 2_000), node("c", 0, 0, 0)]);
        // c is idle but dead at 7 s; b is the lighter of the live ones.
        assert_eq!(decide(None, &s, &id("a"), 7_000), Decision::Place { expected: None, to: id("b") });
        // Participants weigh before rooms.
        let s = snap(vec![node("a", 2, 1, 0), node("b", 1, 5, 0)]);
        assert_eq!(s.least_loaded(&id("a"), 0), Some(&id("b")));
        // Equal participants: fewer rooms.
        let s = snap(vec![node("a", 2, 2, 0), node("b", 2, 1, 0)]);
        assert_eq!(s.least_loaded(&id("a"), 0), Some(&id("b")));
    }

    #[test]
    fn ties_go_to_the_asking_node_then_to_the_smallest_id() {
        let s = snap(vec![node("c", 1, 1, 0), node("b", 1, 1, 0), node("a", 1, 1, 0)]);
        assert_eq!(s.least_loaded(&id("b"), 0), Some(&id("b")));
        assert_eq!(s.least_loaded(&id("c"), 0), Some(&id("c")));
        // Asked by a node not in the tie: the smallest id, whatever the order read.
        assert_eq!(s.least_loaded(&id("z"), 0), Some(&id("a")));
        let mut reversed = s.clone();
        reversed.nodes.reverse();
        assert_eq!(reversed.least_loaded(&id("z"), 0), Some(&id("a")));
    }

    #[test]
    fn rooms_placed_since_a_heartbeat_count_as_load() {
        let mut s = snap(vec![node("a", 0, 0, 0), node("b", 1, 1, 0)]);
        assert_eq!(s.least_loaded(&id("a"), 0), Some(&id("a")));
        // Two rooms went to a since its heartbeat: b, with one seat, is lighter.
        s.placed_since_beat.insert(id("a"), 2);
        assert_eq!(s.least_loaded(&id("a"), 0), Some(&id("b")));
        assert_eq!((s.load_of(&s.nodes[0]).rooms, s.load_of(&s.nodes[0]).participants), (2, 2));
        // One: a room and a seat each, a tie, which goes to the asking node.
        s.placed_since_beat.insert(id("a"), 1);
        assert_eq!(s.least_loaded(&id("a"), 0), Some(&id("a")));
        assert_eq!(s.least_loaded(&id("b"), 0), Some(&id("b")));
    }

    #[test]
    fn a_placed_room_stays_on_its_live_node_however_loaded() {
        let s = snap(vec![node("a", 50, 9, 0), node("b", 0, 0, 0)]);
        assert_eq!(decide(Some(&id("a")), &s, &id("b"), 5_999), Decision::Keep(id("a")));
    }

    #[test]
    fn a_room_on_a_dead_node_is_placed_again_expecting_the_dead_one() {
        let s = snap(vec![node("a", 0, 0, 0), node("b", 4, 1, 5_000)]);
        assert_eq!(
            decide(Some(&id("a")), &s, &id("b"), 6_000),
            Decision::Place { expected: Some(id("a")), to: id("b") }
        );
        // Placed on a node that left (its heartbeat removed): the same.
        assert_eq!(
            decide(Some(&id("gone")), &s, &id("b"), 6_000),
            Decision::Place { expected: Some(id("gone")), to: id("b") }
        );
    }

    #[test]
    fn a_draining_node_keeps_its_rooms_but_takes_no_new_one() {
        let mut a = node("a", 0, 0, 0);
        a.draining = true;
        let s = snap(vec![a.clone(), node("b", 9, 3, 0)]);
        assert_eq!(decide(None, &s, &id("a"), 0), Decision::Place { expected: None, to: id("b") });
        assert_eq!(decide(Some(&id("a")), &s, &id("b"), 0), Decision::Keep(id("a")));
        assert_eq!(decide(None, &snap(vec![a]), &id("a"), 0), Decision::NoNode);
        assert_eq!(decide(None, &Snapshot::default(), &id("a"), 0), Decision::NoNode);
    }

    #[test]
    fn a_heartbeat_reads_back_as_it_was_written() {
        let n = node("a", 1, 2, 3);
        let json = serde_json::to_string(&n).unwrap();
        assert!(json.contains("\"httpUrl\"") && json.contains("\"atMs\":3"), "{json}");
        assert_eq!(serde_json::from_str::<NodeInfo>(&json).unwrap(), n);
    }
}
