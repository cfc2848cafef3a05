//! The token's grants in a room (SPEC 2): `canPublish: false` gets
//! `error {code: "forbidden"}` for `publish-offer` and no publisher
//! PeerConnection; `canSubscribe: false` sees the room (participants, tracks)
//! but gets no `subscribe-offer`, no media, and `forbidden` for
//! `track-subscribe`. Over the real server, with a webrtc-rs publisher.

mod common;

use common::{TestServer, Ws};
use confer::loadtest::peer::{video_track, RtcPeer, Seen};
use rtc::peer_connection::sdp::RTCSessionDescription;
use serde_json::{json, Value};
use std::time::Duration;

async fn join(w: &mut Ws, room: &str) -> Value {
    w.send(json!({"type": "room-join", "roomId": room})).await;
    w.recv_type("room-joined").await
}

/// Messages of `ty` that arrive within `wait` (the others are dropped).
async fn collect(w: &mut Ws, ty: &str, wait: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    while let Some(m) = w.try_recv(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
        if m["type"] == ty {
            out.push(m);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_can_publish_has_its_publish_offer_refused() {
    let c = TestServer::start().await;
    let (_, v) = c.post("/rooms", "alice", json!({"name": "stage"})).await;
    let room = v["room"]["id"].as_str().unwrap().to_owned();
    let viewer = c.token_with("vera", |cl| cl.can_publish = false);
    let mut vera = c.ws_token(&viewer).await.unwrap();
    join(&mut vera, &room).await;

    // A real offer, so only the grant can be the reason for the refusal.
    let peer = RtcPeer::start().await;
    let (offer, mid) = common::camera_offer(&peer).await;
    let publish = json!({"type": "publish-offer", "roomId": room, "sdp": offer,
                         "tracks": [{"mid": mid, "source": "camera"}], "reqId": "p1"});
    vera.send(publish.clone()).await;
    let m = vera.recv().await;
    assert_eq!((&m["type"], &m["code"], &m["reqId"]), (&json!("error"), &json!("forbidden"), &json!("p1")), "{m}");
    assert!(m["message"].as_str().unwrap().contains("canPublish"), "{m}");
    // Nothing follows: no publish-answer, no candidate, no track.
    let later = collect(&mut vera, "publish-answer", Duration::from_millis(1500)).await;
    assert!(later.is_empty(), "{later:?}");
    let (_, r) = c.get(&format!("/rooms/{room}"), "alice").await;
    assert_eq!(r["room"]["participants"][0]["tracks"], json!([]), "{r}");

    // The same offer from a token that may publish is answered.
    let mut alice = c.ws_ready("alice").await;
    join(&mut alice, &room).await;
    alice.send(publish).await;
    let m = alice.recv_type("publish-answer").await;
    assert!(m["sdp"].as_str().unwrap().starts_with("v=0"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_can_subscribe_sees_the_tracks_but_receives_no_media() {
    let c = TestServer::start().await;
    let (_, v) = c.post("/rooms", "alice", json!({"name": "broadcast"})).await;
    let room = v["room"]["id"].as_str().unwrap().to_owned();
    let mut alice_ws = c.ws_ready("alice").await;
    join(&mut alice_ws, &room).await;
    let mut carol_ws = c.ws_ready("carol").await;
    join(&mut carol_ws, &room).await;
    let mut bob_ws = c.ws_token(&c.token_with("bob", |cl| cl.can_subscribe = false)).await.unwrap();
    join(&mut bob_ws, &room).await;

    // alice publishes one VP8 track and keeps sending.
    let mut alice = RtcPeer::start().await;
    let (offer, mid, sender) = alice
        .with(|pc, now| {
            let sender = pc.add_track(video_track("cam", 5151)).unwrap();
            let offer = pc.create_offer(None).unwrap();
            pc.set_local_description(now, offer.clone()).unwrap();
            let ids: Vec<_> = pc.get_transceivers().collect();
            let mid = ids.into_iter().find_map(|t| pc.rtp_transceiver(t).and_then(|t| t.mid().clone())).unwrap();
            (offer.sdp, mid, sender)
        })
        .await;
    alice_ws
        .send(json!({"type": "publish-offer", "roomId": room, "sdp": offer, "tracks": [{"mid": mid, "source": "camera"}]}))
        .await;
    let answer = alice_ws.recv_type("publish-answer").await["sdp"].as_str().unwrap().to_owned();
    alice
        .with(move |pc, now| pc.set_remote_description(now, RTCSessionDescription::answer(answer).unwrap()).unwrap())
        .await;
    alice.wait_for("alice connected", |s| matches!(s, Seen::Connected)).await;
    let ctl = alice.ctl.clone();
    let sending = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for seq in 0u16..500 {
            tick.tick().await;
            ctl.with(move |pc, now| {
                let mut s = pc.rtp_sender(sender).unwrap();
                let pt = s
                    .get_parameters()
                    .rtp_parameters
                    .codecs
                    .iter()
                    .find(|c| c.rtp_codec.mime_type == "video/VP8")
                    .map_or(96, |c| c.payload_type);
                let packet = rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        payload_type: pt,
                        sequence_number: seq,
                        timestamp: u32::from(seq) * 1800,
                        ssrc: 5151,
                        marker: true,
                        ..Default::default()
                    },
                    payload: bytes::Bytes::from_static(&[0x10, 0x00, 0x9d, 0x01, 0x2a, 1, 2, 3, 4, 5, 6, 7, 8]),
                };
                let _ = s.write_rtp(now, packet);
            })
            .await;
        }
    });

    // carol (may subscribe) gets the track and an offer carrying it: the
    // control that shows the server did offer where it should.
    let published = carol_ws.recv_type("track-published").await;
    let track = published["track"]["id"].as_str().unwrap().to_owned();
    let carol_offer = carol_ws.recv_type("subscribe-offer").await;
    assert!(carol_offer["sdp"].as_str().unwrap().contains(&track), "{carol_offer}");

    // bob sees the track (SPEC 4: the room is no secret to him) ...
    let seen = bob_ws.recv_type("track-published").await;
    assert_eq!(seen["track"]["id"], track.as_str(), "{seen}");
    // ... but is never offered it, nor anything else.
    let offers = collect(&mut bob_ws, "subscribe-offer", Duration::from_secs(2)).await;
    assert!(offers.is_empty(), "bob was offered media: {offers:?}");
    // Asking for it is refused with the reason.
    bob_ws
        .send(json!({"type": "track-subscribe", "roomId": room, "trackId": track, "subscribe": true, "reqId": 9}))
        .await;
    let m = bob_ws.recv_type("error").await;
    assert_eq!((&m["code"], &m["reqId"]), (&json!("forbidden"), &json!(9)), "{m}");
    assert!(m["message"].as_str().unwrap().contains("canSubscribe"), "{m}");
    let offers = collect(&mut bob_ws, "subscribe-offer", Duration::from_millis(500)).await;
    assert!(offers.is_empty(), "bob was offered media after track-subscribe: {offers:?}");

    // The SFU holds no subscriber PeerConnection for bob: alice's publisher
    // and carol's subscriber leg (created with her offer) are all there is.
    assert_eq!(c.metric("confer_peer_connections_active").await, Some(2.0));
    sending.abort();
}
