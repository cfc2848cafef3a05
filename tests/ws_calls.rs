//! `/rtc` call events against the real server on port 0 (SPEC 2, 4, 12):
//! relay with `callId`/`from`, several devices, REST twins, ring timeout,
//! reconnect grace, call waiting, errors, limits, auth on upgrade, token
//! expiry and refresh, heartbeat, metrics.

mod common;

use common::{TestServer, Ws};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

const SDP_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
const SDP_ANSWER: &str =
    "v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The next message, which must be of type `ty`.
async fn expect_type(w: &mut Ws, ty: &str) -> Value {
    let m = w.recv().await;
    assert_eq!(m["type"], ty, "expected `{ty}`, got {m}");
    m
}

/// The next message, which must be an `error` with `code`.
async fn expect_error(w: &mut Ws, code: &str) -> Value {
    let m = expect_type(w, "error").await;
    assert_eq!(m["code"], code, "{m}");
    assert!(m["message"].as_str().is_some_and(|s| !s.is_empty()), "error without a message: {m}");
    m
}

/// alice calls bob over `/rtc`; returns the call id (alice has read `call-created`).
async fn ws_call(alice: &mut Ws, callee: &str) -> String {
    alice.send(json!({"type": "call-initiate", "calleeId": callee, "callType": "video", "sdp": SDP_OFFER})).await;
    let m = alice.recv_type("call-created").await;
    m["callSession"]["id"].as_str().expect("callSession.id").to_owned()
}

/// An active alice → bob call set up over `/rtc`; both have read their events.
async fn active_call(alice: &mut Ws, bob: &mut Ws) -> String {
    let id = ws_call(alice, "bob").await;
    let m = bob.recv_type("call-initiate").await;
    assert_eq!(m["callId"], id.as_str());
    bob.send(json!({"type": "call-accept", "callId": id})).await;
    let m = alice.recv_type("call-accept").await;
    assert_eq!(m["callSession"]["status"], "active", "{m}");
    id
}

async fn call_status(s: &TestServer, user: &str, id: &str) -> Value {
    let (st, b) = s.get(&format!("/calls/{id}"), user).await;
    assert_eq!(st, 200, "{b}");
    b["callSession"].clone()
}

// ---------------------------------------------------------------- call flow

#[tokio::test]
async fn full_call_over_ws_with_two_callee_devices() {
    let s = TestServer::start().await;
    let mut alice = s.ws_ready("alice").await;
    let mut bob1 = s.ws_ready("bob").await;
    let mut bob2 = s.ws_ready("bob").await;

    alice
        .send(json!({"type": "call-initiate", "calleeId": "bob", "callType": "video", "sdp": SDP_OFFER, "reqId": 1}))
        .await;
    let created = expect_type(&mut alice, "call-created").await;
    assert_eq!(created["reqId"], 1, "{created}");
    let cs = &created["callSession"];
    let id = cs["id"].as_str().expect("callSession.id").to_owned();
    assert!(!id.is_empty());
    assert_eq!(cs["callerId"], "alice");
    assert_eq!(cs["calleeId"], "bob");
    assert_eq!(cs["callType"], "video");
    assert_eq!(cs["status"], "ringing");
    assert!(created["roomId"].as_str().is_some_and(|r| !r.is_empty()), "{created}");
    assert_eq!(created["roomId"], cs["roomId"]);

    // Both of bob's devices ring.
    for bob in [&mut bob1, &mut bob2] {
        let m = expect_type(bob, "call-initiate").await;
        assert_eq!(m["callId"], id.as_str(), "{m}");
        assert_eq!(m["from"], "alice");
        assert_eq!(m["callType"], "video");
        assert_eq!(m["sdp"], SDP_OFFER);
        assert_eq!(m["callSession"]["id"], id.as_str());
        assert_eq!(m["callSession"]["status"], "ringing");
    }

    // Device 1 accepts: alice gets call-accept, device 2 gets answered-elsewhere.
    bob1.send(json!({"type": "call-accept", "callId": id})).await;
    let m = expect_type(&mut alice, "call-accept").await;
    assert_eq!(m["callId"], id.as_str());
    assert_eq!(m["from"], "bob");
    assert_eq!(m["callSession"]["id"], id.as_str());
    assert_eq!(m["callSession"]["status"], "active");
    let m = expect_type(&mut bob2, "call-answered-elsewhere").await;
    assert_eq!(m["callId"], id.as_str());

    // Candidates from alice reach device 1 only.
    let cand = json!({"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    alice.send(json!({"type": "ice-candidate", "callId": id, "candidate": cand})).await;
    let m = expect_type(&mut bob1, "ice-candidate").await;
    assert_eq!(m["callId"], id.as_str());
    assert_eq!(m["from"], "alice");
    assert_eq!(m["candidate"]["candidate"], cand["candidate"]);
    assert_eq!(m["candidate"]["sdpMid"], "0");
    assert_eq!(m["candidate"]["sdpMLineIndex"], 0);
    bob2.expect_silence(ms(300)).await;

    // Answer from device 1 reaches alice; candidates flow back too.
    bob1.send(json!({"type": "call-answer", "callId": id, "sdp": SDP_ANSWER})).await;
    let m = expect_type(&mut alice, "call-answer").await;
    assert_eq!((&m["callId"], &m["from"], &m["sdp"]), (&json!(id), &json!("bob"), &json!(SDP_ANSWER)));
    let cand2 = json!({"candidate": "candidate:2 1 udp 2130706431 127.0.0.1 50002 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    bob1.send(json!({"type": "ice-candidate", "callId": id, "candidate": cand2})).await;
    let m = expect_type(&mut alice, "ice-candidate").await;
    assert_eq!((&m["from"], &m["candidate"]["candidate"]), (&json!("bob"), &cand2["candidate"]));

    // Renegotiation: alice's offer reaches device 1 only, bob's answer reaches alice.
    alice.send(json!({"type": "call-sdp-update", "callId": id, "sdp": "v=0 renegotiate", "sdpType": "offer"})).await;
    let m = expect_type(&mut bob1, "call-sdp-update").await;
    assert_eq!(m["callId"], id.as_str());
    assert_eq!(m["from"], "alice");
    assert_eq!(m["sdp"], "v=0 renegotiate");
    assert_eq!(m["sdpType"], "offer");
    bob2.expect_silence(ms(300)).await;
    bob1.send(json!({"type": "call-sdp-update", "callId": id, "sdp": "v=0 reanswer", "sdpType": "answer"})).await;
    let m = expect_type(&mut alice, "call-sdp-update").await;
    assert_eq!((&m["from"], &m["sdp"], &m["sdpType"]), (&json!("bob"), &json!("v=0 reanswer"), &json!("answer")));

    // Bob hangs up.
    bob1.send(json!({"type": "call-hangup", "callId": id})).await;
    let m = expect_type(&mut alice, "call-hangup").await;
    assert_eq!(m["callId"], id.as_str());
    assert_eq!(m["from"], "bob");
    assert_eq!(m["reason"], "hangup");

    let cs = call_status(&s, "alice", &id).await;
    assert_eq!(cs["status"], "ended", "{cs}");
    assert_eq!(cs["endReason"], "hangup", "{cs}");
    assert!(cs["answeredAt"].is_string() && cs["endedAt"].is_string(), "{cs}");
    assert!(cs["duration"].as_f64().is_some_and(|d| d >= 0.0), "{cs}");

    // Nothing after the end reaches the caller (the call is final).
    alice.send(json!({"type": "call-hangup", "callId": id, "reqId": "again"})).await;
    let m = expect_error(&mut alice, "conflict").await;
    assert_eq!(m["reqId"], "again");
}

#[tokio::test]
async fn rest_actions_emit_the_ws_events() {
    let s = TestServer::start().await;
    let mut alice = s.ws_ready("alice").await;
    let mut bob = s.ws_ready("bob").await;

    let id = s.create_call("alice", "bob").await;
    let m = expect_type(&mut bob, "call-initiate").await;
    assert_eq!(m["callId"], id.as_str(), "{m}");
    assert_eq!(m["from"], "alice");
    assert_eq!(m["callType"], "video");
    assert_eq!(m["callSession"]["id"], id.as_str());
    assert_eq!(m["callSession"]["status"], "ringing");

    let (st, b) = s.put(&format!("/calls/{id}/accept"), "bob", None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["callSession"]["status"], "active");
    let m = alice.recv_type("call-accept").await;
    assert_eq!(m["callId"], id.as_str());
    assert_eq!(m["from"], "bob");
    assert_eq!(m["callSession"]["status"], "active");

    let (st, b) = s.put(&format!("/calls/{id}/mute-audio"), "alice", Some(json!({"mute": true}))).await;
    assert_eq!((st, &b["message"]), (200, &json!("Audio muted")), "{b}");
    let m = bob.recv_type("call-participant-updated").await;
    assert_eq!(m["callId"], id.as_str());
    assert_eq!(m["participant"]["userId"], "alice", "{m}");
    assert_eq!(m["participant"]["audioMuted"], true, "{m}");
    assert_eq!(m["participant"]["videoMuted"], false, "{m}");

    let (st, b) = s.put(&format!("/calls/{id}/mute-video"), "alice", Some(json!({"mute": true}))).await;
    assert_eq!((st, &b["message"]), (200, &json!("Video muted")), "{b}");
    let m = bob.recv_type("call-participant-updated").await;
    assert_eq!(m["participant"]["videoMuted"], true, "{m}");
    assert_eq!(m["participant"]["audioMuted"], true, "{m}");

    let body = json!({"deviceId": "back-camera", "facingMode": "environment"});
    let (st, b) = s.put(&format!("/calls/{id}/switch-camera"), "bob", Some(body)).await;
    assert_eq!((st, &b["message"]), (200, &json!("Camera switched")), "{b}");
    let m = alice.recv_type("call-participant-updated").await;
    assert_eq!(m["callId"], id.as_str());
    assert_eq!(m["participant"]["userId"], "bob", "{m}");
    assert_eq!(m["participant"]["camera"]["deviceId"], "back-camera", "{m}");
    assert_eq!(m["participant"]["camera"]["facingMode"], "environment", "{m}");

    // The changes are stored on the participants.
    let cs = call_status(&s, "bob", &id).await;
    let p = |u: &str| cs["participants"].as_array().unwrap().iter().find(|p| p["userId"] == u).cloned().unwrap();
    assert_eq!((&p("alice")["audioMuted"], &p("alice")["videoMuted"]), (&json!(true), &json!(true)), "{cs}");
    assert_eq!(p("bob")["camera"]["facingMode"], "environment", "{cs}");

    let (st, b) = s.put(&format!("/calls/{id}/hangup"), "alice", None).await;
    assert_eq!((st, &b["message"]), (200, &json!("Call ended")), "{b}");
    let m = bob.recv_type("call-hangup").await;
    assert_eq!((&m["callId"], &m["from"], &m["reason"]), (&json!(id), &json!("alice"), &json!("hangup")));
}

#[tokio::test]
async fn rest_reject_sends_call_reject_to_the_caller() {
    let s = TestServer::start().await;
    let mut carol = s.ws_ready("carol").await;
    let mut bob = s.ws_ready("bob").await;
    let id = s.create_call("carol", "bob").await;
    let m = bob.recv_type("call-initiate").await;
    assert_eq!(m["from"], "carol");

    let (st, b) = s.put(&format!("/calls/{id}/reject"), "bob", Some(json!({"reason": "busy"}))).await;
    assert_eq!((st, &b["message"]), (200, &json!("Call rejected")), "{b}");
    let m = carol.recv_type("call-reject").await;
    assert_eq!(m["callId"], id.as_str());
    assert_eq!(m["from"], "bob");
    assert_eq!(m["reason"], "busy");
    assert_eq!(call_status(&s, "carol", &id).await["status"], "rejected");
}

#[tokio::test]
async fn ws_reject_sends_call_reject_to_the_caller() {
    let s = TestServer::start().await;
    let mut alice = s.ws_ready("alice").await;
    let mut bob = s.ws_ready("bob").await;
    let id = ws_call(&mut alice, "bob").await;
    bob.recv_type("call-initiate").await;
    bob.send(json!({"type": "call-reject", "callId": id, "reason": "in a meeting"})).await;
    let m = alice.recv_type("call-reject").await;
    assert_eq!((&m["callId"], &m["from"], &m["reason"]), (&json!(id), &json!("bob"), &json!("in a meeting")));
    assert_eq!(call_status(&s, "alice", &id).await["status"], "rejected");
}

// ---------------------------------------------------------------- timers

#[tokio::test]
async fn ring_timeout_makes_the_call_missed_for_both() {
    let s = TestServer::start_with(|c| c.calls.ring_timeout = secs(1).into()).await;
    let mut alice = s.ws_ready("alice").await;
    let mut bob = s.ws_ready("bob").await;
    let t0 = Instant::now();
    let id = ws_call(&mut alice, "bob").await;
    bob.recv_type("call-initiate").await;

    for w in [&mut alice, &mut bob] {
        let m = w.recv_type("call-ended").await;
        assert_eq!(m["callId"], id.as_str(), "{m}");
        assert_eq!(m["status"], "missed", "{m}");
        assert_eq!(m["endReason"], "timeout", "{m}");
    }
    let took = t0.elapsed();
    assert!(took >= ms(900), "missed after {took:?}, before the 1 s ring timeout");
    let cs = call_status(&s, "bob", &id).await;
    assert_eq!(cs["status"], "missed", "{cs}");
    assert_eq!(cs["endReason"], "timeout", "{cs}");
}

#[tokio::test]
async fn reconnect_grace_ends_the_call_when_the_callee_stays_away() {
    let s = TestServer::start_with(|c| c.calls.reconnect_grace = secs(1).into()).await;
    let mut alice = s.ws_ready("alice").await;
    let mut bob = s.ws_ready("bob").await;
    let id = active_call(&mut alice, &mut bob).await;

    drop(bob);
    let t0 = Instant::now();
    let m = alice.try_recv(secs(4)).await.expect("call-ended within 4 s of bob's socket dropping");
    let took = t0.elapsed();
    assert_eq!(m["type"], "call-ended", "{m}");
    assert_eq!(m["callId"], id.as_str());
    assert_eq!(m["status"], "ended");
    assert_eq!(m["endReason"], "disconnected");
    assert!(took >= ms(800), "ended after {took:?}, before the 1 s grace");
    let cs = call_status(&s, "alice", &id).await;
    assert_eq!((&cs["status"], &cs["endReason"]), (&json!("ended"), &json!("disconnected")), "{cs}");
}

#[tokio::test]
async fn reconnect_within_grace_keeps_the_call() {
    let s = TestServer::start_with(|c| c.calls.reconnect_grace = secs(2).into()).await;
    let mut alice = s.ws_ready("alice").await;
    let mut bob = s.ws_ready("bob").await;
    let id = active_call(&mut alice, &mut bob).await;

    drop(bob);
    tokio::time::sleep(ms(500)).await;
    let mut bob = s.ws_ready("bob").await;
    // Past the grace: nothing ends.
    alice.expect_silence(secs(3)).await;
    let cs = call_status(&s, "alice", &id).await;
    assert_eq!(cs["status"], "active", "{cs}");
    // The relay reaches bob's new connection.
    let cand = json!({"candidate": "candidate:9 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    alice.send(json!({"type": "ice-candidate", "callId": id, "candidate": cand})).await;
    let m = bob.recv_type("ice-candidate").await;
    assert_eq!((&m["callId"], &m["from"]), (&json!(id), &json!("alice")));
}

#[tokio::test]
async fn grace_does_not_end_a_call_of_a_rest_only_callee() {
    let s = TestServer::start_with(|c| c.calls.reconnect_grace = secs(1).into()).await;
    let mut alice = s.ws_ready("alice").await;
    // bob never opens a WebSocket.
    let id = ws_call(&mut alice, "bob").await;
    let (st, b) = s.put(&format!("/calls/{id}/accept"), "bob", None).await;
    assert_eq!(st, 200, "{b}");
    alice.recv_type("call-accept").await;
    alice.expect_silence(ms(2500)).await;
    assert_eq!(call_status(&s, "bob", &id).await["status"], "active");
}

#[tokio::test]
async fn grace_ignores_a_socket_closed_before_the_call() {
    let s = TestServer::start_with(|c| c.calls.reconnect_grace = secs(1).into()).await;
    let mut alice = s.ws_ready("alice").await;
    // bob had a socket, but it closed before the call existed.
    let bob = s.ws_ready("bob").await;
    drop(bob);
    wait_metric(&s, "confer_ws_connections", 1.0).await;
    let id = ws_call(&mut alice, "bob").await;
    let (st, b) = s.put(&format!("/calls/{id}/accept"), "bob", None).await;
    assert_eq!(st, 200, "{b}");
    alice.recv_type("call-accept").await;
    // bob's grace timer fires during this wait; the call was never his over /rtc.
    alice.expect_silence(ms(2500)).await;
    assert_eq!(call_status(&s, "alice", &id).await["status"], "active");
}

#[tokio::test]
async fn call_waiting_rings_a_busy_callee() {
    let s = TestServer::start().await;
    let mut alice = s.ws_ready("alice").await;
    let mut bob = s.ws_ready("bob").await;
    let mut carol = s.ws_ready("carol").await;
    let first = active_call(&mut alice, &mut bob).await;

    let second = ws_call(&mut carol, "bob").await;
    assert_ne!(first, second);
    let m = bob.recv_type("call-initiate").await;
    assert_eq!(m["callId"], second.as_str());
    assert_eq!(m["from"], "carol");
    assert_eq!(m["callSession"]["status"], "ringing");
    assert_eq!(call_status(&s, "carol", &second).await["status"], "ringing");
    assert_eq!(call_status(&s, "alice", &first).await["status"], "active");
    alice.expect_silence(ms(200)).await;
}

// ---------------------------------------------------------------- protocol errors

#[tokio::test]
async fn ping_pong_echoes_req_id() {
    let s = TestServer::start().await;
    let mut w = s.ws_ready("alice").await;
    w.send(json!({"type": "ping", "reqId": 42})).await;
    assert_eq!(w.recv().await, json!({"type": "pong", "reqId": 42}));
    w.send(json!({"type": "ping", "reqId": "abc"})).await;
    assert_eq!(w.recv().await, json!({"type": "pong", "reqId": "abc"}));
    w.send(json!({"type": "ping"})).await;
    assert_eq!(w.recv().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn bad_messages_get_bad_request_and_the_socket_stays_up() {
    let s = TestServer::start().await;
    let mut w = s.ws_ready("alice").await;

    w.send_text("{not json".into()).await;
    expect_error(&mut w, "bad-request").await;
    w.sync().await;

    w.send(json!({"type": "teleport", "reqId": 5})).await;
    let m = expect_error(&mut w, "bad-request").await;
    assert_eq!(m["reqId"], 5);
    assert!(m["message"].as_str().unwrap().contains("teleport"), "{m}");

    w.send(json!({"reqId": 6, "calleeId": "bob"})).await;
    let m = expect_error(&mut w, "bad-request").await;
    assert_eq!(m["reqId"], 6);

    w.send(json!({"type": "call-accept", "reqId": "m"})).await;
    let m = expect_error(&mut w, "bad-request").await;
    assert_eq!(m["reqId"], "m");
    assert!(m["message"].as_str().unwrap().contains("callId"), "message must name callId: {m}");

    w.send(json!({"type": "call-initiate", "calleeId": "bob", "callType": "hologram", "reqId": 8})).await;
    let m = expect_error(&mut w, "bad-request").await;
    assert_eq!(m["reqId"], 8);
    assert!(m["message"].as_str().unwrap().contains("hologram"), "{m}");

    w.send(json!({"type": "call-sdp-update", "callId": "x", "sdp": "v=0", "sdpType": "pranswer", "reqId": 9})).await;
    let m = expect_error(&mut w, "bad-request").await;
    assert_eq!(m["reqId"], 9);

    w.send(json!({"type": "call-initiate", "calleeId": "alice", "callType": "audio", "reqId": 10})).await;
    let m = expect_error(&mut w, "bad-request").await;
    assert_eq!(m["reqId"], 10, "calling yourself: {m}");

    w.inner.send(Message::Binary(vec![1u8, 2, 3].into())).await.unwrap();
    expect_error(&mut w, "bad-request").await;

    w.send(json!({"type": "ping", "reqId": "still-up"})).await;
    assert_eq!(w.recv().await, json!({"type": "pong", "reqId": "still-up"}));
}

#[tokio::test]
async fn strangers_get_not_found_for_someone_elses_call() {
    let s = TestServer::start().await;
    let mut alice = s.ws_ready("alice").await;
    let mut bob = s.ws_ready("bob").await;
    let mut mallory = s.ws_ready("mallory").await;
    let id = active_call(&mut alice, &mut bob).await;

    let cand = json!({"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    let attempts = [
        json!({"type": "call-accept", "callId": id, "reqId": 1}),
        json!({"type": "call-answer", "callId": id, "sdp": "v=0", "reqId": 2}),
        json!({"type": "ice-candidate", "callId": id, "candidate": cand, "reqId": 3}),
        json!({"type": "call-sdp-update", "callId": id, "sdp": "v=0", "sdpType": "offer", "reqId": 4}),
        json!({"type": "call-reject", "callId": id, "reqId": 5}),
        json!({"type": "call-hangup", "callId": id, "reqId": 6}),
        json!({"type": "call-hangup", "callId": "no-such-call", "reqId": 7}),
    ];
    for a in attempts {
        let req = a["reqId"].clone();
        mallory.send(a).await;
        let m = expect_error(&mut mallory, "not-found").await;
        assert_eq!(m["reqId"], req, "{m}");
    }
    // Nothing leaked to the parties and the call is untouched.
    alice.expect_silence(ms(200)).await;
    bob.expect_silence(ms(200)).await;
    assert_eq!(call_status(&s, "alice", &id).await["status"], "active");
}

// ---------------------------------------------------------------- limits

/// A JSON ping padded to `len` bytes.
fn big_ping(len: usize) -> String {
    let head = r#"{"type":"ping","reqId":"big","pad":""#;
    let pad = "x".repeat(len - head.len() - 2);
    format!("{head}{pad}\"}}")
}

#[tokio::test]
async fn oversized_frames_get_too_large_then_close_1008_at_the_twentieth() {
    let s = TestServer::start().await;
    let mut w = s.ws_ready("alice").await;
    let frame = big_ping(70 * 1024);
    assert_eq!(frame.len(), 70 * 1024);

    w.send_text(frame.clone()).await;
    expect_error(&mut w, "too-large").await;
    w.sync().await; // still up

    for _ in 0..18 {
        w.send_text(frame.clone()).await;
    }
    for _ in 0..18 {
        expect_error(&mut w, "too-large").await;
    }
    w.sync().await; // 19 oversized frames: still up

    w.send_text(frame).await;
    expect_error(&mut w, "too-large").await;
    assert_eq!(w.closed(secs(5)).await, Some(1008));
}

#[tokio::test]
async fn a_frame_of_exactly_64_kib_is_accepted() {
    let s = TestServer::start().await;
    let mut w = s.ws_ready("alice").await;
    w.send_text(big_ping(64 * 1024)).await;
    let m = w.recv().await;
    assert_eq!(m, json!({"type": "pong", "reqId": "big"}));
}

#[tokio::test]
async fn flooding_gets_rate_limited_then_close_1008() {
    let s = TestServer::start().await;
    let mut w = s.ws_ready("alice").await;
    // Sent as fast as possible; the server may close before reading them all.
    for i in 0..300 {
        let t = json!({"type": "ping", "reqId": i}).to_string();
        if w.inner.send(Message::Text(t.into())).await.is_err() {
            break;
        }
    }
    let (mut pongs, mut limited) = (0, 0);
    let close = loop {
        match tokio::time::timeout(secs(5), w.inner.next()).await.expect("the server answers within 5 s") {
            Some(Ok(Message::Text(t))) => {
                let m: Value = serde_json::from_str(&t).unwrap();
                match m["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") => {
                        assert_eq!(m["code"], "rate-limited", "{m}");
                        assert!(m["reqId"].is_number(), "rate-limited error must echo reqId: {m}");
                        limited += 1;
                    }
                    _ => panic!("unexpected {m}"),
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket error instead of a close frame: {e} ({pongs} pongs, {limited} limited)"),
            None => panic!("stream ended without a close frame ({pongs} pongs, {limited} limited)"),
        }
    };
    assert!(limited >= 1, "no rate-limited error ({pongs} pongs)");
    // Burst 100, less the sync ping of `ws_ready`, plus a little refill while
    // the frames are read.
    assert!((99..=130).contains(&pongs), "{pongs} pongs for a burst of 100");
    assert_eq!(close, Some(1008), "{pongs} pongs, {limited} limited");
}

#[tokio::test]
async fn a_short_burst_is_limited_but_the_socket_stays_up() {
    let s = TestServer::start().await;
    let mut w = s.ws_ready("alice").await;
    // 110 at once: the burst is 100, so a few are refused, well under the 50-in-a-row close.
    for i in 0..110 {
        w.send(json!({"type": "ping", "reqId": i})).await;
    }
    let mut limited = 0;
    for _ in 0..110 {
        let m = w.recv().await;
        if m["type"] == "error" {
            assert_eq!(m["code"], "rate-limited", "{m}");
            limited += 1;
        }
    }
    assert!(limited >= 1, "110 messages at once: none rate-limited");
    // After a second the bucket has refilled.
    tokio::time::sleep(secs(1)).await;
    w.sync().await;
}

// ---------------------------------------------------------------- auth

fn http_status(r: Result<Ws, tungstenite::Error>) -> (u16, Value) {
    match r {
        Ok(_) => panic!("upgrade succeeded, expected 401"),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP error, got {e}"),
    }
}

#[tokio::test]
async fn upgrade_needs_a_valid_token() {
    let s = TestServer::start().await;

    let no_token = tokio_tungstenite::connect_async(format!("ws://{}/rtc", s.addr)).await.map(|(w, _)| Ws { inner: w });
    let (st, b) = http_status(no_token);
    assert_eq!(st, 401, "{b}");
    assert_eq!(b["error"]["code"], "unauthorized", "{b}");

    let (st, _) = http_status(s.ws_token("garbage").await);
    assert_eq!(st, 401);

    let expired = s.token_with("alice", |c| c.exp = confer::auth::unix_now() - 30);
    let (st, b) = http_status(s.ws_token(&expired).await);
    assert_eq!(st, 401, "{b}");

    let other = confer::auth::TokenKeys::new(b"some-other-secret-that-is-long-enough");
    let forged = other.sign(&confer::auth::Claims::new("alice".into(), secs(60)));
    let (st, _) = http_status(s.ws_token(&forged).await);
    assert_eq!(st, 401);

    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let alg_none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(format!(r#"{{"sub":"alice","exp":{}}}"#, confer::auth::unix_now() + 600))
    );
    let (st, _) = http_status(s.ws_token(&alg_none).await);
    assert_eq!(st, 401);

    // No session was opened by any of these.
    assert_eq!(s.metric("confer_ws_connections").await, Some(0.0));
}

#[tokio::test]
async fn bearer_header_works_for_the_upgrade() {
    let s = TestServer::start().await;
    let mut req = format!("ws://{}/rtc", s.addr).into_client_request().unwrap();
    req.headers_mut().insert("Authorization", format!("Bearer {}", s.token("alice")).parse().unwrap());
    let (inner, resp) = tokio_tungstenite::connect_async(req).await.expect("upgrade with a bearer header");
    assert_eq!(resp.status().as_u16(), 101);
    let mut w = Ws { inner };
    w.sync().await;
    // It is alice's session: bob's call rings here.
    let mut bob = s.ws_ready("bob").await;
    let id = ws_call(&mut bob, "alice").await;
    let m = w.recv_type("call-initiate").await;
    assert_eq!((&m["callId"], &m["from"]), (&json!(id), &json!("bob")));
}

#[tokio::test]
async fn token_expiring_mid_session_warns_then_closes_4001() {
    let s = TestServer::start_with(|c| c.ws.token_grace = secs(1).into()).await;
    let exp = confer::auth::unix_now() + 1;
    let token = s.token_with("alice", |c| c.exp = exp);
    let mut w = s.ws_token(&token).await.unwrap();
    w.sync().await;

    let m = w.try_recv(secs(9)).await.expect("token-expired within 9 s");
    let warned = Instant::now();
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["code"], "token-expired", "{m}");
    assert!(confer::auth::unix_now() >= exp, "warned before the token expired");

    assert_eq!(w.closed(secs(4)).await, Some(4001));
    let grace = warned.elapsed();
    assert!(grace >= ms(700) && grace <= ms(2500), "closed {grace:?} after the warning, grace is 1 s");
}

#[tokio::test]
async fn refresh_after_the_warning_keeps_the_session() {
    let s = TestServer::start_with(|c| c.ws.token_grace = secs(1).into()).await;
    let token = s.token_with("alice", |c| c.exp = confer::auth::unix_now() + 1);
    let mut w = s.ws_token(&token).await.unwrap();
    w.sync().await;

    let m = w.try_recv(secs(9)).await.expect("token-expired within 9 s");
    assert_eq!(m["code"], "token-expired", "{m}");
    let fresh = s.token("alice");
    let fresh_exp = s.keys.verify(&fresh).unwrap().exp;
    w.send(json!({"type": "refresh", "token": fresh, "reqId": "r"})).await;
    let m = w.recv().await;
    assert_eq!(m["type"], "refreshed", "{m}");
    assert_eq!(m["reqId"], "r");
    assert_eq!(m["exp"], fresh_exp);

    // Well past the 1 s grace: still open and working.
    w.expect_silence(secs(2)).await;
    w.sync().await;
}

#[tokio::test]
async fn refresh_with_another_users_token_is_forbidden() {
    let s = TestServer::start().await;
    let mut w = s.ws_ready("alice").await;
    w.send(json!({"type": "refresh", "token": s.token("mallory"), "reqId": 3})).await;
    let m = expect_error(&mut w, "forbidden").await;
    assert_eq!(m["reqId"], 3);
    // Still alice, still up: a call to alice rings here.
    let mut bob = s.ws_ready("bob").await;
    ws_call(&mut bob, "alice").await;
    let m = w.recv_type("call-initiate").await;
    assert_eq!(m["from"], "bob");
}

// ---------------------------------------------------------------- heartbeat

#[tokio::test]
async fn heartbeat_keeps_a_reading_client_and_closes_a_silent_one() {
    let s = TestServer::start_with(|c| {
        c.ws.ping_interval = ms(200).into();
        c.ws.idle_timeout = secs(1).into();
    })
    .await;
    let mut reader = s.ws_ready("alice").await;
    let mut silent = s.ws_ready("bob").await;

    // The reader polls its stream for 2 s; tungstenite answers the pings.
    let deadline = tokio::time::Instant::now() + secs(2);
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(deadline, reader.inner.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(other) => panic!("reader: unexpected {other:?} after {pings} pings"),
        }
    }
    assert!(pings >= 5, "only {pings} pings in 2 s at a 200 ms interval");
    reader.sync().await;

    // The silent client neither read nor sent for those 2 s. Read what the
    // server sent straight off the TCP socket (tungstenite would answer the
    // queued pings into a closed connection): pings, then a close frame.
    let frames = raw_server_frames(&mut silent, secs(3)).await;
    let (last, pings) = frames.split_last().expect("the server sent frames");
    assert!(!pings.is_empty(), "no ping before the idle close: {frames:?}");
    // 1 s idle at a 200 ms interval is about 5 pings; many more means the idle
    // close came late (or only because this test stopped waiting).
    assert!(pings.len() <= 8, "{} pings before the idle close", pings.len());
    assert!(pings.iter().all(|(op, _)| *op == 0x9), "expected only pings before the close: {frames:?}");
    assert_eq!(last.0, 0x8, "the last frame must be a close: {frames:?}");
    assert!(last.1.len() >= 2, "close frame without a code");
    assert_eq!(u16::from_be_bytes([last.1[0], last.1[1]]), 1001);
}

/// Every frame the server sends until it closes the TCP connection, read raw
/// (opcode, payload); server frames are unmasked.
async fn raw_server_frames(w: &mut Ws, wait: Duration) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = w.inner.get_mut() else { panic!("plain TCP expected") };
    let mut bytes = Vec::new();
    tokio::time::timeout(wait, tcp.read_to_end(&mut bytes))
        .await
        .expect("the server closes the connection")
        .expect("clean end of stream");
    let mut frames = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let (b0, b1) = (bytes[i], bytes[i + 1]);
        assert_eq!(b1 & 0x80, 0, "server frames must not be masked");
        let (len, head) = match b1 & 0x7f {
            126 => (u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[i + 2..i + 10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        frames.push((b0 & 0x0f, bytes[i + head..i + head + len].to_vec()));
        i += head + len;
    }
    frames
}

// ---------------------------------------------------------------- metrics

async fn wait_metric(s: &TestServer, name: &str, want: f64) {
    let deadline = Instant::now() + secs(3);
    loop {
        let v = s.metric(name).await;
        if v == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {v:?}, expected {want}");
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test]
async fn ws_connections_metric_follows_open_sockets() {
    let s = TestServer::start().await;
    assert_eq!(s.metric("confer_ws_connections").await, Some(0.0));
    let a = s.ws_ready("alice").await;
    let b1 = s.ws_ready("bob").await;
    let mut b2 = s.ws_ready("bob").await;
    wait_metric(&s, "confer_ws_connections", 3.0).await;
    b2.inner.close(None).await.unwrap();
    b2.closed(secs(2)).await;
    wait_metric(&s, "confer_ws_connections", 2.0).await;
    drop(a);
    drop(b1);
    wait_metric(&s, "confer_ws_connections", 0.0).await;
}

#[tokio::test]
async fn relayed_ice_candidates_are_what_the_sender_sent() {
    let s = TestServer::start().await;
    let mut alice = s.ws_ready("alice").await;
    let mut bob = s.ws_ready("bob").await;
    let id = active_call(&mut alice, &mut bob).await;

    let sent = [
        json!({"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}),
        json!({"candidate": "candidate:2 1 udp 1 127.0.0.1 9 typ host", "sdpMid": null, "sdpMLineIndex": 1,
               "usernameFragment": "Xy1z"}),
        json!({"candidate": "candidate:3 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "1"}),
        json!({"candidate": ""}),
        json!({"candidate": "candidate:4 1 udp 1 127.0.0.1 9 typ host", "sdpMLineIndex": 0, "experimental": [1, 2]}),
    ];
    for cand in sent {
        alice.send(json!({"type": "ice-candidate", "callId": id, "candidate": cand})).await;
        let m = expect_type(&mut bob, "ice-candidate").await;
        assert_eq!((&m["callId"], &m["from"]), (&json!(id), &json!("alice")), "{m}");
        assert_eq!(m["candidate"], cand, "relayed unchanged");
    }
    // What SPEC 4 requires is still checked, and the field named.
    let bad = [
        (json!({"sdpMid": "0", "sdpMLineIndex": 0}), "candidate"),
        (json!({"candidate": 5}), "candidate.candidate"),
        (json!({"candidate": "c", "sdpMLineIndex": "0"}), "candidate.sdpMLineIndex"),
        (json!({"candidate": "c", "sdpMid": 0}), "candidate.sdpMid"),
        (json!("candidate:1 1 udp 1 127.0.0.1 9 typ host"), "candidate"),
    ];
    for (i, (cand, field)) in bad.into_iter().enumerate() {
        alice.send(json!({"type": "ice-candidate", "callId": id, "candidate": cand, "reqId": i})).await;
        let m = expect_error(&mut alice, "bad-request").await;
        assert_eq!(m["reqId"], i, "{m}");
        let msg = m["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("ice-candidate: {field}")), "{cand} -> {msg}");
    }
    bob.expect_silence(ms(300)).await;
}
