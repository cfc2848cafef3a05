//! Simulcast through the SFU with real browsers (SPEC 5.1): Debian's headless
//! Chromium, driven by playwright-core from tests/browser/simulcast.js, publishes
//! its fake 1280x720 camera as three VP8 layers (rids q, h, f) into a room of
//! the built binary; two subscriber pages decode it. With no `track-subscribe`
//! both decode the full layer; `quality: "low"` from one brings it the ¼ layer
//! (and a `subscription-update`) while the other stays at full; `high` brings it
//! back; `medium` gives the other the ½ layer. Frames keep coming, nothing is
//! lost, each subscriber sees one SSRC throughout.
//!
//! The script only observes and prints a JSON summary; every judgement is here.

mod common;

use common::ChildServer;
use serde_json::Value;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest the script may take (it stops itself after 100 s).
const SCRIPT_LIMIT: Duration = Duration::from_secs(150);
/// A layer switch asked for with `track-subscribe` shows in the decoded frames within this.
const SWITCH_MS: u64 = 5000;
/// Longest time framesDecoded may stand still (sampled every 250 ms; a switch
/// waits for a keyframe, a few hundred ms).
const STALL_MS: u64 = 2500;

/// Run the script against `base`; its summary (the last line on stdout).
fn run_script(base: &str) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/simulcast.js");
    let mut child = Command::new("node")
        .arg(script)
        .arg(base)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0) // node and its Chromium, killed together on a timeout
        .spawn()
        .expect("node runs");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + SCRIPT_LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = Command::new("kill").arg("-KILL").arg(format!("-{}", child.id())).status();
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = out_t.join().unwrap();
    let stderr = err_t.join().unwrap();
    let Some(status) = status else {
        panic!("simulcast.js did not finish within {SCRIPT_LIMIT:?} (killed):\n{stdout}\n{stderr}");
    };
    let last = stdout.lines().last().unwrap_or("");
    match serde_json::from_str::<Value>(last) {
        Ok(v) if v.is_object() => v,
        _ => panic!("simulcast.js printed no summary (exit {status}):\nstdout:\n{stdout}\nstderr:\n{stderr}"),
    }
}

/// `{ "<width>": samples, ... }` holds samples, all of them at `width`.
fn all_at(hist: &Value, width: u64) -> bool {
    hist.as_object().is_some_and(|m| !m.is_empty() && m.keys().all(|k| k.parse::<u64>().ok() == Some(width)))
}

/// A subscription-update for `track` to `layer` (with `reason`, if given) in `updates`.
fn has_update(updates: &Value, track: &Value, layer: &str, reason: Option<&str>) -> bool {
    updates.as_array().is_some_and(|l| {
        l.iter().any(|u| u["trackId"] == *track && u["layer"] == layer && reason.is_none_or(|r| u["reason"] == r))
    })
}

#[test]
fn browser_subscribers_each_get_the_simulcast_layer_they_ask_for() {
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/node_modules/playwright-core");
    assert!(std::path::Path::new(modules).exists(), "playwright-core is missing: run scripts/setup-test-deps.sh");
    assert!(std::path::Path::new("/usr/bin/chromium").exists(), "chromium is missing: run scripts/setup-test-deps.sh");
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(dir.path(), &[("CONFER_AUTH_ALLOW_GUESTS", "true")]);
    let s = run_script(&format!("http://{}", server.addr));
    drop(server);
    let all = s.to_string();

    assert!(s["crash"].is_null(), "the script crashed: {}\nsummary: {all}", s["crash"]);
    assert_eq!(s["errors"], serde_json::json!([]), "page or console errors\nsummary: {all}");
    let track = &s["trackId"];
    assert!(track.is_string(), "the subscribers never learnt the camera's track id\nsummary: {all}");

    // The publisher: the answer accepts simulcast and Chromium sends all three layers.
    let answer = s["publisher"]["answerVideo"].as_array().cloned().unwrap_or_default();
    let has = |l: &str| answer.iter().any(|x| x.as_str().is_some_and(|x| x.starts_with(l)));
    assert!(has("a=simulcast:recv"), "the publish-answer has no a=simulcast:recv\nsummary: {all}");
    for rid in ["q", "h", "f"] {
        assert!(has(format!("a=rid:{rid} recv").as_str()), "the publish-answer lacks a=rid:{rid} recv\nsummary: {all}");
        let sent = s["publisherLayers"][rid]["bytesSent"].as_u64().unwrap_or(0);
        assert!(sent > 0, "Chromium does not send layer {rid}\nsummary: {all}");
    }
    let width = |rid: &str| s["widths"][rid].as_u64().unwrap_or_else(|| panic!("no width for {rid}\nsummary: {all}"));
    let (wq, wh, wf) = (width("q"), width("h"), width("f"));
    assert!(wq < wh && wh < wf, "layer widths q {wq} < h {wh} < f {wf}\nsummary: {all}");

    let phase = |name: &str| &s["phases"][name];
    let sub = |who: &str, name: &str| &s["subs"][who]["phases"][name];
    let reached = |name: &str| phase(name)["reachedMs"].as_u64();

    // Default: nobody asked, both decode the full layer.
    assert!(reached("default").is_some(), "A never decoded the full layer ({wf}) by default\nsummary: {all}");
    assert!(
        phase("default")["bReachedMs"].as_u64().is_some(),
        "B never decoded the full layer ({wf}) by default\nsummary: {all}"
    );
    let dw = phase("default")["target"].as_u64().unwrap();
    assert!(
        dw >= 1280 || dw == wf,
        "the default width {dw} is neither 1280 nor the publisher's f width {wf}\nsummary: {all}"
    );
    assert_eq!(dw, wf, "by default the subscribers decode the f layer\nsummary: {all}");

    // A asks for low: the q layer within 5 s, told by subscription-update; B stays at f.
    let low = reached("low")
        .unwrap_or_else(|| panic!("A never decoded the q layer ({wq}) after quality low\nsummary: {all}"));
    assert_eq!(phase("low")["target"], wq, "{all}");
    assert!(low <= SWITCH_MS, "A took {low} ms to reach the q layer after quality low\nsummary: {all}");
    assert!(all_at(&sub("A", "low")["widthsAfterReached"], wq), "A did not stay at the q layer\nsummary: {all}");
    assert!(
        has_update(&sub("A", "low")["updates"], track, "q", Some("requested")),
        "A got no subscription-update {{layer: q, reason: requested}}\nsummary: {all}"
    );
    assert!(all_at(&sub("B", "low")["widths"], wf), "B left the f layer while A asked for low\nsummary: {all}");

    // A asks for high: back at f within 5 s.
    let high = reached("high")
        .unwrap_or_else(|| panic!("A never got back to the f layer ({wf}) after quality high\nsummary: {all}"));
    assert!(high <= SWITCH_MS, "A took {high} ms to get back to the f layer\nsummary: {all}");
    assert!(all_at(&sub("A", "high")["widthsAfterReached"], wf), "A did not stay at the f layer\nsummary: {all}");
    assert!(
        has_update(&sub("A", "high")["updates"], track, "f", None),
        "A got no subscription-update {{layer: f}} after quality high\nsummary: {all}"
    );
    assert!(all_at(&sub("B", "high")["widths"], wf), "B left the f layer while A went back to high\nsummary: {all}");

    // B asks for medium: the h layer within 5 s; A stays at f.
    let medium = reached("medium")
        .unwrap_or_else(|| panic!("B never decoded the h layer ({wh}) after quality medium\nsummary: {all}"));
    assert_eq!(phase("medium")["target"], wh, "{all}");
    assert!(medium <= SWITCH_MS, "B took {medium} ms to reach the h layer\nsummary: {all}");
    assert!(all_at(&sub("B", "medium")["widthsAfterReached"], wh), "B did not stay at the h layer\nsummary: {all}");
    assert!(
        has_update(&sub("B", "medium")["updates"], track, "h", Some("requested")),
        "B got no subscription-update {{layer: h, reason: requested}}\nsummary: {all}"
    );
    assert!(all_at(&sub("A", "medium")["widths"], wf), "A left the f layer while B asked for medium\nsummary: {all}");

    // Throughout: frames keep coming, nothing lost, one SSRC per subscriber.
    for who in ["A", "B"] {
        let x = &s["subs"][who];
        for name in ["default", "low", "high", "medium"] {
            let d = x["phases"][name]["framesDecodedDelta"].as_i64().unwrap_or(0);
            assert!(d > 0, "{who} decoded no frames during phase {name}\nsummary: {all}");
        }
        assert_eq!(x["packetsLost"], 0, "{who} lost packets (a sequence gap on loopback)\nsummary: {all}");
        assert_eq!(x["packetsLostMax"], 0, "{who} lost packets at some point\nsummary: {all}");
        let stall = x["maxStallMs"].as_u64().unwrap_or(u64::MAX);
        assert!(stall < STALL_MS, "{who}'s framesDecoded stood still for {stall} ms\nsummary: {all}");
        assert_eq!(
            x["ssrcs"].as_array().map(Vec::len),
            Some(1),
            "{who} saw more than one SSRC for the track\nsummary: {all}"
        );
        assert_eq!(x["wsErrors"], serde_json::json!([]), "{who} got error messages\nsummary: {all}");
    }
}
