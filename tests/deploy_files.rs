//! What config/ ships for deployments, checked against the real thing: the
//! systemd unit with `systemd-analyze`.

mod common;

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
