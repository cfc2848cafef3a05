//! SIGTERM on the real binary (SPEC 1): clients are told (`server-shutdown`),
//! live calls end with `server-shutdown`, sockets close, the store is flushed
//! and the process exits 0 within 10 s; a restart shows the ended calls.

mod common;

use common::{child_client, ChildServer, Ws};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Every message until the server closes the socket; and the close code.
async fn drain_until_closed(w: &mut Ws) -> (Vec<Value>, Option<u16>) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut msgs = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.inner.next()).await.expect("socket closed within 10 s") {
            Some(Ok(Message::Text(t))) => msgs.push(serde_json::from_str(&t).expect("JSON")),
            Some(Ok(Message::Close(f))) => return (msgs, f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket error before a close frame: {e}; got {msgs:?}"),
            None => panic!("stream ended without a close frame; got {msgs:?}"),
        }
    }
}

#[tokio::test]
async fn sigterm_tells_clients_ends_calls_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::spawn(dir.path(), &[]);
    let c = child_client(server.addr);

    let mut alice = c.ws_ready("alice").await;
    let mut bob = c.ws_ready("bob").await;
    alice.send(json!({"type": "call-initiate", "calleeId": "bob", "callType": "audio", "reqId": 1})).await;
    let created = alice.recv_type("call-created").await;
    let active = created["callSession"]["id"].as_str().unwrap().to_owned();
    bob.recv_type("call-initiate").await;
    bob.send(json!({"type": "call-accept", "callId": active})).await;
    let m = alice.recv_type("call-accept").await;
    assert_eq!(m["callSession"]["status"], "active");
    // A second call, still ringing, whose parties are not connected.
    let ringing = c.create_call("carol", "dave").await;

    let t0 = Instant::now();
    server.sigterm();

    for (who, w) in [("alice", &mut alice), ("bob", &mut bob)] {
        let (msgs, code) = drain_until_closed(w).await;
        let types: Vec<&str> = msgs.iter().map(|m| m["type"].as_str().unwrap_or("?")).collect();
        assert_eq!(types, ["server-shutdown", "call-ended"], "{who}: {msgs:?}");
        assert!(msgs[0].get("reconnect").is_none(), "a single node has nowhere to send clients: {msgs:?}");
        let ended = &msgs[1];
        assert_eq!(ended["callId"], active.as_str(), "{who}: {ended}");
        assert_eq!(ended["status"], "ended", "{who}: {ended}");
        assert_eq!(ended["endReason"], "server-shutdown", "{who}: {ended}");
        assert_eq!(code, Some(1001), "{who}: a server going down closes with 1001 (going away)");
    }

    let status = server.wait_exit(Duration::from_secs(10).saturating_sub(t0.elapsed())).await;
    let status = status.unwrap_or_else(|| panic!("still running {:?} after SIGTERM", t0.elapsed()));
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(status.code(), Some(0));

    // Restart on the same data dir: the calls were ended and flushed.
    let server = ChildServer::spawn(dir.path(), &[]);
    let c = child_client(server.addr);
    let (st, b) = c.get(&format!("/calls/{active}"), "bob").await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["callSession"]["status"], "ended", "{b}");
    assert_eq!(b["callSession"]["endReason"], "server-shutdown", "{b}");
    assert!(b["callSession"]["endedAt"].is_string(), "{b}");
    let (st, b) = c.get(&format!("/calls/{ringing}"), "carol").await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["callSession"]["status"], "ended", "{b}");
    assert_eq!(b["callSession"]["endReason"], "server-shutdown", "a ringing call also ends at shutdown: {b}");
}

#[tokio::test]
async fn sigterm_with_no_clients_exits_zero_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::spawn(dir.path(), &[]);
    let c = child_client(server.addr);
    let (st, _) = c.call("GET", "/healthz", None, None).await;
    assert_eq!(st, 200);
    let t0 = Instant::now();
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(10)).await.expect("exits within 10 s");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "idle shutdown took {:?}", t0.elapsed());
}
