//! The SFU's forwarding details, seen by in-process webrtc-rs peers: the
//! SSRC, payload type and `mid` a subscriber receives are the ones its own
//! PeerConnection negotiated; sequence numbers stay contiguous across a mute;
//! unmuting and a subscriber's PLI reach the publisher as keyframe requests;
//! a subscriber's NACK is answered by the server, not passed upstream; a
//! packet lost on the way to the server is NACKed to the publisher.

mod common;

use common::TestServer;
use confer::loadtest::peer::{video_track, RtcPeer, Seen};
use rtc::peer_connection::sdp::RTCSessionDescription;
use serde_json::json;
use std::time::Duration;

/// The value of `a=<attr>` lines in the m-section whose `a=mid` is `mid`.
fn section_attr(sdp: &str, mid: &str, attr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_section = false;
    for l in sdp.lines() {
        if l.starts_with("m=") {
            in_section = false;
        }
        if let Some(m) = l.strip_prefix("a=mid:") {
            in_section = m.trim() == mid;
        }
        if in_section {
            if let Some(v) = l.strip_prefix(&format!("a={attr}:")) {
                out.push(v.trim().to_owned());
            }
        }
    }
    out
}

/// A room with alice and bob joined over `/rtc`: (room id, alice's socket, bob's).
async fn pair_in_room(c: &TestServer, name: &str) -> (String, common::Ws, common::Ws) {
    let (_, v) = c.post("/rooms", "alice", json!({"name": name})).await;
    let room = v["room"]["id"].as_str().unwrap().to_owned();
    let mut alice_ws = c.ws_ready("alice").await;
    let mut bob_ws = c.ws_ready("bob").await;
    for w in [&mut alice_ws, &mut bob_ws] {
        w.send(json!({"type": "room-join", "roomId": room})).await;
        w.recv_type("room-joined").await;
    }
    (room, alice_ws, bob_ws)
}

/// A VP8-shaped packet (the SFU never decodes it).
fn vp8(pt: u8, seq: u16, ssrc: u32) -> rtc::rtp::Packet {
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            payload_type: pt,
            sequence_number: seq,
            timestamp: u32::from(seq) * 900,
            ssrc,
            marker: true,
            ..Default::default()
        },
        payload: bytes::Bytes::from_static(&[0x10, 0x00, 0x9d, 0x01, 0x2a, 1, 2, 3, 4, 5, 6, 7, 8]),
    }
}

/// Write packet `seq` on every video sender of `pc` (or only the one with
/// `ssrc`), each with its own SSRC and negotiated VP8 payload type.
fn write_video(pc: &mut rtc::peer_connection::RTCPeerConnection, now: std::time::Instant, only: Option<u32>, seq: u16) {
    let senders: Vec<_> = pc.get_senders().collect();
    for sid in senders {
        let Some(mut s) = pc.rtp_sender(sid) else { continue };
        let Some(ssrc) = s.track().ssrcs().next() else { continue };
        if only.is_some_and(|o| o != ssrc) {
            continue;
        }
        let pt = s
            .get_parameters()
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type == "video/VP8")
            .map(|c| c.payload_type)
            .unwrap_or(96);
        let _ = s.write_rtp(now, vp8(pt, seq, ssrc));
    }
}

/// Apply a subscribe-offer and return the answer's SDP.
async fn answer(peer: &RtcPeer, offer: String) -> String {
    peer.with(move |pc, now| {
        pc.set_remote_description(now, RTCSessionDescription::offer(offer).unwrap()).unwrap();
        let answer = pc.create_answer(None).unwrap();
        pc.set_local_description(now, answer.clone()).unwrap();
        answer.sdp
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_peers_see_per_leg_rewrites_contiguous_sequences_and_keyframe_requests() {
    let c = TestServer::start().await;
    let (room, mut alice_ws, mut bob_ws) = pair_in_room(&c, "details").await;

    // alice publishes one VP8 track with SSRC 1111.
    let mut alice = RtcPeer::start().await;
    let (offer, mid, sender) = alice
        .with(|pc, now| {
            let sender = pc.add_track(video_track("cam", 1111)).unwrap();
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
    let pub_pt = alice
        .with(move |pc, _| {
            let mut s = pc.rtp_sender(sender).unwrap();
            s.get_parameters()
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type == "video/VP8")
                .unwrap()
                .payload_type
        })
        .await;

    // A sender task: 100 packets/s, sequence numbers from 40000, until told to stop.
    let ctl = alice.ctl.clone();
    let skip = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let skip_one = skip.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sending = tokio::spawn(async move {
        let mut seq: u16 = 40_000;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = &mut stop_rx => return seq,
                _ = tick.tick() => {}
            }
            let s = seq;
            if skip_one.swap(false, std::sync::atomic::Ordering::SeqCst) {
                seq = seq.wrapping_add(1); // "lost" on the way to the server
                continue;
            }
            ctl.with(move |pc, now| {
                let _ = pc.rtp_sender(sender).unwrap().write_rtp(now, vp8(pub_pt, s, 1111));
            })
            .await;
            seq = seq.wrapping_add(1);
        }
    });

    // bob subscribes.
    let published = bob_ws.recv_type("track-published").await;
    let track_id = published["track"]["id"].as_str().unwrap().to_owned();
    let sub_offer = bob_ws.recv_type("subscribe-offer").await["sdp"].as_str().unwrap().to_owned();
    let mut bob = RtcPeer::start().await;
    let offer_for_bob = sub_offer.clone();
    let (bob_answer, bob_mid) = bob
        .with(move |pc, now| {
            pc.set_remote_description(now, RTCSessionDescription::offer(offer_for_bob).unwrap()).unwrap();
            let answer = pc.create_answer(None).unwrap();
            pc.set_local_description(now, answer.clone()).unwrap();
            let ids: Vec<_> = pc.get_transceivers().collect();
            let mid = ids.into_iter().find_map(|t| pc.rtp_transceiver(t).and_then(|t| t.mid().clone())).unwrap();
            (answer.sdp, mid)
        })
        .await;
    bob_ws.send(json!({"type": "subscribe-answer", "roomId": room, "sdp": bob_answer})).await;

    // What bob's leg negotiated, from the server's offer.
    let msid = section_attr(&sub_offer, &bob_mid, "msid");
    assert_eq!(msid[0].split(' ').nth(1), Some(track_id.as_str()), "msid names the server's track id: {msid:?}");
    let ssrc: u32 = section_attr(&sub_offer, &bob_mid, "ssrc")[0].split(' ').next().unwrap().parse().unwrap();
    assert_ne!(ssrc, 1111, "the subscriber leg has its own SSRC");
    let sub_pt: u8 = section_attr(&sub_offer, &bob_mid, "rtpmap")
        .iter()
        .find(|r| r.contains("VP8/90000"))
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap();
    let mid_ext: u8 = section_attr(&sub_offer, &bob_mid, "extmap")
        .iter()
        .find(|e| e.ends_with("urn:ietf:params:rtp-hdrext:sdes:mid"))
        .and_then(|e| e.split(' ').next()?.parse().ok())
        .unwrap();

    let first = bob.wait_for("bob's first packet", |s| matches!(s, Seen::Rtp { .. })).await;
    let Seen::Rtp { ssrc: got_ssrc, pt, exts, seq: mut last, .. } = first else { unreachable!() };
    assert_eq!((got_ssrc, pt), (ssrc, sub_pt), "SSRC and payload type are the subscriber leg's");
    assert!(exts.iter().any(|(id, v)| *id == mid_ext && v == bob_mid.as_bytes()), "mid extension {exts:?}");
    // The new subscriber made the server ask alice for a keyframe.
    alice.wait_for("a PLI at the publisher", |s| matches!(s, Seen::Rtcp { kinds, .. } if kinds.contains(&"pli"))).await;

    // Contiguous while flowing.
    for _ in 0..20 {
        let Seen::Rtp { seq, .. } = bob.wait_for("more packets", |s| matches!(s, Seen::Rtp { .. })).await else {
            unreachable!()
        };
        assert_eq!(seq, last.wrapping_add(1), "no gaps on a clean loopback");
        last = seq;
    }

    // Mute: nothing arrives; unmute: the next packet follows the last one.
    alice_ws.send(json!({"type": "track-mute", "roomId": room, "trackId": track_id, "muted": true})).await;
    let upd = bob_ws.recv_type("participant-updated").await;
    assert_eq!(upd["participant"]["tracks"][0]["muted"], true, "{upd}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(s) = bob.seen.try_recv() {
        if let Seen::Rtp { seq, .. } = s {
            last = seq; // in flight before the mute
        }
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let during: Vec<Seen> =
        std::iter::from_fn(|| bob.seen.try_recv().ok()).filter(|s| matches!(s, Seen::Rtp { .. })).collect();
    assert!(during.is_empty(), "muted video still arrived: {} packets", during.len());
    alice_ws.send(json!({"type": "track-mute", "roomId": room, "trackId": track_id, "muted": false})).await;
    let Seen::Rtp { seq, .. } = bob.wait_for("video after unmute", |s| matches!(s, Seen::Rtp { .. })).await else {
        unreachable!()
    };
    assert_eq!(seq, last.wrapping_add(1), "the ~40 packets not sent while muted leave no gap");
    alice
        .wait_for("the unmute's keyframe request", |s| matches!(s, Seen::Rtcp { kinds, .. } if kinds.contains(&"pli")))
        .await;

    // track-subscribe (SPEC 4): bob pauses the track, nothing arrives; he
    // resumes, the next packet follows the last one he got.
    bob_ws.send(json!({"type": "track-subscribe", "roomId": room, "trackId": track_id, "subscribe": false})).await;
    bob_ws.send(json!({"type": "ping", "reqId": "paused"})).await;
    bob_ws.recv_type("pong").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut last = seq;
    while let Ok(s) = bob.seen.try_recv() {
        if let Seen::Rtp { seq, .. } = s {
            last = seq;
        }
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let paused = std::iter::from_fn(|| bob.seen.try_recv().ok()).filter(|s| matches!(s, Seen::Rtp { .. })).count();
    assert_eq!(paused, 0, "an unsubscribed track still arrived");
    bob_ws.send(json!({"type": "track-subscribe", "roomId": room, "trackId": track_id, "subscribe": true})).await;
    let Seen::Rtp { seq, .. } = bob.wait_for("video after resubscribing", |s| matches!(s, Seen::Rtp { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(seq, last.wrapping_add(1), "resubscribing leaves no gap");

    // bob's own PLI goes upstream (after the rate limit), his NACK does not.
    tokio::time::sleep(Duration::from_millis(400)).await;
    while alice.seen.try_recv().is_ok() {}
    let nacks_before = c.metric("confer_nack_total").await.unwrap();
    let resent_before = c.metric("confer_rtp_packets_retransmitted_total").await.unwrap();
    let nack_seq = seq.wrapping_sub(3);
    bob.with(move |pc, now| {
        use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
        let r = pc.get_receivers().next().unwrap();
        let mut r = pc.rtp_receiver(r).unwrap();
        let nack = TransportLayerNack {
            sender_ssrc: 7,
            media_ssrc: ssrc,
            nacks: vec![NackPair { packet_id: nack_seq, lost_packets: 0 }],
        };
        r.write_rtcp(now, vec![Box::new(PictureLossIndication { sender_ssrc: 7, media_ssrc: ssrc }), Box::new(nack)])
            .unwrap();
    })
    .await;
    // The server answers the NACK from its cache (RTX or the packet again).
    let resent = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match bob.seen.recv().await {
                Some(Seen::Rtp { seq, ssrc: s, .. }) if seq == nack_seq => return s,
                Some(_) => {}
                None => panic!("bob's peer stopped"),
            }
        }
    })
    .await;
    assert_eq!(resent.ok(), Some(got_ssrc), "packet {nack_seq} was not retransmitted after bob's NACK");
    assert!(
        c.metric("confer_rtp_packets_retransmitted_total").await.unwrap() > resent_before,
        "the server's history answered it"
    );
    let relayed =
        alice.wait_for("bob's PLI relayed", |s| matches!(s, Seen::Rtcp { kinds, .. } if kinds.contains(&"pli"))).await;
    assert!(!matches!(relayed, Seen::Rtcp { ref kinds, .. } if kinds.contains(&"nack")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let upstream_nacks = std::iter::from_fn(|| alice.seen.try_recv().ok())
        .filter(|s| matches!(s, Seen::Rtcp { kinds, .. } if kinds.contains(&"nack")))
        .count();
    assert_eq!(upstream_nacks, 0, "a subscriber's NACK is answered by the server, not the publisher");
    assert!(c.metric("confer_nack_total").await.unwrap() > nacks_before, "the NACK was seen");

    // The server writes forwarded media itself, so it sends the sender
    // reports too (once a second per stream).
    bob.wait_for("a sender report", |s| matches!(s, Seen::Rtcp { kinds, .. } if kinds.contains(&"sr"))).await;

    // Upstream loss: a packet the server never got is NACKed to the publisher.
    while alice.seen.try_recv().is_ok() {}
    skip.store(true, std::sync::atomic::Ordering::SeqCst);
    alice
        .wait_for("a NACK for the lost packet", |s| matches!(s, Seen::Rtcp { kinds, .. } if kinds.contains(&"nack")))
        .await;

    let _ = stop_tx.send(());
    let _ = sending.await;
}

/// A track published while the subscriber still owes an answer is held for
/// the next offer: it must arrive with that offer's SSRC, payload type and
/// mid, never with parameters the subscriber has not agreed to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_added_while_an_offer_is_unanswered_waits_for_the_next_offer() {
    let c = TestServer::start().await;
    let (room, mut alice_ws, mut bob_ws) = pair_in_room(&c, "race").await;
    let mut alice = RtcPeer::start().await;

    // Publish (or re-publish) alice's tracks; returns the senders.
    async fn publish(alice: &mut RtcPeer, ws: &mut common::Ws, room: &str, ssrcs: Vec<u32>) {
        let (offer, tracks) = alice
            .with(move |pc, now| {
                let have: Vec<u32> = pc
                    .get_senders()
                    .collect::<Vec<_>>()
                    .into_iter()
                    .filter_map(|s| pc.rtp_sender(s)?.track().ssrcs().next())
                    .collect();
                for s in ssrcs.into_iter().filter(|s| !have.contains(s)) {
                    pc.add_track(video_track(&format!("cam{s}"), s)).unwrap();
                }
                let offer = pc.create_offer(None).unwrap();
                pc.set_local_description(now, offer.clone()).unwrap();
                let ids: Vec<_> = pc.get_transceivers().collect();
                let mids: Vec<String> = ids.into_iter().filter_map(|t| pc.rtp_transceiver(t)?.mid().clone()).collect();
                let tracks: Vec<_> = mids.iter().map(|m| json!({"mid": m, "source": "camera"})).collect();
                (offer.sdp, tracks)
            })
            .await;
        ws.send(json!({"type": "publish-offer", "roomId": room, "sdp": offer, "tracks": tracks})).await;
        let answer = ws.recv_type("publish-answer").await["sdp"].as_str().unwrap().to_owned();
        alice
            .with(move |pc, now| {
                pc.set_remote_description(now, RTCSessionDescription::answer(answer).unwrap()).unwrap()
            })
            .await;
    }
    publish(&mut alice, &mut alice_ws, &room, vec![1111]).await;
    alice.wait_for("alice connected", |s| matches!(s, Seen::Connected)).await;
    for i in 0..5 {
        alice.with(move |pc, now| write_video(pc, now, Some(1111), 100 + i)).await;
    }
    let first_offer = bob_ws.recv_type("subscribe-offer").await["sdp"].as_str().unwrap().to_owned();

    // A second track is published while bob has not answered yet.
    publish(&mut alice, &mut alice_ws, &room, vec![1111, 2222]).await;
    for i in 0..10 {
        alice.with(move |pc, now| write_video(pc, now, Some(2222), 500 + i)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // (The first track's event went by before the first offer.)
    bob_ws.recv_type("track-published").await;

    let mut bob = RtcPeer::start().await;
    let a1 = answer(&bob, first_offer).await;
    bob_ws.send(json!({"type": "subscribe-answer", "roomId": room, "sdp": a1})).await;
    let second_offer = bob_ws.recv_type("subscribe-offer").await["sdp"].as_str().unwrap().to_owned();
    let a2 = answer(&bob, second_offer.clone()).await;
    bob_ws.send(json!({"type": "subscribe-answer", "roomId": room, "sdp": a2})).await;

    // What the second offer agreed for alice's second track (the last m-section).
    let last_mid = second_offer.lines().filter_map(|l| l.strip_prefix("a=mid:")).next_back().unwrap().trim().to_owned();
    let ssrc: u32 = section_attr(&second_offer, &last_mid, "ssrc")[0].split(' ').next().unwrap().parse().unwrap();
    let mid_ext: u8 = section_attr(&second_offer, &last_mid, "extmap")
        .iter()
        .find(|e| e.ends_with("urn:ietf:params:rtp-hdrext:sdes:mid"))
        .and_then(|e| e.split(' ').next()?.parse().ok())
        .unwrap();
    let sender_task = {
        let ctl = alice.ctl.clone();
        tokio::spawn(async move {
            for i in 0..300u16 {
                let seq = 1000 + i;
                ctl.with(move |pc, now| write_video(pc, now, None, seq)).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let got =
        bob.wait_for("the second track's packets", |s| matches!(s, Seen::Rtp { ssrc: got, .. } if *got == ssrc)).await;
    let Seen::Rtp { exts, .. } = got else { unreachable!() };
    assert!(
        exts.iter().any(|(id, v)| *id == mid_ext && v == last_mid.as_bytes()),
        "the second track carries the mid of the m-section the second offer gave it: {exts:?}"
    );
    sender_task.abort();
}
