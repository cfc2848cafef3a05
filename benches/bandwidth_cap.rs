//! Bandwidth adaptation with real browsers (SPEC 5.1: downstream estimate from
//! transport-cc, allocation, `subscription-update`): Debian's headless Chromium,
//! driven by playwright-core from tests/browser/bandwidth.js, publishes its fake
//! 1280x720 camera as three VP8 layers (rids q, h, f) and its fake microphone
//! into a room of the built binary. Two Chromium subscribers (both negotiate
//! transport-cc with the server): U connects directly, C only through a UDP
//! proxy in the script whose server->client direction is a 600 kbit/s token
//! bucket with a short drop-tail queue. With no cap both decode f. Once C's link
//! is capped, the server moves C below f within 15 s (telling it with
//! `subscription-update` reason "bandwidth"), C loses under 5 % of its video
//! over the capped phase and its audio keeps coming in every 5 s, while U stays
//! at f throughout; C still decodes video at the end of the cap (a layer, not a
//! pause). When the cap lifts, C climbs back to at least h within 25 s and stays.
//!
//! The script only observes and prints a JSON summary; every judgement is here.
//!
//! A benchmark of the scenario, not (yet) a test in the suite: on the 2-core
//! VM the estimator meets every target in about half the runs (issue 13's note
//! has the table), and a test that fails by chance would stop every commit.
//! `RUNS=5 cargo bench --bench bandwidth_cap` runs it N times and prints, per
//! run, the first target missed or PASS, then the tally.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{all_at, run_node_summary, ChildServer};
use std::time::Duration;

/// Longest the script may take (it stops itself after 110 s).
const SCRIPT_LIMIT: Duration = Duration::from_secs(160);
/// The capped subscriber's decoded width drops below f within this of the cap.
const DOWN_MS: u64 = 15_000;
/// The capped subscriber's video loss (inbound-rtp lost / (lost + received)) over the capped phase.
const MAX_LOSS: f64 = 0.05;
/// Audio must arrive in every window of this length (the script's `windowMs`) while capped ...
const AUDIO_WINDOW_MS: u64 = 5000;
/// ... and the capped phase must have lasted at least this many windows.
const MIN_WINDOWS: usize = 4;
/// After the lift, back at >= h (and staying there) within this.
const UP_MS: u64 = 25_000;
/// Datagrams the proxy must have carried to C for C's media to have gone through it.
const MIN_PROXIED_RTP: u64 = 1000;

fn browser_subscriber_on_a_capped_link_moves_down_and_climbs_back_while_an_uncapped_one_keeps_full() {
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/node_modules/playwright-core");
    assert!(std::path::Path::new(modules).exists(), "playwright-core is missing: run scripts/setup-test-deps.sh");
    assert!(std::path::Path::new("/usr/bin/chromium").exists(), "chromium is missing: run scripts/setup-test-deps.sh");
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(dir.path(), &[("CONFER_AUTH_ALLOW_GUESTS", "true")]);
    let s = run_node_summary("bandwidth.js", &format!("http://{}", server.addr), SCRIPT_LIMIT);
    drop(server);
    let all = s.to_string();

    assert!(s["crash"].is_null(), "the script crashed: {}\nsummary: {all}", s["crash"]);
    assert_eq!(s["errors"], serde_json::json!([]), "page, console or proxy errors\nsummary: {all}");
    let track = &s["trackId"];
    assert!(track.is_string(), "the subscribers never learnt the camera's track id\nsummary: {all}");
    for rid in ["q", "h", "f"] {
        let sent = s["publisherLayers"][rid]["bytesSent"].as_u64().unwrap_or(0);
        assert!(sent > 0, "Chromium does not send layer {rid}\nsummary: {all}");
    }
    let width = |rid: &str| s["widths"][rid].as_u64().unwrap_or_else(|| panic!("no width for {rid}\nsummary: {all}"));
    let (wq, wh, wf) = (width("q"), width("h"), width("f"));
    assert!(wq < wh && wh < wf, "layer widths q {wq} < h {wh} < f {wf}\nsummary: {all}");
    assert!(wf >= 1280 || s["widths"]["widest"] == wf, "the f layer is {wf} wide\nsummary: {all}");

    // Both subscribers negotiated transport-cc with the server.
    for who in ["C", "U"] {
        for side in ["offer", "answer"] {
            let t = &s["twcc"][who][side];
            assert!(
                t["rtcpFb"] == true && t["extmap"] == true,
                "{who}'s subscribe-{side} does not carry transport-cc (rtcp-fb and the transport-wide-cc extension)\nsummary: {all}"
            );
        }
    }

    // C's media went through the proxy: its selected pair's remote port is the
    // proxy's, and the proxy carried its RTP (and its feedback back).
    let ports = s["proxy"]["ports"].as_array().cloned().unwrap_or_default();
    assert!(!ports.is_empty(), "no proxy was ever asked for (C's subscribe-offer named no candidate?)\nsummary: {all}");
    for at in ["warmupEnd", "capEnd"] {
        let p = &s["path"][at]["C"];
        assert!(p.is_object(), "C has no selected candidate pair at {at}\nsummary: {all}");
        assert!(
            ports.contains(&p["remotePort"]) && p["remoteAddress"] == "127.0.0.1",
            "C's selected candidate pair at {at} is {p}, not the proxy (ports {ports:?})\nsummary: {all}"
        );
    }
    let totals = &s["proxy"]["totals"];
    let rtp = totals["byKind"]["rtp"]["offered"].as_u64().unwrap_or(0);
    assert!(rtp >= MIN_PROXIED_RTP, "the proxy carried only {rtp} RTP datagrams to C\nsummary: {all}");
    assert!(
        totals["c2sPackets"].as_u64().unwrap_or(0) > 100,
        "the proxy carried (almost) nothing from C\nsummary: {all}"
    );
    assert!(
        s["capped"]["proxy"]["dropped"].as_u64().is_some(),
        "no proxy accounting for the capped phase\nsummary: {all}"
    );

    // Warm-up: with no cap both decode f.
    let warm = &s["warmup"];
    assert!(
        warm["reachedMs"].as_u64().is_some(),
        "C ({}) and U ({}) were not both decoding f ({wf}) before the cap\nsummary: {all}",
        warm["C"]["widths"],
        warm["U"]["widths"]
    );

    // Capped: C moved below f within 15 s.
    let cap = &s["capped"];
    assert!(cap.is_object() && cap["endMs"].is_number(), "the capped phase did not run to its end\nsummary: {all}");
    let down = cap["firstBelowFMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("C stayed at f ({wf}) all through the 600 kbit/s cap\nsummary: {all}"));
    assert!(down <= DOWN_MS, "C took {down} ms to drop below f after the cap (at most {DOWN_MS})\nsummary: {all}");
    // ... was told so, with reason "bandwidth".
    let ups = s["subs"]["C"]["subscriptionUpdates"].as_array().cloned().unwrap_or_default();
    assert!(
        ups.iter().any(|u| u["trackId"] == *track && u["reason"] == "bandwidth"),
        "C never got a subscription-update with reason \"bandwidth\" (got {})\nsummary: {all}",
        s["subs"]["C"]["subscriptionUpdates"]
    );
    // ... lost under 5 % of its video over the capped phase.
    let v = &cap["C"]["video"];
    let loss = v["lossFraction"].as_f64().unwrap_or_else(|| panic!("no video loss figures for C\nsummary: {all}"));
    assert!(
        loss < MAX_LOSS,
        "C lost {:.1} % of its video while capped ({} lost, {} received; the proxy dropped {} of {} datagrams)\nsummary: {all}",
        loss * 100.0,
        v["packetsLost"],
        v["packetsReceived"],
        cap["proxy"]["dropped"],
        cap["proxy"]["offered"]
    );
    assert!(
        cap["C"]["framesDecodedDelta"].as_i64().unwrap_or(0) > 0,
        "C decoded no video while capped\nsummary: {all}"
    );
    // ... and was moved to a layer, not paused: 600 kbit/s carries q and h, so
    // C still decodes video at the end of the capped phase.
    assert!(
        cap["C"]["framesLast5s"].as_i64().unwrap_or(0) > 0,
        "C decoded no video in the last 5 s of the cap (its updates: {})\nsummary: {all}",
        cap["C"]["updates"]
    );
    // ... and its audio kept flowing: packetsReceived grew in every 5 s window.
    let audio = &cap["C"]["audio"];
    assert_eq!(audio["windowMs"].as_u64(), Some(AUDIO_WINDOW_MS), "{all}");
    let windows = audio["windows"].as_array().cloned().unwrap_or_default();
    assert!(
        windows.len() >= MIN_WINDOWS,
        "the capped phase held only {} audio windows of {AUDIO_WINDOW_MS} ms\nsummary: {all}",
        windows.len()
    );
    for (i, w) in windows.iter().enumerate() {
        assert!(
            w.as_i64().is_some_and(|n| n > 0),
            "C's audio packetsReceived did not grow in window {i} of the capped phase ({w}; all: {})\nsummary: {all}",
            audio["windows"]
        );
    }
    // U, uncapped, stayed at f all through it.
    assert!(
        all_at(&cap["U"]["widths"], wf),
        "U left f ({wf}) while C was capped: {}\nsummary: {all}",
        cap["U"]["widths"]
    );
    assert!(
        cap["U"]["framesDecodedDelta"].as_i64().unwrap_or(0) > 0,
        "U decoded no video while C was capped\nsummary: {all}"
    );

    // Lifted: C climbs back to at least h within 25 s, and stays there.
    let lift = &s["lifted"];
    assert!(lift.is_object(), "the lifted phase did not run\nsummary: {all}");
    let up = lift["reachedHMs"].as_u64().unwrap_or_else(|| {
        panic!(
            "C never got back to at least h ({wh}) after the cap lifted (widths {})\nsummary: {all}",
            lift["C"]["widths"]
        )
    });
    assert!(up <= UP_MS, "C took {up} ms to get back to at least h ({wh}) after the lift\nsummary: {all}");
    let stable = lift["reachedHStableMs"].as_u64().unwrap_or_else(|| {
        panic!(
            "C reached h ({wh}) {up} ms after the lift but never stayed at or above it for {} ms (widths {}, updates {})\nsummary: {all}",
            lift["stableForMs"],
            lift["C"]["widths"],
            lift["C"]["updates"]
        )
    });
    assert!(stable <= UP_MS, "C settled at or above h only {stable} ms after the lift\nsummary: {all}");

    for who in ["C", "U"] {
        let x = &s["subs"][who];
        assert_eq!(x["wsErrors"], serde_json::json!([]), "{who} got error messages\nsummary: {all}");
        assert_eq!(x["ssrcs"].as_array().map(Vec::len), Some(1), "{who} saw more than one video SSRC\nsummary: {all}");
    }
}

fn main() {
    common::bench_runs(
        "bandwidth_cap",
        browser_subscriber_on_a_capped_link_moves_down_and_climbs_back_while_an_uncapped_one_keeps_full,
    );
}
