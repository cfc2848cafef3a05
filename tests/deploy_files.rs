//! What config/ ships for deployments, checked against the real thing: the
//! systemd unit with `systemd-analyze`, the Grafana dashboard's queries
//! against what a running server's `/metrics` exports.

mod common;

use common::TestServer;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

fn shipped(name: &str) -> String {
    let p = format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// `key=value` settings of the unit, in order (comments skipped).
fn settings(unit: &str) -> Vec<(&str, &str)> {
    unit.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('=')).collect()
}

/// What a unit ends up with for `key`: the last assignment, as systemd reads it.
fn last<'a>(s: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    s.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// `systemd-analyze verify` and `security` (exposure score at most 2 of 10)
/// pass on `unit`, with ExecStart pointed at the binary just built (verify
/// needs it to exist).
fn analyze(unit: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confer.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/confer", env!("CARGO_BIN_EXE_confer"))).unwrap();
    let analyze = common::tool("systemd-analyze");
    let out = Command::new(&analyze).arg("verify").arg(&path).current_dir(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values, but says so on stderr.
    assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify:\n{err}");
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "systemd-analyze security:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = shipped("confer.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/confer serve "), "{unit}");
    analyze(&unit);

    let s = settings(&unit);
    let get = |k: &str| last(&s, k);
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "confer"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateUsers", "yes"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(get(k), Some(v), "{k}");
    }
    // Binds no port below 1024 by default, so it gets no capability.
    assert_eq!(get("AmbientCapabilities"), Some(""));
    // The store lives in the state directory.
    assert!(get("ExecStart").unwrap().contains("--data /var/lib/confer"));
    // systemd waits longer than confer's own graceful-shutdown deadline before SIGKILL.
    let stop = humantime::parse_duration(get("TimeoutStopSec").unwrap()).unwrap();
    let deadline = confer::app::SHUTDOWN_DEADLINE;
    assert!(stop > deadline && stop <= deadline * 2, "TimeoutStopSec={stop:?}, shutdown deadline {deadline:?}");
}

/// The lines the unit says to uncomment for ports below 1024 give the
/// capability, and turn the user namespace off, in which it would count only
/// inside the namespace, not for the host's ports.
#[test]
fn systemd_unit_low_port_variant_can_bind_below_1024() {
    let unit = shipped("confer.service");
    let block = [
        "#AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "#CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "#PrivateUsers=no",
    ];
    let mut low = unit.clone();
    for line in block {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
        low = low.replace(line, &line[1..]);
    }
    analyze(&low);
    let s = settings(&low);
    assert_eq!(last(&s, "AmbientCapabilities"), Some("CAP_NET_BIND_SERVICE"));
    assert_eq!(last(&s, "PrivateUsers"), Some("no"));
    // CapabilityBoundingSet= accumulates after its empty reset: the one capability.
    let bounding: Vec<&str> = s.iter().filter(|(k, _)| *k == "CapabilityBoundingSet").map(|(_, v)| *v).collect();
    assert_eq!(bounding.last(), Some(&"CAP_NET_BIND_SERVICE"));
    assert!(bounding.iter().all(|v| v.is_empty() || *v == "CAP_NET_BIND_SERVICE"), "{bounding:?}");
}

/// Every query in the dashboard, however deep: panels' `expr`, variables' `definition`.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The metric names a PromQL expression reads: identifiers outside quoted
/// strings that start with `confer_` or `process_`.
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':' || b[i] == b'$') {
                i += 1;
            }
            let id = &expr[start..i];
            if id.starts_with("confer_") || id.starts_with("process_") {
                out.insert(id.to_owned());
            }
        } else {
            i += 1;
        }
    }
}

#[test]
fn metric_names_are_read_from_promql() {
    let mut n = BTreeSet::new();
    metric_names(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(confer_http_request_duration_seconds_bucket{route!~"confer_x"}[$__rate_interval])))"#,
        &mut n,
    );
    metric_names("sum(rate(process_cpu_seconds_total[5m])) / confer_rooms_active", &mut n);
    let want = ["confer_http_request_duration_seconds_bucket", "confer_rooms_active", "process_cpu_seconds_total"];
    assert_eq!(n.into_iter().collect::<Vec<_>>(), want);
}

#[tokio::test]
async fn grafana_dashboard_reads_only_exported_metrics() {
    let dashboard: Value = serde_json::from_str(&shipped("grafana-dashboard.json")).expect("the dashboard is JSON");
    assert!(dashboard["title"].as_str().is_some_and(|t| t.contains("confer")));
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let mut used = BTreeSet::new();
    for e in &all {
        let mut read = BTreeSet::new();
        metric_names(e, &mut read);
        assert!(!read.is_empty(), "a query reads no confer or process metric: {e}");
        used.extend(read);
    }
    assert!(used.len() >= 20, "{used:?}");

    // The real server, with a little of everything that labels a metric:
    // HTTP routes, a call that ends, a WebSocket.
    let s = TestServer::start().await;
    let id = s.create_call("alice", "bob").await;
    let (st, _) = s.put(&format!("/calls/{id}/hangup"), "alice", None).await;
    assert_eq!(st, 200);
    let _ws = s.ws_ready("alice").await;
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "the dashboard reads metrics /metrics does not export: {missing:?}");

    // And it shows every metric SPEC 9 names.
    for name in [
        "confer_ws_connections",
        "confer_calls_active",
        "confer_calls_total",
        "confer_rooms_active",
        "confer_participants_active",
        "confer_tracks_published",
        "confer_rtp_packets_received_total",
        "confer_rtp_packets_forwarded_total",
        "confer_rtp_bytes_forwarded_total",
        "confer_rtcp_packets_total",
        "confer_nack_total",
        "confer_pli_total",
        "confer_stream_packet_loss",
        "confer_stream_jitter_seconds",
        "confer_stream_rtt_seconds",
        "confer_call_quality_mos",
        "confer_turn_allocations_active",
        "confer_turn_bytes_relayed_total",
        "confer_http_requests_total",
        "confer_http_request_duration_seconds",
    ] {
        let suffixes = ["", "_bucket", "_sum", "_count"];
        assert!(suffixes.iter().any(|s| used.contains(&format!("{name}{s}"))), "the dashboard does not show {name}");
    }
}
