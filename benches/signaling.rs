//! Signaling benchmarks (numbers for notes and the README, not timed tests).
//! Each starts the release server as a child process on loopback and prints
//! one JSON line naming the machine:
//!
//! ```sh
//! cargo bench --bench signaling -- idle-ws 19000      # connections held, server RSS per connection
//! cargo bench --bench signaling -- relay 1000 10      # call set-ups/s for N s: relay latency p50/p99
//! cargo bench --bench signaling -- relay 1000 10 2    # the same on a cluster of 2 nodes on one
//!                                                      # redis-server, each call between two nodes
//!                                                      # (1: one node on Redis); + Redis commands per set-up
//! cargo bench --bench signaling -- get-call 64 10     # GET /calls/:id with 64 clients for N s
//! ```

use confer::auth::{Claims, TokenKeys};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench-secret-0123456789abcdef-0123456789";

#[path = "../tests/common/redis.rs"]
#[allow(dead_code)]
mod redis_server;

/// Where the test setup installs a tool (`redis-server`), as the tests find it.
fn tool(name: &str) -> std::path::PathBuf {
    let found =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.exists()));
    found.unwrap_or_else(|| panic!("{name} is not installed: run scripts/setup-test-deps.sh"))
}

struct Server {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Self::start_with(&[])
    }

    fn start_with(env: &[(&str, String)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_confer"));
        cmd.args(["serve", "--http", "127.0.0.1:0", "--data"])
            .arg(dir.path())
            .env("CONFER_AUTH_SECRET", SECRET)
            .env("CONFER_CALLS_RING_TIMEOUT", "1h")
            .env("CONFER_MEDIA_LISTEN", "127.0.0.1:0")
            .env("CONFER_TURN_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start confer");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.split_whitespace().find_map(|kv| kv.strip_prefix("http=")).unwrap().parse().unwrap();
        Server { child, addr, _dir: dir }
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
    }

    /// User + system CPU seconds of the server so far.
    fn cpu_secs(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(user: &str) -> String {
    TokenKeys::new(SECRET.as_bytes()).sign(&Claims::new(user.into(), Duration::from_secs(3600)))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_default();
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)})
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connect from source address 127.0.0.`src` (spreads ephemeral ports).
async fn connect(addr: SocketAddr, user: &str, src: u8) -> Ws {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, src)), 0)).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let url = format!("ws://{addr}/rtc?token={}", token(user));
    tokio_tungstenite::client_async(url, tcp).await.unwrap().0
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn idle_ws(n: usize) -> Value {
    let server = Server::start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss_kib();
    let mut held = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let ws = connect(server.addr, &format!("u{i}"), 2 + (i / 20_000) as u8).await;
        held.push(ws);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server.rss_kib();
    let per = (after - before) as f64 * 1024.0 / n as f64;
    json!({"bench": "idle-ws", "machine": machine(), "connections": held.len(), "connectSeconds": connect_secs,
           "serverRssBeforeMiB": before / 1024, "serverRssAfterMiB": after / 1024, "bytesPerConnection": per.round(),
           "projected50kMiB": ((before as f64 * 1024.0 + per * 50_000.0) / 1048576.0).round()})
}

async fn next_of(ws: &mut Ws, ty: &str) -> (Value, Instant) {
    loop {
        match ws.next().await.expect("socket open").expect("frame") {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == ty {
                    return (v, Instant::now());
                }
                assert_ne!(v["type"], "error", "{v}");
            }
            _ => continue,
        }
    }
}

/// Redis's `total_commands_processed`.
async fn redis_commands(url: &str) -> u64 {
    let mut con = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("stats").query_async(&mut con).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("total_commands_processed:")).unwrap().trim().parse().unwrap()
}

/// Call set-ups at `rate`/s for `secs`: on one node alone (`nodes` None), or
/// on a cluster of `nodes` on one redis-server with each caller on node
/// `p % nodes` and its callee on the next node.
async fn relay(rate: usize, secs: u64, nodes: Option<usize>) -> Value {
    let redis = nodes.map(|_| redis_server::RedisServer::start());
    let servers: Vec<Server> = match (&redis, nodes) {
        (Some(r), Some(n)) => (0..n)
            .map(|i| {
                Server::start_with(&[
                    ("CONFER_CLUSTER_REDIS_URL", r.url()),
                    ("CONFER_CLUSTER_NODE_ID", format!("bench-{i}")),
                ])
            })
            .collect(),
        _ => vec![Server::start()],
    };
    // Let every node see the others' heartbeats.
    tokio::time::sleep(Duration::from_millis(if servers.len() > 1 { 2500 } else { 0 })).await;
    let commands0 = match &redis {
        Some(r) => redis_commands(&r.url()).await,
        None => 0,
    };
    // Each pair does 5 set-ups/s: 10 messages/s from the caller, 5 from the callee.
    let pairs = (rate / 5).max(1);
    let mut tasks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs) + Duration::from_secs(2);
    let cpu = || servers.iter().map(Server::cpu_secs).sum::<f64>();
    let cpu0 = cpu();
    let t0 = Instant::now() + Duration::from_secs(2);
    for p in 0..pairs {
        let (here, there) = (servers[p % servers.len()].addr, servers[(p + 1) % servers.len()].addr);
        tasks.push(tokio::spawn(async move {
            let (a, b) = (format!("a{p}"), format!("b{p}"));
            let mut alice = connect(here, &a, 2).await;
            let mut bob = connect(there, &b, 3).await;
            let mut hops = Vec::new();
            let mut full = Vec::new();
            let period = Duration::from_millis(200);
            let mut next = tokio::time::Instant::from_std(t0) + period.mul_f64(p as f64 / pairs as f64);
            while Instant::now() < deadline {
                tokio::time::sleep_until(next).await;
                next += period;
                let sent = Instant::now();
                let msg = json!({"type": "call-initiate", "calleeId": b, "callType": "video", "sdp": "v=0 bench"});
                alice.send(Message::Text(msg.to_string().into())).await.unwrap();
                let (init, got) = next_of(&mut bob, "call-initiate").await;
                hops.push((got - sent).as_secs_f64());
                let id = init["callId"].as_str().unwrap().to_owned();
                let answered = Instant::now();
                let msg = json!({"type": "call-answer", "callId": id, "sdp": "v=0 answer"});
                bob.send(Message::Text(msg.to_string().into())).await.unwrap();
                let (_, got) = next_of(&mut alice, "call-answer").await;
                hops.push((got - answered).as_secs_f64());
                full.push((got - sent).as_secs_f64());
                let msg = json!({"type": "call-hangup", "callId": id});
                alice.send(Message::Text(msg.to_string().into())).await.unwrap();
                next_of(&mut bob, "call-hangup").await;
            }
            (hops, full)
        }));
    }
    let mut hops = Vec::new();
    let mut full = Vec::new();
    for t in tasks {
        let (h, f) = t.await.unwrap();
        hops.extend(h);
        full.extend(f);
    }
    let elapsed = secs as f64;
    let cpu = cpu() - cpu0;
    let n = full.len();
    let redis_per_setup = match &redis {
        Some(r) => json!(((redis_commands(&r.url()).await - commands0) as f64 / n as f64 * 10.0).round() / 10.0),
        None => Value::Null,
    };
    let nodes = nodes.map_or(json!("alone (sled)"), |n| json!(n));
    json!({"bench": "relay", "machine": machine(), "nodes": nodes, "pairs": pairs, "setups": n,
           "setupsPerSec": (n as f64 / elapsed).round(), "redisCommandsPerSetup": redis_per_setup,
           "hopP50Ms": percentile(&mut hops, 0.5) * 1e3, "hopP99Ms": percentile(&mut hops, 0.99) * 1e3,
           "setupP50Ms": percentile(&mut full, 0.5) * 1e3, "setupP99Ms": percentile(&mut full, 0.99) * 1e3,
           "serverCpuUsPerSetup": cpu * 1e6 / n as f64})
}

async fn get_call(conc: usize, secs: u64) -> Value {
    let server = Server::start();
    let http = reqwest::Client::new();
    let t = token("alice");
    let r: Value = http
        .post(format!("http://{}/calls", server.addr))
        .bearer_auth(&t)
        .json(&json!({"callerId": "alice", "calleeId": "bob", "callType": "video"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("http://{}/calls/{}", server.addr, r["callSession"]["id"].as_str().unwrap());
    let cpu0 = server.cpu_secs();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (http, url, t) = (http.clone(), url.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let s = Instant::now();
                let r = http.get(&url).bearer_auth(&t).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                lat.push(s.elapsed().as_secs_f64());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let cpu = server.cpu_secs() - cpu0;
    let n = lat.len();
    json!({"bench": "get-call", "machine": machine(), "concurrency": conc, "requests": n, "rps": (n as f64 / secs as f64).round(),
           "p50Ms": percentile(&mut lat, 0.5) * 1e3, "p99Ms": percentile(&mut lat, 0.99) * 1e3,
           "serverCpuUsPerRequest": cpu * 1e6 / n as f64, "note": "client and server share the machine's cores"})
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = match args.first().map(String::as_str) {
        Some("idle-ws") => rt.block_on(idle_ws(num(1, 10_000) as usize)),
        Some("relay") => {
            let nodes = args.get(3).map(|n| n.parse().expect("NODES: a number"));
            rt.block_on(relay(num(1, 1000) as usize, num(2, 10), nodes))
        }
        Some("get-call") => rt.block_on(get_call(num(1, 64) as usize, num(2, 10))),
        _ => {
            eprintln!("usage: cargo bench --bench signaling -- idle-ws [N] | relay [SETUPS_PER_SEC] [SECS] [NODES] | get-call [CONC] [SECS]");
            return;
        }
    };
    println!("{out}");
}
