//! Chat and participant state in a room (SPEC 4 `room-message`,
//! `participant-state`, `GET /rooms/:roomId/messages`), over real WebSockets
//! to the real server on port 0: who may send and read, direct messages, the
//! history of 200 kept across a restart, the size and rate limits, text
//! relayed unchanged, and a raised hand seen by others and by a late joiner.

mod common;

use common::{test_config, TestServer, Ws};
use serde_json::{json, Value};
use std::time::Duration;

async fn create_room(c: &TestServer, owner: &str, body: Value) -> String {
    let (status, v) = c.post("/rooms", owner, body).await;
    assert_eq!(status, 201, "{v}");
    v["room"]["id"].as_str().unwrap().to_owned()
}

/// `user` joins `room` over a fresh WebSocket; the socket and its peerId.
async fn join(c: &TestServer, user: &str, room: &str) -> (Ws, Value) {
    let mut ws = c.ws_ready(user).await;
    ws.send(json!({"type": "room-join", "roomId": room})).await;
    let joined = ws.recv_type("room-joined").await;
    (ws, joined)
}

async fn say(ws: &mut Ws, room: &str, text: &str) {
    ws.send(json!({"type": "room-message", "roomId": room, "text": text})).await;
}

/// The next `room-message` or `error`, skipping everything else.
async fn next_chat(ws: &mut Ws) -> Value {
    loop {
        let m = ws.recv().await;
        if m["type"] == "room-message" || m["type"] == "error" {
            return m;
        }
    }
}

/// No `room-message` arrives for a moment (other room events may).
async fn no_chat(ws: &mut Ws) {
    while let Some(m) = ws.try_recv(Duration::from_millis(300)).await {
        assert_ne!(m["type"], "room-message", "{m}");
    }
}

#[tokio::test]
async fn a_message_reaches_everyone_in_the_room_unchanged_and_only_members_send_or_read() {
    let c = TestServer::start().await;
    let room = create_room(&c, "alice", json!({"name": "standup"})).await;
    let (mut alice, a) = join(&c, "alice", &room).await;
    let (mut bob, _) = join(&c, "bob", &room).await;
    let html = r#"<img src=x onerror="alert(1)"> & "quotes" ünïcode"#;
    say(&mut alice, &room, html).await;
    for ws in [&mut alice, &mut bob] {
        let m = next_chat(ws).await;
        assert_eq!(m["text"], html, "relayed exactly as written: {m}");
        assert_eq!(m["roomId"], room.as_str());
        assert_eq!(m["from"]["peerId"], a["peerId"]);
        assert_eq!(m["from"]["userId"], "alice");
        assert!(m["id"].as_str().unwrap().starts_with("msg_"), "{m}");
        assert!(m["at"].as_str().unwrap().ends_with('Z'), "{m}");
        assert!(m.get("to").is_none(), "{m}");
    }

    // Someone who has not joined may neither send nor read.
    let mut eve = c.ws_ready("eve").await;
    say(&mut eve, &room, "let me in").await;
    let e = next_chat(&mut eve).await;
    assert_eq!(e["code"], "conflict", "{e}");
    assert!(e["message"].as_str().unwrap().contains("room-join"), "{e}");
    no_chat(&mut alice).await;
    let path = format!("/rooms/{room}/messages");
    let (status, body) = c.get(&path, "eve").await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, _) = c.get("/rooms/room_nope/messages", "alice").await;
    assert_eq!(status, 404);
    let (status, _) = c.call("GET", &path, None, None).await;
    assert_eq!(status, 401);
    // Members, the creator and admins may read.
    let (status, body) = c.get(&path, "bob").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"][0]["text"], html);
    let admin = c.token_with("root", |cl| cl.admin = true);
    let (status, _) = c.call_token("GET", &path, Some(&admin), None).await;
    assert_eq!(status, 200);
    // GET /rooms/:id does not carry the chat to those who may see the room.
    let (_, r) = c.get(&format!("/rooms/{room}"), "eve").await;
    assert!(r["room"].get("messages").is_none(), "{r}");

    // A member who left is no longer one.
    bob.send(json!({"type": "room-leave", "roomId": room})).await;
    bob.sync().await;
    let (status, _) = c.get(&path, "bob").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_direct_message_reaches_only_its_recipient_and_its_sender_and_is_not_kept() {
    let c = TestServer::start().await;
    let room = create_room(&c, "alice", json!({"name": "dm"})).await;
    let (mut alice, _) = join(&c, "alice", &room).await;
    let (mut bob, b) = join(&c, "bob", &room).await;
    let (mut carol, _) = join(&c, "carol", &room).await;
    let bob_peer = b["peerId"].as_str().unwrap();
    alice.send(json!({"type": "room-message", "roomId": room, "text": "psst", "to": bob_peer})).await;
    for ws in [&mut bob, &mut alice] {
        let m = next_chat(ws).await;
        assert_eq!((m["text"].as_str(), m["to"].as_str()), (Some("psst"), Some(bob_peer)), "{m}");
    }
    no_chat(&mut carol).await;
    let (_, body) = c.get(&format!("/rooms/{room}/messages"), "alice").await;
    assert_eq!(body["messages"], json!([]), "direct messages are not in the history: {body}");

    // `to` must be someone in the room.
    alice.send(json!({"type": "room-message", "roomId": room, "text": "x", "to": "peer_nobody", "reqId": 9})).await;
    let e = next_chat(&mut alice).await;
    assert_eq!((e["code"].as_str(), e["reqId"].as_i64()), (Some("not-found"), Some(9)), "{e}");
    assert!(e["message"].as_str().unwrap().contains("to"), "{e}");
    no_chat(&mut bob).await;
}

#[tokio::test]
async fn text_is_one_to_4096_bytes() {
    let c = TestServer::start().await;
    let room = create_room(&c, "alice", json!({"name": "big"})).await;
    let (mut alice, _) = join(&c, "alice", &room).await;
    for bad in ["a".repeat(4097), String::new()] {
        say(&mut alice, &room, &bad).await;
        let e = next_chat(&mut alice).await;
        assert_eq!(e["code"], "bad-request", "{e}");
        assert!(e["message"].as_str().unwrap().contains("text"), "{e}");
    }
    alice.send(json!({"type": "room-message", "roomId": room, "text": 5})).await;
    let e = next_chat(&mut alice).await;
    assert!(e["code"] == "bad-request" && e["message"].as_str().unwrap().contains("text"), "{e}");
    let max = "é".repeat(2048);
    say(&mut alice, &room, &max).await;
    assert_eq!(next_chat(&mut alice).await["text"], max.as_str());
}

#[tokio::test]
async fn chat_over_its_rate_is_refused_and_the_socket_stays_up() {
    let c = TestServer::start().await;
    let room = create_room(&c, "alice", json!({"name": "spam"})).await;
    let (mut alice, _) = join(&c, "alice", &room).await;
    let (mut bob, _) = join(&c, "bob", &room).await;
    for i in 0..15 {
        say(&mut alice, &room, &format!("m{i}")).await;
    }
    let (mut sent, mut limited) = (0, 0);
    for _ in 0..15 {
        let m = next_chat(&mut alice).await;
        match m["type"].as_str() {
            Some("room-message") => sent += 1,
            _ => {
                assert_eq!(m["code"], "rate-limited", "{m}");
                limited += 1;
            }
        }
    }
    // A burst of 10, and at 5/s not much more in the moment it took.
    assert!((10..=11).contains(&sent) && limited == 15 - sent, "{sent} sent, {limited} limited");
    let mut got = 0;
    while let Some(m) = bob.try_recv(Duration::from_millis(300)).await {
        got += usize::from(m["type"] == "room-message");
    }
    assert_eq!(got, sent, "bob got exactly what was let through");
    // Tokens come back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    say(&mut alice, &room, "again").await;
    assert_eq!(next_chat(&mut alice).await["text"], "again");
}

#[tokio::test]
async fn the_room_keeps_its_last_200_messages_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut cfg = test_config(dir.path());
        cfg.rooms.chat_rate = 10_000.0;
        cfg.rooms.chat_burst = 10_000.0;
        cfg
    };
    let c = TestServer::start_config(config()).await;
    let room = create_room(&c, "alice", json!({"name": "log"})).await;
    // Three senders in turn, each waiting for its own message to come back:
    // a known order, and no socket over its own 100-message burst (SPEC 12).
    let mut senders = Vec::new();
    for user in ["alice", "bob", "carol"] {
        senders.push(join(&c, user, &room).await.0);
    }
    for i in 0..205 {
        let ws = &mut senders[i % 3];
        say(ws, &room, &format!("message {i}")).await;
        loop {
            let m = next_chat(ws).await;
            assert_eq!(m["type"], "room-message", "{m}");
            if m["text"] == format!("message {i}").as_str() {
                break;
            }
        }
    }
    let path = format!("/rooms/{room}/messages");
    let texts = |body: &Value| -> Vec<String> {
        body["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap().to_owned()).collect()
    };
    let want: Vec<String> = (5..205).map(|i| format!("message {i}")).collect();
    let (status, body) = c.get(&path, "alice").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(texts(&body), want, "the last 200, oldest first");
    drop(senders);
    c.stop().await;

    let c = TestServer::start_config(config()).await;
    let (status, after) = c.get(&path, "alice").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(texts(&after), want, "kept with the room");
    assert_eq!(after["messages"], body["messages"], "ids, senders and times too");
}

#[tokio::test]
async fn a_raised_hand_is_seen_by_the_others_and_by_a_late_joiner() {
    let c = TestServer::start().await;
    let room = create_room(&c, "alice", json!({"name": "hands"})).await;
    let (mut alice, _) = join(&c, "alice", &room).await;
    let (mut bob, b) = join(&c, "bob", &room).await;
    alice.recv_type("participant-joined").await;
    bob.send(json!({"type": "participant-state", "roomId": room, "handRaised": true})).await;
    let up = alice.recv_type("participant-updated").await;
    assert_eq!(up["participant"]["peerId"], b["peerId"]);
    assert_eq!(up["participant"]["handRaised"], true, "{up}");
    bob.sync().await;

    let (_, joined) = join(&c, "carol", &room).await;
    let seats = joined["room"]["participants"].as_array().unwrap();
    let bob_seat = seats.iter().find(|p| p["userId"] == "bob").unwrap();
    let alice_seat = seats.iter().find(|p| p["userId"] == "alice").unwrap();
    assert_eq!((bob_seat["handRaised"].as_bool(), alice_seat["handRaised"].as_bool()), (Some(true), Some(false)));

    // Lowered again; a state that does not change tells nobody.
    bob.send(json!({"type": "participant-state", "roomId": room, "handRaised": false})).await;
    let down = alice.recv_type("participant-updated").await;
    assert_eq!(down["participant"]["handRaised"], false, "{down}");
    bob.send(json!({"type": "participant-state", "roomId": room, "handRaised": false})).await;
    bob.sync().await;
    while let Some(m) = alice.try_recv(Duration::from_millis(300)).await {
        assert_ne!(m["type"], "participant-updated", "{m}");
    }
    // Only a participant may change its state.
    let mut eve = c.ws_ready("eve").await;
    eve.send(json!({"type": "participant-state", "roomId": room, "handRaised": true})).await;
    assert_eq!(eve.recv_type("error").await["code"], "conflict");
    eve.send(json!({"type": "participant-state", "roomId": room, "handRaised": "yes"})).await;
    let e = eve.recv_type("error").await;
    assert!(e["code"] == "bad-request" && e["message"].as_str().unwrap().contains("handRaised"), "{e}");
}
