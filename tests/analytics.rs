//! Call-quality analytics (SPEC 8) end to end: aiortc publishes through the
//! SFU, once directly and once through a UDP proxy in the test that drops
//! about 10 % of the publisher's RTP; the loss confer reports is near what the
//! proxy dropped, the score is lower than the clean run's, the clean run is
//! rated good or better, and both summaries persist. P2P calls get the same
//! shape from their clients' `call-stats`.

mod common;

use common::{child_client, python, ChildServer, TestServer};
use serde_json::{json, Value};
use std::process::Command;

fn quality_run(server: &ChildServer, c: &TestServer, loss: &str) -> Value {
    let out = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/sfu_quality.py"))
        .args([server.addr.to_string(), server.media.to_string(), c.token("alice"), c.token("bob"), loss.into()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sfu_quality.py {loss} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_publisher_scores_lower_than_a_clean_one_and_loss_matches_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(dir.path(), &[]);
    let c = child_client(server.addr);
    let (clean, lossy, server, c) = tokio::task::spawn_blocking(move || {
        let clean = quality_run(&server, &c, "0");
        let lossy = quality_run(&server, &c, "0.1");
        (clean, lossy, server, c)
    })
    .await
    .unwrap();
    // The histograms saw the samples.
    assert!(c.metric("confer_call_quality_mos_count").await.unwrap() >= 2.0);
    assert!(c.metric("confer_stream_packet_loss_count").await.unwrap() > 0.0);
    assert!(c.metric("confer_stream_rtt_seconds_count").await.unwrap() > 0.0);
    drop(server);

    println!("clean: {clean}\nlossy: {lossy}");
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    // Clean: under 1 % loss, good or better.
    assert!(f(&clean, "aliceVideoLoss") < 0.01 && f(&clean, "aliceAudioLoss") < 0.01, "{clean}");
    let rating = clean["roomQuality"]["rating"].as_str().unwrap();
    assert!(rating == "excellent" || rating == "good", "{clean}");
    assert!(f(&clean, "samples") >= 2.0, "samples every 5 s: {clean}");
    assert_eq!(clean["storedStatus"], "ended", "the summary persisted: {clean}");
    assert!(f(&clean, "connectionQualityEvents") >= 1.0, "{clean}");
    assert!(clean["lastSample"]["rttMs"].as_f64().unwrap() > 0.0, "RTT from RR/SR: {clean}");
    // The SFU read the frame size from aiortc's VP8 keyframes (Pattern is 320×240).
    assert_eq!(
        (clean["aliceVideo"]["frameWidth"].as_u64(), clean["aliceVideo"]["frameHeight"].as_u64()),
        (Some(320), Some(240)),
        "{clean}"
    );

    // Lossy: near what the proxy dropped, and a lower score.
    let dropped = f(&lossy, "proxyDropRate");
    assert!((0.06..0.14).contains(&dropped), "the proxy drops about 10 %: {lossy}");
    for k in ["aliceVideoLoss", "aliceAudioLoss"] {
        assert!((f(&lossy, k) - dropped).abs() < 0.04, "{k} vs dropped {dropped}: {lossy}");
    }
    assert!(
        f(&lossy["roomQuality"], "score") < f(&clean["roomQuality"], "score") - 0.5,
        "lossy {} vs clean {}",
        lossy["roomQuality"],
        clean["roomQuality"]
    );
    assert_eq!(lossy["storedStatus"], "ended");
    // The SFU asked alice again for what the proxy dropped, and counted it.
    assert!(
        f(&lossy["aliceVideo"], "nackCount") > 0.0 && clean["aliceVideo"]["nackCount"].as_f64() < Some(5.0),
        "{lossy}"
    );
}

#[tokio::test]
async fn p2p_call_analytics_come_from_client_stats() {
    let c = TestServer::start().await;
    let call = c.create_call("alice", "bob").await;
    let (status, _) = c.put(&format!("/calls/{call}/accept"), "bob", None).await;
    assert_eq!(status, 200);
    let (status, _) = c.get(&format!("/calls/{call}/analytics"), "alice").await;
    assert_eq!(status, 404, "nothing recorded yet");

    let stats = |lost: u64| {
        json!([
            {"type": "inbound-rtp", "kind": "audio", "packetsReceived": 1000 - lost, "packetsLost": lost, "jitter": 0.003},
            {"type": "outbound-rtp", "kind": "audio", "packetsSent": 1000, "bytesSent": 80000},
            {"type": "remote-inbound-rtp", "kind": "audio", "packetsLost": lost, "fractionLost": lost as f64 / 1000.0,
             "jitter": 0.003, "roundTripTime": 0.03},
            {"type": "candidate-pair", "nominated": true, "currentRoundTripTime": 0.03}
        ])
    };
    let mut alice = c.ws_ready("alice").await;
    let mut bob = c.ws_ready("bob").await;
    alice.send(json!({"type": "call-stats", "callId": call, "stats": stats(0)})).await;
    bob.send(json!({"type": "call-stats", "callId": call, "stats": stats(100), "reqId": 1})).await;
    alice.sync().await;
    bob.sync().await;

    let (status, v) = c.get(&format!("/calls/{call}/analytics"), "bob").await;
    assert_eq!(status, 200, "{v}");
    let a = &v["analytics"];
    assert_eq!((a["source"].as_str(), a["status"].as_str()), (Some("client"), Some("active")), "{a}");
    assert_eq!(a["participants"].as_array().unwrap().len(), 2, "{a}");
    let q = |who: &str| {
        a["participants"].as_array().unwrap().iter().find(|p| p["userId"] == who).unwrap()["quality"]["score"]
            .as_f64()
            .unwrap()
    };
    assert!(q("alice") >= 4.3, "clean: {a}");
    assert!(q("bob") < 3.6, "10 % audio loss: {a}");
    assert_eq!(a["participants"][1]["subscribe"]["audio"]["packetsLost"], 100);
    assert!(!a["samples"].as_array().unwrap().is_empty());

    // Strangers see nothing; after the hangup the summary is still there.
    let (status, _) = c.get(&format!("/calls/{call}/analytics"), "mallory").await;
    assert_eq!(status, 404);
    let (status, _) = c.put(&format!("/calls/{call}/hangup"), "alice", None).await;
    assert_eq!(status, 200);
    let (_, v) = c.get(&format!("/calls/{call}/analytics"), "alice").await;
    assert_eq!(v["analytics"]["status"], "ended", "{v}");
}
