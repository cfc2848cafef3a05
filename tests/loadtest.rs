//! `confer loadtest` against a real server: small runs complete, every
//! track reaches every receiver, and the report carries the numbers.

mod common;

use common::ChildServer;
use serde_json::Value;

/// Run `confer loadtest ARGS` against a fresh server; (report, stderr).
fn loadtest(args: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    // Two SFU workers whatever the machine has, so placement is tested.
    let server = ChildServer::spawn(dir.path(), &[("CONFER_MEDIA_WORKERS", "2")]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_confer"))
        .arg("loadtest")
        .args(args)
        // 300 kbit/s of video unless the test says otherwise.
        .args(if args.contains(&"--video-kbps") { &[][..] } else { &["--video-kbps", "300"][..] })
        .arg("--url")
        .arg(format!("http://{}", server.addr))
        .arg("--data")
        .arg(dir.path())
        .env("CONFER_AUTH_SECRET", common::SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "loadtest failed:\n{stdout}\n{stderr}");
    (serde_json::from_str(stdout.trim()).unwrap(), stderr)
}

#[test]
fn a_small_load_run_reports_every_track_and_no_loss() {
    // Long enough for one analytics report (every 5 s).
    let (r, stderr) = loadtest(&["--subscribers", "2", "--seconds", "7"]);
    assert!(stderr.contains("received"), "a progress line: {stderr}");
    assert_eq!(r["tracksExpected"], 4, "{r}");
    assert_eq!(r["tracksReceived"], 4, "{r}");
    assert_eq!(r["serverMediaPorts"], 1, "one room, one worker: {r}");
    assert!(r["packetsReceived"].as_u64().unwrap() > 100, "{r}");
    assert!(r["loss"].as_f64().unwrap() < 0.05, "{r}");
    // Sent and received are counted over the same window of send times, so
    // the subscribers can never have received more than was sent to them.
    let (sent, received) = (r["packetsSent"].as_u64().unwrap(), r["packetsReceived"].as_u64().unwrap());
    assert!(received <= sent * 2, "{received} received of {sent} sent to 2 subscribers: {r}");
    assert!(r["latencyMs"]["p50"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["packetsForwarded"].as_f64().unwrap() > 0.0 && r["serverCpuSeconds"].as_f64().unwrap() > 0.0, "{r}");
    // The server's own analytics of the same run: webrtc-rs subscribers send
    // RTCP receiver reports and TWCC feedback, so both round trips are there
    // (loopback: well under 50 ms), and loss agrees with the clients'.
    let a = &r["serverAnalytics"];
    assert!(a["roomScore"].as_f64().unwrap() >= 4.0, "{r}");
    assert!(a["subscribeLoss"].as_f64().unwrap() < 0.05, "{r}");
    assert_eq!(a["publishFrameSizes"], serde_json::json!(["640x360"]), "read from the VP8 keyframes: {r}");
    assert!(r["serverForwardDelayMs"]["p50"].as_f64().is_some(), "{r}");
    for k in ["subscribeRttMs", "subscribeTwccRttMs"] {
        let ms = a[k].as_f64().unwrap_or_else(|| panic!("{k}: {r}"));
        assert!(ms > 0.0 && ms < 50.0, "{k}: {r}");
    }
}

#[test]
fn a_meeting_load_has_every_publisher_receive_the_others() {
    let (r, _) = loadtest(&["--rooms", "2", "--publishers", "2", "--subscribers", "0", "--meeting", "--seconds", "2"]);
    // 2 rooms x 2 publishers x 1 other x (video + audio).
    assert_eq!((r["tracksExpected"].as_u64(), r["tracksReceived"].as_u64()), (Some(8), Some(8)), "{r}");
    // The two rooms, live at once, were placed on the two workers (two
    // ports), and media flowed in both.
    assert_eq!(r["serverMediaPorts"], 2, "{r}");
    assert!(r["loss"].as_f64().unwrap() < 0.05 && r["meeting"] == true, "{r}");
}

/// Simulcast publishers (three layers named by the rid header extension, as
/// browsers send them) and subscribers at three ceilings: each subscriber
/// gets its ceiling's layer and never one above it, over one stream with no
/// sequence gap (SPEC 5.1).
#[test]
fn a_simulcast_load_gives_each_ceiling_its_layer() {
    let (r, _) = loadtest(&["--subscribers", "3", "--seconds", "4", "--simulcast", "--ceilings", "high,medium,low"]);
    each_ceiling_got_its_layer(&r);
}

/// The same with the layers named the legacy way (SPEC 5.1): the offer has
/// `a=ssrc-group:SIM` (lowest first) and no rids, and no packet carries a
/// rid header extension, as Jitsi-style clients publish.
#[test]
fn a_simulcast_load_named_by_an_ssrc_group_gives_each_ceiling_its_layer() {
    let args = ["--subscribers", "3", "--seconds", "4", "--simulcast", "--sim-group", "--ceilings", "high,medium,low"];
    let (r, _) = loadtest(&args);
    assert_eq!(r["simGroup"], true, "{r}");
    each_ceiling_got_its_layer(&r);
}

fn each_ceiling_got_its_layer(r: &Value) {
    for layer in ["q", "h", "f"] {
        assert!(r["packetsSentByLayer"][layer].as_u64().unwrap() > 20, "the publisher sends {layer}: {r}");
    }
    for (ceiling, wanted, above) in [("high", "f", &[][..]), ("medium", "h", &["f"][..]), ("low", "q", &["h", "f"][..])]
    {
        let v = &r["videoByCeiling"][ceiling];
        assert_eq!(v["subscribers"], 1, "{ceiling}: {r}");
        let got = |l: &str| v["packetsByLayer"][l].as_u64().unwrap();
        let total = got("q") + got("h") + got("f");
        // The estimate may start below the ceiling; it is never above it.
        assert!(got(wanted) as f64 > 0.9 * total as f64 && total > 20, "{ceiling} receives {wanted}: {r}");
        assert!(above.iter().all(|l| got(l) == 0), "{ceiling} never receives a layer above {wanted}: {r}");
        assert!(v["loss"].as_f64().unwrap() < 0.02, "{ceiling}: {r}");
    }
    assert_eq!(r["tracksReceived"], r["tracksExpected"], "{r}");
}

/// SPEC 5.1 on a real link cap: two subscribers (webrtc-rs, which sends
/// transport-wide congestion control feedback) of a simulcast publisher
/// (150, 450 and 1,500 kbit/s, as a browser sends 1280x720); the
/// first one's link is held at 600 kbit/s by the load tool's token bucket
/// (15 kB burst, then a 60 ms drop-tail queue) for the middle third of a
/// 60 s run. The capped one is moved below `f` within 15 s, loses under 5 %
/// of its video while capped, keeps its audio, and is back at `h` or above
/// within the 20 s after the cap lifts; the uncapped one keeps `f`.
#[test]
fn a_capped_subscriber_moves_down_keeps_audio_and_climbs_back() {
    let (r, _) = loadtest(&[
        "--subscribers",
        "2",
        "--seconds",
        "60",
        "--simulcast",
        "--cap-kbps",
        "600",
        "--video-kbps",
        "1500",
    ]);
    let cap = &r["cap"];
    eprintln!("cap: {cap}");
    assert_eq!(cap["subscribers"], 1, "{r}");
    let ms = |k: &str| cap[k].as_f64().unwrap_or_else(|| panic!("{k}: {cap}"));
    assert!(ms("downMs") < 15_000.0, "moved below f within 15 s: {cap}");
    assert!(
        cap["settledLayers"].as_array().unwrap().iter().all(|l| l == "q" || l == "h"),
        "settled below f while capped: {cap}"
    );
    assert!(ms("lossWhileCapped") < 0.05, "video loss while capped: {cap}");
    assert!(ms("audioGapMaxMs") < 500.0, "audio kept flowing while capped: {cap}");
    assert!(ms("upToHMs") < 20_000.0, "back to h or above after the lift: {cap}");
    // The uncapped subscriber kept the full layer throughout.
    let free = &r["videoByCeiling"]["none"];
    assert_eq!(free["subscribers"], 1, "{r}");
    let got = |l: &str| free["packetsByLayer"][l].as_u64().unwrap();
    assert!(got("f") as f64 > 0.97 * (got("q") + got("h") + got("f")) as f64, "the uncapped one keeps f: {r}");
    assert!(free["loss"].as_f64().unwrap() < 0.02, "{r}");
    assert_eq!(r["videoByCeiling"]["none capped"]["subscribers"], 1, "{r}");
}
