//! A Chromium publisher (tests/browser/publish.js) and aiortc subscribers
//! (tests/interop/sfu_simulcast.py) in one room of the built binary: what
//! tests/simulcast_aiortc.rs and benches/remb_cap.rs run and how they read
//! its summary.

use super::{python, run_node_summary_with, ChildServer};
use serde_json::Value;
use std::time::Duration;

/// The publisher stays this long; the subscriber script needs at most about 120 s.
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
    let publisher = {
        let (base, room) = (base.clone(), room.to_owned());
        std::thread::spawn(move || run_node_summary_with("publish.js", &[&base, &room, PUBLISH_SECONDS], PUBLISH_LIMIT))
    };
    let out = std::process::Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/sfu_simulcast.py"))
        .args([server.addr.to_string(), room.into(), mode.into(), CAP_KBPS.into()])
        .output()
        .unwrap();
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
