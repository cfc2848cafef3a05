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
mod scrape;

use crate::auth::{Claims, TokenKeys};
use futures_util::{SinkExt, StreamExt};
use peer::{RtcPeer, Seen};
use publish::publisher;
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
    /// The cap's phase, µs since the epoch by send time (set before the window opens).
    cap_from: AtomicU64,
    cap_until: AtomicU64,
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
            cap_from: AtomicU64::new(u64::MAX),
            cap_until: AtomicU64::new(u64::MAX),
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

/// One subscriber: join, answer every subscribe-offer, count what arrives.
#[allow(clippy::too_many_arguments)]
async fn subscriber(
    opts: LoadOpts,
    token: String,
    room: String,
    c: Arc<Counters>,
    epoch: Instant,
    stop: Instant,
    janus: Option<(Arc<janus::Janus>, tokio::sync::watch::Receiver<Option<u64>>)>,
    role: Role,
) -> anyhow::Result<Latencies> {
    match janus {
        Some((j, mut feed)) => {
            let p = RtcPeer::start_with(false, local_ip_towards(opts.target()).await?).await?;
            let feed = feed.wait_for(Option::is_some).await?.expect("waited for Some");
            j.subscribe(room.parse()?, feed, &p).await?;
            Ok(count(p, c, epoch, stop, Role::default()).await)
        }
        None => {
            let (ws, p, joined) = join(&opts, &token, &room, role.cap.clone()).await?;
            Ok(receive(ws, p, c, epoch, stop, role, joined).await)
        }
    }
}

/// Per packet received inside the window: µs from its send to its arrival,
/// and to its read.
type Latencies = Vec<(u32, u32)>;

/// How one subscriber takes part: the ceiling it asks for on every video
/// track, and the cap on its link.
#[derive(Clone, Default)]
struct Role {
    ceiling: Option<String>,
    cap: Option<Arc<peer::Cap>>,
}

/// What a group of subscribers received of the window's video, from the
/// one stream the SFU sends each of them per track: packets per layer (by
/// the layer byte the publisher wrote), and the sequence numbers received
/// against the span they cover (the SFU keeps them contiguous across layer
/// switches, so a gap is a loss).
#[derive(Debug, Default, Clone)]
struct Reception {
    subscribers: u64,
    layers: [u64; 3],
    unique: u64,
    span: u64,
}

impl Reception {
    fn add(&mut self, o: &Reception) {
        self.subscribers += o.subscribers;
        for (a, b) in self.layers.iter_mut().zip(o.layers) {
            *a += b;
        }
        self.unique += o.unique;
        self.span += o.span;
    }

    fn loss(&self) -> Option<f64> {
        (self.span > 0).then(|| (1.0 - self.unique as f64 / self.span as f64).max(0.0))
    }

    fn json(&self) -> Value {
        json!({
            "subscribers": self.subscribers,
            "packetsByLayer": {"q": self.layers[0], "h": self.layers[1], "f": self.layers[2]},
            "loss": self.loss().map(|l| (l * 1e5).round() / 1e5),
        })
    }
}

/// The sequence numbers of one stream a subscriber received (extended past
/// wraps), for [`Reception`].
#[derive(Default)]
struct SeqSpan {
    seen: std::collections::HashSet<u64>,
    last: Option<u64>,
    range: Option<(u64, u64)>,
}

impl SeqSpan {
    fn add(&mut self, seq: u16) {
        let ext = match self.last {
            None => (1u64 << 16) + u64::from(seq),
            Some(last) => {
                let delta = seq.wrapping_sub(last as u16) as i16;
                last.saturating_add_signed(i64::from(delta))
            }
        };
        if self.last.is_none_or(|l| ext > l) {
            self.last = Some(ext);
        }
        self.seen.insert(ext);
        self.range = Some(self.range.map_or((ext, ext), |(a, b)| (a.min(ext), b.max(ext))));
    }

    fn unique_and_span(&self) -> (u64, u64) {
        self.range.map_or((0, 0), |(a, b)| (self.seen.len() as u64, b - a + 1))
    }
}

/// A capped subscriber's run: the layer changes it was told of
/// (`subscription-update`, µs since the epoch), its video loss while capped,
/// and the longest its audio stopped while capped.
#[derive(Debug, Default, Clone)]
struct CappedRun {
    updates: Vec<(u64, Option<String>)>,
    capped: Reception,
    audio_gap_us: u64,
}

/// Answer every subscribe-offer on `ws` with `p`, ask for `role`'s ceiling
/// on every video track (those in `joined`, and each one published later),
/// and count what arrives until the run is done (see [`count`]).
async fn receive(
    mut ws: Ws,
    p: RtcPeer,
    c: Arc<Counters>,
    epoch: Instant,
    stop: Instant,
    role: Role,
    joined: Value,
) -> Latencies {
    let ctl = p.ctl.clone();
    let updates = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (ceiling, seen_updates) = (role.ceiling.clone(), updates.clone());
    let signaling = tokio::spawn(async move {
        let subscribe = |room: &Value, track: &Value| {
            let q = ceiling.as_ref().filter(|_| track["kind"] == "video")?;
            let m = json!({"type": "track-subscribe", "roomId": room, "trackId": track["id"], "subscribe": true, "quality": q});
            Some(Message::Text(m.to_string().into()))
        };
        let room = joined["roomId"].clone();
        let existing = joined["room"]["participants"].as_array().into_iter().flatten();
        for t in existing.flat_map(|p| p["tracks"].as_array().into_iter().flatten()) {
            if let Some(m) = subscribe(&room, t) {
                let _ = ws.send(m).await;
            }
        }
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
            if v["type"] == "track-published" {
                if let Some(m) = subscribe(&v["roomId"], &v["track"]) {
                    let _ = ws.send(m).await;
                }
                continue;
            }
            if v["type"] == "subscription-update" {
                let layer = v["layer"].as_str().map(str::to_owned);
                seen_updates.lock().unwrap_or_else(|e| e.into_inner()).push((now_us(epoch), layer));
                continue;
            }
            if v["type"] != "subscribe-offer" {
                continue;
            }
            let (sdp, room) = (v["sdp"].as_str().unwrap_or_default().to_owned(), v["roomId"].clone());
            let answer = ctl
                .try_with(move |pc, now| -> Option<String> {
                    let offer = RTCSessionDescription::offer(sdp).ok()?;
                    pc.set_remote_description(now, offer).ok()?;
                    let answer = pc.create_answer(None).ok()?;
                    pc.set_local_description(now, answer.clone()).ok()?;
                    Some(answer.sdp)
                })
                .await
                .flatten();
            if let Some(sdp) = answer {
                let _ = ws
                    .send(Message::Text(
                        json!({"type": "subscribe-answer", "roomId": room, "sdp": sdp}).to_string().into(),
                    ))
                    .await;
            }
        }
    });
    let capped = role.cap.is_some();
    let (latencies, run) = count_as(p, c.clone(), epoch, stop, role).await;
    signaling.abort();
    if let Some(mut run) = run.filter(|_| capped) {
        run.updates = std::mem::take(&mut *updates.lock().unwrap_or_else(|e| e.into_inner()));
        c.capped.lock().unwrap_or_else(|e| e.into_inner()).push(run);
    }
    latencies
}

/// Count what arrives at `p` until the run is done: every packet sent inside
/// the window that arrives is received, timed from its send time. Every
/// track seen counts once towards `tracks_received`.
async fn count(p: RtcPeer, c: Arc<Counters>, epoch: Instant, stop: Instant, role: Role) -> Latencies {
    count_as(p, c, epoch, stop, role).await.0
}

/// [`count`], also adding what `role`'s subscriber received to its ceiling's
/// [`Reception`], and for a capped one returning its [`CappedRun`].
async fn count_as(
    mut p: RtcPeer,
    c: Arc<Counters>,
    epoch: Instant,
    stop: Instant,
    role: Role,
) -> (Latencies, Option<CappedRun>) {
    let mut latencies = Vec::new();
    let mut tracks = std::collections::HashSet::new();
    let until = tokio::time::Instant::from_std(stop);
    let mut done = c.done.subscribe();
    // Per video track: the SSRC of its first packet (the stream the SFU
    // keeps; retransmissions come on another) and its sequence numbers,
    // over the window and over the cap.
    let mut video: std::collections::HashMap<String, (u32, SeqSpan, SeqSpan)> = Default::default();
    let mut mine = Reception { subscribers: 1, ..Default::default() };
    let (mut last_audio, mut audio_gap) = (None::<u64>, 0u64);
    loop {
        let s = tokio::select! {
            s = tokio::time::timeout_at(until, p.seen.recv()) => match s {
                Ok(Some(s)) => s,
                _ => break,
            },
            _ = done.wait_for(|d| *d) => break,
        };
        if let Seen::Rtp { track, ssrc, seq, payload, at, read, .. } = s {
            let Some(tail) = payload.len().checked_sub(9).map(|at| &payload[at..]) else { continue };
            let layer = tail[0];
            let sent = u64::from_be_bytes(tail[1..].try_into().expect("8 bytes"));
            if c.in_window(sent) {
                c.received.fetch_add(1, Relaxed);
                // From the publisher's send to the packet's arrival at the
                // subscriber (and to its read there): what the subscriber's
                // own pipeline and this task take afterwards is not the
                // server's.
                let since = |t: Instant| {
                    let us = t.saturating_duration_since(epoch).as_micros() as u64;
                    us.saturating_sub(sent).min(u64::from(u32::MAX)) as u32
                };
                latencies.push((since(at), since(read)));
                let cap = c.cap_from.load(Relaxed)..c.cap_until.load(Relaxed);
                if layer == AUDIO_LAYER {
                    if cap.contains(&sent) {
                        let t = at.saturating_duration_since(epoch).as_micros() as u64;
                        audio_gap = audio_gap.max(t - last_audio.unwrap_or(t).min(t));
                        last_audio = Some(t);
                    }
                } else {
                    let v =
                        video.entry(track.clone()).or_insert_with(|| (ssrc, SeqSpan::default(), SeqSpan::default()));
                    if v.0 == ssrc {
                        v.1.add(seq);
                        if cap.contains(&sent) {
                            v.2.add(seq);
                        }
                        if let Some(n) = mine.layers.get_mut(usize::from(layer)) {
                            *n += 1;
                        }
                    }
                }
            }
            if tracks.insert(track) {
                c.tracks_received.fetch_add(1, Relaxed);
            }
        }
    }
    let mut capped = Reception { subscribers: 1, ..Default::default() };
    for (_, all, during_cap) in video.values() {
        let (u, s) = all.unique_and_span();
        (mine.unique, mine.span) = (mine.unique + u, mine.span + s);
        let (u, s) = during_cap.unique_and_span();
        (capped.unique, capped.span) = (capped.unique + u, capped.span + s);
    }
    // A capped subscriber is its own group, so the report shows what the
    // uncapped ones at the same ceiling kept.
    let ceiling = role.ceiling.clone().unwrap_or_else(|| "none".into());
    let group = if role.cap.is_some() { format!("{ceiling} capped") } else { ceiling };
    c.by_ceiling.lock().unwrap_or_else(|e| e.into_inner()).entry(group).or_default().add(&mine);
    let run = CappedRun { capped, audio_gap_us: audio_gap, ..Default::default() };
    (latencies, Some(run))
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
    let mut tasks = Vec::new();
    let mut subs = Vec::new();
    let mut rooms = Vec::new();
    if opts.janus.is_some() && (opts.meeting || opts.publishers != 1) {
        anyhow::bail!("--janus supports one publisher per room and no --meeting");
    }
    if opts.janus.is_some() && (opts.simulcast || !opts.ceilings.is_empty() || opts.cap_kbps.is_some()) {
        anyhow::bail!("--janus does not take --simulcast, --ceilings or --cap-kbps yet");
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
                let (o, room, c) = (opts.clone(), room.clone(), counters.clone());
                let j = Some((j.clone(), feed_rx.clone()));
                subs.push(tokio::spawn(subscriber(
                    o,
                    format!("sub-{r}-{i}"),
                    room,
                    c,
                    epoch,
                    stop,
                    j,
                    Role::default(),
                )));
            }
            let (o, c) = (opts.clone(), counters.clone());
            tasks.push(tokio::spawn(publisher(o, String::new(), room, c, epoch, stop, Some((j.clone(), feed_tx)))));
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
            let (t, room, c) = (token(&format!("load-sub-{r}-{i}")), room.clone(), counters.clone());
            let ceiling = (!opts.ceilings.is_empty()).then(|| opts.ceilings[i % opts.ceilings.len()].clone());
            let cap = (i == 0 && opts.cap_kbps.is_some()).then(|| Arc::new(peer::Cap::default()));
            counters.caps.lock().unwrap_or_else(|e| e.into_inner()).extend(cap.clone());
            subs.push(tokio::spawn(subscriber(o, t, room, c, epoch, stop, None, Role { ceiling, cap })));
        }
        for i in 0..opts.publishers {
            let o = opts.for_client(r * (opts.publishers + opts.subscribers) + i);
            let (t, room, c) = (token(&format!("load-pub-{r}-{i}")), room.clone(), counters.clone());
            tasks.push(tokio::spawn(publisher(o, t, room, c, epoch, stop, None)));
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
    counters.cap_from.store(from + third, Relaxed);
    counters.cap_until.store(from + 2 * third, Relaxed);
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
    let cap = opts
        .cap_kbps
        .map(|kbps| cap_report(kbps, &capped, counters.cap_from.load(Relaxed), counters.cap_until.load(Relaxed)));
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

/// What the capped subscribers went through (the medians over them, ms from
/// the cap or its lift): the first layer change below `f` (`downMs`), the
/// last change while capped (`settledMs`, the layer then `settledLayer`),
/// back to at least `h` and to `f` after the lift, their video loss while
/// capped, and the longest audio gap then.
fn cap_report(kbps: u32, runs: &[CappedRun], from: u64, until: u64) -> Value {
    let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let after = |r: &CappedRun, at: u64, ok: &dyn Fn(Option<&str>) -> bool| {
        r.updates.iter().find(|(t, l)| *t >= at && ok(l.as_deref())).map(|(t, _)| ms(t - at))
    };
    let down: Vec<f64> = runs.iter().filter_map(|r| after(r, from, &|l| l != Some("f"))).collect();
    let settled: Vec<(f64, Option<String>)> = runs
        .iter()
        .filter_map(|r| r.updates.iter().rfind(|(t, _)| (from..until).contains(t)))
        .map(|(t, l)| (ms(t - from), l.clone()))
        .collect();
    // Already at h or above when the cap lifts is back at once.
    let at_least_h = |l: Option<&str>| matches!(l, Some("h" | "f"));
    let up_h: Vec<f64> = runs
        .iter()
        .filter_map(|r| match r.updates.iter().rfind(|(t, _)| *t < until) {
            Some((_, l)) if at_least_h(l.as_deref()) => Some(0.0),
            _ => after(r, until, &at_least_h),
        })
        .collect();
    let up_f: Vec<f64> = runs.iter().filter_map(|r| after(r, until, &|l| l == Some("f"))).collect();
    let mut during = Reception::default();
    runs.iter().for_each(|r| during.add(&r.capped));
    json!({
        "kbps": kbps,
        "subscribers": runs.len(),
        "capSeconds": ms(until - from) / 1000.0,
        "downMs": median(down),
        "settledMs": median(settled.iter().map(|s| s.0).collect()),
        "settledLayers": settled.iter().map(|s| s.1.clone()).collect::<Vec<_>>(),
        "upToHMs": median(up_h),
        "upToFMs": median(up_f),
        "lossWhileCapped": during.loss().map(|l| (l * 1e4).round() / 1e4),
        "audioGapMaxMs": runs.iter().map(|r| ms(r.audio_gap_us)).fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g)))),
        "updates": runs.iter().map(|r| r.updates.iter().map(|(t, l)| json!([(*t as f64 - from as f64) / 1000.0, l])).collect::<Vec<_>>()).collect::<Vec<_>>(),
    })
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

    /// Loss from sequence numbers: gaps count, duplicates (retransmissions)
    /// and reordering do not, and a wrap is not a gap.
    #[test]
    fn seq_spans_count_gaps_across_a_wrap() {
        let mut s = super::SeqSpan::default();
        for seq in [65533u16, 65534, 65535, 1, 0, 2, 2, 5] {
            s.add(seq);
        }
        // 65533 ..= 5 is 9 numbers; 3 and 4 are missing.
        assert_eq!(s.unique_and_span(), (7, 9));
        assert_eq!(super::SeqSpan::default().unique_and_span(), (0, 0));
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
