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

use crate::auth::{Claims, TokenKeys};
use futures_util::{SinkExt, StreamExt};
use peer::{RtcPeer, Seen};
use rtc::peer_connection::sdp::RTCSessionDescription;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// What to load the server with.
#[derive(Clone, Debug)]
pub struct LoadOpts {
    pub url: String,
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
}

impl LoadOpts {
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
/// address that routes to the server (loopback for a local server).
async fn join(opts: &LoadOpts, token: &str, room: &str) -> anyhow::Result<(Ws, RtcPeer)> {
    let mut ws = connect_ws(&opts.url, token).await?;
    send(&mut ws, json!({"type": "room-join", "roomId": room})).await?;
    expect(&mut ws, "room-joined").await?;
    let ip = local_ip_towards(&opts.url).await?;
    Ok((ws, RtcPeer::start_with(false, ip).await?))
}

/// The local address that reaches the server: where the clients' sockets bind.
async fn local_ip_towards(url: &str) -> anyhow::Result<std::net::IpAddr> {
    let u = reqwest::Url::parse(url)?;
    let host = u.host_str().ok_or_else(|| anyhow::anyhow!("--url has no host"))?;
    let probe = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    probe.connect((host, u.port_or_known_default().unwrap_or(80))).await?;
    Ok(probe.local_addr()?.ip())
}

/// One publisher: join, publish video (and audio), then send until the end.
async fn publisher(
    opts: LoadOpts,
    token: String,
    room: String,
    c: Arc<Counters>,
    epoch: Instant,
    stop: Instant,
    janus: Option<(Arc<janus::Janus>, tokio::sync::watch::Sender<Option<u64>>)>,
) -> anyhow::Result<Latencies> {
    let (video_ssrc, audio_ssrc) = (rand::random::<u32>(), rand::random::<u32>());
    let audio = opts.audio;
    let offer_with = move |pc: &mut rtc::peer_connection::RTCPeerConnection, now| -> anyhow::Result<_> {
        let v = pc.add_track(peer::video_track("video", video_ssrc))?;
        let a = if audio { Some(pc.add_track(peer::audio_track("audio", audio_ssrc))?) } else { None };
        let offer = pc.create_offer(None)?;
        pc.set_local_description(now, offer.clone())?;
        let ids: Vec<_> = pc.get_transceivers().collect();
        let mids: Vec<String> = ids.into_iter().filter_map(|t| pc.rtp_transceiver(t)?.mid().clone()).collect();
        let sources = ["camera", "microphone"];
        let tracks: Vec<Value> = mids.iter().zip(sources).map(|(m, s)| json!({"mid": m, "source": s})).collect();
        Ok((offer.sdp, tracks, (v, a)))
    };
    let (ws, mut p, senders) = match &janus {
        Some((j, feed)) => {
            let p = RtcPeer::start_with(false, local_ip_towards(opts.target()).await?).await?;
            let (offer, _, senders) =
                p.ctl.try_with(offer_with).await.ok_or_else(|| anyhow::anyhow!("publisher peer stopped"))??;
            let room: u64 = room.parse()?;
            feed.send_replace(Some(j.publish(room, &p, offer).await?));
            (None, p, senders)
        }
        None => {
            let (mut ws, p) = join(&opts, &token, &room).await?;
            let (offer, tracks, senders) =
                p.ctl.try_with(offer_with).await.ok_or_else(|| anyhow::anyhow!("publisher peer stopped"))??;
            send(&mut ws, json!({"type": "publish-offer", "roomId": room, "sdp": offer, "tracks": tracks})).await?;
            let answer = expect(&mut ws, "publish-answer").await?["sdp"].as_str().unwrap_or_default().to_owned();
            let port =
                answer.lines().find_map(|l| l.split_once(" typ host")?.0.rsplit(' ').next()?.parse::<u16>().ok());
            c.media_ports.lock().unwrap_or_else(|e| e.into_inner()).extend(port);
            p.ctl
                .try_with(move |pc, now| {
                    RTCSessionDescription::answer(answer).and_then(|a| pc.set_remote_description(now, a))
                })
                .await;
            (Some(ws), p, senders)
        }
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(s) = p.seen.recv().await {
            if matches!(s, Seen::Connected) {
                return;
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("publisher did not connect"))?;
    let (vs, as_) = senders;
    let pts = p
        .ctl
        .try_with(move |pc, _| {
            let pt = |pc: &mut rtc::peer_connection::RTCPeerConnection, s, mime: &str| {
                pc.rtp_sender(s).and_then(|mut x| {
                    x.get_parameters()
                        .rtp_parameters
                        .codecs
                        .iter()
                        .find(|c| c.rtp_codec.mime_type == mime)
                        .map(|c| c.payload_type)
                })
            };
            (pt(pc, vs, "video/VP8"), as_.and_then(|a| pt(pc, a, "audio/opus")))
        })
        .await
        .unwrap_or((None, None));
    let vpt = pts.0.ok_or_else(|| anyhow::anyhow!("VP8 was not negotiated"))?;
    // In a meeting everyone also subscribes on the same WebSocket; otherwise
    // keep it read so the server's pings are answered.
    let receiving = match ws {
        Some(ws) if opts.meeting => {
            let sub = RtcPeer::start_with(false, local_ip_towards(&opts.url).await?).await?;
            tokio::spawn(receive(ws, sub, c.clone(), epoch, stop))
        }
        Some(mut ws) => tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
            Vec::new()
        }),
        None => tokio::spawn(async move { Vec::new() }),
    };

    // Video: `fps` frames a second, a keyframe every 2 s that is KEY_RATIO
    // times a delta frame, sized so the average is `video_kbps` (at the frame
    // size of `frame_size_for`, announced in keyframes); frames split into
    // packets of at most 1,100 bytes, which leave paced at `pacing` times
    // the bitrate, as libwebrtc's pacer sends them (or back to back). Audio:
    // a packet every 20 ms, never held back by video. Each packet carries
    // the time it leaves.
    const KEY_RATIO: usize = 5;
    let fps = opts.fps.clamp(1, 120);
    let gop = u64::from(fps) * 2;
    let delta_bytes = (opts.video_kbps as usize * 1000 / 8 * 2 / (gop as usize - 1 + KEY_RATIO)).max(200);
    let frame_every = Duration::from_secs_f64(1.0 / f64::from(fps));
    let audio_every = Duration::from_millis(20);
    let pace_bytes_per_sec = opts.pacing * f64::from(opts.video_kbps) * 1000.0 / 8.0;
    let (mut vseq, mut aseq) = (rand::random::<u16>(), rand::random::<u16>());
    let (mut frames, mut audio_n) = (0u64, 0u64);
    let mut next_video = tokio::time::Instant::now();
    let mut next_audio = next_video;
    // Video packets not yet sent: (marker, frame head, size, timestamp); and
    // when the pacer lets the next one go.
    let mut queue: std::collections::VecDeque<(bool, Vec<u8>, usize, u32)> = Default::default();
    let mut next_paced = next_video;
    while Instant::now() < stop && !c.is_done() {
        let wake =
            if queue.is_empty() { next_video.min(next_audio) } else { next_video.min(next_audio).min(next_paced) };
        tokio::time::sleep_until(wake).await;
        let now = tokio::time::Instant::now();
        let mut pkts = Vec::new();
        if next_video <= now {
            let key = frames % gop == 0;
            let mut left = if key { delta_bytes * KEY_RATIO } else { delta_bytes };
            let ts = (frames * 90_000 / u64::from(fps)) as u32;
            let mut first = true;
            while left > 0 {
                let size = left.min(1100);
                left -= size;
                let head = if first { vp8_frame_start(key, frame_size_for(opts.video_kbps)) } else { vec![0x00] };
                queue.push_back((left == 0, head, size, ts));
                first = false;
            }
            frames += 1;
            next_video += frame_every;
            next_paced = next_paced.max(now);
        }
        while let Some((marker, head, size, ts)) = queue.pop_front() {
            if pace_bytes_per_sec > 0.0 {
                if next_paced > now {
                    queue.push_front((marker, head, size, ts));
                    break;
                }
                next_paced += Duration::from_secs_f64(size as f64 / pace_bytes_per_sec);
            }
            pkts.push((vs, rtp(vpt, vseq, ts, video_ssrc, marker, &head, size)));
            vseq = vseq.wrapping_add(1);
        }
        if next_audio <= now {
            if let (Some(a), Some(apt)) = (as_, pts.1) {
                pkts.push((a, rtp(apt, aseq, (audio_n * 960) as u32, audio_ssrc, false, &[], 80)));
                aseq = aseq.wrapping_add(1);
            }
            audio_n += 1;
            next_audio += audio_every;
        }
        if pkts.is_empty() {
            continue;
        }
        let count = pkts.len() as u64;
        // Stamped by the peer's task as it writes them, just before they go
        // through webrtc-rs to its socket, not when this loop woke.
        let sent = p
            .ctl
            .try_with(move |pc, now| {
                let t = now.saturating_duration_since(epoch).as_micros() as u64;
                for (s, (header, mut payload)) in pkts {
                    let at = payload.len() - 8;
                    payload[at..].copy_from_slice(&t.to_be_bytes());
                    if let Some(mut s) = pc.rtp_sender(s) {
                        let _ = s.write_rtp(now, rtc::rtp::Packet { header, payload: payload.into() });
                    }
                }
                t
            })
            .await;
        let Some(t) = sent else { break };
        if c.in_window(t) {
            c.sent.fetch_add(count, Relaxed);
        }
    }
    if opts.meeting {
        return Ok(receiving.await.unwrap_or_default());
    }
    receiving.abort();
    Ok(Vec::new())
}

/// The start of a synthetic VP8 frame: a payload descriptor with S set,
/// then the frame tag, and for a keyframe the start code and the frame size
/// (what the SFU's analytics read; RFC 7741, RFC 6386 9.1).
fn vp8_frame_start(key: bool, (w, h): (u16, u16)) -> Vec<u8> {
    if key {
        let (w, h) = (w.to_le_bytes(), h.to_le_bytes());
        vec![0x10, 0x50, 0x2d, 0x01, 0x9d, 0x01, 0x2a, w[0], w[1], h[0], h[1]]
    } else {
        vec![0x10, 0x51, 0x2d, 0x01]
    }
}

/// The frame size an encoder would choose for a bitrate (roughly
/// libwebrtc's ladder).
fn frame_size_for(kbps: u32) -> (u16, u16) {
    match kbps {
        1200.. => (1280, 720),
        700.. => (960, 540),
        300.. => (640, 360),
        _ => (320, 180),
    }
}

/// A packet's header and a payload of `size` bytes: `head`, then zeros; the
/// last 8 bytes are for the send time (µs since the run's epoch), written
/// when it is sent, which subscribers read for latency.
fn rtp(
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    marker: bool,
    head: &[u8],
    size: usize,
) -> (rtc::rtp::header::Header, Vec<u8>) {
    let size = size.max(head.len() + 8);
    let mut payload = vec![0u8; size];
    payload[..head.len()].copy_from_slice(head);
    let header = rtc::rtp::header::Header {
        version: 2,
        payload_type: pt,
        sequence_number: seq,
        timestamp: ts,
        ssrc,
        marker,
        ..Default::default()
    };
    (header, payload)
}

/// One subscriber: join, answer every subscribe-offer, count what arrives.
async fn subscriber(
    opts: LoadOpts,
    token: String,
    room: String,
    c: Arc<Counters>,
    epoch: Instant,
    stop: Instant,
    janus: Option<(Arc<janus::Janus>, tokio::sync::watch::Receiver<Option<u64>>)>,
) -> anyhow::Result<Latencies> {
    match janus {
        Some((j, mut feed)) => {
            let p = RtcPeer::start_with(false, local_ip_towards(opts.target()).await?).await?;
            let feed = feed.wait_for(Option::is_some).await?.expect("waited for Some");
            j.subscribe(room.parse()?, feed, &p).await?;
            Ok(count(p, c, epoch, stop).await)
        }
        None => {
            let (ws, p) = join(&opts, &token, &room).await?;
            Ok(receive(ws, p, c, epoch, stop).await)
        }
    }
}

/// Answer every subscribe-offer on `ws` with `p`, and count what arrives
/// until the run is done (see [`count`]).
async fn receive(mut ws: Ws, p: RtcPeer, c: Arc<Counters>, epoch: Instant, stop: Instant) -> Latencies {
    let ctl = p.ctl.clone();
    let signaling = tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
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
    let latencies = count(p, c, epoch, stop).await;
    signaling.abort();
    latencies
}

/// Latencies of received packets in µs: (to the subscriber host's kernel,
/// to the subscriber peer's read).
type Latencies = Vec<(u32, u32)>;

/// Count what `p` receives until the run is done (or `stop`): the added
/// latencies of each packet sent inside the measured window.
async fn count(mut p: RtcPeer, c: Arc<Counters>, epoch: Instant, stop: Instant) -> Latencies {
    let mut latencies = Vec::new();
    let mut tracks = std::collections::HashSet::new();
    let until = tokio::time::Instant::from_std(stop);
    let mut done = c.done.subscribe();
    loop {
        let s = tokio::select! {
            s = tokio::time::timeout_at(until, p.seen.recv()) => match s {
                Ok(Some(s)) => s,
                _ => break,
            },
            _ = done.wait_for(|d| *d) => break,
        };
        if let Seen::Rtp { track, payload, at, read, .. } = s {
            if tracks.insert(track) {
                c.tracks_received.fetch_add(1, Relaxed);
            }
            let Some(sent) = payload.len().checked_sub(8).map(|at| &payload[at..]) else { continue };
            let sent = u64::from_be_bytes(sent.try_into().expect("8 bytes"));
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
            }
        }
    }
    latencies
}

/// The server's (CPU seconds, RSS bytes, forwarded packets): from `/proc`
/// with `--server-pid`, else from its `/metrics`. Janus has no forwarding
/// counter (0 here; the report counts what the subscribers received).
async fn measure(http: &reqwest::Client, opts: &LoadOpts) -> anyhow::Result<(f64, f64, f64)> {
    let mut m = match opts.server_pid {
        Some(pid) => proc_usage(pid)?,
        None if opts.janus.is_some() => anyhow::bail!("--janus needs --server-pid (Janus has no /metrics)"),
        None => server_metrics(http, &opts.url).await?,
    };
    if opts.janus.is_none() && opts.server_pid.is_some() {
        m.2 = server_metrics(http, &opts.url).await?.2;
    }
    Ok(m)
}

/// (CPU seconds, RSS bytes, 0) of a process, from `/proc/<pid>/stat` and `status`.
fn proc_usage(pid: u32) -> anyhow::Result<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(((ticks(14) + ticks(15)) / hz, rss_kib * 1024.0, 0.0))
}

/// Server process metrics: (CPU seconds, RSS bytes, forwarded packets).
async fn server_metrics(http: &reqwest::Client, url: &str) -> anyhow::Result<(f64, f64, f64)> {
    let text = http.get(format!("{url}/metrics")).send().await?.text().await?;
    let mut out = (0.0, 0.0, 0.0);
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, v)) = l.rsplit_once(' ') else { continue };
        let v: f64 = v.parse().unwrap_or(0.0);
        if name == "confer_process_cpu_seconds" {
            out.0 = v;
        } else if name == "process_resident_memory_bytes" {
            out.1 = v;
        } else if name.starts_with("confer_rtp_packets_forwarded_total") {
            out.2 += v;
        }
    }
    Ok(out)
}

/// The cumulative buckets of `confer_media_forward_delay_seconds`: (upper
/// bound in seconds, count). Empty if the server has none.
async fn forward_delay_buckets(http: &reqwest::Client, url: &str) -> Vec<(f64, f64)> {
    let Ok(resp) = http.get(format!("{url}/metrics")).send().await else { return Vec::new() };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("confer_media_forward_delay_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect()
}

/// The `q` quantile (ms) of what a histogram counted between two scrapes:
/// the upper bound of the first bucket that reaches it (Prometheus buckets
/// only bound a value), `None` without samples or beyond the last bound.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> =
        after.iter().map(|&(le, n)| (le, n - before.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, m)| *m))).collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|(_, n)| *n >= q * total).map(|(le, _)| le * 1000.0).filter(|ms| ms.is_finite())
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
                subs.push(tokio::spawn(subscriber(o, format!("sub-{r}-{i}"), room, c, epoch, stop, j)));
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
            let (o, t, room, c) = (opts.clone(), token(&format!("load-sub-{r}-{i}")), room.clone(), counters.clone());
            subs.push(tokio::spawn(subscriber(o, t, room, c, epoch, stop, None)));
        }
        for i in 0..opts.publishers {
            let (o, t, room, c) = (opts.clone(), token(&format!("load-pub-{r}-{i}")), room.clone(), counters.clone());
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
    counters.window_until.store(until, Relaxed);
    counters.window_from.store(from, Relaxed);
    tokio::time::sleep_until((epoch + Duration::from_micros(from)).into()).await;
    let m0 = measure(&http, &opts).await?;
    let d0 = forward_delay_buckets(&http, &opts.url).await;
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
    let d1 = forward_delay_buckets(&http, &opts.url).await;
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
    let expected = sent * receivers as u64;
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
        "loss": if expected > 0 { ((1.0 - received as f64 / expected as f64).max(0.0) * 1e5).round() / 1e5 } else { 0.0 },
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

/// What the server's own call-quality analytics (SPEC 8) say about the
/// rooms while they run: the mean room score, the mean over subscriber
/// streams of the loss, the RTCP round trip and the TWCC round trip, and the
/// frame sizes the SFU read from the publishers' keyframes. A run
/// shorter than one report interval (5 s) has `null`s here.
async fn server_analytics(http: &reqwest::Client, url: &str, rooms: &[(String, String)]) -> Value {
    let mut scores = Vec::new();
    let (mut loss, mut rtt, mut twcc) = (Vec::new(), Vec::new(), Vec::new());
    let mut sizes = std::collections::BTreeSet::new();
    for (room, owner) in rooms {
        let Ok(resp) = http.get(format!("{url}/rooms/{room}/analytics")).bearer_auth(owner).send().await else {
            continue;
        };
        let Ok(v) = resp.json::<Value>().await else { continue };
        let a = &v["analytics"];
        scores.extend(a["quality"]["score"].as_f64());
        for p in a["participants"].as_array().into_iter().flatten() {
            let v = &p["publish"]["video"];
            if let (Some(w), Some(h)) = (v["frameWidth"].as_u64(), v["frameHeight"].as_u64()) {
                sizes.insert(format!("{w}x{h}"));
            }
            for kind in ["audio", "video"] {
                let s = &p["subscribe"][kind];
                loss.extend(s["packetLoss"].as_f64());
                rtt.extend(s["rttMs"].as_f64());
                twcc.extend(s["twccRttMs"].as_f64());
            }
        }
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| (v.iter().sum::<f64>() / v.len() as f64 * 1000.0).round() / 1000.0);
    json!({
        "roomScore": mean(&scores),
        "subscribeLoss": mean(&loss),
        "subscribeRttMs": mean(&rtt),
        "subscribeTwccRttMs": mean(&twcc),
        "publishFrameSizes": sizes,
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

    /// `--server-pid` reads this process's CPU and RSS like `ps` would.
    #[test]
    fn proc_usage_reads_cpu_and_rss() {
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let (cpu, rss, _) = super::proc_usage(std::process::id()).unwrap();
        assert!(cpu >= 0.03 && rss > 1e6, "cpu {cpu} s, rss {rss} B ({x})");
        assert!(super::proc_usage(u32::MAX).is_err(), "no such process");
    }
}
