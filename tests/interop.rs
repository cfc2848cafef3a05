//! Software we did not write against the real server: two aiortc peers hold a
//! P2P call through the /rtc relay, schemathesis fuzzes the REST API from
//! /openapi.json, promtool validates /metrics. The tools come from
//! scripts/setup-test-deps.sh; a missing tool fails the test (never skips).

mod common;

use common::{child_client, python, tool, ChildServer};
use std::process::Command;

fn interop(file: &str) -> String {
    format!("{}/tests/interop/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Two aiortc peers call each other; `relay` forces their media through
/// confer's TURN server with credentials from /ice-config.
fn aiortc_call(relay: bool) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    // The relayed peers' addresses are loopback relay sockets: allow them.
    let server = ChildServer::spawn(dir.path(), &[("CONFER_TURN_ALLOW_LOOPBACK_PEERS", "true")]);
    let c = child_client(server.addr);
    let mut cmd = Command::new(python());
    cmd.arg(interop("p2p_call.py")).arg(server.addr.to_string()).arg(c.token("alice")).arg(c.token("bob"));
    if relay {
        cmd.arg("relay");
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "aiortc call failed:\n{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(summary["aliceDecoded"].as_u64().unwrap() >= 30, "{summary}");
    assert!(summary["bobDecoded"].as_u64().unwrap() >= 30, "{summary}");
    summary
}

#[test]
fn aiortc_p2p_call_through_relay() {
    aiortc_call(false);
}

#[test]
fn aiortc_p2p_call_forced_through_turn() {
    let summary = aiortc_call(true);
    assert_eq!(summary["relay"], true);
}

#[test]
fn schemathesis_finds_no_server_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(dir.path(), &[("CONFER_AUTH_ALLOW_GUESTS", "true")]);
    let c = child_client(server.addr);
    let st = python().with_file_name("st");
    assert!(st.exists(), "schemathesis is missing from the venv: run scripts/setup-test-deps.sh");
    let out = Command::new(st)
        .args(["run", &format!("http://{}/openapi.json", server.addr)])
        .args(["-H", &format!("Authorization: Bearer {}", c.token("alice"))])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--exclude-path", "/rtc", "-n", "25", "--generation-deterministic", "--no-color"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found problems:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("passed"), "{stdout}");
}

#[tokio::test]
async fn promtool_accepts_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(dir.path(), &[]);
    let c = child_client(server.addr);
    // Some traffic so that labelled series exist.
    let id = c.create_call("alice", "bob").await;
    c.put(&format!("/calls/{id}/hangup"), "alice", None).await;
    c.get("/calls/history", "alice").await;
    let _ws = c.ws("alice").await;
    let body = c.http.get(c.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(body.contains("confer_calls_total{status=\"ended\"} 1"), "{body}");
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejected /metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
