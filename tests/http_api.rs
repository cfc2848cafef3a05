//! REST API against the real server on port 0: auth, shapes, errors, calls,
//! rooms, ice-config, guests, health, OpenAPI (SPEC 2, 3, 12).

mod common;

use base64::Engine;
use common::TestServer;
use serde_json::{json, Value};

fn err_code(b: &Value) -> &str {
    b["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {b}"))
}

fn err_msg(b: &Value) -> &str {
    b["error"]["message"].as_str().unwrap()
}

#[tokio::test]
async fn every_401_case() {
    let s = TestServer::start().await;
    let (st, b) = s.call("GET", "/calls/history", None, None).await;
    assert_eq!((st, err_code(&b)), (401, "unauthorized"));

    for bad in ["garbage", "a.b.c", ""] {
        let (st, b) = s.call_token("GET", "/calls/history", Some(bad), None).await;
        assert_eq!(st, 401, "{bad}: {b}");
    }
    // Expired (beyond the 5 s leeway).
    let expired = s.token_with("alice", |c| c.exp = confer::auth::unix_now() - 30);
    let (st, b) = s.call_token("GET", "/calls/history", Some(&expired), None).await;
    assert_eq!((st, err_code(&b)), (401, "token-expired"));
    // Wrong signature.
    let other = confer::auth::TokenKeys::new(b"some-other-secret-that-is-long-enough");
    let forged = other.sign(&confer::auth::Claims::new("alice".into(), std::time::Duration::from_secs(60)));
    let (st, _) = s.call_token("GET", "/calls/history", Some(&forged), None).await;
    assert_eq!(st, 401);
    // alg: none.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(format!(r#"{{"sub":"alice","exp":{}}}"#, confer::auth::unix_now() + 600))
    );
    let (st, _) = s.call_token("GET", "/calls/history", Some(&none), None).await;
    assert_eq!(st, 401);
    // HS512 with the right secret is still refused: only HS256.
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": "alice", "exp": confer::auth::unix_now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let (st, _) = s.call_token("GET", "/calls/history", Some(&hs512), None).await;
    assert_eq!(st, 401);
    // Missing sub.
    let no_sub = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"exp": confer::auth::unix_now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let (st, _) = s.call_token("GET", "/calls/history", Some(&no_sub), None).await;
    assert_eq!(st, 401);
    // The same checks guard every authenticated route.
    for (m, p) in [("POST", "/calls"), ("GET", "/rooms"), ("GET", "/ice-config"), ("DELETE", "/rooms/x")] {
        let (st, _) = s.call(m, p, None, Some(json!({}))).await;
        assert_eq!(st, 401, "{m} {p}");
    }
}

#[tokio::test]
async fn create_call_shape_and_validation() {
    let s = TestServer::start().await;
    let (st, b) = s
        .post("/calls", "alice", json!({"callerId": "alice", "calleeId": "bob", "callType": "audio", "roomName": "r1"}))
        .await;
    assert_eq!(st, 201, "{b}");
    let c = &b["callSession"];
    assert_eq!(b["roomId"], c["roomId"]);
    for k in [
        "id",
        "callerId",
        "calleeId",
        "callType",
        "mode",
        "status",
        "roomId",
        "roomName",
        "createdAt",
        "answeredAt",
        "endedAt",
        "endReason",
        "duration",
        "participants",
    ] {
        assert!(c.get(k).is_some(), "callSession lacks {k}: {c}");
    }
    assert_eq!(
        (c["status"].as_str(), c["mode"].as_str(), c["duration"].as_f64()),
        (Some("ringing"), Some("p2p"), Some(0.0))
    );
    assert!(c["createdAt"].as_str().unwrap().ends_with('Z'));
    let p = &c["participants"][0];
    for k in ["userId", "audioMuted", "videoMuted", "camera", "joinedAt", "leftAt"] {
        assert!(p.get(k).is_some(), "participant lacks {k}");
    }

    // callerId must be the token's sub; admins excepted.
    let (st, b) =
        s.post("/calls", "mallory", json!({"callerId": "alice", "calleeId": "bob", "callType": "audio"})).await;
    assert_eq!((st, err_code(&b)), (403, "forbidden"));
    let admin = s.token_with("root", |c| c.admin = true);
    let (st, _) = s
        .call_token(
            "POST",
            "/calls",
            Some(&admin),
            Some(json!({"callerId": "alice", "calleeId": "bob", "callType": "audio"})),
        )
        .await;
    assert_eq!(st, 201);
    // Calling yourself.
    let (st, b) =
        s.post("/calls", "alice", json!({"callerId": "alice", "calleeId": "alice", "callType": "audio"})).await;
    assert_eq!(st, 400);
    assert!(err_msg(&b).contains("calleeId"), "{b}");
    // Missing and bad fields are named.
    let cases = [
        (json!({"calleeId": "bob", "callType": "audio"}), "callerId"),
        (json!({"callerId": "alice", "callType": "audio"}), "calleeId"),
        (json!({"callerId": "alice", "calleeId": "bob", "callType": "hologram"}), "callType"),
        (json!({"callerId": "alice", "calleeId": "bob", "callType": "audio", "mode": "mesh"}), "mode"),
        (json!({"callerId": "alice", "calleeId": 7, "callType": "audio"}), "calleeId"),
        (json!({"callerId": "alice", "calleeId": "", "callType": "audio"}), "calleeId"),
    ];
    for (body, field) in cases {
        let (st, b) = s.post("/calls", "alice", body.clone()).await;
        assert_eq!((st, err_code(&b)), (400, "bad-request"), "{body}");
        assert!(err_msg(&b).contains(field), "{body} -> {b}");
    }
    // Not JSON at all.
    let resp = s.http.post(s.url("/calls")).bearer_auth(s.token("alice")).body("{not json").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // Over 64 KiB.
    let big = json!({"callerId": "alice", "calleeId": "bob", "callType": "audio", "roomName": "x".repeat(70_000)});
    let (st, b) = s.post("/calls", "alice", big).await;
    assert_eq!((st, err_code(&b)), (413, "too-large"));
}

#[tokio::test]
async fn call_lifecycle_messages_and_conflicts() {
    let s = TestServer::start().await;
    let id = s.create_call("alice", "bob").await;
    let path = |a: &str| format!("/calls/{id}/{a}");

    // Only the callee accepts; strangers do not even see the call.
    let (st, _) = s.put(&path("accept"), "alice", None).await;
    assert_eq!(st, 403);
    let (st, b) = s.get(&format!("/calls/{id}"), "mallory").await;
    assert_eq!((st, err_code(&b)), (404, "not-found"));
    let (st, _) = s.put(&path("hangup"), "mallory", None).await;
    assert_eq!(st, 404);

    let (st, b) = s.put(&path("accept"), "bob", None).await;
    assert_eq!(st, 200);
    assert_eq!(b["callSession"]["status"], "active");
    assert!(b["callSession"]["answeredAt"].is_string());

    let (st, b) = s.put(&path("mute-audio"), "alice", Some(json!({"mute": true}))).await;
    assert_eq!((st, b["message"].as_str()), (200, Some("Audio muted")));
    let (_, b) = s.put(&path("mute-audio"), "alice", Some(json!({"mute": false}))).await;
    assert_eq!(b["message"], "Audio unmuted");
    let (_, b) = s.put(&path("mute-video"), "bob", Some(json!({"mute": true}))).await;
    assert_eq!(b["message"], "Video muted");
    let (_, b) = s.put(&path("mute-video"), "bob", Some(json!({"mute": false}))).await;
    assert_eq!(b["message"], "Video unmuted");
    let (st, b) = s.put(&path("mute-video"), "bob", Some(json!({"mute": "yes"}))).await;
    assert_eq!(st, 400);
    assert!(err_msg(&b).contains("mute"));
    let (st, b) =
        s.put(&path("switch-camera"), "bob", Some(json!({"facingMode": "environment", "deviceId": "cam2"}))).await;
    assert_eq!((st, b["message"].as_str()), (200, Some("Camera switched")));
    let (st, _) = s.put(&path("switch-camera"), "bob", Some(json!({"facingMode": "sideways"}))).await;
    assert_eq!(st, 400);

    let (_, b) = s.get(&format!("/calls/{id}"), "alice").await;
    let bob =
        b["callSession"]["participants"].as_array().unwrap().iter().find(|p| p["userId"] == "bob").unwrap().clone();
    assert_eq!(bob["camera"], json!({"deviceId": "cam2", "facingMode": "environment"}));
    assert_eq!(bob["videoMuted"], false);

    // Rejecting an active call is a conflict.
    let (st, b) = s.put(&path("reject"), "bob", None).await;
    assert_eq!((st, err_code(&b)), (409, "conflict"));

    let (st, b) = s.put(&path("hangup"), "bob", None).await;
    assert_eq!((st, b["message"].as_str()), (200, Some("Call ended")));
    let (_, b) = s.get(&format!("/calls/{id}"), "alice").await;
    let c = &b["callSession"];
    assert_eq!((c["status"].as_str(), c["endReason"].as_str()), (Some("ended"), Some("hangup")));
    assert!(c["duration"].as_f64().unwrap() >= 0.0);

    // Every transition from a final state is 409.
    for a in ["accept", "reject", "hangup"] {
        let (st, _) = s.put(&path(a), "bob", None).await;
        assert_eq!(st, 409, "{a}");
    }
    let (st, _) = s.put(&path("mute-audio"), "alice", Some(json!({"mute": true}))).await;
    assert_eq!(st, 409);
}

#[tokio::test]
async fn reject_and_cancel() {
    let s = TestServer::start().await;
    let id = s.create_call("alice", "bob").await;
    let (st, b) = s.put(&format!("/calls/{id}/reject"), "bob", Some(json!({"reason": "busy"}))).await;
    assert_eq!((st, b["message"].as_str()), (200, Some("Call rejected")));
    let (_, b) = s.get(&format!("/calls/{id}"), "bob").await;
    assert_eq!(b["callSession"]["status"], "rejected");

    let id = s.create_call("alice", "bob").await;
    let (st, _) = s.put(&format!("/calls/{id}/reject"), "alice", None).await;
    assert_eq!(st, 403, "only the callee rejects");
    s.put(&format!("/calls/{id}/hangup"), "alice", None).await;
    let (_, b) = s.get(&format!("/calls/{id}"), "alice").await;
    assert_eq!(
        (b["callSession"]["status"].as_str(), b["callSession"]["endReason"].as_str()),
        (Some("ended"), Some("canceled"))
    );
}

#[tokio::test]
async fn history_filters_paging_and_access() {
    let s = TestServer::start().await;
    let a = s.create_call("alice", "bob").await;
    let b_id = s.create_call("carol", "alice").await;
    let c = s.create_call("bob", "carol").await;
    s.put(&format!("/calls/{a}/reject"), "bob", None).await;

    let (st, h) = s.get("/calls/history", "alice").await;
    assert_eq!(st, 200);
    let ids: Vec<&str> = h["calls"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [b_id.as_str(), a.as_str()], "newest first, own calls only");
    assert_eq!((h["total"].as_u64(), h["limit"].as_u64(), h["offset"].as_u64()), (Some(2), Some(20), Some(0)));

    let (_, h) = s.get("/calls/history?limit=1&offset=1", "alice").await;
    assert_eq!(h["calls"][0]["id"], a.as_str());
    assert_eq!(h["total"], 2);
    let (_, h) = s.get("/calls/history?status=rejected", "alice").await;
    assert_eq!(h["total"], 1);
    let (_, h) = s.get("/calls/history?type=audio", "alice").await;
    assert_eq!(h["total"], 0);

    for q in ["limit=0", "limit=101", "limit=x", "offset=-1", "type=fax", "status=lost"] {
        let (st, b) = s.get(&format!("/calls/history?{q}"), "alice").await;
        assert_eq!(st, 400, "{q}");
        assert!(err_msg(&b).contains(q.split('=').next().unwrap()), "{q}: {b}");
    }
    let (st, _) = s.get("/calls/history?userId=bob", "alice").await;
    assert_eq!(st, 403);
    let (st, _) = s.get("/calls/history?userId=alice", "alice").await;
    assert_eq!(st, 200);
    let admin = s.token_with("root", |c| c.admin = true);
    let (st, h) = s.call_token("GET", "/calls/history?userId=carol", Some(&admin), None).await;
    assert_eq!(st, 200);
    assert_eq!(h["total"], 2);
    let (_, h) = s.call_token("GET", "/calls/history", Some(&admin), None).await;
    assert_eq!(h["total"], 3, "admins see every call");
    let (st, _) = s.call_token("GET", &format!("/calls/{c}"), Some(&admin), None).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn rooms_crud_capacity_privacy() {
    let s = TestServer::start_with(|c| c.rooms.max_participants = 50).await;
    let (st, b) = s.post("/rooms", "alice", json!({"name": "standup", "maxParticipants": 2})).await;
    assert_eq!(st, 201, "{b}");
    let room = &b["room"];
    for k in ["id", "name", "maxParticipants", "isPrivate", "createdBy", "createdAt", "participants"] {
        assert!(room.get(k).is_some(), "room lacks {k}");
    }
    let id = room["id"].as_str().unwrap().to_owned();
    assert_eq!((room["createdBy"].as_str(), room["isPrivate"].as_bool()), (Some("alice"), Some(false)));

    let (_, b) = s.post("/rooms", "alice", json!({"name": "defaults"})).await;
    assert_eq!(b["room"]["maxParticipants"], 16);
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x", "maxParticipants": 1}), "maxParticipants"),
        (json!({"name": "x", "maxParticipants": 51}), "maxParticipants"),
        (json!({"name": "x", "isPrivate": "no"}), "isPrivate"),
        (json!({}), "name"),
    ] {
        let (st, b) = s.post("/rooms", "alice", body.clone()).await;
        assert_eq!(st, 400, "{body}");
        assert!(err_msg(&b).contains(field), "{body} -> {b}");
    }

    // Seats: two fit, the third is room-full.
    let (st, j) = s.call("POST", &format!("/rooms/{id}/join"), Some("bob"), None).await;
    assert_eq!(st, 200, "{j}");
    let peer = j["peerId"].as_str().unwrap();
    assert!(j["room"]["participants"].as_array().unwrap().iter().any(|p| p["peerId"] == peer && p["userId"] == "bob"));
    let (st, _) = s.call("POST", &format!("/rooms/{id}/join"), Some("carol"), None).await;
    assert_eq!(st, 200);
    let (st, b) = s.call("POST", &format!("/rooms/{id}/join"), Some("dave"), None).await;
    assert_eq!((st, err_code(&b)), (409, "room-full"));
    let (st, b) = s.call("POST", &format!("/rooms/{id}/leave"), Some("carol"), None).await;
    assert_eq!((st, b["message"].as_str()), (200, Some("Left room")));
    let (st, _) = s.call("POST", &format!("/rooms/{id}/join"), Some("dave"), None).await;
    assert_eq!(st, 200, "a seat freed by leave is available again");
    let (st, _) = s.call("POST", &format!("/rooms/{id}/leave"), Some("erin"), None).await;
    assert_eq!(st, 404);

    // Private rooms: creator, admin or a token listing the room.
    let (_, b) = s.post("/rooms", "alice", json!({"name": "secret", "isPrivate": true})).await;
    let pid = b["room"]["id"].as_str().unwrap().to_owned();
    let (st, b) = s.get(&format!("/rooms/{pid}"), "mallory").await;
    assert_eq!((st, err_code(&b)), (403, "forbidden"));
    let (st, _) = s.call("POST", &format!("/rooms/{pid}/join"), Some("mallory"), None).await;
    assert_eq!(st, 403);
    let invited = s.token_with("bob", |c| c.rooms = vec!["secret".into()]);
    let (st, _) = s.call_token("POST", &format!("/rooms/{pid}/join"), Some(&invited), None).await;
    assert_eq!(st, 200);
    let (_, l) = s.get("/rooms", "mallory").await;
    assert!(
        l["rooms"].as_array().unwrap().iter().all(|r| r["id"] != pid.as_str()),
        "private room listed to a stranger"
    );
    let (_, l) = s.get("/rooms", "alice").await;
    assert_eq!(l["total"], 3);
    let (_, l) = s.get("/rooms?limit=1&offset=1", "alice").await;
    assert_eq!(l["rooms"].as_array().unwrap().len(), 1);
    let (st, _) = s.get("/rooms?limit=0", "alice").await;
    assert_eq!(st, 400);

    // Delete: creator or admin only.
    let (st, _) = s.call("DELETE", &format!("/rooms/{id}"), Some("bob"), None).await;
    assert_eq!(st, 403);
    let (st, b) = s.call("DELETE", &format!("/rooms/{id}"), Some("alice"), None).await;
    assert_eq!((st, b["message"].as_str()), (200, Some("Room deleted")));
    let (st, _) = s.get(&format!("/rooms/{id}"), "alice").await;
    assert_eq!(st, 404);
    let admin = s.token_with("root", |c| c.admin = true);
    let (st, _) = s.call_token("DELETE", &format!("/rooms/{pid}"), Some(&admin), None).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn room_delete_tells_participants() {
    let s = TestServer::start().await;
    let (_, b) = s.post("/rooms", "alice", json!({"name": "r"})).await;
    let id = b["room"]["id"].as_str().unwrap().to_owned();
    s.call("POST", &format!("/rooms/{id}/join"), Some("bob"), None).await;
    let mut bob = s.ws("bob").await;
    s.call("DELETE", &format!("/rooms/{id}"), Some("alice"), None).await;
    let ev = bob.recv_type("room-deleted").await;
    assert_eq!(ev["roomId"], id.as_str());
    bob.sync().await; // the socket stays open
}

#[tokio::test]
async fn ice_config_hands_out_turn_rest_credentials() {
    let s = TestServer::start_with(|c| c.turn.secret = Some("turn-secret".into())).await;
    let (st, b) = s.get("/ice-config", "alice").await;
    assert_eq!(st, 200, "{b}");
    let servers = b["iceServers"].as_array().unwrap();
    assert!(servers[0]["urls"][0].as_str().unwrap().starts_with("stun:127.0.0.1:"));
    let turn = &servers[1];
    let urls: Vec<&str> = turn["urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    assert!(urls[0].starts_with("turn:127.0.0.1:") && urls[0].ends_with("?transport=udp"), "{urls:?}");
    assert!(urls[1].ends_with("?transport=tcp"));
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let ttl = b["ttl"].as_u64().unwrap();
    assert_eq!(ttl, 86400);
    let now = confer::auth::unix_now();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry >= now + ttl - 5 && expiry <= now + ttl + 5);
    assert_eq!(turn["credential"], confer::turn::credentials::password_for(b"turn-secret", username));
}

#[tokio::test]
async fn guests_only_in_dev() {
    let s = TestServer::start().await;
    let (st, b) = s.call("POST", "/auth/guest", None, Some(json!({"name": "Gus"}))).await;
    assert_eq!((st, err_code(&b)), (403, "forbidden"));

    let s = TestServer::start_with(|c| c.auth.allow_guests = true).await;
    let (st, b) = s.call("POST", "/auth/guest", None, Some(json!({"name": "Gus"}))).await;
    assert_eq!(st, 200, "{b}");
    let token = b["token"].as_str().unwrap();
    let claims = s.keys.verify(token).unwrap();
    assert_eq!(claims.sub.as_str(), b["userId"].as_str().unwrap());
    assert_eq!(claims.name.as_deref(), Some("Gus"));
    let (st, _) = s.call_token("GET", "/calls/history", Some(token), None).await;
    assert_eq!(st, 200);
    let (st, b) = s.call("POST", "/auth/guest", None, Some(json!({"name": ""}))).await;
    assert_eq!(st, 400);
    assert!(err_msg(&b).contains("name"));
}

#[tokio::test]
async fn health_unknown_routes_methods_and_openapi() {
    let s = TestServer::start().await;
    let (st, b) = s.call("GET", "/healthz", None, None).await;
    assert_eq!((st, b["status"].as_str()), (200, Some("ok")));
    let (st, b) = s.call("GET", "/readyz", None, None).await;
    assert_eq!((st, b["status"].as_str()), (200, Some("ready")));

    let (st, b) = s.call("GET", "/no/such/route", Some("alice"), None).await;
    assert_eq!((st, err_code(&b)), (404, "not-found"));
    let (st, b) = s.call("PATCH", "/calls", Some("alice"), None).await;
    assert_eq!((st, err_code(&b)), (405, "method-not-allowed"));

    let (st, api) = s.call("GET", "/openapi.json", None, None).await;
    assert_eq!(st, 200);
    assert!(api["openapi"].as_str().unwrap().starts_with("3."));
    let paths = api["paths"].as_object().unwrap();
    let want = [
        ("/calls", "post"),
        ("/calls/history", "get"),
        ("/calls/{callId}", "get"),
        ("/calls/{callId}/accept", "put"),
        ("/calls/{callId}/reject", "put"),
        ("/calls/{callId}/hangup", "put"),
        ("/calls/{callId}/mute-audio", "put"),
        ("/calls/{callId}/mute-video", "put"),
        ("/calls/{callId}/switch-camera", "put"),
        ("/rooms", "post"),
        ("/rooms", "get"),
        ("/rooms/{roomId}", "get"),
        ("/rooms/{roomId}", "delete"),
        ("/rooms/{roomId}/join", "post"),
        ("/rooms/{roomId}/leave", "post"),
        ("/ice-config", "get"),
        ("/auth/guest", "post"),
        ("/metrics", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/rtc", "get"),
    ];
    for (p, m) in want {
        assert!(paths.get(p).and_then(|o| o.get(m)).is_some(), "openapi lacks {m} {p}");
    }
    // And the document describes no route that does not exist: each answers
    // something other than the 404 fallback.
    for (p, item) in paths {
        for m in item.as_object().unwrap().keys() {
            let concrete = p.replace("{callId}", "nope").replace("{roomId}", "nope");
            let (st, b) = s.call(&m.to_uppercase(), &concrete, Some("alice"), None).await;
            let fallback = st == 404 && err_msg(&b).contains("no such route");
            assert!(!fallback, "{m} {p} is documented but not routed");
        }
    }
}

#[tokio::test]
async fn metrics_count_http_requests_and_calls() {
    let s = TestServer::start().await;
    let id = s.create_call("alice", "bob").await;
    s.put(&format!("/calls/{id}/hangup"), "alice", None).await;
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "confer_ws_connections",
        "confer_calls_active",
        "confer_rooms_active",
        "confer_http_request_duration_seconds_bucket{route=\"/calls\"",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
    assert!(text.contains("confer_http_requests_total{route=\"/calls\",status=\"201\"} 1"), "{text}");
    assert!(text.contains("confer_calls_total{status=\"ended\"} 1"));
    assert!(text.contains("confer_calls_active 0"));

    let s = TestServer::start_with(|c| c.metrics.token = Some("scrape".into())).await;
    let (st, _) = s.call("GET", "/metrics", None, None).await;
    assert_eq!(st, 401);
    let (st, _) = s.call_token("GET", "/metrics", Some("scrape"), None).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn ice_config_lists_turns_at_the_configured_tls_port_only_when_tls_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tls_at: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let urls = |b: &Value| -> Vec<String> {
        b["iceServers"][1]["urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()).collect()
    };
    // No certificate configured: a self-signed one is made in certs/.
    let s = TestServer::start_with(|c| c.turn.tls_listen = Some(tls_at)).await;
    let (st, b) = s.get("/ice-config", "alice").await;
    assert_eq!(st, 200, "{b}");
    let u = urls(&b);
    assert_eq!(u.len(), 3, "{u:?}");
    assert_eq!(u[2], format!("turns:127.0.0.1:{port}?transport=tcp"), "{u:?}");
    // The same credentials serve every URL of the entry, and room-joined lists the same.
    assert!(b["iceServers"][1]["username"].as_str().unwrap().ends_with(":alice"));
    s.stop().await;

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = TestServer::start_with(|c| {
        c.turn.tls_listen = Some(([127, 0, 0, 1], port).into());
        c.turn.public_host = Some("turn.example.com".into());
    })
    .await;
    let (_, b) = s.get("/ice-config", "alice").await;
    assert_eq!(urls(&b)[2], format!("turns:turn.example.com:{port}?transport=tcp"));
    s.stop().await;

    // Without a TLS listener nothing advertises one.
    let s = TestServer::start().await;
    let (_, b) = s.get("/ice-config", "alice").await;
    let u = urls(&b);
    assert!(u.len() == 2 && u.iter().all(|u| u.starts_with("turn:")), "{u:?}");
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    const ALLOWED: &str = "https://app.example.com";
    const OTHER: &str = "https://evil.example.net";
    let s = TestServer::start_with(|c| c.http.cors_origins = vec![ALLOWED.into()]).await;
    let preflight = |origin: &'static str| {
        s.http
            .request(reqwest::Method::OPTIONS, s.url("/calls"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    // A preflight needs no token.
    let r = preflight(ALLOWED).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], ALLOWED);
    let methods = h["access-control-allow-methods"].to_str().unwrap().to_ascii_uppercase();
    assert!(methods.contains("POST") && methods.contains("PUT") && methods.contains("DELETE"), "{methods}");
    let headers = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(headers.contains("authorization") && headers.contains("content-type"), "{headers}");
    let r = preflight(OTHER).await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none(), "{:?}", r.headers());

    // A simple request: the allowed origin may read the response (and its request id), the other may not.
    let token = s.token("alice");
    let simple =
        |origin: &'static str| s.http.get(s.url("/calls/history")).bearer_auth(&token).header("origin", origin).send();
    let r = simple(ALLOWED).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], ALLOWED);
    assert!(r.headers()["access-control-expose-headers"].to_str().unwrap().contains("x-request-id"));
    let r = simple(OTHER).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    s.stop().await;

    // "*": any origin. The default (no origins): no CORS headers for anyone.
    let s = TestServer::start_with(|c| c.http.cors_origins = vec!["*".into()]).await;
    let r = s.http.get(s.url("/healthz")).header("origin", OTHER).send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    s.stop().await;
    let s = TestServer::start().await;
    let r = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("/calls"))
        .header("origin", ALLOWED)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none(), "{:?}", r.headers());
    let r = s.http.get(s.url("/healthz")).header("origin", ALLOWED).send().await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn responses_carry_a_request_id() {
    let s = TestServer::start().await;
    // Generated when the request has none, on every kind of response.
    let mut seen = Vec::new();
    for path in ["/healthz", "/calls/history", "/no/such/route"] {
        let r = s.http.get(s.url(path)).send().await.unwrap();
        let id = r.headers().get("x-request-id").unwrap_or_else(|| panic!("{path}: no x-request-id")).clone();
        assert!(id.len() >= 16, "{path}: {id:?}");
        seen.push(id);
    }
    seen.dedup();
    assert_eq!(seen.len(), 3, "ids repeat: {seen:?}");
    // A caller's (a proxy's) id is kept.
    let r = s.http.get(s.url("/healthz")).header("x-request-id", "lb-7f3a").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "lb-7f3a");
}

/// Prometheus conventions beyond SPEC 9's names: CPU time as a counter with
/// `_total` (microsecond resolution, where the process collector's
/// `process_cpu_seconds_total` counts whole seconds), and `confer_build_info`.
#[tokio::test]
async fn metrics_give_cpu_as_a_counter_and_the_build() {
    let s = TestServer::start().await;
    let scrape = || async { s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap() };
    let value = |text: &str, name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}"));
        line[name.len() + 1..].parse().unwrap()
    };
    let text = scrape().await;
    assert!(text.contains("# TYPE confer_process_cpu_seconds_total counter"), "{text}");
    assert!(text.contains("# TYPE process_cpu_seconds_total counter"), "{text}");
    assert!(text.contains("# TYPE confer_build_info gauge"), "{text}");
    let build = format!("confer_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&build), "{text}");
    // No CPU gauge beside the counter.
    assert!(!text.contains("confer_process_cpu_seconds "), "{text}");

    // The server runs in this process: 80 ms of work here is 80 ms more on the counter.
    let before = value(&text, "confer_process_cpu_seconds_total");
    assert!(before > 0.0);
    let spin = std::time::Instant::now();
    let mut x = 0u64;
    while spin.elapsed() < std::time::Duration::from_millis(80) {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    let after = value(&scrape().await, "confer_process_cpu_seconds_total");
    assert!(after - before >= 0.05, "{before} -> {after}");
    // Sub-second resolution: not a whole number of seconds.
    assert!(after.fract() != 0.0, "{after}");
}

/// A raw body to `path` as alice; status and JSON reply.
async fn post_raw(s: &TestServer, path: &str, body: &'static str) -> (u16, Value) {
    let resp = s
        .http
        .post(s.url(path))
        .bearer_auth(s.token("alice"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap())
}

#[tokio::test]
async fn bytes_after_the_json_value_are_a_400() {
    let s = TestServer::start().await;
    for body in [r#"{"name":"x"} junk"#, r#"{"name":"x"}{"name":"y"}"#, r#"{"name":"x"} 5"#] {
        let (st, b) = post_raw(&s, "/rooms", body).await;
        assert_eq!((st, err_code(&b)), (400, "bad-request"), "{body} -> {b}");
        assert!(err_msg(&b).contains("after the JSON value"), "{body} -> {b}");
    }
    // Trailing whitespace is fine.
    let (st, b) = post_raw(&s, "/rooms", "{\"name\":\"x\"} \r\n\t ").await;
    assert_eq!(st, 201, "{b}");
}

#[tokio::test]
async fn a_field_of_the_wrong_type_is_a_400_naming_the_field() {
    let s = TestServer::start().await;
    let cases = [
        ("/calls", r#"{"callerId":"alice","calleeId":"bob","callType":5}"#, "callType"),
        ("/calls", r#"{"callerId":"alice","calleeId":"bob","callType":"audio","mode":true}"#, "mode"),
        ("/calls", r#"{"callerId":"alice","calleeId":"bob","callType":["audio"]}"#, "callType"),
        ("/rooms", r#"{"name":"x","maxParticipants":"four"}"#, "maxParticipants"),
        ("/rooms", r#"{"name":"x","isPrivate":1}"#, "isPrivate"),
    ];
    for (path, body, field) in cases {
        let (st, b) = post_raw(&s, path, body).await;
        assert_eq!((st, err_code(&b)), (400, "bad-request"), "{body} -> {b}");
        let msg = err_msg(&b);
        assert!(msg.starts_with(&format!("{field}: ")), "{body} -> {b}");
        assert!(!msg.contains("not valid JSON") && !msg.contains("line "), "{body} -> {b}");
    }
    // Broken JSON is still said to be that.
    let (st, b) = post_raw(&s, "/calls", r#"{"callerId":"alice","#).await;
    assert_eq!(st, 400);
    assert!(err_msg(&b).contains("not valid JSON"), "{b}");
}
