//! The store on Redis (SPEC 13, issue 14 item 2), against a real
//! `redis-server` started per test (tests/common/redis.rs):
//! - the same store behaviour on sled and on Redis (the cases that were
//!   sled's unit tests), and the same history pages from both for every
//!   filter and page;
//! - `confer serve` with `cluster.redis_url`: a call outlives a `kill -9` of
//!   its node and is served by another; two nodes see each other's rooms;
//! - Redis killed: `/readyz` 503 and 503 `unavailable`, then back by itself
//!   when Redis returns, with what was acknowledged before the kill.

mod common;

use common::redis::RedisServer;
use common::{child_client, ChildServer, TestServer};
use confer::ids::NodeId;
use confer::model::{CallMode, CallSession, CallStatus, CallType, Reservation, Room};
use confer::store::{HistoryQuery, RedisStore, SledStore, Store};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn at(secs: i64, nanos: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos((1_700_000_000 + secs) as i128 * 1_000_000_000 + nanos as i128)
        .unwrap()
}

fn call(id: &str, caller: &str, callee: &str, created: time::OffsetDateTime, status: CallStatus) -> CallSession {
    CallSession {
        id: id.into(),
        caller_id: caller.into(),
        callee_id: callee.into(),
        call_type: CallType::Video,
        mode: CallMode::P2p,
        status,
        room_id: format!("room_{id}").as_str().into(),
        room_name: None,
        created_at: created,
        answered_at: None,
        ended_at: None,
        end_reason: None,
        duration: 0.0,
        participants: vec![],
    }
}

fn room(id: &str, name: &str) -> Room {
    Room {
        id: id.into(),
        name: name.into(),
        max_participants: 8,
        is_private: false,
        created_by: "alice".into(),
        created_at: at(0, 0),
        participants: vec![],
        messages: vec![],
    }
}

fn q(user: Option<&str>, offset: usize, limit: usize) -> HistoryQuery {
    HistoryQuery { user: user.map(Into::into), limit, offset, ..Default::default() }
}

async fn ids(s: &dyn Store, q: &HistoryQuery) -> (Vec<String>, usize) {
    let p = s.history(q).await.unwrap();
    (p.calls.into_iter().map(|c| c.id.to_string()).collect(), p.total)
}

/// What every store does, whatever it keeps its data in.
async fn store_behaviour(s: &dyn Store) {
    assert!(s.is_healthy());
    s.put_call(&call("c1", "alice", "bob", at(1, 0), CallStatus::Ended)).await.unwrap();
    s.put_call(&call("c2", "bob", "carol", at(2, 0), CallStatus::Missed)).await.unwrap();
    s.put_call(&call("c3", "carol", "alice", at(3, 0), CallStatus::Ringing)).await.unwrap();
    // Rewriting a call must not duplicate its index entries.
    let mut c3 = call("c3", "carol", "alice", at(3, 0), CallStatus::Active);
    c3.answered_at = Some(at(4, 500));
    s.put_call(&c3).await.unwrap();

    assert_eq!(s.get_call(&"c3".into()).await.unwrap(), Some(c3.clone()), "a call reads back as written");
    assert_eq!(s.get_call(&"nope".into()).await.unwrap(), None);
    assert_eq!(ids(s, &q(Some("alice"), 0, 10)).await, (vec!["c3".into(), "c1".into()], 2));
    assert_eq!(ids(s, &q(Some("dave"), 0, 10)).await, (vec![], 0));
    assert_eq!(ids(s, &q(None, 0, 10)).await, (vec!["c3".into(), "c2".into(), "c1".into()], 3));
    assert_eq!(ids(s, &q(None, 1, 1)).await, (vec!["c2".into()], 3), "a page, and the total of all pages");
    assert_eq!(ids(s, &q(None, 5, 10)).await, (vec![], 3), "past the end");
    let missed = HistoryQuery { status: Some(CallStatus::Missed), limit: 10, ..Default::default() };
    assert_eq!(ids(s, &missed).await, (vec!["c2".into()], 1));
    let audio = HistoryQuery { call_type: Some(CallType::Audio), limit: 10, ..Default::default() };
    assert_eq!(ids(s, &audio).await, (vec![], 0));

    let live: Vec<String> = s.live_calls().await.unwrap().into_iter().map(|c| c.id.to_string()).collect();
    assert_eq!(live, ["c3"]);
    let mut ended = c3.clone();
    ended.status = CallStatus::Ended;
    s.put_call(&ended).await.unwrap();
    assert!(s.live_calls().await.unwrap().is_empty(), "a call in a final state is not live");

    // Rooms are stored empty.
    let mut r = room("room_a", "standup");
    r.participants.push(confer::model::RoomParticipant {
        peer_id: "peer_1".into(),
        user_id: "bob".into(),
        name: "Bob".into(),
        joined_at: at(5, 0),
        tracks: vec![],
        hand_raised: false,
    });
    s.put_room(&r).await.unwrap();
    s.put_room(&room("room_b", "retro")).await.unwrap();
    let got = s.get_room(&"room_a".into()).await.unwrap().unwrap();
    assert_eq!((got.name.as_str(), got.participants.len()), ("standup", 0));
    let mut names: Vec<String> = s.rooms().await.unwrap().into_iter().map(|r| r.name).collect();
    names.sort();
    assert_eq!(names, ["retro", "standup"]);

    // Reservations, by room (room_ab's are not room_a's), until deleted or
    // their room is.
    let soon = time::OffsetDateTime::now_utc() + Duration::from_secs(60);
    let reserved = |room: &str, peer: &str| Reservation {
        room_id: room.into(),
        seat: confer::model::RoomParticipant { peer_id: peer.into(), ..r.participants[0].clone() },
        expires_at: soon,
    };
    for (room, peer) in [("room_a", "peer_1"), ("room_a", "peer_2"), ("room_ab", "peer_3"), ("room_b", "peer_4")] {
        s.put_reservation(&reserved(room, peer)).await.unwrap();
    }
    let peers = async |room: &str| {
        let mut p: Vec<String> =
            s.reservations(&room.into()).await.unwrap().into_iter().map(|r| r.seat.peer_id.to_string()).collect();
        p.sort();
        p
    };
    assert_eq!(peers("room_a").await, ["peer_1", "peer_2"]);
    assert_eq!(s.reservations(&"room_b".into()).await.unwrap(), [reserved("room_b", "peer_4")], "read back as written");
    s.delete_reservation(&"room_a".into(), &"peer_1".into()).await.unwrap();
    assert_eq!(peers("room_a").await, ["peer_2"]);
    assert!(peers("room_none").await.is_empty());

    s.delete_room(&"room_a".into()).await.unwrap();
    assert_eq!(s.get_room(&"room_a".into()).await.unwrap(), None);
    assert_eq!(s.rooms().await.unwrap().len(), 1);
    assert!(peers("room_a").await.is_empty(), "a deleted room's reservations go with it");
    assert_eq!(peers("room_ab").await, ["peer_3"]);

    let summary = json!({"roomId": "room_b", "quality": {"score": 4.2, "rating": "good"}, "samples": [1, 2]});
    s.put_analytics("room:room_b", &summary).await.unwrap();
    assert_eq!(s.get_analytics("room:room_b").await.unwrap(), Some(summary));
    assert_eq!(s.get_analytics("room:none").await.unwrap(), None);
    s.flush().await.unwrap();
}

#[tokio::test]
async fn sled_store_behaviour() {
    let dir = tempfile::tempdir().unwrap();
    store_behaviour(&SledStore::open(dir.path()).unwrap()).await;
}

/// sled's log is on disk once flushed: a reopened store reads the call back.
#[tokio::test]
async fn sled_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c1 = call("c1", "alice", "bob", at(1, 0), CallStatus::Ended);
    {
        let s = SledStore::open(dir.path()).unwrap();
        s.put_call(&c1).await.unwrap();
        s.flush().await.unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(s.get_call(&"c1".into()).await.unwrap(), Some(c1));
}

#[tokio::test]
async fn redis_store_behaviour() {
    let redis = RedisServer::start();
    let s = RedisStore::open(&redis.url(), NodeId::from("node-a")).await.unwrap();
    store_behaviour(&s).await;
    assert!(s.is_shared());
}

/// Many calls, some started in the same second, microsecond or even
/// nanosecond, into both stores: every filter and page of the history is the
/// same from Redis as from sled.
#[tokio::test]
async fn redis_history_pages_are_sleds() {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path()).unwrap();
    let redis = RedisServer::start();
    let red = RedisStore::open(&redis.url(), NodeId::from("node-a")).await.unwrap();
    let users = ["alice", "bob", "carol", "dave"];
    for i in 0..60i64 {
        let (caller, callee) = (users[(i % 4) as usize], users[((i * 7 + 1) % 4) as usize]);
        let callee = if callee == caller { users[((i + 1) % 4) as usize] } else { callee };
        // Seconds repeat; some share a microsecond (nanos < 1000), some a nanosecond.
        let created = at(i / 6, [0, 1, 999, 1_000, 250_000_001][(i % 5) as usize]);
        let mut c =
            call(&format!("call_{:02}", (i * 37) % 60), caller, callee, created, CallStatus::ALL[(i % 5) as usize]);
        c.call_type = if i % 3 == 0 { CallType::Audio } else { CallType::Video };
        sled.put_call(&c).await.unwrap();
        red.put_call(&c).await.unwrap();
    }
    let mut checked = 0;
    for user in [None, Some("alice"), Some("bob"), Some("erin")] {
        for call_type in [None, Some(CallType::Audio), Some(CallType::Video)] {
            for status in [None, Some(CallStatus::Ended), Some(CallStatus::Ringing)] {
                for (offset, limit) in [(0, 100), (0, 7), (7, 7), (13, 3), (50, 20)] {
                    let q = HistoryQuery { user: user.map(Into::into), call_type, status, limit, offset };
                    assert_eq!(ids(&red, &q).await, ids(&sled, &q).await, "{q:?}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 180);
    let (all, total) = ids(&red, &q(None, 0, 100)).await;
    assert_eq!((all.len(), total), (60, 60));
}

/// Two nodes on one Redis: each sees what the other wrote, and a node's live
/// calls (the ones it settles when it restarts) are its own.
#[tokio::test]
async fn nodes_share_the_store_but_not_their_live_calls() {
    let redis = RedisServer::start();
    let a = RedisStore::open(&redis.url(), NodeId::from("node-a")).await.unwrap();
    let b = RedisStore::open(&redis.url(), NodeId::from("node-b")).await.unwrap();
    a.put_call(&call("ca", "alice", "bob", at(1, 0), CallStatus::Ringing)).await.unwrap();
    b.put_call(&call("cb", "bob", "carol", at(2, 0), CallStatus::Active)).await.unwrap();
    a.put_room(&room("room_a", "standup")).await.unwrap();
    assert_eq!(b.get_call(&"ca".into()).await.unwrap().unwrap().caller_id.as_str(), "alice");
    assert_eq!(b.get_room(&"room_a".into()).await.unwrap().unwrap().name, "standup");
    assert_eq!(ids(&b, &q(Some("bob"), 0, 10)).await, (vec!["cb".into(), "ca".into()], 2));
    let live = |calls: Vec<CallSession>| calls.into_iter().map(|c| c.id.to_string()).collect::<Vec<_>>();
    assert_eq!(live(a.live_calls().await.unwrap()), ["ca"]);
    assert_eq!(live(b.live_calls().await.unwrap()), ["cb"]);
}

/// Redis away: writes fail as `unavailable` within a couple of seconds,
/// health turns false, and both come back by themselves.
#[tokio::test]
async fn the_store_notices_redis_going_and_coming_back() {
    let mut redis = RedisServer::start();
    let s = RedisStore::open(&redis.url(), NodeId::from("node-a")).await.unwrap();
    s.put_call(&call("c1", "alice", "bob", at(1, 0), CallStatus::Ended)).await.unwrap();
    // Past appendfsync everysec: c1 is on disk.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill9();
    let started = Instant::now();
    let e = s.put_call(&call("c2", "alice", "bob", at(2, 0), CallStatus::Ended)).await.unwrap_err();
    assert!(matches!(e, confer::store::StoreError::Unavailable(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "a write waited {:?} on a dead Redis", started.elapsed());
    wait_for("is_healthy false", Duration::from_secs(5), || !s.is_healthy()).await;
    redis.restart();
    wait_for("is_healthy true", Duration::from_secs(10), || s.is_healthy()).await;
    assert!(s.get_call(&"c1".into()).await.unwrap().is_some(), "acknowledged before the kill:\n{}", redis.log());
    s.put_call(&call("c3", "alice", "bob", at(3, 0), CallStatus::Ended)).await.unwrap();
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "not {what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- The real binary with cluster.redis_url ----

fn node(data: &std::path::Path, redis: &RedisServer, id: &str) -> ChildServer {
    ChildServer::spawn(data, &[("CONFER_CLUSTER_REDIS_URL", &redis.url()), ("CONFER_CLUSTER_NODE_ID", id)])
}

async fn ok(c: &TestServer, method: &str, path: &str, user: &str, body: Option<Value>) -> Value {
    let (st, b) = c.call(method, path, Some(user), body).await;
    assert!((200..300).contains(&st), "{method} {path} as {user}: {st} {b}");
    b
}

async fn readyz(c: &TestServer) -> u16 {
    c.http.get(c.url("/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

async fn wait_ready(c: &TestServer, want: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = readyz(c).await;
        if got == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "/readyz still {got} after {limit:?}, want {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A call made on node A outlives A's `kill -9`: node B, with a data dir of
/// its own, serves it from Redis (history and the call itself) and takes the
/// live one over; A, restarted, leaves it to B.
#[tokio::test]
async fn a_call_outlives_its_node() {
    let redis = RedisServer::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = node(dir_a.path(), &redis, "node-a");
    let ca = child_client(a.addr);
    wait_ready(&ca, 200, Duration::from_secs(5)).await;
    let ended = ca.create_call("alice", "bob").await;
    ok(&ca, "PUT", &format!("/calls/{ended}/accept"), "bob", None).await;
    ok(&ca, "PUT", &format!("/calls/{ended}/hangup"), "alice", None).await;
    let ringing = ca.create_call("alice", "carol").await;
    let room = ok(&ca, "POST", "/rooms", "alice", Some(json!({"name": "standup"}))).await;
    let room_id = room["room"]["id"].as_str().unwrap().to_owned();
    // Nothing was written to sled: the store is Redis.
    assert!(!dir_a.path().join("db").exists(), "a cluster node must not open sled");
    a.kill9();

    let b = node(dir_b.path(), &redis, "node-b");
    let cb = child_client(b.addr);
    let h = ok(&cb, "GET", "/calls/history", "alice", None).await;
    let got: Vec<&str> = h["calls"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(got, [ringing.as_str(), ended.as_str()], "{h}");
    assert_eq!(h["total"], 2);
    let c = ok(&cb, "GET", &format!("/calls/{ended}"), "bob", None).await;
    assert_eq!(c["callSession"]["status"], "ended", "{c}");
    assert_eq!(c["callSession"]["endReason"], "hangup", "{c}");
    // The ringing call lives on: B, the node left, takes it over at its
    // next heartbeat (A is gone).
    let c = ok(&cb, "GET", &format!("/calls/{ringing}"), "carol", None).await;
    assert_eq!(c["callSession"]["status"], "ringing", "{c}");
    let r = ok(&cb, "GET", &format!("/rooms/{room_id}"), "bob", None).await;
    assert_eq!(r["room"]["name"], "standup", "{r}");
    let mut con = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    wait_for_async("node-b holding the ringing call", Duration::from_secs(6), async || {
        let held: Option<String> =
            redis::AsyncCommands::get(&mut con, format!("confer:call_node:{ringing}")).await.unwrap();
        held.as_deref() == Some("node-b")
    })
    .await;

    // A back on its own data dir (its node id) settles nothing of it: the
    // call is B's now, and carol's reject on A is carried out there.
    let a = node(dir_a.path(), &redis, "node-a");
    let ca = child_client(a.addr);
    let c = ok(&ca, "GET", &format!("/calls/{ringing}"), "alice", None).await;
    assert_eq!(c["callSession"]["status"], "ringing", "{c}");
    ok(&ca, "PUT", &format!("/calls/{ringing}/reject"), "carol", None).await;
    let c = ok(&cb, "GET", &format!("/calls/{ringing}"), "alice", None).await;
    assert_eq!(c["callSession"]["status"], "rejected", "{c}");
}

async fn wait_for_async(what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !ok().await {
        assert!(started.elapsed() < limit, "not {what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two nodes on one Redis at once: a room created on A is on B (get, list,
/// reserve), and a call made on A is in the history B serves.
#[tokio::test]
async fn two_nodes_see_each_others_rooms_and_calls() {
    let redis = RedisServer::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(dir_a.path(), &redis, "node-a");
    let b = node(dir_b.path(), &redis, "node-b");
    let (ca, cb) = (child_client(a.addr), child_client(b.addr));
    let room = ok(&ca, "POST", "/rooms", "alice", Some(json!({"name": "standup", "maxParticipants": 4}))).await;
    let id = room["room"]["id"].as_str().unwrap();
    let r = ok(&cb, "GET", &format!("/rooms/{id}"), "bob", None).await;
    assert_eq!((r["room"]["name"].as_str(), r["room"]["maxParticipants"].as_u64()), (Some("standup"), Some(4)));
    let list = ok(&cb, "GET", "/rooms", "bob", None).await;
    assert!(list["rooms"].as_array().unwrap().iter().any(|r| r["id"] == id), "{list}");
    ok(&cb, "POST", &format!("/rooms/{id}/join"), "bob", None).await;
    let (st, _) = cb.get("/rooms/room_nothing", "bob").await;
    assert_eq!(st, 404);

    let call = cb.create_call("bob", "alice").await;
    let h = ok(&ca, "GET", "/calls/history", "alice", None).await;
    assert_eq!(h["calls"][0]["id"], call.as_str(), "{h}");
    // Each node has its own id, generated once into its data dir when not configured.
    let c = node_without_id(tempfile::tempdir().unwrap(), &redis);
    let id = std::fs::read_to_string(c.1.path().join("node.id")).expect("node.id written");
    assert!(id.trim().starts_with("node_"), "{id}");
}

fn node_without_id(dir: tempfile::TempDir, redis: &RedisServer) -> (ChildServer, tempfile::TempDir) {
    (ChildServer::spawn(dir.path(), &[("CONFER_CLUSTER_REDIS_URL", &redis.url())]), dir)
}

/// Redis killed under a running node: `/readyz` 503 within a few seconds and
/// what needs Redis answers 503 `unavailable`; Redis back (same dir, AOF):
/// 200 again without restarting confer, and what was acknowledged is there.
#[tokio::test]
async fn a_node_rides_out_a_redis_restart() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), &redis, "node-a");
    let c = child_client(n.addr);
    wait_ready(&c, 200, Duration::from_secs(5)).await;
    let call = c.create_call("alice", "bob").await;
    ok(&c, "PUT", &format!("/calls/{call}/hangup"), "alice", None).await;
    let room = ok(&c, "POST", "/rooms", "alice", Some(json!({"name": "before"}))).await;
    let room_id = room["room"]["id"].as_str().unwrap().to_owned();
    // SPEC 13: what was acknowledged more than a second before the crash stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill9();

    let took = wait_ready(&c, 503, Duration::from_secs(5)).await;
    eprintln!("/readyz 503 {took:?} after Redis was killed");
    let (st, b) = c.post("/rooms", "alice", json!({"name": "during"})).await;
    assert_eq!((st, b["error"]["code"].as_str()), (503, Some("unavailable")), "{b}");
    let (st, b) = c.get("/calls/history", "alice").await;
    assert_eq!((st, b["error"]["code"].as_str()), (503, Some("unavailable")), "{b}");
    assert_eq!(c.get("/healthz", "alice").await.0, 200, "the process itself is fine");
    let errors = c.metric("confer_redis_errors_total{part=\"store\"}").await.unwrap_or(0.0);
    assert!(errors >= 1.0, "the failed store commands are counted: {errors}");

    redis.restart();
    let took = wait_ready(&c, 200, Duration::from_secs(10)).await;
    eprintln!("/readyz 200 {took:?} after Redis came back");
    let h = ok(&c, "GET", "/calls/history", "alice", None).await;
    assert_eq!(h["calls"][0]["id"], call.as_str(), "{h}\n{}", redis.log());
    assert_eq!(h["calls"][0]["status"], "ended", "{h}");
    let r = ok(&c, "GET", &format!("/rooms/{room_id}"), "bob", None).await;
    assert_eq!(r["room"]["name"], "before", "{r}");
    ok(&c, "POST", "/rooms", "alice", Some(json!({"name": "after"}))).await;
}

/// Startup: a bad URL is a config error naming the key; a Redis that does
/// not answer stops the node with a message naming it too (as LiveKit).
#[test]
fn a_node_without_its_redis_does_not_start() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for (url, want) in [
        ("http://127.0.0.1:6379".to_owned(), "cluster.redis_url"),
        (format!("redis://127.0.0.1:{free}/0"), "cluster.redis_url"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_confer"))
            .args(["serve", "--http", "127.0.0.1:0", "--data"])
            .arg(dir.path())
            .env("CONFER_AUTH_SECRET", common::SECRET)
            .env("CONFER_MEDIA_LISTEN", "127.0.0.1:0")
            .env("CONFER_TURN_LISTEN", "127.0.0.1:0")
            .env("CONFER_CLUSTER_REDIS_URL", &url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: started anyway");
        assert!(err.contains(want), "{url}: {err}");
        assert!(started.elapsed() < Duration::from_secs(15), "{url}: took {:?} to give up", started.elapsed());
    }
}
