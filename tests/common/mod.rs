//! Shared harness: start the real server on port 0 (in-process, or the built
//! binary as a child process), mint tokens, speak HTTP and WebSocket to it.
#![allow(dead_code)]

pub mod netns;
pub mod redis;
pub mod simulcast_aiortc;

use confer::app::Server;
use confer::auth::{Claims, TokenKeys};
use confer::config::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

/// A server running in this process on 127.0.0.1 port 0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub keys: TokenKeys,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

/// A test config: port 0 everywhere, a fixed secret, a fresh data dir.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.media.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.listen = "127.0.0.1:0".parse().unwrap();
    c.store.path = dir.to_owned();
    c.auth.secret = Some(SECRET.into());
    c
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start with a config adjusted by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let mut s = Self::start_config(config).await;
        s._dir = Some(dir);
        s
    }

    pub async fn start_config(config: Config) -> Self {
        let server = Server::bind(config).await.expect("server binds");
        let addr = server.http_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            keys: TokenKeys::new(SECRET.as_bytes()),
            http: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(task),
            _dir: None,
        }
    }

    /// Shut down gracefully and wait for the server to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn token(&self, user: &str) -> String {
        self.keys.sign(&Claims::new(user.into(), Duration::from_secs(3600)))
    }

    pub fn token_with(&self, user: &str, f: impl FnOnce(&mut Claims)) -> String {
        let mut c = Claims::new(user.into(), Duration::from_secs(3600));
        f(&mut c);
        self.keys.sign(&c)
    }

    /// A REST request as `user` (None: no token); returns status and JSON body.
    pub async fn call(&self, method: &str, path: &str, user: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let token = user.map(|u| self.token(u));
        self.call_token(method, path, token.as_deref(), body).await
    }

    pub async fn call_token(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut rb = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    pub async fn get(&self, path: &str, user: &str) -> (u16, Value) {
        self.call("GET", path, Some(user), None).await
    }

    pub async fn post(&self, path: &str, user: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(user), Some(body)).await
    }

    pub async fn put(&self, path: &str, user: &str, body: Option<Value>) -> (u16, Value) {
        self.call("PUT", path, Some(user), body).await
    }

    /// Create a ringing call from `caller` to `callee` over REST; its id.
    pub async fn create_call(&self, caller: &str, callee: &str) -> String {
        let (s, b) = self
            .post("/calls", caller, serde_json::json!({"callerId": caller, "calleeId": callee, "callType": "video"}))
            .await;
        assert_eq!(s, 201, "{b}");
        b["callSession"]["id"].as_str().unwrap().to_owned()
    }

    /// Open `/rtc` as `user` (token in the query string).
    pub async fn ws(&self, user: &str) -> Ws {
        self.ws_token(&self.token(user)).await.expect("websocket opens")
    }

    pub async fn ws_token(&self, token: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let url = format!("ws://{}/rtc?token={}", self.addr, token);
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Ws { inner: ws })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A test WebSocket client.
pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

pub const WAIT: Duration = Duration::from_secs(5);

impl Ws {
    pub async fn send(&mut self, v: Value) {
        self.inner.send(Message::Text(v.to_string().into())).await.expect("ws send");
    }

    pub async fn send_text(&mut self, t: String) {
        self.inner.send(Message::Text(t.into())).await.expect("ws send");
    }

    /// The next JSON message (pings are answered and skipped).
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT).await.expect("a message within 5 s")
    }

    /// The next JSON message within `wait`, or None.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.inner.next()).await.ok()??;
            match msg.ok()? {
                Message::Text(t) => return Some(serde_json::from_str(&t).expect("server sends JSON")),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Skip messages until one of `ty` arrives.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let m = self.recv().await;
            if m["type"] == ty {
                return m;
            }
        }
    }

    /// Assert nothing but pings arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(m) = self.try_recv(wait).await {
            panic!("expected no message, got {m}");
        }
    }

    /// Round-trip a ping: every message sent before it has been processed.
    pub async fn sync(&mut self) {
        self.send(serde_json::json!({"type": "ping", "reqId": "sync"})).await;
        let m = self.recv_type("pong").await;
        assert_eq!(m["reqId"], "sync");
    }

    /// Wait for the server to close; returns the close code.
    pub async fn closed(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Err(_) => panic!("socket not closed within {wait:?}"),
                Ok(None) => return None,
                Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| f.code.into()),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// A server started from the built binary, for crash and signal tests.
pub struct ChildServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// The SFU's UDP port, from the listening line.
    pub media: SocketAddr,
    pub stdout: std::io::BufReader<std::process::ChildStdout>,
    /// The whole `listening ...` line.
    pub line: String,
}

impl ChildServer {
    /// `confer serve --http 127.0.0.1:0 --data DIR` with a fixed secret and extra env.
    pub fn spawn(data: &std::path::Path, env: &[(&str, &str)]) -> ChildServer {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_confer"));
        cmd.args(["serve", "--http", "127.0.0.1:0", "--data"])
            .arg(data)
            .env("CONFER_AUTH_SECRET", SECRET)
            .env("CONFER_MEDIA_LISTEN", "127.0.0.1:0")
            .env("CONFER_TURN_LISTEN", "127.0.0.1:0")
            // CHILD_RUST_LOG=warn,confer::media=debug (say) shows the child's logs while debugging.
            .env("RUST_LOG", std::env::var("CHILD_RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn confer");
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read listening line");
        let addr = parse_listening(&line, "http").unwrap_or_else(|| panic!("no listening line: {line:?}"));
        let media = parse_listening(&line, "media").unwrap_or_else(|| panic!("no media= in {line:?}"));
        ChildServer { child, addr, media, stdout, line }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success();
        assert!(ok, "kill -TERM failed");
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `http=IP:PORT` (or another key) from the `listening ...` line.
pub fn parse_listening(line: &str, key: &str) -> Option<SocketAddr> {
    let line = line.trim();
    let rest = line.strip_prefix("listening ")?;
    rest.split(' ').find_map(|kv| kv.strip_prefix(&format!("{key}="))?.parse().ok())
}

/// A plain client for a child server.
pub fn child_client(addr: SocketAddr) -> TestServer {
    TestServer {
        addr,
        keys: TokenKeys::new(SECRET.as_bytes()),
        http: reqwest::Client::new(),
        stop: None,
        task: None,
        _dir: None,
    }
}

// ---- Added for tests/ws_calls.rs, tests/shutdown.rs, tests/persistence.rs ----

impl ChildServer {
    /// As [`ChildServer::spawn`]; with `with_secret == false` no
    /// `CONFER_AUTH_SECRET` is set, so the server uses (or generates)
    /// `<data>/auth.secret`.
    pub fn spawn_with(data: &std::path::Path, env: &[(&str, &str)], with_secret: bool) -> ChildServer {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_confer"));
        cmd.args(["serve", "--http", "127.0.0.1:0", "--data"])
            .arg(data)
            .env_remove("CONFER_AUTH_SECRET")
            .env("CONFER_MEDIA_LISTEN", "127.0.0.1:0")
            .env("CONFER_TURN_LISTEN", "127.0.0.1:0")
            // CHILD_RUST_LOG=warn,confer::media=debug (say) shows the child's logs while debugging.
            .env("RUST_LOG", std::env::var("CHILD_RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        if with_secret {
            cmd.env("CONFER_AUTH_SECRET", SECRET);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn confer");
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read listening line");
        let addr = parse_listening(&line, "http").unwrap_or_else(|| panic!("no listening line: {line:?}"));
        let media = parse_listening(&line, "media").unwrap_or_else(|| panic!("no media= in {line:?}"));
        ChildServer { child, addr, media, stdout, line }
    }

    /// Poll (without blocking the async runtime) until the process exits or
    /// `wait` passes; its exit status, or None if it is still running.
    pub async fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl TestServer {
    /// The value of an unlabelled sample `name` in `GET /metrics` (no token).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.http.get(self.url("/metrics")).send().await.ok()?.text().await.ok()?;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Open `/rtc` as `user` and round-trip a ping, so the session is
    /// registered with the server before the test goes on.
    pub async fn ws_ready(&self, user: &str) -> Ws {
        let mut w = self.ws(user).await;
        w.sync().await;
        w
    }
}

impl TestServer {
    /// The server's data dir (store and generated secrets).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self._dir.as_ref().expect("started with start()/start_with()").path().to_owned()
    }
}

/// One Chromium scenario at a time across every test thread and test binary
/// (an exclusive `flock` on a file in the temp dir, held until the guard
/// drops). Each scenario runs two to nine Chromium pages, some with aiortc
/// decoding 720p beside them; four at once on a 2-core host (cargo's default
/// threads) starved the pages until their own timeouts fired (CI, stop 20:
/// a lobby that took over 10 s to show). Waiting here costs no test its
/// timeouts: the scripts start their clocks after this returns.
#[allow(dead_code)]
pub fn heavy_slot() -> std::fs::File {
    let path = std::env::temp_dir().join("confer-tests-heavy.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // An exclusive flock on this descriptor; it goes with the file.
    f.lock().unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    f
}

/// An installed tool (coturn's, promtool...) by name; a missing one fails the
/// test with what to run, never skips it.
pub fn tool(name: &str) -> std::path::PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin", "/usr/local/bin"]) {
        let p = std::path::PathBuf::from(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run scripts/setup-test-deps.sh (or scripts/test.sh)");
}

/// The Python that runs the interop scripts: `$INTEROP_PYTHON`, else the
/// repo's `.venv` (scripts/setup-test-deps.sh makes it). Missing fails.
#[allow(dead_code)]
pub fn python() -> std::path::PathBuf {
    let p = std::env::var_os("INTEROP_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python")));
    assert!(p.exists(), "{} is missing: run scripts/setup-test-deps.sh (or scripts/test.sh)", p.display());
    p
}

/// Run `tests/interop/{file}` with the test venv's Python; its last stdout
/// line (a JSON summary). Panics, with both outputs, when it fails.
pub fn run_interop(file: &str, args: &[String]) -> Value {
    let out = std::process::Command::new(python())
        .arg(format!("{}/tests/interop/{file}", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{file} failed:\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// Run the node `script` (under tests/browser/) against `base`, killing it and
/// its Chromium after `limit`; its JSON summary (the last line on stdout).
pub fn run_node_summary(script: &str, base: &str, limit: std::time::Duration) -> Value {
    run_node_summary_with(script, &[base], limit)
}

/// [`run_node_summary`] with `args` after the script (the base URL first).
pub fn run_node_summary_with(script: &str, args: &[&str], limit: std::time::Duration) -> Value {
    run_node_summary_until(script, args, limit, None)
}

/// [`run_node_summary_with`], and the script is sent SIGTERM (it then
/// finishes and prints its summary) once `stop` has a message or its sender
/// is gone.
pub fn run_node_summary_until(
    script: &str,
    args: &[&str],
    limit: std::time::Duration,
    stop: Option<std::sync::mpsc::Receiver<()>>,
) -> Value {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let path = format!("{}/tests/browser/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("node")
        .arg(&path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0) // node and its Chromium, killed together on a timeout
        .spawn()
        .expect("node runs");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let mut stop = stop;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if stop.as_ref().is_some_and(|s| !matches!(s.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty))) {
            stop = None;
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        if Instant::now() >= deadline {
            let _ = Command::new("kill").arg("-KILL").arg(format!("-{}", child.id())).status();
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = out_t.join().unwrap();
    let stderr = err_t.join().unwrap();
    let Some(status) = status else {
        panic!("{script} did not finish within {limit:?} (killed):\n{stdout}\n{stderr}");
    };
    let last = stdout.lines().last().unwrap_or("");
    match serde_json::from_str::<Value>(last) {
        Ok(v) if v.is_object() => v,
        _ => panic!("{script} printed no summary (exit {status}):\nstdout:\n{stdout}\nstderr:\n{stderr}"),
    }
}

/// `{ "<width>": samples, ... }` holds samples, all of them at `width`.
pub fn all_at(hist: &Value, width: u64) -> bool {
    hist.as_object().is_some_and(|m| !m.is_empty() && m.keys().all(|k| k.parse::<u64>().ok() == Some(width)))
}

/// `peer` adds a camera track (SSRC 4242) and makes its offer, set as its
/// local description: the offer's SDP and the camera's mid, for a
/// `publish-offer`.
pub async fn camera_offer(peer: &confer::loadtest::peer::RtcPeer) -> (String, String) {
    peer.with(|pc, now| {
        pc.add_track(confer::loadtest::peer::video_track("cam", 4242)).unwrap();
        let offer = pc.create_offer(None).unwrap();
        pc.set_local_description(now, offer.clone()).unwrap();
        let ids: Vec<_> = pc.get_transceivers().collect();
        let mid = ids.into_iter().find_map(|t| pc.rtp_transceiver(t).and_then(|t| t.mid().clone())).unwrap();
        (offer.sdp, mid)
    })
    .await
}

/// A benchmark of a pass/fail scenario: run `scenario` `$RUNS` times (1 if
/// unset), printing per run PASS or the first target it missed, then the tally.
/// With `$BENCH_DETAILS` (a folder), a missed run's whole message (with the
/// summary it judged) is also written there as `NAME-runI.txt`.
pub fn bench_runs(name: &str, scenario: fn()) {
    let runs: usize = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
    std::panic::set_hook(Box::new(|_| {}));
    let mut passed = 0;
    for i in 1..=runs {
        match std::panic::catch_unwind(scenario) {
            Ok(()) => {
                passed += 1;
                println!("run {i}: PASS");
            }
            Err(e) => {
                let msg =
                    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                let msg = msg.unwrap_or_default();
                println!("run {i}: MISSED {}", msg.lines().next().unwrap_or_default());
                if let Some(dir) = std::env::var_os("BENCH_DETAILS") {
                    let path = std::path::Path::new(&dir).join(format!("{name}-run{i}.txt"));
                    if let Err(e) = std::fs::write(&path, &msg) {
                        println!("run {i}: could not write {}: {e}", path.display());
                    }
                }
            }
        }
    }
    println!("{name}: every target met in {passed} of {runs} run(s)");
}
