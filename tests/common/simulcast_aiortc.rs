//! A Chromium publisher (tests/browser/publish.js) and aiortc subscribers
//! (tests/interop/sfu_simulcast.py) in one room of the built binary: what
//! tests/simulcast_aiortc.rs and benches/remb_cap.rs run and how they read
//! its summary.

use super::{python, run_node_summary_until, ChildServer};
use serde_json::Value;
use std::time::Duration;

/// The publisher stays at most this long (it is stopped when the subscriber
/// script ends, which needs at most about 120 s).
pub const PUBLISH_SECONDS: &str = "150";
pub const PUBLISH_LIMIT: Duration = Duration::from_secs(200);
pub const SWITCH_MS: u64 = 5000;
/// Longest wait between two decoded frames while ceilings change.
pub const STALL_MS: u64 = 2500;
pub const CAP_KBPS: &str = "600";
pub const DOWN_MS: i64 = 15_000;
pub const MAX_LOSS: f64 = 0.05;
pub const AUDIO_WINDOW_MS: i64 = 5000;
pub const UP_MS: i64 = 25_000;

/// Samples are `[ms, width, audio frames, packets received, packets lost]`.
pub fn samples<'a>(s: &'a Value, who: &str) -> Vec<&'a Vec<Value>> {
    s["samples"][who].as_array().into_iter().flatten().filter_map(Value::as_array).collect()
}

pub fn at(sample: &[Value], i: usize) -> i64 {
    sample[i].as_i64().unwrap_or(-1)
}

pub fn between<'a>(s: &'a Value, who: &str, from: i64, to: i64) -> Vec<&'a Vec<Value>> {
    samples(s, who).into_iter().filter(|x| (from..to).contains(&at(x, 0))).collect()
}

pub fn has_update(s: &Value, who: &str, layer: &str, reason: &str) -> bool {
    s["updates"][who].as_array().is_some_and(|l| l.iter().any(|u| u[1] == layer && u[2] == reason))
}

/// A server, a Chromium publisher in `room` and sfu_simulcast.py in `mode`:
/// (the script's summary, the publisher's, the summary without samples for messages).
pub fn run(room: &str, mode: &str, env: &[(&str, &str)]) -> (Value, Value, String) {
    let _one = super::heavy_slot();
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/node_modules/playwright-core");
    assert!(std::path::Path::new(modules).exists(), "playwright-core is missing: run scripts/setup-test-deps.sh");
    assert!(std::path::Path::new("/usr/bin/chromium").exists(), "chromium is missing: run scripts/setup-test-deps.sh");
    let dir = tempfile::tempdir().unwrap();
    let mut env = env.to_vec();
    env.push(("CONFER_AUTH_ALLOW_GUESTS", "true"));
    let server = ChildServer::spawn(dir.path(), &env);
    let base = format!("http://{}", server.addr);
    // The publisher stops when the script is done.
    let (done, stop) = std::sync::mpsc::channel::<()>();
    let publisher = {
        let (base, room) = (base.clone(), room.to_owned());
        std::thread::spawn(move || {
            run_node_summary_until("publish.js", &[&base, &room, PUBLISH_SECONDS], PUBLISH_LIMIT, Some(stop))
        })
    };
    let out = std::process::Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/sfu_simulcast.py"))
        .args([server.addr.to_string(), room.into(), mode.into(), CAP_KBPS.into()])
        .output()
        .unwrap();
    drop(done);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sfu_simulcast.py {mode} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let p = publisher.join().expect("the publisher thread");
    // Fillers (padding under a missed number from before a layer switch),
    // for the caller to report.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let filled = rt.block_on(super::child_client(server.addr).metric("confer_retransmissions_filled_total"));
    s["server"] = serde_json::json!({ "filled": filled });
    drop(server);
    assert!(p["crash"].is_null() && p["errors"] == serde_json::json!([]), "publisher: {p}");
    // Under CPU load libwebrtc would otherwise shrink the layers, and the
    // subscribers would see a resolution the test did not ask for.
    assert_eq!(p["degradation"], "maintain-resolution", "the publisher's degradationPreference: {p}");
    for rid in ["q", "h", "f"] {
        assert!(p["layers"][rid]["bytesSent"].as_u64().unwrap_or(0) > 0, "Chromium sent no {rid} layer: {p}");
    }
    // What a failure prints: everything but the 250 ms samples.
    let mut brief = s.clone();
    brief["samples"] = Value::Null;
    let brief = brief.to_string();
    // aiortc's decoder takes a frame of no data for the end of the stream and
    // decodes nothing more (sfu_simulcast.py's DecoderWatch). The script still
    // recorded frames after that, all of the last width, so the layer checks
    // alone missed it.
    assert!(
        s["decoderStoppedMs"].is_null(),
        "an aiortc subscriber's VP8 decoder stopped for good at {} ms\n{brief}",
        s["decoderStoppedMs"]
    );
    let default = &s["phases"]["default"];
    assert!(default["reachedMs"].is_number(), "not every subscriber decoded the full layer: {default}\n{brief}");
    (s, p, brief)
}

pub fn phase(s: &Value, phase: &str, key: &str) -> i64 {
    s["phases"][phase][key].as_i64().unwrap_or_else(|| panic!("no {phase}.{key}"))
}

/// Frames kept coming, nothing was lost (one SSRC, contiguous sequence numbers).
pub fn no_stall_no_loss(s: &Value, who: &str, from: i64, to: i64) {
    let stall = s["stallMs"][who].as_u64().unwrap_or(u64::MAX);
    assert!(stall <= STALL_MS, "{who} decoded nothing for {stall} ms");
    let w = between(s, who, from, to);
    let (first, last) = (w.first().unwrap(), w.last().unwrap());
    assert_eq!(at(last, 4) - at(first, 4), 0, "{who} lost packets: {first:?} .. {last:?}");
}

/// The longest the capped subscriber may wait between two decoded frames,
/// from when both decode f to the end.
pub const CAPPED_STALL_MS: u64 = 3000;

/// The capped scenario, a test in `tests/simulcast_aiortc.rs` (its doc says
/// what it shows) and, run `RUNS` times, `cargo bench --bench remb_cap`.
pub fn an_aiortc_subscriber_on_a_capped_link_is_moved_down_by_its_remb_and_back() {
    let (s, _, all) = run("aiortc-cap", "cap", &[]);
    let f = s["widest"].as_i64().unwrap();
    let (start, cap, cap_end, end) = (
        phase(&s, "default", "reachedMs"),
        phase(&s, "cap", "startMs"),
        phase(&s, "cap", "endMs"),
        phase(&s, "end", "startMs"),
    );
    // Before the cap both kept f.
    for who in ["U", "C"] {
        for x in between(&s, who, start + 1000, cap) {
            assert_eq!(at(x, 1), f, "{who} left f before the cap: {x:?}\n{all}");
        }
    }
    // The cap: C moved below f within 15 s, told so for bandwidth ...
    let capped = between(&s, "C", cap, cap_end);
    let down = capped
        .iter()
        .find(|x| at(x, 1) < f && at(x, 1) > 0)
        .map(|x| at(x, 0) - cap)
        .unwrap_or_else(|| panic!("C stayed at f all through the {CAP_KBPS} kbit/s cap\n{all}"));
    assert!(down <= DOWN_MS, "C took {down} ms to drop below f\n{all}");
    assert!(
        s["updates"]["C"]
            .as_array()
            .is_some_and(|l| l.iter().any(|u| u[2] == "bandwidth" && at(u.as_array().unwrap(), 0) >= cap)),
        "C was never told of a bandwidth move while capped: {}",
        s["updates"]["C"]
    );
    // ... lost under 5 % of its video while capped ...
    let (first, last) = (capped.first().unwrap(), capped.last().unwrap());
    // (The script counts a filler as the loss it stands for, not as the
    // received packet aiortc takes it for.)
    let filled = s["server"]["filled"].as_f64().expect("the server's confer_retransmissions_filled_total");
    let (received, lost) = (at(last, 3) - at(first, 3), at(last, 4) - at(first, 4));
    let loss = lost as f64 / (received + lost).max(1) as f64;
    let stall = s["stallMs"]["C"].as_u64().unwrap_or(u64::MAX);
    println!(
        "  C while capped: {:.1} % of its video lost, longest wait for a frame {stall} ms ({filled} fillers sent in the run)",
        loss * 100.0
    );
    assert!(received > 0 && loss < MAX_LOSS, "C lost {lost} of {} video packets while capped\n{all}", received + lost);
    // ... decoded video all along, switches included ...
    assert!(stall <= CAPPED_STALL_MS, "C decoded no video for {stall} ms\n{all}");
    // ... and heard audio in every 5 s of it ...
    let mut t = cap;
    while t + AUDIO_WINDOW_MS <= cap_end {
        let w = between(&s, "C", t, t + AUDIO_WINDOW_MS);
        assert!(
            w.len() >= 2 && at(w.last().unwrap(), 2) > at(w[0], 2),
            "C heard no audio in {t}..{} ms while capped",
            t + AUDIO_WINDOW_MS
        );
        t += AUDIO_WINDOW_MS;
    }
    assert!(
        s["proxy"]["cappedOffered"].as_u64().unwrap_or(0) > 1000,
        "C's media did not go through the proxy: {}",
        s["proxy"]
    );
    // ... while U, uncapped, kept f.
    for x in between(&s, "U", cap, end) {
        assert_eq!(at(x, 1), f, "U (uncapped) left f during C's cap: {x:?}\n{all}");
    }
    no_stall_no_loss(&s, "U", start, end);
    // Lifted: C at h or better within 25 s, and staying there.
    let lifted = between(&s, "C", cap_end, end);
    let up = lifted
        .iter()
        .position(|x| at(x, 1) > f / 4)
        .unwrap_or_else(|| panic!("C never climbed back to h after the lift\n{all}"));
    assert!(
        at(lifted[up], 0) - cap_end <= UP_MS,
        "C took {} ms to climb back to h\n{all}",
        at(lifted[up], 0) - cap_end
    );
    for x in &lifted[up..] {
        assert!(at(x, 1) > f / 4, "C fell back below h after the lift: {x:?}");
    }
}
