//! The SFU: group rooms over `/rtc` with media through confer.
//!
//! aiortc (an independent WebRTC stack) publishes and subscribes through the
//! real server: a publisher to two subscribers, a screen share added by
//! renegotiation, a late joiner, garbage on the media port, a leaving
//! publisher, and a `mode: "sfu"` call. The signaling rules (seats, privacy,
//! errors, lifecycle gauges) are checked in-process over the WebSocket.

mod common;

use common::{child_client, run_interop as run_script, ChildServer, TestServer};
use serde_json::{json, Value};
use std::time::Duration;

/// Poll a metric until it has `want` (gauges settle after the engine runs).
async fn settle(c: &TestServer, name: &str, want: f64) {
    for _ in 0..50 {
        if c.metric(name).await == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} stayed at {:?}, wanted {want}", c.metric(name).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_room_publish_screen_share_late_join_and_leave() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(dir.path(), &[]);
    let c = child_client(server.addr);
    let (addr, media) = (server.addr.to_string(), server.media.to_string());
    let tokens: Vec<String> = ["alice", "bob", "carol", "dave"].iter().map(|u| c.token(u)).collect();
    let args = [vec![addr, media], tokens].concat();
    let summary = tokio::task::spawn_blocking(move || run_script("sfu_room.py", &args)).await.unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
    assert!(summary["lateJoinSeconds"].as_f64().unwrap() < 2.0, "{summary}");
    for who in ["bob", "carol"] {
        let frames: Vec<u64> =
            summary["frames"][who].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).collect();
        assert!(frames.len() >= 2 && frames.iter().any(|f| *f >= 60), "{who}: {summary}");
    }

    // Everyone left: nothing is held, and the counters saw the traffic.
    settle(&c, "confer_participants_active", 0.0).await;
    settle(&c, "confer_peer_connections_active", 0.0).await;
    settle(&c, "confer_tracks_published{kind=\"video\"}", 0.0).await;
    settle(&c, "confer_tracks_published{kind=\"audio\"}", 0.0).await;
    let received = c.metric("confer_rtp_packets_received_total{kind=\"video\"}").await.unwrap();
    let forwarded = c.metric("confer_rtp_packets_forwarded_total{kind=\"video\"}").await.unwrap();
    assert!(received > 100.0 && forwarded > received, "received {received}, forwarded {forwarded}");
    assert!(c.metric("confer_rtp_packets_forwarded_total{kind=\"audio\"}").await.unwrap() > 0.0);
    assert!(c.metric("confer_rtp_bytes_forwarded_total{kind=\"video\"}").await.unwrap() > forwarded * 100.0);
    assert!(c.metric("confer_pli_total").await.unwrap() >= 1.0, "keyframes were requested");
    // The script sent 201 garbage datagrams; the kernel may drop some of a burst.
    assert!(c.metric("confer_media_datagrams_dropped_total").await.unwrap() >= 50.0, "garbage was dropped");
    // And it still serves.
    let (status, _) = c.get("/healthz", "alice").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_sfu_mode_call_carries_media_both_ways_and_mute_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(dir.path(), &[]);
    let c = child_client(server.addr);
    let args = vec![server.addr.to_string(), c.token("alice"), c.token("bob")];
    let summary = tokio::task::spawn_blocking(move || run_script("sfu_call.py", &args)).await.unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
    assert!(summary["aliceDecoded"].as_u64().unwrap() >= 30 && summary["bobDecoded"].as_u64().unwrap() >= 30);
    assert!(summary["framesWhileMuted"].as_u64().unwrap() <= 3, "{summary}");
    settle(&c, "confer_peer_connections_active", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_aiortc_publish_leave_cycles_free_everything_and_rss_stays_flat() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(dir.path(), &[]);
    let c = child_client(server.addr);
    let args = vec![server.addr.to_string(), server.child.id().to_string(), c.token("alice"), c.token("bob")];
    let summary = tokio::task::spawn_blocking(move || run_script("sfu_churn.py", &args)).await.unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
    settle(&c, "confer_participants_active", 0.0).await;
    settle(&c, "confer_peer_connections_active", 0.0).await;
    settle(&c, "confer_tracks_published{kind=\"video\"}", 0.0).await;
    settle(&c, "confer_tracks_published{kind=\"audio\"}", 0.0).await;
    let (after5, after20) = (summary["rssKiBAfter5"].as_f64().unwrap(), summary["rssKiBAfter20"].as_f64().unwrap());
    // 15 more cycles of 2 PeerConnections each must not keep memory: allow
    // allocator noise, not a leak of ~a PeerConnection per cycle.
    assert!(after20 - after5 < 6.0 * 1024.0, "RSS grew from {after5} to {after20} KiB over 15 cycles");
}

async fn create_room(c: &TestServer, owner: &str, body: Value) -> String {
    let (status, v) = c.post("/rooms", owner, body).await;
    assert_eq!(status, 201, "{v}");
    v["room"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn room_join_enforces_existence_privacy_and_seats() {
    let c = TestServer::start().await;
    let mut bob = c.ws_ready("bob").await;
    bob.send(json!({"type": "room-join", "roomId": "room_nope", "reqId": 1})).await;
    let e = bob.recv_type("error").await;
    assert_eq!((e["code"].as_str(), e["reqId"].as_i64()), (Some("not-found"), Some(1)), "{e}");

    let private = create_room(&c, "alice", json!({"name": "secret", "isPrivate": true})).await;
    bob.send(json!({"type": "room-join", "roomId": private})).await;
    assert_eq!(bob.recv_type("error").await["code"], "forbidden");

    let small = create_room(&c, "alice", json!({"name": "pair", "maxParticipants": 2})).await;
    let mut alice = c.ws_ready("alice").await;
    alice.send(json!({"type": "room-join", "roomId": small})).await;
    let joined = alice.recv_type("room-joined").await;
    assert!(joined["peerId"].as_str().unwrap().starts_with("peer_"), "{joined}");
    assert!(joined["iceServers"].as_array().is_some_and(|a| !a.is_empty()), "{joined}");
    bob.send(json!({"type": "room-join", "roomId": small})).await;
    bob.recv_type("room-joined").await;
    let seen = alice.recv_type("participant-joined").await;
    assert_eq!(seen["participant"]["userId"], "bob");
    let mut carol = c.ws_ready("carol").await;
    carol.send(json!({"type": "room-join", "roomId": small})).await;
    assert_eq!(carol.recv_type("error").await["code"], "room-full");
    assert_eq!(c.metric("confer_participants_active").await, Some(2.0));

    bob.send(json!({"type": "room-leave", "roomId": small})).await;
    let left = alice.recv_type("participant-left").await;
    assert_eq!(left["peerId"], seen["participant"]["peerId"]);
    carol.send(json!({"type": "room-join", "roomId": small})).await;
    carol.recv_type("room-joined").await;
}

#[tokio::test]
async fn a_rest_reservation_binds_to_the_websocket_join() {
    let c = TestServer::start().await;
    let room = create_room(&c, "alice", json!({"name": "standup", "maxParticipants": 2})).await;
    let (status, v) = c.post(&format!("/rooms/{room}/join"), "bob", json!({})).await;
    assert_eq!(status, 200, "{v}");
    let peer = v["peerId"].as_str().unwrap().to_owned();

    // Someone else's seat cannot be taken.
    let mut alice = c.ws_ready("alice").await;
    alice.send(json!({"type": "room-join", "roomId": room, "peerId": peer})).await;
    assert_eq!(alice.recv_type("error").await["code"], "forbidden");

    let mut bob = c.ws_ready("bob").await;
    bob.send(json!({"type": "room-join", "roomId": room, "peerId": peer})).await;
    let joined = bob.recv_type("room-joined").await;
    assert_eq!(joined["peerId"], peer.as_str());
    assert_eq!(joined["room"]["participants"].as_array().unwrap().len(), 1, "the seat was bound, not doubled");
}

#[tokio::test]
async fn bad_room_messages_get_clear_errors_and_the_socket_stays_up() {
    let c = TestServer::start().await;
    let room = create_room(&c, "alice", json!({"name": "r"})).await;
    let mut alice = c.ws_ready("alice").await;
    // Before joining.
    alice.send(json!({"type": "publish-offer", "roomId": room, "sdp": "v=0", "tracks": []})).await;
    let e = alice.recv_type("error").await;
    assert_eq!(e["code"], "conflict", "{e}");
    assert!(e["message"].as_str().unwrap().contains("room-join"), "{e}");
    alice.send(json!({"type": "room-join", "roomId": room})).await;
    alice.recv_type("room-joined").await;
    // A field that is wrong is named.
    alice
        .send(json!({"type": "publish-offer", "roomId": room, "sdp": "x", "tracks": [{"mid": "0", "source": "hat"}]}))
        .await;
    let e = alice.recv_type("error").await;
    assert!(e["code"] == "bad-request" && e["message"].as_str().unwrap().contains("hat"), "{e}");
    alice
        .send(json!({"type": "publish-offer", "roomId": room, "sdp": "x",
        "tracks": [{"mid": "0", "source": "camera"}, {"mid": "0", "source": "screen"}]}))
        .await;
    assert!(alice.recv_type("error").await["message"].as_str().unwrap().contains("mid"));
    // Malformed SDP: the SFU answers with an error naming sdp.
    alice.send(json!({"type": "publish-offer", "roomId": room, "sdp": "v=0\r\nnonsense", "tracks": [{"mid": "0", "source": "camera"}]})).await;
    let e = alice.recv_type("error").await;
    assert!(e["code"] == "bad-request" && e["message"].as_str().unwrap().starts_with("sdp"), "{e}");
    alice.send(json!({"type": "subscribe-answer", "roomId": room, "sdp": "v=0"})).await;
    assert_eq!(alice.recv_type("error").await["code"], "conflict");
    alice.send(json!({"type": "track-mute", "roomId": room, "trackId": "tr_nope", "muted": true})).await;
    assert_eq!(alice.recv_type("error").await["code"], "not-found");
    alice
        .send(json!({"type": "room-ice-candidate", "roomId": room, "pc": "publisher",
        "candidate": {"candidate": "candidate:garbage", "sdpMid": "0"}}))
        .await;
    alice.send(json!({"type": "ping", "reqId": "still-up"})).await;
    assert_eq!(alice.recv_type("pong").await["reqId"], "still-up");
}

#[tokio::test]
async fn twenty_join_leave_cycles_leave_nothing_behind() {
    let c = TestServer::start().await;
    let room = create_room(&c, "alice", json!({"name": "churn"})).await;
    let mut bob = c.ws_ready("bob").await;
    bob.send(json!({"type": "room-join", "roomId": room})).await;
    bob.recv_type("room-joined").await;
    for i in 0..20 {
        let mut alice = c.ws_ready("alice").await;
        alice.send(json!({"type": "room-join", "roomId": room})).await;
        alice.recv_type("room-joined").await;
        bob.recv_type("participant-joined").await;
        if i % 2 == 0 {
            alice.send(json!({"type": "room-leave", "roomId": room})).await;
            bob.recv_type("participant-left").await;
        } else {
            // Deleting the seat over REST works the same way.
            let (status, _) = c.post(&format!("/rooms/{room}/leave"), "alice", json!({})).await;
            assert_eq!(status, 200);
            bob.recv_type("participant-left").await;
        }
    }
    settle(&c, "confer_participants_active", 1.0).await;
    let (_, v) = c.get(&format!("/rooms/{room}"), "bob").await;
    assert_eq!(v["room"]["participants"].as_array().unwrap().len(), 1, "{v}");

    // Deleting the room tells the member and frees everything.
    let (status, _) = c.call("DELETE", &format!("/rooms/{room}"), Some("alice"), None).await;
    assert_eq!(status, 200);
    bob.recv_type("room-deleted").await;
    settle(&c, "confer_participants_active", 0.0).await;
    settle(&c, "confer_peer_connections_active", 0.0).await;
}

#[tokio::test]
async fn a_dropped_websocket_keeps_the_seat_for_the_grace_then_leaves() {
    let c = TestServer::start_with(|cfg| cfg.calls.reconnect_grace = Duration::from_millis(1500).into()).await;
    let room = create_room(&c, "alice", json!({"name": "flaky wifi"})).await;
    let mut bob = c.ws_ready("bob").await;
    bob.send(json!({"type": "room-join", "roomId": room})).await;
    bob.recv_type("room-joined").await;
    let alice = c.ws_ready("alice").await;
    let mut alice = alice;
    alice.send(json!({"type": "room-join", "roomId": room})).await;
    let joined = alice.recv_type("room-joined").await;
    bob.recv_type("participant-joined").await;
    drop(alice); // the connection drops without room-leave

    // Still seated inside the grace...
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, v) = c.get(&format!("/rooms/{room}"), "bob").await;
    assert_eq!(v["room"]["participants"].as_array().unwrap().len(), 2, "{v}");
    // ...and gone after it.
    let left = bob.recv_type("participant-left").await;
    assert_eq!(left["peerId"], joined["peerId"]);
    settle(&c, "confer_participants_active", 1.0).await;
}
