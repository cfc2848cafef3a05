//! `confer loadtest`: N publishers and M subscribers per room, in R rooms,
//! against a running server, for a duration. Clients are webrtc-rs
//! PeerConnections ([`peer`]) that really negotiate, connect (ICE, DTLS,
//! SRTP) and decrypt, but do not decode: publishers send synthetic VP8-shaped
//! RTP (and Opus-sized audio) whose payload ends with the send time, so
//! subscribers measure the added forwarding latency: from the publisher's
//! peer writing the packet to its arrival at the subscriber (the kernel's
//! receive time), so that the load tool's own scheduling, decrypting and
//! bookkeeping are not counted; `readLatencyMs` runs to the subscriber's
//! read instead. A packet is counted as sent, received and timed by its send
//! time against one measured window, so loss is exact: nothing in flight at
//! the window's edges counts as lost. Server CPU and RSS come from its
//! `/metrics` process metrics (or `/proc` with `--server-pid`). Prints a
//! progress line to stderr and a JSON report to stdout.

pub mod janus;
pub mod peer;
mod publish;
mod receive;
mod scrape;

use crate::auth::{Claims, TokenKeys};
use futures_util::{SinkExt, StreamExt};
use peer::{RtcPeer, Seen};
use publish::publisher;
use receive::*;
use rtc::peer_connection::sdp::RTCSessionDescription;
use scrape::{bucket_quantile, measure, nodes_delay_buckets, server_analytics};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// What to load the server with.
#[derive(Clone, Debug)]
pub struct LoadOpts {
    /// The node this client talks to (the first of `urls` for the run).
    pub url: String,
    /// Every node of the server (a cluster: several); clients are spread
    /// over them in turn.
    pub urls: Vec<String>,
    pub rooms: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub seconds: u64,
    pub video_kbps: u32,
    pub fps: u32,
    /// Video packets leave at this multiple of `video_kbps`; 0: each frame
    /// back to back.
    pub pacing: f64,
    pub audio: bool,
    /// Publishers also subscribe to each other (a meeting), on one WebSocket each.
    pub meeting: bool,
    /// Load a Janus VideoRoom at this HTTP API URL instead of confer.
    pub janus: Option<String>,
    /// Measure the server's CPU and RSS from `/proc/<pid>` instead of its
    /// `/metrics` (the only way for Janus; the same way for both).
    pub server_pid: Option<u32>,
    /// Publishers send their video as simulcast (SPEC 5.1): rids `q`, `h`
    /// and `f` at [`SIMULCAST_SHARE`] of `video_kbps` each.
    pub simulcast: bool,
    /// The simulcast layers are named by `a=ssrc-group:SIM` in the offer
    /// (lowest first), not by rids: no rid header extension is sent.
    pub sim_group: bool,
    /// Subscriber `i` of each room asks for `ceilings[i % len]` ("low",
    /// "medium" or "high") on every video track; none: no `track-subscribe`.
    pub ceilings: Vec<String>,
    /// The first subscriber of each room receives through a link capped at
    /// this many kbit/s ([`peer::Cap`]) for the middle third of the window.
    pub cap_kbps: Option<u32>,
    /// Every subscriber asks for `low` at the start of the window's middle
    /// third and for `high` at its end (see [`receive::SwitchRun`]).
    pub switch: bool,
}

/// What each simulcast layer sends, as a share of `--video-kbps` (roughly
/// libwebrtc's 720p ladder: 150, 500 and 1,500 kbit/s).
pub const SIMULCAST_SHARE: [f64; 3] = [0.1, 0.3, 1.0];
/// The layers' names, lowest first (SPEC 5.1).
const RIDS: [&str; 3] = ["q", "h", "f"];

/// The layer byte of an audio packet (see [`publish`]'s `rtp`).
const AUDIO_LAYER: u8 = 0xff;

impl LoadOpts {
    /// The options for the `n`th client: its node is `urls[n % len]`.
    fn for_client(&self, n: usize) -> LoadOpts {
        let mut o = self.clone();
        if !self.urls.is_empty() {
            o.url = self.urls[n % self.urls.len()].clone();
        }
        o
    }

    /// Every node to read server figures from.
    fn nodes(&self) -> Vec<&str> {
        if self.urls.is_empty() {
            vec![self.url.as_str()]
        } else {
            self.urls.iter().map(String::as_str).collect()
        }
    }

    /// The server the clients' media goes to.
    fn target(&self) -> &str {
        self.janus.as_deref().unwrap_or(&self.url)
    }
}

/// What each client of the run (a publisher or a subscriber) is given.
struct Client {
    /// The run's options, aimed at the client's node.
    opts: LoadOpts,
    token: String,
    room: String,
    c: Arc<Counters>,
    /// The run's clock, and when a client stops at the latest.
    epoch: Instant,
    stop: Instant,
}

/// Counters shared by every client of the run.
struct Counters {
    /// The measured window, µs since the run's epoch, by send time: a packet
    /// is counted as sent, received and timed only if it left inside
    /// `[window_from, window_until)`, so what is in flight at either edge is
    /// neither lost nor gained. Both are set before the window opens.
    window_from: AtomicU64,
    window_until: AtomicU64,
    /// Set once the report's numbers are in: every client stops.
    done: tokio::sync::watch::Sender<bool>,
    sent: AtomicU64,
    received: AtomicU64,
    /// Packets sent inside the window per layer (q, h, f or single-layer,
    /// audio).
    sent_by_layer: [AtomicU64; 4],
    /// What subscribers received, by their ceiling ("none" without one;
    /// a capped subscriber under "<ceiling> capped"; see [`Reception`]).
    by_ceiling: std::sync::Mutex<std::collections::BTreeMap<String, Reception>>,
    /// The capped subscribers' links, and what each of them saw.
    caps: std::sync::Mutex<Vec<Arc<peer::Cap>>>,
    capped: std::sync::Mutex<Vec<CappedRun>>,
    /// The window's middle third, µs since the epoch by send time (set
    /// before the window opens): the cap, or the low layer of `--switch`.
    middle_from: AtomicU64,
    middle_until: AtomicU64,
    /// What each subscriber of `--switch` asked for and received.
    switches: std::sync::Mutex<Vec<SwitchRun>>,
    tracks_received: AtomicU64,
    /// The server's media ports publishers were answered with (one per
    /// worker their rooms landed on).
    media_ports: std::sync::Mutex<std::collections::BTreeSet<u16>>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            window_from: AtomicU64::new(u64::MAX),
            window_until: AtomicU64::new(u64::MAX),
            done: tokio::sync::watch::Sender::new(false),
            sent: AtomicU64::default(),
            received: AtomicU64::default(),
            sent_by_layer: Default::default(),
            by_ceiling: Default::default(),
            caps: Default::default(),
            capped: Default::default(),
            middle_from: AtomicU64::new(u64::MAX),
            middle_until: AtomicU64::new(u64::MAX),
            switches: Default::default(),
            tracks_received: AtomicU64::default(),
            media_ports: Default::default(),
        }
    }
}

impl Counters {
    /// Whether a packet sent at `sent_us` belongs to the measured window.
    fn in_window(&self, sent_us: u64) -> bool {
        (self.window_from.load(Relaxed)..self.window_until.load(Relaxed)).contains(&sent_us)
    }

    fn is_done(&self) -> bool {
        *self.done.borrow()
    }
}

fn now_us(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_ws(base: &str, token: &str) -> anyhow::Result<Ws> {
    let ws_url = format!("{}/rtc?token={token}", base.replacen("http", "ws", 1));
    Ok(tokio_tungstenite::connect_async(ws_url).await?.0)
}

async fn send(ws: &mut Ws, v: Value) -> anyhow::Result<()> {
    ws.send(Message::Text(v.to_string().into())).await?;
    Ok(())
}

async fn expect(ws: &mut Ws, ty: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow::anyhow!("timed out waiting for {ty}"))?
            .ok_or_else(|| anyhow::anyhow!("the server closed the WebSocket"))??;
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t)?;
            if v["type"] == ty {
                return Ok(v);
            }
            if v["type"] == "error" {
                anyhow::bail!("server error: {v}");
            }
        }
    }
}

/// Join `room` over `/rtc` and start a client PeerConnection on the local
/// address that routes to the server (loopback for a local server), its
/// link capped by `cap`; with the `room-joined` message.
async fn join(
    opts: &LoadOpts,
    token: &str,
    room: &str,
    cap: Option<Arc<peer::Cap>>,
) -> anyhow::Result<(Ws, RtcPeer, Value)> {
    let mut ws = connect_ws(&opts.url, token).await?;
    send(&mut ws, json!({"type": "room-join", "roomId": room})).await?;
    let joined = expect(&mut ws, "room-joined").await?;
    let ip = local_ip_towards(&opts.url).await?;
    Ok((ws, RtcPeer::start_capped(false, ip, cap).await?, joined))
}

/// The local address that reaches the server: where the clients' sockets bind.
async fn local_ip_towards(url: &str) -> anyhow::Result<std::net::IpAddr> {
    let u = reqwest::Url::parse(url)?;
    let host = u.host_str().ok_or_else(|| anyhow::anyhow!("--url has no host"))?;
    let probe = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    probe.connect((host, u.port_or_known_default().unwrap_or(80))).await?;
    Ok(probe.local_addr()?.ip())
}

/// How long after the measured window packets sent inside it may still
/// arrive and be counted.
const ARRIVAL_GRACE: Duration = Duration::from_millis(500);

/// Run the load and return the report.
pub async fn run(opts: LoadOpts, keys: &TokenKeys) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let token = |user: &str| keys.sign(&Claims::new(user.into(), Duration::from_secs(3600 + opts.seconds)));
    let epoch = Instant::now();
    let counters = Arc::new(Counters::default());
    let setup = Duration::from_secs(10 + (opts.rooms * (opts.publishers + opts.subscribers)) as u64 / 10);
    // Clients stop when the report is made; this is only the backstop.
    let stop = Instant::now() + setup * 2 + Duration::from_secs(opts.seconds + 10);
    let client =
        |opts, token, room: &String| Client { opts, token, room: room.clone(), c: counters.clone(), epoch, stop };
    let mut tasks = Vec::new();
    let mut subs = Vec::new();
    let mut rooms = Vec::new();
    if opts.janus.is_some() && (opts.meeting || opts.publishers != 1) {
        anyhow::bail!("--janus supports one publisher per room and no --meeting");
    }
    if opts.janus.is_some() && (opts.sim_group || !opts.ceilings.is_empty() || opts.cap_kbps.is_some()) {
        anyhow::bail!("--janus does not take --sim-group, --ceilings or --cap-kbps (Janus has no bandwidth estimate to cap, and its layers are chosen per subscriber: use --switch)");
    }
    if opts.switch && (!opts.simulcast || !opts.ceilings.is_empty() || opts.cap_kbps.is_some()) {
        anyhow::bail!("--switch needs --simulcast, and takes no --ceilings or --cap-kbps");
    }
    if opts.cap_kbps.is_some() && opts.subscribers == 0 {
        anyhow::bail!("--cap-kbps caps the first subscriber of each room: give --subscribers 1 or more");
    }
    let janus = match &opts.janus {
        Some(url) => Some(janus::Janus::connect(url).await?),
        None => None,
    };
    let before_join = measure(&http, &opts).await?;
    for r in 0..opts.rooms {
        let owner = token(&format!("load-owner-{r}"));
        if let Some(j) = &janus {
            let room = j.create_room(opts.publishers, opts.video_kbps).await?.to_string();
            let (feed_tx, feed_rx) = tokio::sync::watch::channel(None);
            for i in 0..opts.subscribers {
                let me = client(opts.clone(), format!("sub-{r}-{i}"), &room);
                let j = Some((j.clone(), feed_rx.clone()));
                subs.push(tokio::spawn(subscriber(me, j, Role { switch: opts.switch, ..Role::default() })));
            }
            let me = client(opts.clone(), String::new(), &room);
            tasks.push(tokio::spawn(publisher(me, Some((j.clone(), feed_tx)))));
            continue;
        }
        let resp = http
            .post(format!("{}/rooms", opts.url))
            .bearer_auth(&owner)
            .json(&json!({"name": format!("load {r}"), "maxParticipants": (opts.publishers + opts.subscribers).max(2)}))
            .send()
            .await?;
        let status = resp.status();
        let resp: Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!(
                "creating a room failed ({status}): {} (for big rooms, start the server with a larger rooms.max_participants)",
                resp["error"]["message"]
            );
        }
        let room = resp["room"]["id"].as_str().unwrap_or_default().to_owned();
        rooms.push((room.clone(), owner.clone()));
        for i in 0..opts.subscribers {
            let o = opts.for_client(r * (opts.publishers + opts.subscribers) + opts.publishers + i);
            let me = client(o, token(&format!("load-sub-{r}-{i}")), &room);
            let ceiling = (!opts.ceilings.is_empty()).then(|| opts.ceilings[i % opts.ceilings.len()].clone());
            let cap = (i == 0 && opts.cap_kbps.is_some()).then(|| Arc::new(peer::Cap::default()));
            counters.caps.lock().unwrap_or_else(|e| e.into_inner()).extend(cap.clone());
            subs.push(tokio::spawn(subscriber(me, None, Role { ceiling, cap, switch: opts.switch })));
        }
        for i in 0..opts.publishers {
            let o = opts.for_client(r * (opts.publishers + opts.subscribers) + i);
            let me = client(o, token(&format!("load-pub-{r}-{i}")), &room);
            tasks.push(tokio::spawn(publisher(me, None)));
        }
    }
    let per_pub = if opts.audio { 2 } else { 1 };
    // Each track reaches every subscriber, and in a meeting every other publisher.
    let receivers = opts.subscribers + if opts.meeting { opts.publishers - 1 } else { 0 };
    let tracks_expected = (opts.rooms * opts.publishers * receivers * per_pub) as u64;
    // Wait for every track to arrive everywhere (or the set-up time), then measure.
    let setup_deadline = Instant::now() + setup;
    while Instant::now() < setup_deadline && counters.tracks_received.load(Relaxed) < tracks_expected {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The window is fixed before it opens, so every client judges a packet
    // by its send time against the same bounds.
    let from = now_us(epoch) + 100_000;
    let until = from + opts.seconds * 1_000_000;
    // The cap: the middle third of the window.
    let third = (until - from) / 3;
    counters.middle_from.store(from + third, Relaxed);
    counters.middle_until.store(from + 2 * third, Relaxed);
    counters.window_until.store(until, Relaxed);
    counters.window_from.store(from, Relaxed);
    let caps = counters.caps.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let capping = opts.cap_kbps.map(|kbps| {
        tokio::spawn(async move {
            tokio::time::sleep_until((epoch + Duration::from_micros(from + third)).into()).await;
            caps.iter().for_each(|c| c.set(Some(kbps)));
            tokio::time::sleep_until((epoch + Duration::from_micros(from + 2 * third)).into()).await;
            caps.iter().for_each(|c| c.set(None));
        })
    });
    tokio::time::sleep_until((epoch + Duration::from_micros(from)).into()).await;
    let m0 = measure(&http, &opts).await?;
    let d0 = nodes_delay_buckets(&http, &opts).await;
    let started = Instant::now();
    let end = epoch + Duration::from_micros(until);
    while Instant::now() < end {
        tokio::time::sleep(end.saturating_duration_since(Instant::now()).min(Duration::from_secs(1))).await;
        eprint!(
            "\r[{:>4}/{} s] sent {:>9}  received {:>10}  tracks {}/{}   ",
            started.elapsed().as_secs(),
            opts.seconds,
            counters.sent.load(Relaxed),
            counters.received.load(Relaxed),
            counters.tracks_received.load(Relaxed),
            tracks_expected
        );
    }
    let m1 = measure(&http, &opts).await?;
    let d1 = nodes_delay_buckets(&http, &opts).await;
    let secs = started.elapsed().as_secs_f64();
    // What left inside the window and is still in flight is counted when it
    // arrives; what does not arrive by now is lost.
    tokio::time::sleep(ARRIVAL_GRACE).await;
    let analytics = if opts.janus.is_some() { Value::Null } else { server_analytics(&http, &opts.url, &rooms).await };
    counters.done.send_replace(true);
    eprintln!();
    let mut all: Latencies = Vec::new();
    for s in subs.into_iter().chain(tasks) {
        if let Ok(Ok(l)) = s.await {
            all.extend(l);
        }
    }
    if let Some(c) = capping {
        c.abort();
    }
    let (mut arrival, mut read): (Vec<u32>, Vec<u32>) = all.into_iter().unzip();
    arrival.sort_unstable();
    read.sort_unstable();
    let pct = |sorted: &[u32], p: f64| {
        sorted
            .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
            .map(|us| f64::from(*us) / 1000.0)
    };
    let sent = counters.sent.load(Relaxed);
    let received = counters.received.load(Relaxed);
    // Each subscriber receives one layer of a simulcast track: there the
    // loss is what is missing from the sequence numbers of its one stream.
    let by_ceiling = std::mem::take(&mut *counters.by_ceiling.lock().unwrap_or_else(|e| e.into_inner()));
    let mut all_video = Reception::default();
    by_ceiling.values().for_each(|r| all_video.add(r));
    let expected = sent * receivers as u64;
    let loss = if opts.simulcast {
        all_video.loss().unwrap_or(0.0)
    } else if expected > 0 {
        (1.0 - received as f64 / expected as f64).max(0.0)
    } else {
        0.0
    };
    let per_layer: Vec<u64> = counters.sent_by_layer.iter().map(|n| n.load(Relaxed)).collect();
    let capped = std::mem::take(&mut *counters.capped.lock().unwrap_or_else(|e| e.into_inner()));
    let switches = std::mem::take(&mut *counters.switches.lock().unwrap_or_else(|e| e.into_inner()));
    let switch = opts.switch.then(|| switch_report(&switches));
    let cap = opts
        .cap_kbps
        .map(|kbps| cap_report(kbps, &capped, counters.middle_from.load(Relaxed), counters.middle_until.load(Relaxed)));
    // Janus counts nothing it forwards: there it is what the subscribers
    // received of what was sent inside the window.
    let forwarded = if opts.janus.is_some() { received as f64 } else { m1.2 - m0.2 };
    let participants = (opts.rooms * (opts.publishers + opts.subscribers)) as f64;
    Ok(json!({
        "rooms": opts.rooms,
        "publishersPerRoom": opts.publishers,
        "subscribersPerRoom": opts.subscribers,
        "videoKbps": opts.video_kbps,
        "fps": opts.fps,
        "pacing": opts.pacing,
        "audio": opts.audio,
        "meeting": opts.meeting,
        "seconds": (secs * 100.0).round() / 100.0,
        "tracksExpected": tracks_expected,
        "tracksReceived": counters.tracks_received.load(Relaxed),
        "packetsSent": sent,
        "packetsForwarded": forwarded,
        "packetsReceived": received,
        "forwardedPerSecond": (forwarded / secs).round(),
        "loss": (loss * 1e5).round() / 1e5,
        "simulcast": opts.simulcast,
        "simGroup": opts.simulcast && opts.sim_group,
        "packetsSentByLayer": if opts.simulcast {
            json!({"q": per_layer[0], "h": per_layer[1], "f": per_layer[2], "audio": per_layer[3]})
        } else {
            json!({"video": per_layer[2], "audio": per_layer[3]})
        },
        "videoByCeiling": by_ceiling.iter().map(|(k, v)| (k.clone(), v.json())).collect::<serde_json::Map<_, _>>(),
        "cap": cap,
        "switch": switch,
        "latencyMs": {"p50": pct(&arrival, 0.50), "p99": pct(&arrival, 0.99)},
        "readLatencyMs": {"p50": pct(&read, 0.50), "p99": pct(&read, 0.99)},
        "serverForwardDelayMs": {"p50": bucket_quantile(&d0, &d1, 0.5), "p99": bucket_quantile(&d0, &d1, 0.99)},
        "serverCpuSeconds": ((m1.0 - m0.0) * 1000.0).round() / 1000.0,
        "serverCpuUsPerForwardedPacket": if forwarded > 0.0 { ((m1.0 - m0.0) * 1e6 / forwarded * 100.0).round() / 100.0 } else { 0.0 },
        "serverRssMiB": (m1.1 / 1048576.0 * 10.0).round() / 10.0,
        "serverRssPerParticipantMiB": ((m1.1 - before_join.1) / 1048576.0 / participants.max(1.0) * 100.0).round() / 100.0,
        "serverAnalytics": analytics,
        "serverMediaPorts": counters.media_ports.lock().unwrap_or_else(|e| e.into_inner()).len(),
        "target": if opts.janus.is_some() { "janus" } else { "confer" },
        "forwardedFrom": if opts.janus.is_some() { "clients" } else { "server" },
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_of_the_difference_between_two_scrapes() {
        let before = [(0.001, 10.0), (0.002, 10.0), (0.005, 10.0), (f64::INFINITY, 10.0)];
        let after = [(0.001, 60.0), (0.002, 108.0), (0.005, 110.0), (f64::INFINITY, 110.0)];
        assert_eq!(super::bucket_quantile(&before, &after, 0.5), Some(1.0));
        assert_eq!(super::bucket_quantile(&before, &after, 0.99), Some(5.0));
        assert_eq!(super::bucket_quantile(&after, &after, 0.5), None, "nothing happened in between");
        assert_eq!(super::bucket_quantile(&[], &[], 0.5), None);
    }

    #[test]
    fn a_sim_group_offer_names_the_layers_by_ssrc_and_drops_the_rids() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rid:q send\r\na=mid:0\r\n\
a=simulcast:send q;h;f\r\na=ssrc:9 cname:x\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=ssrc:5 cname:x\r\n";
        let out = super::publish::sim_group_offer(sdp, "0", [1, 2, 3]);
        let video = &out[..out.find("m=audio").unwrap()];
        assert!(!video.contains("a=rid") && !video.contains("a=simulcast") && !video.contains("a=ssrc:9"), "{out}");
        assert!(video.ends_with("a=ssrc:3 cname:confer-load\r\na=ssrc-group:SIM 1 2 3\r\n"), "{out}");
        assert!(out.ends_with("a=mid:1\r\na=ssrc:5 cname:x\r\n"), "audio untouched: {out}");
        assert_eq!(crate::media::sdp::simulcast_groups(&out), [("0".to_owned(), vec![1, 2, 3])]);
    }

    /// `--switch`: from each request to the first packet of the layer asked
    /// for, counting the layers stepped through; a subscriber that never got
    /// there is not reached.
    #[test]
    fn a_switch_is_timed_from_the_request_to_the_first_packet_of_its_layer() {
        use super::receive::{switch_report, SwitchRun};
        let direct = SwitchRun {
            asked: vec![(1_000_000, 0), (5_000_000, 2)],
            layers: vec![(100, 2), (1_030_000, 0), (5_020_000, 2)],
        };
        let stepping = SwitchRun {
            asked: vec![(1_000_000, 0), (5_000_000, 2)],
            layers: vec![(100, 2), (1_050_000, 0), (5_040_000, 1), (5_090_000, 2)],
        };
        let stuck = SwitchRun { asked: vec![(1_000_000, 0), (5_000_000, 2)], layers: vec![(100, 2), (1_010_000, 0)] };
        let r = switch_report(&[direct, stepping, stuck]);
        assert_eq!(r["toLow"]["p50Ms"], 30.0);
        assert_eq!(r["toLow"]["maxMs"], 50.0);
        assert_eq!(r["toLow"]["reached"], 3);
        assert_eq!(r["toHigh"]["reached"], 2, "{r}");
        assert_eq!(r["toHigh"]["of"], 3);
        assert_eq!(r["toHigh"]["maxMs"], 90.0);
        assert_eq!(r["toHigh"]["layerChanges"], 2, "through h");
    }

    /// Loss from sequence numbers: gaps count, duplicates (retransmissions)
    /// and reordering do not, and a wrap is not a gap.
    #[test]
    fn seq_spans_count_gaps_across_a_wrap() {
        let mut s = super::receive::SeqSpan::default();
        for seq in [65533u16, 65534, 65535, 1, 0, 2, 2, 5] {
            s.add(seq);
        }
        // 65533 ..= 5 is 9 numbers; 3 and 4 are missing.
        assert_eq!(s.unique_and_span(), (7, 9));
        assert_eq!(super::receive::SeqSpan::default().unique_and_span(), (0, 0));
    }

    /// The load tool's link cap: a burst goes through, then a queue of 60 ms
    /// at the cap, then drops; the queue drains at the cap; lifting it lets
    /// everything through.
    #[test]
    fn the_cap_passes_a_burst_queues_then_drops_and_drains_at_its_rate() {
        use super::peer::{Shaper, BURST_BYTES};
        use std::time::{Duration, Instant};
        let (t0, from) = (Instant::now(), "127.0.0.1:9".parse().unwrap());
        let (bps, pkt) = (600_000u64, bytes::BytesMut::from(&[0u8; 1000][..]));
        let mut s = Shaper::new(t0);
        let passed = (0..40).filter(|_| s.offer(t0, bps, pkt.clone(), from).is_some()).count();
        assert_eq!(passed, (BURST_BYTES / 1000.0) as usize, "the bucket's depth goes straight through");
        // 60 ms at 600 kbit/s is 4,500 bytes: four 1,000-byte datagrams wait.
        assert_eq!(s.dropped, 40 - passed as u64 - 4);
        assert_eq!(s.release(t0, bps), None, "no tokens yet");
        let next = s.next_release(bps).unwrap();
        assert_eq!(next.duration_since(t0).as_micros(), 13_333, "1,000 bytes at 600 kbit/s");
        assert!(s.release(next, bps).is_some() && s.release(next, bps).is_none());
        let drained = (1..=3).filter(|i| s.release(next + Duration::from_micros(13_334 * i), bps).is_some()).count();
        assert_eq!(drained, 3, "one per 13.3 ms");
        assert!(s.offer(t0 + Duration::from_secs(1), 0, pkt.clone(), from).is_some(), "no cap, no wait");
    }

    /// `--server-pid` reads this process's CPU and RSS like `ps` would.
    #[test]
    fn proc_usage_reads_cpu_and_rss() {
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let (cpu, rss, _) = super::scrape::proc_usage(std::process::id()).unwrap();
        assert!(cpu >= 0.03 && rss > 1e6, "cpu {cpu} s, rss {rss} B ({x})");
        assert!(super::scrape::proc_usage(u32::MAX).is_err(), "no such process");
    }
}
