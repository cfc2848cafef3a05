//! The HTTP access log as an operator reads it (`--log-json`): one line per
//! request on the target `confer::http::access` with method, route template,
//! status, latency and request id, never the path's ids nor `/rtc`'s token;
//! and `RUST_LOG` turns it off.

mod common;

use serde_json::Value;
use std::io::{BufRead, Read};
use std::process::{Command, Stdio};

/// Run the server with `rust_log`, make the requests `f` makes, stop it; its
/// stderr, one JSON value per log line.
async fn logs_of<F, Fut>(rust_log: &str, f: F) -> (Vec<Value>, String)
where
    F: FnOnce(common::TestServer) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_confer"))
        .args(["serve", "--log-json", "--http", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env("CONFER_AUTH_SECRET", common::SECRET)
        .env("CONFER_MEDIA_LISTEN", "127.0.0.1:0")
        .env("CONFER_TURN_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = common::parse_listening(&line, "http").unwrap_or_else(|| panic!("no listening line: {line:?}"));
    f(common::child_client(addr)).await;
    // SIGTERM: a graceful stop flushes every line.
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let _ = child.wait();
    let lines = err.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect();
    (lines, err)
}

fn access_lines(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["target"] == "confer::http::access").collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_names_the_route_and_request_id_but_never_the_token() {
    let token = common::child_client("127.0.0.1:1".parse().unwrap()).token("alice");
    let t = token.clone();
    let (lines, raw) = logs_of("info", |s| async move {
        let r = s.http.get(s.url("/healthz")).header("x-request-id", "probe-4711").send().await.unwrap();
        assert_eq!(r.headers()["x-request-id"], "probe-4711");
        let r = s.http.get(s.url("/calls/call_secretish42")).bearer_auth(&t).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let mut ws = s.ws_token(&t).await.expect("websocket opens");
        ws.sync().await;
        drop(ws);
        // A token that is no token: refused, and not logged either.
        let r = s.http.get(s.url("/rtc?token=forged.tok3n-7781.sig")).send().await.unwrap();
        assert_eq!(r.status(), 401);
    })
    .await;
    let access = access_lines(&lines);
    let find = |route: &str| {
        access
            .iter()
            .find(|l| l["span"]["route"] == route)
            .unwrap_or_else(|| panic!("no access line for {route}:\n{raw}"))
    };
    let health = find("/healthz");
    assert_eq!(health["level"], "INFO");
    assert_eq!(health["span"]["method"], "GET");
    assert_eq!(health["span"]["request_id"], "probe-4711");
    assert_eq!(health["status"], 200);
    assert!(health["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{health}");
    let call = find("/calls/{callId}");
    assert_eq!(call["status"], 404);
    assert!(call["span"]["request_id"].as_str().is_some_and(|id| id.len() >= 16), "{call}");
    let rtc: Vec<_> = access.iter().filter(|l| l["span"]["route"] == "/rtc").map(|l| l["status"].clone()).collect();
    assert_eq!(rtc, [101, 401], "{raw}");
    // Only templates: no id from a path, no token from a query, anywhere in the log.
    assert!(!raw.contains("call_secretish42"), "{raw}");
    assert!(!raw.contains(&token), "the token was logged:\n{raw}");
    let sig = token.rsplit('.').next().unwrap();
    assert!(!raw.contains(sig), "part of the token was logged:\n{raw}");
    assert!(!raw.contains("tok3n-7781") && !raw.contains("token="), "a query was logged:\n{raw}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_log_turns_the_access_log_off() {
    let (lines, raw) = logs_of("info,confer::http::access=off", |s| async move {
        assert_eq!(s.http.get(s.url("/healthz")).send().await.unwrap().status(), 200);
    })
    .await;
    // No request line, on whatever target: the filter names the one they are on.
    assert!(!lines.iter().any(|l| l.get("latency_ms").is_some()), "{raw}");
    assert!(access_lines(&lines).is_empty(), "{raw}");
    // The rest of the info log is still there.
    assert!(lines.iter().any(|l| l["level"] == "INFO"), "{raw}");
}
