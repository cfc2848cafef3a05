//! The built-in web page in Debian's headless Chromium (driven by
//! playwright-core, installed by scripts/setup-test-deps.sh): two browser
//! contexts hold a 1:1 call through the page and each decodes the other's video
//! (their `call-stats` every 5 s give the call analytics, `source: "client"`);
//! three contexts hold a group room through the SFU (a late joiner, a screen
//! share, a camera turned off, a dropped connection that reconnects, a
//! phone-width page, keyboard controls), and the
//! same room again with every page forced through confer's TURN server; three
//! contexts chat (to everyone, a direct message, markup shown as text) and see
//! a raised hand in their participant lists; the lobby previews camera and
//! microphone and joins with the devices and on/off choice remembered; on a
//! two-node cluster, the pages move to the node left when the room's node is
//! killed.

mod common;

use common::ChildServer;
use std::process::Command;
use std::time::Duration;

#[test]
fn two_browsers_hold_a_call_through_the_page() {
    let _slot = common::heavy_slot();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/call.js");
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/node_modules/playwright-core");
    assert!(std::path::Path::new(modules).exists(), "playwright-core is missing: run scripts/setup-test-deps.sh");
    assert!(std::path::Path::new("/usr/bin/chromium").exists(), "chromium is missing: run scripts/setup-test-deps.sh");
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(dir.path(), &[("CONFER_AUTH_ALLOW_GUESTS", "true")]);
    let out = Command::new("node").arg(script).arg(format!("http://{}", server.addr)).output().expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "browser call failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(summary["aliceFrames"].as_u64().unwrap() > 10, "{summary}");
    assert!(summary["bobFrames"].as_u64().unwrap() > 10, "{summary}");
    let sw = &summary["switched"];
    assert!(sw["cameras"].as_u64().unwrap() >= 2, "{summary}");
    assert_eq!(sw["recorded"], sw["chosen"], "switch-camera recorded the device: {summary}");
    assert_eq!(sw["sending"], sw["chosen"], "the call sends the new camera: {summary}");
    // The pages' call-stats (every 5 s) are the P2P call's analytics.
    let a = &summary["analytics"];
    assert_eq!(a["source"], "client", "{summary}");
    let parties = a["streams"].as_array().expect("analytics per participant");
    assert_eq!(parties.len(), 2, "{summary}");
    for p in parties {
        let both = serde_json::json!(["audio", "video"]);
        assert!(p["sent"] == both && p["received"] == both, "each side sends and receives audio and video: {summary}");
        assert!(p["score"].is_number(), "a quality score from the stats: {summary}");
    }
    assert_eq!(summary["errors"], serde_json::json!([]));
}

fn browser_room(relay: bool) -> serde_json::Value {
    let _slot = common::heavy_slot();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/room.js");
    let dir = tempfile::tempdir().unwrap();
    // Relayed media reaches the SFU on 127.0.0.1: let TURN relay to loopback.
    // The downstream estimate is off here, as in tests/simulcast.rs: with nine
    // Chromium pages on two cores, receivers short of CPU read as congested
    // links, and a screen share paused and resumed by the estimator (CI, stop
    // 18) is not what this test is about. The estimator has its own unit tests
    // (media::bwe) and benches/bandwidth_cap.rs.
    let server = ChildServer::spawn(
        dir.path(),
        &[
            ("CONFER_AUTH_ALLOW_GUESTS", "true"),
            ("CONFER_TURN_ALLOW_LOOPBACK_PEERS", if relay { "true" } else { "false" }),
            ("CONFER_MEDIA_BANDWIDTH_ESTIMATION", "false"),
        ],
    );
    let mut cmd = Command::new("node");
    cmd.arg(script).arg(format!("http://{}", server.addr));
    if relay {
        cmd.arg("relay");
    }
    let out = cmd.output().expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "browser room failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let good = |who: &str| summary[who].as_object().unwrap().values().filter(|n| n.as_u64().unwrap() > 10).count();
    assert!(good("alice") >= 1 && good("bob") >= 1, "{summary}");
    assert_eq!(good("carol"), 2, "the late joiner decodes both others: {summary}");
    assert_eq!(summary["carolTiles"], 3, "{summary}");
    assert_eq!(good("bobWithScreen"), 3, "the screen share decodes at bob: {summary}");
    assert_eq!(summary["muteShown"], true);
    assert!(good("bobAfterReconnect") >= 2, "bob receives again after his connection dropped: {summary}");
    assert!(!summary["badges"].as_array().unwrap().is_empty(), "connection-quality badges: {summary}");
    // Before the first score the badge says "unknown" (it used to be hidden,
    // then read "bad" from a camera that had sent nothing yet).
    assert_eq!(summary["aliceBadgeAtJoin"]["text"], "unknown", "{summary}");
    assert_eq!(summary["unknownFirst"], true, "only \"unknown\" before a score: {summary}");
    assert!(summary["phoneOverflow"].as_i64().unwrap() <= 0, "{summary}");
    assert_eq!(summary["keyboardMute"], "true");
    assert_eq!(summary["errors"], serde_json::json!([]));
    summary
}

#[test]
fn three_browsers_meet_in_a_room_through_the_sfu() {
    let summary = browser_room(false);
    assert_eq!(summary["relay"], false);
}

#[test]
fn the_room_works_with_every_browser_forced_through_turn() {
    let summary = browser_room(true);
    let types = summary["alicePairTypes"].as_array().unwrap();
    assert!(!types.is_empty() && types.iter().all(|t| t == "relay"), "{summary}");
}

#[test]
fn the_page_explains_a_full_room_a_denied_camera_and_an_expired_token() {
    let _slot = common::heavy_slot();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/messages.js");
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(dir.path(), &[("CONFER_AUTH_ALLOW_GUESTS", "true")]);
    let expired = common::child_client(server.addr).token_with("eve", |c| c.exp = confer::auth::unix_now() - 60);
    let out = Command::new("node")
        .arg(script)
        .arg(format!("http://{}", server.addr))
        .arg(expired)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "browser messages failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["full"], "This room is full.");
    assert!(summary["denied"].as_str().unwrap().contains("access was denied"), "{summary}");
    assert!(summary["expiredText"].as_str().unwrap().contains("expired"), "{summary}");
    assert_eq!(summary["calBackInLobby"], true);
    assert_eq!(summary["eveAtSignIn"], true);
}

#[test]
fn three_browsers_chat_send_a_direct_message_and_see_a_raised_hand() {
    let _slot = common::heavy_slot();
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(
        dir.path(),
        &[("CONFER_AUTH_ALLOW_GUESTS", "true"), ("CONFER_MEDIA_BANDWIDTH_ESTIMATION", "false")],
    );
    let s = common::run_node_summary("chat.js", &format!("http://{}", server.addr), Duration::from_secs(120));
    assert_eq!(s["errors"], serde_json::json!([]), "{s}");
    assert_eq!(s["chatOpen"], true, "the chat button opens the panel and focuses the input: {s}");
    let everyone = "hello everyone";
    for who in ["aliceLog", "bobLog", "carolLog"] {
        assert!(s[who].as_array().unwrap().iter().any(|t| t == everyone), "{who}: {s}");
    }
    assert_eq!(s["carolUnread"]["text"], "1 unread", "a closed panel counts unread messages: {s}");
    assert_eq!(s["carolUnread"]["hidden"], false, "{s}");
    assert_eq!(s["carolUnread"]["label"], "Chat 1 unread", "the button's name says it: {s}");
    assert_eq!(s["carolUnreadAfter"], true, "opening the panel clears the count: {s}");
    assert!(s["bobLog"].as_array().unwrap().iter().any(|t| t == "just for bob"), "{s}");
    assert_eq!(s["bobSawPrivate"], true, "{s}");
    assert!(!s["carolLog"].as_array().unwrap().iter().any(|t| t == "just for bob"), "carol got bob's message: {s}");
    let evil = r#"<img src=x onerror="window.__pwned=1"><b>bold?</b>"#;
    for who in ["alice", "bob", "carol"] {
        assert_eq!(s["markup"][who]["imgs"], 0, "{who} rendered markup: {s}");
        assert_eq!(s["markup"][who]["pwned"], false, "{who} ran the message's script: {s}");
    }
    assert!(s["carolLog"].as_array().unwrap().iter().any(|t| t == evil), "shown as the text it is: {s}");
    assert_eq!(s["bobButton"], "true", "{s}");
    for who in ["alice", "carol"] {
        let rows = s["handSeen"][who].as_array().unwrap();
        assert!(rows.len() == 1 && rows[0].as_str().unwrap().contains("Bob"), "{who}: {s}");
    }
    assert_eq!(s["unlabelled"], serde_json::json!([]), "{s}");
    assert_eq!(s["axeRoom"], serde_json::json!([]), "axe-core: serious or critical violations in the room: {s}");
}

#[test]
fn the_lobby_previews_the_devices_and_joins_with_the_remembered_choice() {
    let _slot = common::heavy_slot();
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(dir.path(), &[("CONFER_AUTH_ALLOW_GUESTS", "true")]);
    let s = common::run_node_summary("prejoin.js", &format!("http://{}", server.addr), Duration::from_secs(90));
    assert_eq!(s["errors"], serde_json::json!([]), "{s}");
    assert!(s["preview"]["width"].as_u64().unwrap() > 0, "the camera preview shows frames: {s}");
    assert!(s["levels"].as_array().unwrap().iter().any(|l| l.as_f64().unwrap() > 0.01), "the mic meter moves: {s}");
    assert!(s["cameras"].as_u64().unwrap() >= 2 && s["mics"].as_u64().unwrap() >= 1, "{s}");
    let j = &s["joined"];
    assert_eq!(j["camera"], s["chosen"], "the room gets the camera picked in the lobby: {s}");
    assert_eq!((&j["videoButton"], &j["audioButton"]), (&"true".into(), &"true".into()), "{s}");
    assert_eq!((&j["videoEnabled"], &j["audioEnabled"]), (&false.into(), &false.into()), "{s}");
    assert_eq!(j["previewStopped"], true, "the preview lets go of the devices: {s}");
    let seen = s["quinnSees"].as_str().unwrap();
    assert!(seen.contains("mic off") && seen.contains("camera off"), "the others are told: {s}");
    let r = &s["remembered"];
    assert_eq!(r["camera"], s["chosen"], "{s}");
    assert_eq!((&r["cameraOff"], &r["micOff"]), (&true.into(), &true.into()), "{s}");
    assert_eq!(s["labelled"], true, "{s}");
    assert_eq!(s["axeLobby"], serde_json::json!([]), "axe-core: serious or critical violations in the lobby: {s}");
}

#[test]
fn the_speaker_view_follows_the_active_speaker_pins_and_shows_a_screen_share_large() {
    let _slot = common::heavy_slot();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/layout.js");
    let dir = tempfile::tempdir().unwrap();
    // As in browser_room: the estimator off, so no tile is paused for CPU
    // starvation read as congestion.
    let server = ChildServer::spawn(
        dir.path(),
        &[("CONFER_AUTH_ALLOW_GUESTS", "true"), ("CONFER_MEDIA_BANDWIDTH_ESTIMATION", "false")],
    );
    let mut cmd = Command::new("node");
    cmd.arg(script).arg(format!("http://{}", server.addr));
    let out = cmd.output().expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "browser layout failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(s["togglePressed"], "true", "{s}");
    assert_eq!(s["speakerAtBob"], true, "the audible participant is the active speaker: {s}");
    let widths = s["widths"].as_array().unwrap();
    let width = |alice: bool| widths.iter().filter(|w| w["alice"] == alice).map(|w| w["width"].as_u64().unwrap()).max();
    assert!(width(true).unwrap() > 2 * width(false).unwrap(), "the speaker's tile is the large one: {s}");
    assert_eq!((s["pinPressed"].as_str(), s["pinHeld"].as_bool()), (Some("true"), Some(true)), "{s}");
    assert_eq!(s["volume"].as_f64(), Some(0.3), "{s}");
    assert_eq!(s["ownTileHasVolume"], false, "{s}");
    assert_eq!(s["fullscreen"], true, "{s}");
    assert_eq!(s["speakerPicker"], true, "{s}");
    let weak = &s["weak"];
    assert!(weak["own"].as_str().is_some_and(|t| t.contains("Your connection is poor")), "{s}");
    assert_eq!((weak["carolTile"].as_bool(), weak["ownAfterRecovery"].as_bool()), (Some(true), Some(true)), "{s}");
    assert!(weak["carolBadge"].as_str().is_some_and(|t| t.contains("Carol's connection is bad")), "{s}");
    assert_eq!(s["paused"]["paused"], "Paused: low bandwidth", "{s}");
    assert!(s["paused"]["resumed"].is_null(), "{s}");
    assert_eq!((s["carolBefore"].as_str(), s["carolAfter"].as_str()), (Some("grid"), Some("grid")), "{s}");
    assert_eq!(s["errors"], serde_json::json!([]), "{s}");
}

/// SPEC 13: the page given several servers moves to the next when its node
/// goes away. Alice's page on node A, Bob's on node B, one room (on A); A is
/// killed, and both pages are back in the room, placed again on B, decoding
/// each other (tests/browser/failover.js says how).
#[test]
fn the_page_moves_to_another_node_when_its_node_dies() {
    let _slot = common::heavy_slot();
    let redis = common::redis::RedisServer::start();
    let node = |id: &str| {
        let dir = tempfile::tempdir().unwrap();
        let url = redis.url();
        let env = [
            ("CONFER_CLUSTER_REDIS_URL", url.as_str()),
            ("CONFER_CLUSTER_NODE_ID", id),
            ("CONFER_AUTH_ALLOW_GUESTS", "true"),
            ("CONFER_MEDIA_BANDWIDTH_ESTIMATION", "false"),
        ];
        (ChildServer::spawn(dir.path(), &env), dir)
    };
    let (a, _da) = node("node-a");
    let (b, _db) = node("node-b");
    std::thread::sleep(Duration::from_millis(2500)); // each sees the other's heartbeat
    let (base_a, base_b, pid_a) =
        (format!("http://{}", a.addr), format!("http://{}", b.addr), a.child.id().to_string());
    let s = common::run_node_summary_with("failover.js", &[&base_a, &base_b, &pid_a], Duration::from_secs(150));
    assert_eq!(s["errors"], serde_json::json!([]), "{s}");
    assert_eq!(s["before"], serde_json::json!({"alice": true, "bob": true}), "both decode before the kill: {s}");
    let (host_a, host_b) = (a.addr.to_string(), b.addr.to_string());
    assert_eq!(
        (s["serversBefore"]["alice"].as_str(), s["serversBefore"]["bob"].as_str()),
        (Some(host_a.as_str()), Some(host_b.as_str())),
        "{s}"
    );
    for who in ["aliceBack", "bobBack"] {
        assert_eq!(s[who]["ok"], true, "{who} decodes again after the kill: {s}");
        assert!(s[who]["seconds"].as_f64().unwrap() < 40.0, "{s}");
    }
    assert_eq!(s["serversAfter"]["alice"], host_b.as_str(), "Alice's page moved to B: {s}");
    println!("failover: {s}");
}
