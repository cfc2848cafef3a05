//! Nodes and room placement in a cluster (SPEC 13): real `confer serve`
//! processes on one real `redis-server`, talked to over loopback.

mod common;

use common::redis::RedisServer;
use common::{child_client, ChildServer, TestServer};
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn node(redis: &RedisServer, id: &str) -> (ChildServer, tempfile::TempDir) {
    node_with(redis, id, &[])
}

fn node_with(redis: &RedisServer, id: &str, env: &[(&str, &str)]) -> (ChildServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = redis.url();
    let mut all = vec![("CONFER_CLUSTER_REDIS_URL", url.as_str()), ("CONFER_CLUSTER_NODE_ID", id)];
    all.extend_from_slice(env);
    (ChildServer::spawn(dir.path(), &all), dir)
}

async fn redis_con(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Poll `check` every 100 ms until it is true; how long that took.
async fn within(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "not {what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

async fn live_nodes(c: &TestServer) -> Option<f64> {
    c.metric("confer_cluster_nodes").await
}

/// Wait until each of two nodes sees both live.
async fn both_live(a: &TestServer, b: &TestServer) {
    within("both nodes seeing two", Duration::from_secs(5), async || {
        live_nodes(a).await == Some(2.0) && live_nodes(b).await == Some(2.0)
    })
    .await;
}

/// A cluster member in this process (no server): placement only.
async fn member(redis: &RedisServer, id: &str) -> std::sync::Arc<confer::cluster::Cluster> {
    let me = confer::cluster::Identity {
        id: id.into(),
        region: None,
        http_url: format!("http://{id}.invalid/"),
        media_addr: "127.0.0.1:9".into(),
    };
    confer::cluster::Cluster::join(&redis.url(), me, prometheus::IntGauge::new("g", "g").unwrap()).await.unwrap()
}

async fn new_room(c: &TestServer, max: u32) -> String {
    let (st, b) = c.post("/rooms", "alice", json!({"name": "placed", "maxParticipants": max})).await;
    assert_eq!(st, 201, "{b}");
    b["room"]["id"].as_str().unwrap().to_owned()
}

async fn join(c: &TestServer, room: &str, user: &str) -> (u16, Value) {
    c.call("POST", &format!("/rooms/{room}/join"), Some(user), None).await
}

/// A node's last heartbeat, as Redis holds it.
async fn heartbeat(con: &mut redis::aio::MultiplexedConnection, id: &str) -> Option<Value> {
    let v: Option<String> = con.get(format!("confer:node:{id}")).await.unwrap();
    v.map(|v| serde_json::from_str(&v).unwrap())
}

#[tokio::test]
async fn nodes_see_each_other_and_a_killed_node_is_dead_after_its_heartbeats_stop() {
    let redis = RedisServer::start();
    let (a, _da) = node(&redis, "node-a");
    let (mut b, _db) = node(&redis, "node-b");
    let (ca, cb) = (child_client(a.addr), child_client(b.addr));
    both_live(&ca, &cb).await;
    let mut con = redis_con(&redis).await;
    let hb = heartbeat(&mut con, "node-b").await.expect("node-b's heartbeat");
    assert_eq!(hb["httpUrl"], format!("http://{}/", b.addr), "{hb}");
    assert_eq!(hb["mediaAddr"], b.media.to_string(), "{hb}");
    assert_eq!(hb["draining"], false, "{hb}");
    for k in ["rooms", "participants", "packetsPerSecond", "cpu"] {
        assert!(hb["load"][k].is_number(), "load.{k}: {hb}");
    }

    // kill -9: nothing removes its heartbeat, so it is dead once that is
    // 6 s old: 4 to 6 s after the kill, plus up to a beat for a to read it.
    b.kill9();
    let took =
        within("node-a counting node-b dead", Duration::from_secs(10), async || live_nodes(&ca).await == Some(1.0))
            .await;
    assert!(took >= Duration::from_millis(3500), "node-b dead after only {took:?}: not by its heartbeat's age");

    // SIGTERM: the node removes its heartbeat as it stops, gone at a's next read.
    let (c, _dc) = node(&redis, "node-c");
    within("node-a seeing node-c", Duration::from_secs(5), async || live_nodes(&ca).await == Some(2.0)).await;
    c.sigterm();
    let took =
        within("node-a seeing node-c gone", Duration::from_secs(10), async || live_nodes(&ca).await == Some(1.0)).await;
    assert!(took < Duration::from_secs(4), "a stopped node stayed for {took:?}, as if killed");
    assert!(heartbeat(&mut con, "node-c").await.is_none(), "node-c's heartbeat outlived it");
    let members: Vec<String> = con.smembers("confer:nodes").await.unwrap();
    assert!(!members.contains(&"node-c".to_string()), "{members:?}");
}

#[tokio::test]
async fn two_nodes_placing_one_room_at_once_agree() {
    let redis = RedisServer::start();
    let (a, _da) = node(&redis, "node-a");
    let (b, _db) = node(&redis, "node-b");
    let (ca, cb) = (child_client(a.addr), child_client(b.addr));
    within("both nodes live", Duration::from_secs(5), async || live_nodes(&ca).await == Some(2.0)).await;
    let mut con = redis_con(&redis).await;
    let mut placed_on = std::collections::HashMap::new();
    for i in 0..12 {
        // Created on each node in turn (the creator holds it in memory, the
        // other reads it from Redis first), then both joins at once.
        let room = new_room(if i % 2 == 0 { &ca } else { &cb }, 4).await;
        let ((sa, ba), (sb, bb)) = if i % 2 == 0 {
            tokio::join!(join(&ca, &room, "bob"), join(&cb, &room, "carol"))
        } else {
            let (b, a) = tokio::join!(join(&cb, &room, "carol"), join(&ca, &room, "bob"));
            (a, b)
        };
        let held: String = con.get(format!("confer:room_node:{room}")).await.unwrap();
        assert_eq!((sa, sb), (200, 200), "both seats are reserved, on the node that won: a {ba}, b {bb}");
        // One room, not two halves: both nodes show both seats, as the winner holds them.
        for c in [&ca, &cb] {
            let (st, got) = c.get(&format!("/rooms/{room}"), "alice").await;
            let mut users: Vec<&str> =
                got["room"]["participants"].as_array().unwrap().iter().filter_map(|p| p["userId"].as_str()).collect();
            users.sort();
            assert_eq!((st, users), (200, vec!["bob", "carol"]), "held by {held}: {got}");
        }
        // And it stays there: a later join on either node lands in it.
        let late = join(if i % 2 == 0 { &cb } else { &ca }, &room, "dave").await;
        assert_eq!((late.0, late.1["room"]["participants"].as_array().map(Vec::len)), (200, Some(3)), "{}", late.1);
        let still: String = con.get(format!("confer:room_node:{room}")).await.unwrap();
        assert_eq!(still, held);
        let winner = held.clone();
        *placed_on.entry(winner).or_insert(0) += 1;
    }
    eprintln!("placements: {placed_on:?}");
    assert_eq!(placed_on.len(), 2, "one node won every race, so there was none: {placed_on:?}");
}

#[tokio::test]
async fn a_room_goes_to_the_least_loaded_node_and_is_placed_again_when_its_node_dies() {
    let redis = RedisServer::start();
    let (a, _da) = node(&redis, "node-a");
    let (mut b, _db) = node(&redis, "node-b");
    let (ca, cb) = (child_client(a.addr), child_client(b.addr));
    within("both nodes live", Duration::from_secs(5), async || live_nodes(&ca).await == Some(2.0)).await;
    let mut con = redis_con(&redis).await;

    // Three seats taken in a room on node-a, in its heartbeat within a beat.
    let busy = new_room(&ca, 8).await;
    for user in ["u1", "u2", "u3"] {
        let (st, body) = join(&ca, &busy, user).await;
        assert_eq!(st, 200, "{body}");
    }
    within("node-a's heartbeat counting 3 seats", Duration::from_secs(5), async || {
        heartbeat(&mut con, "node-a").await.is_some_and(|h| h["load"]["participants"] == 3 && h["load"]["rooms"] == 1)
    })
    .await;

    // A new room, asked for on the loaded node, goes to the idle one; the
    // seat is reserved there, through the node asked.
    let fresh = new_room(&ca, 8).await;
    let (st, body) = join(&ca, &fresh, "bob").await;
    assert_eq!(st, 200, "{body}");
    let bobs_seat = body["peerId"].as_str().unwrap().to_owned();
    let held: String = con.get(format!("confer:room_node:{fresh}")).await.unwrap();
    assert_eq!(held, "node-b");
    let (st, body) = cb.get(&format!("/rooms/{fresh}"), "bob").await;
    assert_eq!((st, body["room"]["participants"][0]["userId"].as_str()), (200, Some("bob")), "{body}");
    // The busy room stays on node-a: a WebSocket room-join on node-b is
    // relayed there, into the same room (the REST reservation on B is not).
    let mut ws = cb.ws_ready("carol").await;
    ws.send(json!({"type": "room-join", "roomId": busy, "reqId": 7})).await;
    let joined = ws.recv_type("room-joined").await;
    assert_eq!(joined["reqId"], 7, "{joined}");
    assert_eq!(joined["room"]["participants"].as_array().unwrap().len(), 4, "{joined}");
    let held: String = con.get(format!("confer:room_node:{busy}")).await.unwrap();
    assert_eq!(held, "node-a");
    drop(ws);

    // node-b dies: the next join of its room places it again, on node-a.
    b.kill9();
    let took =
        within("the room placed again", Duration::from_secs(12), async || join(&ca, &fresh, "carol").await.0 == 200)
            .await;
    let held: String = con.get(format!("confer:room_node:{fresh}")).await.unwrap();
    assert_eq!(held, "node-a");
    eprintln!("placed again {took:?} after the kill");
    // bob's seat, reserved on node-b before it died, is node-a's now: in
    // the room, and bound by his room-join there with the same peerId.
    let (st, body) = ca.get(&format!("/rooms/{fresh}"), "bob").await;
    let seats: Vec<&str> =
        body["room"]["participants"].as_array().unwrap().iter().map(|p| p["peerId"].as_str().unwrap()).collect();
    assert!(st == 200 && seats.len() == 2 && seats.contains(&bobs_seat.as_str()), "{st} {body}");
    let reservations = format!("confer:reservations:{fresh}");
    assert!(con.hexists::<_, _, bool>(&reservations, &bobs_seat).await.unwrap());
    let mut ws = ca.ws_ready("bob").await;
    ws.send(json!({"type": "room-join", "roomId": fresh, "peerId": bobs_seat, "reqId": 8})).await;
    let joined = ws.recv_type("room-joined").await;
    assert_eq!((joined["reqId"].as_i64(), joined["peerId"].as_str()), (Some(8), Some(bobs_seat.as_str())), "{joined}");
    assert_eq!(joined["room"]["participants"].as_array().unwrap().len(), 2, "{joined}");
    let kept: bool = con.hexists(&reservations, &bobs_seat).await.unwrap();
    assert!(!kept, "a bound reservation leaves the store");
    drop(ws);

    // Deleting a room forgets its placement.
    let (st, body) = ca.call("DELETE", &format!("/rooms/{busy}"), Some("alice"), None).await;
    assert!((200..300).contains(&st), "{st} {body}");
    let gone: Option<String> = con.get(format!("confer:room_node:{busy}")).await.unwrap();
    assert_eq!(gone, None);
    let (st, body) = ca.call("DELETE", &format!("/rooms/{fresh}"), Some("alice"), None).await;
    assert!((200..300).contains(&st), "{st} {body}");
    let left: bool = con.exists(&reservations).await.unwrap();
    assert!(!left, "carol's reservation goes with its room");
}

#[tokio::test]
async fn a_reservation_taken_over_with_its_room_expires_when_it_was_due_on_the_node_that_took_it() {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(20);
    let env = [("CONFER_ROOMS_RESERVATION_TTL", "20s")];
    let (a, _da) = node_with(&redis, "node-a", &env);
    let (mut b, _db) = node_with(&redis, "node-b", &env);
    let (ca, cb) = (child_client(a.addr), child_client(b.addr));
    both_live(&ca, &cb).await;
    let mut con = redis_con(&redis).await;

    // dave reserves a seat through node-b, which places the room on itself (both idle), and
    // never binds it; node-b dies.
    let room = new_room(&cb, 8).await;
    let (st, body) = join(&cb, &room, "dave").await;
    let reserved_at = Instant::now();
    assert_eq!(st, 200, "{body}");
    let daves_seat = body["peerId"].as_str().unwrap().to_owned();
    let held: String = con.get(format!("confer:room_node:{room}")).await.unwrap();
    assert_eq!(held, "node-b");
    b.kill9();

    // erin's join on node-a places the room there once node-b is dead; dave's seat comes with it.
    within("the room placed again", Duration::from_secs(12), async || join(&ca, &room, "erin").await.0 == 200).await;
    let seats = async || -> Vec<String> {
        let (st, body) = ca.get(&format!("/rooms/{room}"), "erin").await;
        assert_eq!(st, 200, "{body}");
        let all = body["room"]["participants"].as_array().unwrap();
        all.iter().map(|p| p["peerId"].as_str().unwrap().to_owned()).collect()
    };
    let taken = seats().await;
    assert!(taken.contains(&daves_seat) && taken.len() == 2, "{taken:?}");
    let reservations = format!("confer:reservations:{room}");

    // It goes when it was due, by the expiry node-b gave it: not at the takeover, and not a
    // whole TTL after it. erin's, made later on node-a, stays.
    let gone = within("dave's reservation expired on node-a", ttl + Duration::from_secs(5), async || {
        !seats().await.contains(&daves_seat)
    })
    .await;
    let after = reserved_at.elapsed();
    eprintln!("dave's seat went {after:?} after it was reserved ({gone:?} after the takeover)");
    assert!(after >= ttl - Duration::from_millis(500) && after < ttl + Duration::from_secs(3), "{after:?}");
    assert_eq!(seats().await.len(), 1, "erin's seat stays");
    let kept: bool = con.hexists(&reservations, &daves_seat).await.unwrap();
    assert!(!kept, "an expired reservation leaves the store");
}

/// The compare-and-set itself, two nodes in this process placing the same
/// rooms at once: each would take every room (both idle, each prefers
/// itself), so every room where both reached the script is a real race.
#[tokio::test]
async fn a_race_to_place_a_room_has_one_winner_that_both_sides_name() {
    use confer::signal::placement::Placed;
    let redis = RedisServer::start();
    let x = member(&redis, "x").await;
    let y = member(&redis, "y").await;
    let mut con = redis_con(&redis).await;
    let evals = async |con: &mut redis::aio::MultiplexedConnection| -> u64 {
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(con).await.unwrap();
        info.lines().find_map(|l| l.strip_prefix("cmdstat_eval:calls=")?.split(',').next()?.parse().ok()).unwrap_or(0)
    };
    let before = evals(&mut con).await;
    let rooms = 200;
    let mut won = [0, 0];
    for i in 0..rooms {
        let room: confer::ids::RoomId = format!("room_race{i}").as_str().into();
        let (px, py) = tokio::join!(x.place_room(&room), y.place_room(&room));
        let (px, py) = (px.unwrap(), py.unwrap());
        let held: String = con.get(format!("confer:room_node:{room}")).await.unwrap();
        match (&px, &py) {
            (Placed::Here, Placed::Elsewhere { node, url }) if node.as_str() == "x" && url == "http://x.invalid/" => {
                assert_eq!(held, "x");
                won[0] += 1;
            }
            (Placed::Elsewhere { node, url }, Placed::Here) if node.as_str() == "y" && url == "http://y.invalid/" => {
                assert_eq!(held, "y");
                won[1] += 1;
            }
            other => panic!("room {i}: the two sides disagree: {other:?} (Redis holds {held})"),
        }
    }
    let races = evals(&mut con).await - before - rooms;
    eprintln!("{rooms} rooms: x placed {}, y placed {}; both ran the compare-and-set for {races}", won[0], won[1]);
    assert!(races > 0, "no room was raced for; the test proved nothing");
}

#[tokio::test]
async fn a_node_stopping_in_a_cluster_tells_its_clients_to_reconnect() {
    let redis = RedisServer::start();
    let (mut a, _da) = node(&redis, "node-a");
    let (_b, _db) = node(&redis, "node-b");
    let ca = child_client(a.addr);
    let mut ws = ca.ws_ready("alice").await;
    let t0 = Instant::now();
    a.sigterm();
    let m = ws.recv_type("server-shutdown").await;
    assert_eq!(m["reconnect"], true, "{m}");
    let status = a.wait_exit(Duration::from_secs(12)).await.expect("node-a exits within the shutdown deadline");
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(11), "took {:?}", t0.elapsed());
}

/// Rooms placed faster than heartbeats come (here: no heartbeat after the
/// first) still spread: each placement counts on its node until that node's
/// next heartbeat shows it.
#[tokio::test]
async fn rooms_placed_in_a_burst_spread_over_idle_nodes() {
    use confer::signal::placement::Placed;
    let redis = RedisServer::start();
    let x = member(&redis, "x").await;
    let _y = member(&redis, "y").await;
    let mut here = 0;
    for i in 0..10 {
        let room: confer::ids::RoomId = format!("room_burst{i}").as_str().into();
        if x.place_room(&room).await.unwrap() == Placed::Here {
            here += 1;
        }
    }
    assert_eq!(here, 5, "10 rooms asked for on x in a burst: {here} on x, the rest on y");
}

/// SPEC 13 "any node, same protocol": alice on node A, bob on node B, one
/// room (placed on A by alice's first join). Bob's room messages go through
/// B to A and A's answers and events come back; his media goes straight to A.
/// The peers are aiortc (tests/interop/sfu_cluster.py says what it checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_one_node_is_in_a_room_on_another_through_the_relay() {
    let redis = RedisServer::start();
    let (a, _da) = node_with(&redis, "node-a", &[("CONFER_MEDIA_WORKERS", "1")]);
    let (b, _db) = node_with(&redis, "node-b", &[("CONFER_MEDIA_WORKERS", "1")]);
    let (ca, cb) = (child_client(a.addr), child_client(b.addr));
    both_live(&ca, &cb).await;
    let args =
        vec![a.addr.to_string(), b.addr.to_string(), a.media.port().to_string(), ca.token("alice"), cb.token("bob")];
    let summary = tokio::task::spawn_blocking(move || common::run_interop("sfu_cluster.py", &args)).await.unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
    assert!(summary["framesAtBob"].as_u64().unwrap() >= 60, "{summary}");
    assert!(summary["framesAtAlice"].as_u64().unwrap() >= 30, "{summary}");

    let room = summary["roomId"].as_str().unwrap();
    let placed: Option<String> = redis_con(&redis).await.get(format!("confer:room_node:{room}")).await.unwrap();
    assert_eq!(placed.as_deref(), Some("node-a"), "the room's media is on A, where alice joined first");
    let relayed = ca.metric("confer_cluster_relay_seconds_count").await.unwrap_or(0.0);
    assert!(relayed >= 5.0, "A took bob's relayed messages: {relayed}");
    assert_eq!(cb.metric("confer_cluster_relay_seconds_count").await, Some(0.0), "nothing was relayed to B");
    // Bob's seat was on A, and is gone with his room-leave; B held none.
    assert_eq!(cb.metric("confer_participants_active").await, Some(0.0));
    let (st, r) = cb.get(&format!("/rooms/{room}"), "alice").await;
    assert_eq!(st, 200, "{r}");
    println!("relay: {summary}");
}

/// The relay keeps the single-node protocol for a client on another node:
/// the reply to its room-join comes first with its reqId, errors from the
/// room's node come back with theirs, events flow both ways; `DELETE` on any
/// node ends the room for participants on every node; when a room's node
/// dies, the client relayed to it is told `unavailable` and, once the node is
/// dead to the cluster, its next room-join places the room on its own node.
#[tokio::test]
async fn relayed_signaling_keeps_the_protocol_and_a_delete_anywhere_ends_the_room() {
    let redis = RedisServer::start();
    let (mut a, _da) = node(&redis, "node-a");
    let (mut b, _db) = node(&redis, "node-b");
    let (ca, cb) = (child_client(a.addr), child_client(b.addr));
    both_live(&ca, &cb).await;
    let room = new_room(&cb, 8).await;
    let mut alice = ca.ws_ready("alice").await;
    alice.send(json!({"type": "room-join", "roomId": room, "reqId": "a1"})).await;
    let joined = alice.recv_type("room-joined").await;
    let alice_peer = joined["peerId"].as_str().unwrap().to_owned();

    let mut bob = cb.ws_ready("bob").await;
    bob.send(json!({"type": "room-join", "roomId": room, "reqId": "b1"})).await;
    let joined = bob.recv().await;
    assert_eq!((joined["type"].as_str(), joined["reqId"].as_str()), (Some("room-joined"), Some("b1")), "{joined}");
    let listed: Vec<&str> =
        joined["room"]["participants"].as_array().unwrap().iter().filter_map(|p| p["peerId"].as_str()).collect();
    assert!(listed.contains(&alice_peer.as_str()), "{joined}");
    let bob_peer = joined["peerId"].as_str().unwrap().to_owned();
    let ev = alice.recv_type("participant-joined").await;
    assert_eq!(ev["participant"]["peerId"], bob_peer.as_str(), "{ev}");

    bob.send(json!({"type": "track-mute", "roomId": room, "trackId": "nope", "muted": true, "reqId": "b2"})).await;
    let err = bob.recv_type("error").await;
    assert_eq!((err["code"].as_str(), err["reqId"].as_str()), (Some("not-found"), Some("b2")), "{err}");
    bob.send(json!({"type": "room-message", "roomId": room, "text": "<b>from B</b>"})).await;
    let m = alice.recv_type("room-message").await;
    assert_eq!((m["text"].as_str(), m["from"]["peerId"].as_str()), (Some("<b>from B</b>"), Some(bob_peer.as_str())));
    let m = bob.recv_type("room-message").await;
    assert_eq!(m["text"], "<b>from B</b>", "the sender gets its own message, as on one node: {m}");
    bob.send(json!({"type": "participant-state", "roomId": room, "handRaised": true})).await;
    let up = alice.recv_type("participant-updated").await;
    assert_eq!(up["participant"]["handRaised"], true, "{up}");

    // REST on B sees the room as A holds it: both seats, the chat.
    let (st, got) = cb.get(&format!("/rooms/{room}"), "alice").await;
    let seats = got["room"]["participants"].as_array().map(Vec::len);
    assert_eq!((st, seats), (200, Some(2)), "{got}");
    let (st, got) = cb.get(&format!("/rooms/{room}/messages"), "bob").await;
    assert_eq!((st, got["messages"][0]["text"].as_str()), (200, Some("<b>from B</b>")), "{got}");
    let (st, got) = cb.get(&format!("/rooms/{room}/messages"), "mallory").await;
    assert_eq!((st, got["error"]["code"].as_str()), (403, Some("forbidden")), "refusals come back as they are: {got}");

    let (st, body) = cb.call("DELETE", &format!("/rooms/{room}"), Some("alice"), None).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(alice.recv_type("room-deleted").await["roomId"], room.as_str());
    assert_eq!(bob.recv_type("room-deleted").await["roomId"], room.as_str());
    for c in [&ca, &cb] {
        assert_eq!(c.get(&format!("/rooms/{room}"), "alice").await.0, 404);
    }

    // A second room; its node dies under the client relayed to it.
    let room = new_room(&ca, 8).await;
    alice.send(json!({"type": "room-join", "roomId": room})).await;
    alice.recv_type("room-joined").await;
    bob.send(json!({"type": "room-join", "roomId": room})).await;
    bob.recv_type("room-joined").await;
    let placed: Option<String> = redis_con(&redis).await.get(format!("confer:room_node:{room}")).await.unwrap();
    let (dead, survivor, relayed) = match placed.as_deref() {
        Some("node-a") => ("node-a", "node-b", &mut bob),
        Some("node-b") => ("node-b", "node-a", &mut alice),
        other => panic!("room placed on {other:?}"),
    };
    if dead == "node-a" {
        a.kill9()
    } else {
        b.kill9()
    }
    relayed.send(json!({"type": "room-message", "roomId": room, "text": "anyone?", "reqId": "r3"})).await;
    let err = relayed.recv_type("error").await;
    assert_eq!((err["code"].as_str(), err["reqId"].as_str()), (Some("unavailable"), Some("r3")), "{err}");
    assert!(err["message"].as_str().unwrap().contains(dead), "{err}");
    let t0 = Instant::now();
    loop {
        relayed.send(json!({"type": "room-join", "roomId": room, "reqId": "again"})).await;
        let m = relayed.recv().await;
        if m["type"] == "room-joined" {
            break;
        }
        assert_eq!(m["code"], "unavailable", "{m}");
        assert!(t0.elapsed() < Duration::from_secs(10), "room not placed again on {survivor}: {m}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let placed: Option<String> = redis_con(&redis).await.get(format!("confer:room_node:{room}")).await.unwrap();
    assert_eq!(placed.as_deref(), Some(survivor));
    println!("re-placed on {survivor} {:?} after {dead} was killed", t0.elapsed());
}

const SDP_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";

/// SPEC 13 "call events reach every socket of a user on any node": alice on
/// node A calls bob, who has devices on B (bob1, bob2) and on A (bob3). The
/// call is held by A; bob1's actions on B are relayed to A, A's events reach
/// bob's sockets on both nodes, `call-answered-elsewhere` included, and what
/// is for bob1's device reaches it alone. Then a call nobody answers is
/// missed once, by the node holding it, for a callee on the other node.
#[tokio::test]
async fn a_call_between_users_on_different_nodes_gets_every_event() {
    let redis = RedisServer::start();
    let ring = [("CONFER_CALLS_RING_TIMEOUT", "2s")];
    let (a, _da) = node_with(&redis, "node-a", &ring);
    let (b, _db) = node_with(&redis, "node-b", &ring);
    let (ca, cb) = (child_client(a.addr), child_client(b.addr));
    both_live(&ca, &cb).await;
    let mut alice = ca.ws_ready("alice").await;
    let (mut bob1, mut bob2, mut bob3) = (cb.ws_ready("bob").await, cb.ws_ready("bob").await, ca.ws_ready("bob").await);

    alice
        .send(json!({"type": "call-initiate", "calleeId": "bob", "callType": "video", "sdp": SDP_OFFER, "reqId": 1}))
        .await;
    let created = alice.recv_type("call-created").await;
    assert_eq!(created["reqId"], 1, "{created}");
    let id = created["callSession"]["id"].as_str().unwrap().to_owned();
    for bob in [&mut bob1, &mut bob2, &mut bob3] {
        let m = bob.recv_type("call-initiate").await;
        assert_eq!(
            (m["callId"].as_str(), m["from"].as_str(), m["sdp"].as_str()),
            (Some(id.as_str()), Some("alice"), Some(SDP_OFFER)),
            "{m}"
        );
    }
    let held: Option<String> = redis_con(&redis).await.get(format!("confer:call_node:{id}")).await.unwrap();
    assert_eq!(held.as_deref(), Some("node-a"));

    // bob1, on B, accepts: relayed to A.
    bob1.send(json!({"type": "call-accept", "callId": id})).await;
    let m = alice.recv_type("call-accept").await;
    assert_eq!((m["from"].as_str(), m["callSession"]["status"].as_str()), (Some("bob"), Some("active")), "{m}");
    for other in [&mut bob2, &mut bob3] {
        let m = other.recv_type("call-answered-elsewhere").await;
        assert_eq!(m["callId"], id.as_str(), "{m}");
    }

    // alice's candidate and renegotiation go to bob1's device only.
    let cand = json!({"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    alice.send(json!({"type": "ice-candidate", "callId": id, "candidate": cand})).await;
    let m = bob1.recv_type("ice-candidate").await;
    assert_eq!((&m["from"], &m["candidate"]), (&json!("alice"), &cand), "{m}");
    alice.send(json!({"type": "call-sdp-update", "callId": id, "sdp": "v=0 again", "sdpType": "offer"})).await;
    let m = bob1.recv_type("call-sdp-update").await;
    assert_eq!((m["sdp"].as_str(), m["sdpType"].as_str()), (Some("v=0 again"), Some("offer")), "{m}");
    bob2.expect_silence(Duration::from_millis(300)).await;
    bob3.expect_silence(Duration::from_millis(100)).await;

    // bob1's answer and candidate come back through B.
    bob1.send(json!({"type": "call-answer", "callId": id, "sdp": "v=0 answer"})).await;
    let m = alice.recv_type("call-answer").await;
    assert_eq!((m["from"].as_str(), m["sdp"].as_str()), (Some("bob"), Some("v=0 answer")), "{m}");
    bob1.send(json!({"type": "ice-candidate", "callId": id, "candidate": cand})).await;
    assert_eq!(alice.recv_type("ice-candidate").await["from"], "bob");

    // bob1 hangs up over /rtc on B: alice gets call-hangup, the store ended it.
    bob1.send(json!({"type": "call-hangup", "callId": id})).await;
    let m = alice.recv_type("call-hangup").await;
    assert_eq!((m["from"].as_str(), m["reason"].as_str()), (Some("bob"), Some("hangup")), "{m}");
    let (st, cs) = cb.get(&format!("/calls/{id}"), "bob").await;
    let cs = &cs["callSession"];
    assert_eq!((st, cs["status"].as_str(), cs["endReason"].as_str()), (200, Some("ended"), Some("hangup")), "{cs}");
    bob1.send(json!({"type": "call-hangup", "callId": id, "reqId": "again"})).await;
    let m = bob1.recv_type("error").await;
    assert_eq!((m["code"].as_str(), m["reqId"].as_str()), (Some("conflict"), Some("again")), "{m}");

    // REST on B for a call held by A: accepted and hung up there, with the events.
    alice.send(json!({"type": "call-initiate", "calleeId": "bob", "callType": "audio"})).await;
    let id = alice.recv_type("call-created").await["callSession"]["id"].as_str().unwrap().to_owned();
    let (st, body) = cb.put(&format!("/calls/{id}/accept"), "bob", None).await;
    assert_eq!((st, body["callSession"]["status"].as_str()), (200, Some("active")), "{body}");
    assert_eq!(alice.recv_type("call-accept").await["callId"], id.as_str());
    assert_eq!(bob1.recv_type("call-answered-elsewhere").await["callId"], id.as_str());
    let (st, body) = cb.put(&format!("/calls/{id}/mute-audio"), "bob", Some(json!({"mute": true}))).await;
    assert_eq!(st, 200, "{body}");
    let m = alice.recv_type("call-participant-updated").await;
    assert_eq!(
        (m["participant"]["userId"].as_str(), m["participant"]["audioMuted"].as_bool()),
        (Some("bob"), Some(true)),
        "{m}"
    );
    let (st, body) = cb.put(&format!("/calls/{id}/hangup"), "bob", None).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(alice.recv_type("call-hangup").await["from"], "bob");
    let (st, body) = cb.put(&format!("/calls/{id}/accept"), "bob", None).await;
    assert_eq!((st, body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");

    // A call held by B that nobody answers: missed once, for both.
    let mut carol = ca.ws_ready("carol").await;
    let mut caller = cb.ws_ready("alice").await;
    caller.send(json!({"type": "call-initiate", "calleeId": "carol", "callType": "audio"})).await;
    let id = caller.recv_type("call-created").await["callSession"]["id"].as_str().unwrap().to_owned();
    carol.recv_type("call-initiate").await;
    for w in [&mut caller, &mut carol] {
        let m = w.recv_type("call-ended").await;
        assert_eq!(
            (m["callId"].as_str(), m["status"].as_str(), m["endReason"].as_str()),
            (Some(id.as_str()), Some("missed"), Some("timeout")),
            "{m}"
        );
    }
    carol.expect_silence(Duration::from_millis(1500)).await;
    let (st, cs) = ca.get(&format!("/calls/{id}"), "carol").await;
    assert_eq!((st, cs["callSession"]["status"].as_str()), (200, Some("missed")), "{cs}");
}

/// `confer loadtest --url A,B` spreads its clients over the nodes: the run
/// is whole (every track at every subscriber) with the room on one node and
/// half the clients relayed to it from the other.
#[test]
fn loadtest_spreads_its_clients_over_the_nodes() {
    let redis = RedisServer::start();
    let (a, da) = node_with(&redis, "node-a", &[("CONFER_MEDIA_WORKERS", "1")]);
    let (b, _db) = node_with(&redis, "node-b", &[("CONFER_MEDIA_WORKERS", "1")]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_confer"))
        .args(["loadtest", "--subscribers", "3", "--seconds", "3", "--video-kbps", "300", "--url"])
        .arg(format!("http://{},http://{}", a.addr, b.addr))
        .arg("--data")
        .arg(da.path())
        .env("CONFER_AUTH_SECRET", common::SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "loadtest failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((r["tracksExpected"].as_u64(), r["tracksReceived"].as_u64()), (Some(6), Some(6)), "{r}");
    assert!(r["loss"].as_f64().unwrap() < 0.05 && r["packetsForwarded"].as_f64().unwrap() > 0.0, "{r}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let relayed: f64 = rt.block_on(async {
        let mut n = 0.0;
        for c in [child_client(a.addr), child_client(b.addr)] {
            n += c.metric("confer_cluster_relay_seconds_count").await.unwrap_or(0.0);
        }
        n
    });
    assert!(relayed >= 4.0, "the clients on the room's other node were relayed: {relayed} messages");
}

/// SPEC 13 "timers fire once ... if that node dies, another takes over": the
/// calls of a node killed with -9 (one ringing, one active) are taken over
/// by the node left; the ringing one is missed on time, once, and the active
/// one goes on and ends with its hang-up. A node stopped with SIGTERM does
/// not end its live calls: they are taken over as well.
#[tokio::test]
async fn the_calls_of_a_node_that_is_gone_are_taken_over() {
    let redis = RedisServer::start();
    let ring = [("CONFER_CALLS_RING_TIMEOUT", "10s")];
    let (mut a, _da) = node_with(&redis, "node-a", &ring);
    let (b, _db) = node_with(&redis, "node-b", &ring);
    let (ca, cb) = (child_client(a.addr), child_client(b.addr));
    both_live(&ca, &cb).await;
    let (mut alice, mut dave) = (ca.ws_ready("alice").await, ca.ws_ready("dave").await);
    let (mut carol, mut bob) = (cb.ws_ready("carol").await, cb.ws_ready("bob").await);
    let t0 = Instant::now();
    alice.send(json!({"type": "call-initiate", "calleeId": "carol", "callType": "audio"})).await;
    let ringing = alice.recv_type("call-created").await["callSession"]["id"].as_str().unwrap().to_owned();
    carol.recv_type("call-initiate").await;
    dave.send(json!({"type": "call-initiate", "calleeId": "bob", "callType": "video"})).await;
    let active = dave.recv_type("call-created").await["callSession"]["id"].as_str().unwrap().to_owned();
    bob.recv_type("call-initiate").await;
    bob.send(json!({"type": "call-accept", "callId": active})).await;
    dave.recv_type("call-accept").await;
    a.kill9();

    let m = carol.try_recv(Duration::from_secs(15)).await.expect("call-ended for the ringing call");
    let at = t0.elapsed();
    assert_eq!(
        (m["type"].as_str(), m["callId"].as_str(), m["status"].as_str()),
        (Some("call-ended"), Some(ringing.as_str()), Some("missed")),
        "{m}"
    );
    assert!(
        at > Duration::from_millis(9_500) && at < Duration::from_secs(13),
        "missed {at:?} after the call began, for a 10 s ring timeout"
    );
    carol.expect_silence(Duration::from_secs(1)).await;
    let held: Option<String> = redis_con(&redis).await.get(format!("confer:call_node:{active}")).await.unwrap();
    assert_eq!(held.as_deref(), Some("node-b"), "the active call is held by the node left");
    let (st, cs) = cb.get(&format!("/calls/{active}"), "bob").await;
    assert_eq!((st, cs["callSession"]["status"].as_str()), (200, Some("active")), "{cs}");
    bob.send(json!({"type": "call-hangup", "callId": active, "reqId": "bye"})).await;
    bob.expect_silence(Duration::from_millis(500)).await;
    let (_, cs) = cb.get(&format!("/calls/{active}"), "bob").await;
    assert_eq!(
        (cs["callSession"]["status"].as_str(), cs["callSession"]["endReason"].as_str()),
        (Some("ended"), Some("hangup")),
        "{cs}"
    );
    println!("ringing call missed {at:?} after it began; node-a killed at once");

    // A node that drains (SIGTERM) leaves its calls live, and they move.
    let (mut c, _dc) = node_with(&redis, "node-c", &ring);
    let cc = child_client(c.addr);
    within("node-c live", Duration::from_secs(5), async || live_nodes(&cc).await == Some(2.0)).await;
    let mut eve = cc.ws_ready("eve").await;
    eve.send(json!({"type": "call-initiate", "calleeId": "bob", "callType": "video"})).await;
    let moving = eve.recv_type("call-created").await["callSession"]["id"].as_str().unwrap().to_owned();
    bob.recv_type("call-initiate").await;
    bob.send(json!({"type": "call-accept", "callId": moving})).await;
    eve.recv_type("call-accept").await;
    c.sigterm();
    assert_eq!(eve.recv_type("server-shutdown").await["reconnect"], true);
    // bob's socket is on B; only his call was on C: he is not told to go.
    assert!(c.wait_exit(Duration::from_secs(12)).await.is_some_and(|s| s.success()), "node-c exits");
    within("node-b holding the drained node's call", Duration::from_secs(5), async || {
        let held: Option<String> = redis_con(&redis).await.get(format!("confer:call_node:{moving}")).await.unwrap();
        held.as_deref() == Some("node-b")
    })
    .await;
    let (_, cs) = cb.get(&format!("/calls/{moving}"), "bob").await;
    assert_eq!(cs["callSession"]["status"], "active", "a drain does not end calls: {cs}");
    bob.send(json!({"type": "call-hangup", "callId": moving})).await;
    bob.expect_silence(Duration::from_millis(300)).await;
    within("the moved call ended by its hang-up", Duration::from_secs(3), async || {
        cb.get(&format!("/calls/{moving}"), "bob").await.1["callSession"]["endReason"] == "hangup"
    })
    .await;
}

/// The reconnect grace across nodes (SPEC 12, 13): a party's sockets count
/// wherever they are. Bob, on node B, in a call held by node A: his socket
/// closing ends the call after the grace; Dave's socket closing on B and a
/// new one opening on A within the grace keeps his call.
#[tokio::test]
async fn the_reconnect_grace_counts_a_partys_sockets_on_every_node() {
    let redis = RedisServer::start();
    let grace = [("CONFER_CALLS_RECONNECT_GRACE", "2s")];
    let (a, _da) = node_with(&redis, "node-a", &grace);
    let (b, _db) = node_with(&redis, "node-b", &grace);
    let (ca, cb) = (child_client(a.addr), child_client(b.addr));
    both_live(&ca, &cb).await;
    let mut alice = ca.ws_ready("alice").await;
    let (mut bob, mut dave) = (cb.ws_ready("bob").await, cb.ws_ready("dave").await);
    let mut calls = Vec::new();
    for (callee, ws) in [("bob", &mut bob), ("dave", &mut dave)] {
        alice.send(json!({"type": "call-initiate", "calleeId": callee, "callType": "audio"})).await;
        let id = alice.recv_type("call-created").await["callSession"]["id"].as_str().unwrap().to_owned();
        ws.recv_type("call-initiate").await;
        ws.send(json!({"type": "call-accept", "callId": id})).await;
        alice.recv_type("call-accept").await;
        calls.push(id);
    }
    let (bobs, daves) = (calls[0].clone(), calls[1].clone());

    // Dave moves from B to A within the grace; bob just goes.
    let t0 = Instant::now();
    drop(dave);
    drop(bob);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _dave_again = ca.ws_ready("dave").await;
    let m = alice.recv_type("call-ended").await;
    let took = t0.elapsed();
    assert_eq!((m["callId"].as_str(), m["endReason"].as_str()), (Some(bobs.as_str()), Some("disconnected")), "{m}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "ended {took:?} after bob's socket closed"
    );
    alice.expect_silence(Duration::from_secs(2)).await;
    let (_, cs) = cb.get(&format!("/calls/{daves}"), "dave").await;
    assert_eq!(cs["callSession"]["status"], "active", "dave came back on another node within the grace: {cs}");
}

/// SPEC 12's reconnect grace for a call taken over (SPEC 13): both parties'
/// sockets were on the node that held their accepted call, and that node is
/// killed. The node left takes the call over and, since neither party has a
/// socket anywhere, ends it "disconnected" once the grace is over, instead
/// of holding a call nobody is in for ever. A party who comes back within
/// the grace keeps their call (the grace test above).
#[tokio::test]
async fn a_call_whose_parties_were_all_on_a_dead_node_ends_after_the_grace() {
    let redis = RedisServer::start();
    let grace = [("CONFER_CALLS_RECONNECT_GRACE", "2s")];
    let (mut a, _da) = node_with(&redis, "node-a", &grace);
    let (b, _db) = node_with(&redis, "node-b", &grace);
    let (ca, cb) = (child_client(a.addr), child_client(b.addr));
    both_live(&ca, &cb).await;
    let (mut alice, mut bob) = (ca.ws_ready("alice").await, ca.ws_ready("bob").await);
    alice.send(json!({"type": "call-initiate", "calleeId": "bob", "callType": "audio"})).await;
    let id = alice.recv_type("call-created").await["callSession"]["id"].as_str().unwrap().to_owned();
    bob.recv_type("call-initiate").await;
    bob.send(json!({"type": "call-accept", "callId": id})).await;
    alice.recv_type("call-accept").await;
    let t0 = Instant::now();
    a.kill9();
    // Dead after 6 s, taken over at B's next heartbeat, then the 2 s grace.
    within("the call ended by the grace on the node left", Duration::from_secs(20), async || {
        cb.get(&format!("/calls/{id}"), "bob").await.1["callSession"]["status"] == "ended"
    })
    .await;
    let took = t0.elapsed();
    let (_, cs) = cb.get(&format!("/calls/{id}"), "alice").await;
    assert_eq!(cs["callSession"]["endReason"], "disconnected", "{cs}");
    assert!(took >= Duration::from_secs(7), "ended {took:?} after the kill: before its node was even dead?");
    let held: Option<String> = redis_con(&redis).await.get(format!("confer:call_node:{id}")).await.unwrap();
    assert!(held.as_deref().is_none_or(|n| n == "node-b"), "held by {held:?}");
    println!("a call with both parties on the killed node ended {took:?} after the kill");
}

/// SPEC 13 "Redis down → media keeps flowing": a room's media does not go
/// through Redis. Two webrtc-rs subscribers (`confer loadtest`) receive a
/// publisher on one node of a cluster; Redis is killed 5 s into the 14 s run
/// and stays down to the end. Every track keeps arriving with no loss
/// beyond what loopback loses, `/readyz` says 503 meanwhile, and once Redis
/// is back the node is ready again by itself.
#[test]
fn media_keeps_flowing_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let (a, da) = node(&redis, "node-a");
    let load = std::process::Command::new(env!("CARGO_BIN_EXE_confer"))
        .args(["loadtest", "--subscribers", "2", "--seconds", "14", "--video-kbps", "300", "--url"])
        .arg(format!("http://{}", a.addr))
        .arg("--data")
        .arg(da.path())
        .env("CONFER_AUTH_SECRET", common::SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    redis.kill9();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = child_client(a.addr);
    let down = rt.block_on(async {
        within("/readyz 503 with Redis down", Duration::from_secs(6), async || {
            c.http.get(c.url("/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0) == 503
        })
        .await
    });
    let out = load.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "loadtest failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((r["tracksExpected"].as_u64(), r["tracksReceived"].as_u64()), (Some(4), Some(4)), "{r}");
    // Redis was down for most of the measured window (it opens once everyone
    // has joined, a second or two in): a stop there would be a large loss.
    assert!(r["loss"].as_f64().unwrap() < 0.02, "{r}");
    assert!(r["packetsReceived"].as_u64().unwrap() > 1000, "{r}");
    redis.restart();
    rt.block_on(async {
        within("/readyz 200 with Redis back", Duration::from_secs(10), async || {
            c.http.get(c.url("/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0) == 200
        })
        .await
    });
    println!(
        "media flowed with Redis down ({down:?} to /readyz 503): loss {}, {} packets",
        r["loss"], r["packetsReceived"]
    );
}
