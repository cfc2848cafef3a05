//! The SFU's socket loop. One thread owns the shared UDP socket and every
//! PeerConnection ("leg"); it feeds datagrams to the leg they belong to,
//! forwards what publishers send to their consumers as [`super::router`]
//! decides, runs the legs' timers, and drains what each leg wants to send.
//!
//! There is one engine per worker thread, each with its own socket; a room
//! lives on one of them (placed by [`MediaHandle`]), so its packets never
//! leave that thread, and nothing here takes a lock.
//!
//! Forwarded RTP does not go through the subscriber leg's webrtc-rs
//! pipeline: the engine rewrites, protects and queues each copy itself
//! ([`super::egress`]), answers subscribers' NACKs from the producer's
//! history and sends their sender reports.

use super::demux;
use super::egress;
use super::pc;
use super::router::{
    Consumer, History, KeyframeLimiter, LegId, LegReport, LevelMeter, Producer, Rewrite, Rtx, VIDEO_HISTORY,
};
use super::{Candidate, Command, MediaEvent, MediaHandle, PublishTrack, Role};
use crate::ids::{PeerId, RoomId, TrackId};
use crate::metrics::MediaMetrics;
use crate::model::TrackKind;
use bytes::BytesMut;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";

/// Minimum time between keyframe requests to one publisher track.
pub const KEYFRAME_INTERVAL: Duration = Duration::from_millis(300);
/// When a subscriber leg connects, keyframes are asked for at once and again
/// after these delays.
const KEYFRAME_FOLLOWUPS: [Duration; 2] = [Duration::from_millis(400), Duration::from_millis(1200)];
/// How often leg timers, deferred keyframe requests are checked.
const TICK: Duration = Duration::from_millis(10);
/// SPEC 8: analytics samples every 5 s.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);
/// SPEC 5: active speakers every 500 ms, on change.
const SPEAKERS_EVERY: Duration = Duration::from_millis(500);
/// `recvmmsg` batches read per wake-up before timers and commands get a turn.
const READ_BATCHES: usize = 4;
/// Packets one NACK can have sent again.
const MAX_RESENT_PER_NACK: usize = 64;
/// RTCP sender reports on subscriber legs, per forwarded stream.
const SENDER_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Start one engine per socket, each on its own thread (a worker). Each
/// socket is already bound; `public_ip`, when set, replaces the bound IP in
/// ICE candidates. Rooms are spread over the workers by [`MediaHandle`].
pub fn spawn(
    sockets: Vec<std::net::UdpSocket>,
    public_ip: Option<std::net::IpAddr>,
    metrics: MediaMetrics,
) -> std::io::Result<(MediaHandle, mpsc::UnboundedReceiver<MediaEvent>, Vec<std::thread::JoinHandle<()>>)> {
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    let mut threads = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let local = socket.local_addr()?;
        let advertised = SocketAddr::new(public_ip.unwrap_or(local.ip()), local.port());
        socket.set_nonblocking(true)?;
        grow_buffers(&socket);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ev_tx, metrics) = (ev_tx.clone(), metrics.clone());
        let thread = std::thread::Builder::new().name(format!("confer-media-{i}")).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(error = %e, "media engine: cannot start its runtime"),
            };
            rt.block_on(async move {
                let socket = match UdpSocket::from_std(socket) {
                    Ok(s) => s,
                    Err(e) => return tracing::error!(error = %e, "media engine: cannot register the UDP socket"),
                };
                Engine::new(local, advertised, ev_tx, metrics, Arc::new(socket)).run(rx).await;
            });
        })?;
        workers.push((tx, local));
        threads.push(thread);
    }
    Ok((MediaHandle::new(workers), ev_rx, threads))
}

/// Bursts (a keyframe to many subscribers, many publishers at once) must not
/// overflow the kernel's default socket buffers; best effort.
fn grow_buffers(socket: &std::net::UdpSocket) {
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        if !super::udp::set_socket_option(socket, opt, 4 << 20) {
            tracing::debug!(opt, "media: could not grow a socket buffer");
        }
    }
}

/// Readable numbers in the API: loss to 4 decimals, the rest to 2.
fn round(s: &mut crate::analytics::report::StreamReport) {
    let r = |x: f64, d: f64| (x * d).round() / d;
    s.packet_loss = r(s.packet_loss, 1e4);
    s.interval_loss = r(s.interval_loss, 1e4);
    s.jitter_ms = r(s.jitter_ms, 100.0);
    s.bitrate_kbps = r(s.bitrate_kbps, 100.0);
    s.rtt_ms = s.rtt_ms.map(|x| r(x, 100.0));
    s.twcc_rtt_ms = s.twcc_rtt_ms.map(|x| r(x, 100.0));
    s.frame_rate = s.frame_rate.map(|x| r(x, 100.0));
}

/// One RTCP reception report block about a forwarded track.
fn apply_report(rep: &mut LegReport, r: &rtcp::reception_report::ReceptionReport, clock: f64) {
    use crate::analytics::rtt;
    rep.fraction_lost = f64::from(r.fraction_lost) / 256.0;
    // Cumulative loss is a 24-bit signed number (duplicates can make it negative).
    let lost = r.total_lost & 0x00FF_FFFF;
    rep.packets_lost = if lost & 0x0080_0000 != 0 { i64::from(lost) - (1 << 24) } else { i64::from(lost) };
    rep.jitter_ms = f64::from(r.jitter) * 1000.0 / clock;
    let arrival = rtt::compact(rtt::ntp64(std::time::SystemTime::now()));
    if let Some(d) = rtt::rtt_from_report(arrival, r.last_sender_report, r.delay) {
        rep.rtt_ms = Some(d.as_secs_f64() * 1000.0);
    }
}

struct Leg {
    pc: RTCPeerConnection,
    peer: PeerId,
    role: Role,
    ufrag: String,
    addrs: Vec<SocketAddr>,
    /// Publisher legs: the remote track id webrtc-rs reports → our track.
    remote: HashMap<String, TrackId>,
    /// DTLS is up: SRTP can be written (writes before that are lost).
    connected: bool,
    /// TWCC round trips and NACKs sent, seen by the leg's interceptor.
    observed: Arc<super::observe::Observed>,
    /// Subscriber legs: where and how the engine writes to it directly.
    out: egress::LegOut,
}

/// A participant as the media plane sees it.
struct Peer {
    room: RoomId,
    publisher: Option<LegId>,
    subscriber: Option<LegId>,
    /// Announced in `publish-offer`, by mid.
    announced: HashMap<String, PublishTrack>,
    /// Subscriber leg: our senders, by the producer they carry.
    senders: HashMap<TrackId, (RTCRtpSenderId, u32)>,
    awaiting_answer: bool,
    renegotiate: bool,
    /// A subscriber offer went out already (the candidate is trickled once).
    offered: bool,
    /// The tracks the outstanding subscriber offer carries: only these become
    /// consumers when it is answered (a track added meanwhile waits for the
    /// next offer, or it would be forwarded with parameters not yet agreed).
    in_offer: Vec<TrackId>,
}

/// What the engine keeps about a producer beyond the pure router state.
struct Source {
    codec: RTCRtpCodec,
    receiver: RTCRtpReceiverId,
    /// Header extensions the publisher negotiated: (uri, id).
    extensions: Vec<(String, u8)>,
}

struct Engine {
    local: SocketAddr,
    advertised: SocketAddr,
    events: mpsc::UnboundedSender<MediaEvent>,
    metrics: MediaMetrics,
    legs: HashMap<LegId, Leg>,
    next_leg: LegId,
    by_addr: HashMap<SocketAddr, LegId>,
    by_ufrag: HashMap<String, LegId>,
    peers: HashMap<PeerId, Peer>,
    rooms: HashMap<RoomId, Vec<PeerId>>,
    producers: HashMap<TrackId, Producer>,
    sources: HashMap<TrackId, Source>,
    speakers: HashMap<RoomId, Vec<PeerId>>,
    dirty: Vec<LegId>,
    /// Publisher leg and SSRC → producer, for statistics at the socket.
    by_ssrc: HashMap<(LegId, u32), TrackId>,
    /// Monotonic origin of the arrival times fed to the statistics.
    epoch: Instant,
    /// Reused by `drain_reads`.
    reads: Vec<TaggedRTCMessage>,
    /// Repeated keyframe requests for new subscribers: (when, track).
    followups: Vec<(Instant, TrackId)>,
    /// Goodbyes (DTLS close) of legs already removed.
    closing: Vec<(Vec<u8>, SocketAddr)>,
    /// What `flush` sends, `sendmmsg` at a time.
    out: super::udp::SendBatch,
    socket: Arc<UdpSocket>,
    /// Reused buffers for forwarded copies.
    writer: egress::Writer,
    next_sender_reports: Instant,
}

impl Engine {
    fn new(
        local: SocketAddr,
        advertised: SocketAddr,
        events: mpsc::UnboundedSender<MediaEvent>,
        metrics: MediaMetrics,
        socket: Arc<UdpSocket>,
    ) -> Self {
        Self {
            socket,
            writer: egress::Writer::default(),
            next_sender_reports: Instant::now() + SENDER_REPORT_EVERY,
            local,
            advertised,
            events,
            metrics,
            legs: HashMap::new(),
            next_leg: 0,
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            peers: HashMap::new(),
            rooms: HashMap::new(),
            producers: HashMap::new(),
            sources: HashMap::new(),
            speakers: HashMap::new(),
            dirty: Vec::new(),
            closing: Vec::new(),
            out: Default::default(),
            followups: Vec::new(),
            reads: Vec::new(),
            by_ssrc: HashMap::new(),
            epoch: Instant::now(),
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let socket = self.socket.clone();
        let mut rx = super::udp::RecvBatch::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_speakers = Instant::now() + SPEAKERS_EVERY;
        let mut last_report = Instant::now();
        // When the current batch of datagrams was read.
        let mut read_at: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(cmd) => self.command(cmd),
                },
                r = socket.readable() => {
                    if r.is_ok() {
                        for _ in 0..READ_BATCHES {
                            if rx.recv(&socket).is_err() {
                                break;
                            }
                            read_at.get_or_insert_with(Instant::now);
                            for (data, from) in rx.iter() {
                                self.datagram(data, from);
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.timers(now);
                    if now >= next_speakers {
                        next_speakers = now + SPEAKERS_EVERY;
                        self.active_speakers();
                    }
                    if now.duration_since(last_report) >= REPORT_EVERY {
                        let secs = now.duration_since(last_report).as_secs_f64();
                        last_report = now;
                        self.report(secs);
                    }
                }
            }
            self.flush();
            if let Some(t) = read_at.take() {
                self.metrics.forward_delay.observe(t.elapsed().as_secs_f64());
            }
        }
        let peers: Vec<PeerId> = self.peers.keys().cloned().collect();
        for p in peers {
            self.leave(&p);
        }
        self.flush();
        tracing::debug!("media engine stopped");
    }

    // ---- input -------------------------------------------------------------

    fn datagram(&mut self, data: &[u8], from: SocketAddr) {
        let leg = match self.by_addr.get(&from) {
            Some(&l) => l,
            None => {
                let Some(&l) = demux::binding_ufrag(data).and_then(|u| self.by_ufrag.get(u)) else {
                    tracing::trace!(%from, len = data.len(), "media: datagram from an unknown address dropped");
                    self.metrics.datagrams_dropped.inc();
                    return;
                };
                tracing::debug!(%from, leg = l, "media: new remote address");
                self.by_addr.insert(from, l);
                if let Some(leg) = self.legs.get_mut(&l) {
                    leg.addrs.push(from);
                }
                l
            }
        };
        let now = Instant::now();
        // RTP headers travel in the clear under SRTP: count what arrives,
        // before any NACK recovery, for the publisher's statistics.
        if data.len() >= 12 && data[0] >> 6 == 2 && !(192..=223).contains(&data[1]) {
            let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
            if let Some(p) = self.by_ssrc.get(&(leg, ssrc)).and_then(|t| self.producers.get_mut(t)) {
                let seq = u16::from_be_bytes([data[2], data[3]]);
                let ts = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
                let arrival = now.duration_since(self.epoch).as_secs_f64();
                p.stats.on_packet(seq, ts, arrival, data.len(), data[1] & 0x80 != 0);
            }
        }
        let Some(l) = self.legs.get_mut(&leg) else { return };
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if let Err(e) = l.pc.handle_read(msg) {
            self.metrics.datagrams_dropped.inc();
            tracing::trace!(error = %e, %from, "media: datagram rejected");
        }
        self.dirty.push(leg);
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Join { room, peer } => {
                self.rooms.entry(room.clone()).or_default().push(peer.clone());
                self.peers.insert(
                    peer.clone(),
                    Peer {
                        room: room.clone(),
                        publisher: None,
                        subscriber: None,
                        announced: HashMap::new(),
                        senders: HashMap::new(),
                        awaiting_answer: false,
                        renegotiate: false,
                        offered: false,
                        in_offer: Vec::new(),
                    },
                );
                // A late joiner gets everything already published.
                // Video first: aiortc fails to route video on a bundle whose
                // first m-section is audio (seen as a late joiner never decoding).
                let mut existing: Vec<(bool, TrackId)> = self
                    .producers
                    .values()
                    .filter(|p| self.room_of(&p.peer) == Some(&room))
                    .map(|p| (p.kind == TrackKind::Audio, p.id.clone()))
                    .collect();
                existing.sort();
                let existing: Vec<TrackId> = existing.into_iter().map(|(_, t)| t).collect();
                for t in existing {
                    self.add_sender(&peer, &t);
                }
                self.renegotiate(&peer);
            }
            Command::Publish { peer, sdp, tracks } => self.publish(&peer, sdp, tracks),
            Command::SubscribeAnswer { peer, sdp } => self.subscribe_answer(&peer, sdp),
            Command::Candidate { peer, role, candidate } => self.candidate(&peer, role, candidate),
            Command::Mute { peer, track, muted } => {
                if self.producers.get(&track).is_some_and(|p| p.peer == peer) {
                    self.set_muted(&track, muted);
                }
            }
            Command::MuteKind { peer, kind, muted } => {
                let ids: Vec<TrackId> = self
                    .producers
                    .values()
                    .filter(|p| p.peer == peer && p.kind == kind)
                    .map(|p| p.id.clone())
                    .collect();
                for t in ids {
                    self.set_muted(&t, muted);
                }
            }
            Command::Subscribe { peer, track, subscribe } => {
                let now = Instant::now();
                if let Some(p) = self.producers.get_mut(&track) {
                    for c in p.consumers.iter_mut().filter(|c| c.peer == peer) {
                        c.paused = !subscribe;
                        c.seq.skip();
                    }
                    if subscribe {
                        self.keyframe(&track, now);
                    }
                }
            }
            Command::Unpublish { peer, tracks } => {
                for t in tracks {
                    if self.producers.get(&t).is_some_and(|p| p.peer == peer) {
                        self.remove_producer(&t);
                    }
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.announced.retain(|_, a| a.id != t);
                    }
                }
            }
            Command::Leave { peer } => self.leave(&peer),
            Command::Shutdown => {}
        }
    }

    fn error(&self, peer: &PeerId, code: &'static str, message: String) {
        let _ = self.events.send(MediaEvent::Error { peer: peer.clone(), code, message });
    }

    fn room_of(&self, peer: &PeerId) -> Option<&RoomId> {
        self.peers.get(peer).map(|p| &p.room)
    }

    fn new_leg(&mut self, peer: &PeerId, role: Role) -> Result<LegId, pc::Error> {
        let (ufrag, pwd) = pc::credentials();
        let (conn, observed) = pc::build(role, &ufrag, &pwd, self.advertised, None, Instant::now())?;
        let id = self.next_leg;
        self.next_leg = self.next_leg.wrapping_add(1);
        self.by_ufrag.insert(ufrag.clone(), id);
        self.legs.insert(
            id,
            Leg {
                pc: conn,
                peer: peer.clone(),
                role,
                ufrag,
                addrs: Vec::new(),
                remote: HashMap::new(),
                connected: false,
                observed,
                out: egress::LegOut::default(),
            },
        );
        self.metrics.peer_connections.inc();
        Ok(id)
    }

    fn close_leg(&mut self, id: LegId, socket_out: &mut Vec<(Vec<u8>, SocketAddr)>) {
        let Some(mut leg) = self.legs.remove(&id) else { return };
        let _ = leg.pc.close();
        while let Some(out) = leg.pc.poll_write() {
            socket_out.push((out.message.to_vec(), out.transport.peer_addr));
        }
        self.by_ufrag.remove(&leg.ufrag);
        for a in &leg.addrs {
            self.by_addr.remove(a);
        }
        self.metrics.peer_connections.dec();
    }

    fn publish(&mut self, peer_id: &PeerId, sdp: String, tracks: Vec<PublishTrack>) {
        let Some(peer) = self.peers.get(peer_id) else {
            return self.error(peer_id, "bad-request", "publish-offer: join the room first".into());
        };
        let leg_id = match peer.publisher {
            Some(l) => l,
            None => match self.new_leg(peer_id, Role::Publisher) {
                Ok(l) => {
                    self.peers.get_mut(peer_id).expect("checked").publisher = Some(l);
                    l
                }
                Err(e) => return self.error(peer_id, "internal", format!("cannot create a PeerConnection: {e}")),
            },
        };
        let peer = self.peers.get_mut(peer_id).expect("checked");
        for t in tracks {
            peer.announced.insert(t.mid.clone(), t);
        }
        let leg = self.legs.get_mut(&leg_id).expect("publisher leg exists");
        let now = Instant::now();
        let answer = RTCSessionDescription::offer(sdp)
            .and_then(|offer| leg.pc.set_remote_description(now, offer))
            .and_then(|()| leg.pc.create_answer(None))
            .and_then(|answer| leg.pc.set_local_description(now, answer.clone()).map(|()| answer));
        match answer {
            Ok(a) => {
                let sdp = super::sdp::candidates_everywhere(&a.sdp);
                let _ = self.events.send(MediaEvent::PublishAnswer { peer: peer_id.clone(), sdp: sdp.clone() });
                self.trickle(peer_id, Role::Publisher, &sdp);
            }
            Err(e) => self.error(peer_id, "bad-request", format!("sdp: not a usable offer: {e}")),
        }
        self.dirty.push(leg_id);
    }

    fn subscribe_answer(&mut self, peer_id: &PeerId, sdp: String) {
        let Some(peer) = self.peers.get_mut(peer_id) else { return };
        let (Some(leg_id), true) = (peer.subscriber, peer.awaiting_answer) else {
            return self.error(
                peer_id,
                "conflict",
                "subscribe-answer: no subscribe-offer is waiting for an answer".into(),
            );
        };
        let leg = self.legs.get_mut(&leg_id).expect("subscriber leg exists");
        let applied = RTCSessionDescription::answer(sdp).and_then(|a| leg.pc.set_remote_description(Instant::now(), a));
        if let Err(e) = applied {
            return self.error(peer_id, "bad-request", format!("sdp: not a usable answer: {e}"));
        }
        peer.awaiting_answer = false;
        self.dirty.push(leg_id);
        // Every negotiated sender becomes a consumer of its producer.
        let senders: Vec<(TrackId, RTCRtpSenderId, u32)> = peer
            .senders
            .iter()
            .filter(|(t, _)| peer.in_offer.contains(t))
            .map(|(t, (s, ssrc))| (t.clone(), *s, *ssrc))
            .collect();
        let now = Instant::now();
        for (track, sender, ssrc) in senders {
            let Some(prod) = self.producers.get(&track) else { continue };
            if prod.consumers.iter().any(|c| &c.peer == peer_id) {
                continue;
            }
            let pub_pts = self.publisher_payload_types(&track);
            let Some(src) = self.sources.get(&track) else { continue };
            let leg = self.legs.get_mut(&leg_id).expect("subscriber leg exists");
            let Some(mut s) = leg.pc.rtp_sender(sender) else { continue };
            let send_params = s.get_parameters();
            let rtx_ssrc =
                send_params.encodings.iter().find_map(|e| e.rtp_coding_parameters.rtx.as_ref()).map(|r| r.ssrc);
            let params = send_params.rtp_parameters.clone();
            let payload_types: Vec<(u8, u8)> = pub_pts
                .iter()
                .filter_map(|(pt, mime)| {
                    params
                        .codecs
                        .iter()
                        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
                        .map(|c| (*pt, c.payload_type))
                })
                .collect();
            let extensions: Vec<(u8, u8)> = src
                .extensions
                .iter()
                // mid and rid name the publisher's m-line and layers; they
                // mean nothing (or something else) on the subscriber's leg.
                // Transport-wide numbers are per hop: the leg writes its own.
                .filter(|(uri, _)| {
                    !uri.starts_with("urn:ietf:params:rtp-hdrext:sdes:") && uri != super::observe::TRANSPORT_CC_URI
                })
                .filter_map(|(uri, id)| {
                    params.header_extensions.iter().find(|h| &h.uri == uri).map(|h| (*id, h.id as u8))
                })
                .collect();
            let mid_ext = params.header_extensions.iter().find(|h| h.uri == MID_URI).map(|h| h.id as u8);
            let transport_cc = params
                .header_extensions
                .iter()
                .find(|h| h.uri == super::observe::TRANSPORT_CC_URI && h.id != 0)
                .map(|h| h.id as u8);
            // RFC 4588: the sender's RTX SSRC and, per media type, its RTX type.
            let rtx = rtx_ssrc.map(|ssrc| Rtx {
                ssrc,
                payload_types: params
                    .codecs
                    .iter()
                    .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/rtx"))
                    .filter_map(|c| {
                        let apt = c.rtp_codec.sdp_fmtp_line.split(';').find_map(|p| p.trim().strip_prefix("apt="))?;
                        Some((apt.trim().parse().ok()?, c.payload_type))
                    })
                    .collect(),
            });
            let leg = self.legs.get_mut(&leg_id).expect("subscriber leg exists");
            let ids: Vec<_> = leg.pc.get_transceivers().collect();
            let mid = ids.into_iter().find_map(|t| {
                let tr = leg.pc.rtp_transceiver(t)?;
                (tr.sender() == Some(sender)).then(|| tr.mid().clone()).flatten()
            });
            let mid = mid_ext.zip(mid.map(bytes::Bytes::from));
            let prod = self.producers.get_mut(&track).expect("checked");
            tracing::debug!(peer = %peer_id, %track, ?payload_types, ?extensions, "media: consumer added");
            prod.consumers.push(Consumer {
                leg: leg_id,
                peer: peer_id.clone(),
                track: track.to_string(),
                rewrite: Rewrite { ssrc, payload_types, extensions, mid, transport_cc, rtx },
                paused: false,
                seq: Default::default(),
                report: Default::default(),
                last_sent: None,
                rtx_seq: rand::random(),
            });
            if prod.kind == TrackKind::Video {
                self.keyframe(&track, now);
                for after in KEYFRAME_FOLLOWUPS {
                    self.followups.push((now + after, track.clone()));
                }
            }
        }
        if self.peers.get(peer_id).is_some_and(|p| p.renegotiate) {
            self.renegotiate(peer_id);
        }
    }

    /// Trickle the server's candidate after the description that carries it,
    /// for clients that only read trickled ones (SPEC 4: both ways).
    fn trickle(&self, peer: &PeerId, role: Role, sdp: &str) {
        let mid = sdp.lines().find_map(|l| l.strip_prefix("a=mid:")).map(str::to_owned);
        for line in sdp.lines().filter_map(|l| l.strip_prefix("a=")).filter(|l| l.starts_with("candidate:")) {
            // Component 1 only: every m-section is rtcp-muxed.
            if line.split_whitespace().nth(1) != Some("1") {
                continue;
            }
            let ev =
                MediaEvent::LocalCandidate { peer: peer.clone(), role, candidate: line.to_owned(), mid: mid.clone() };
            let _ = self.events.send(ev);
            break;
        }
    }

    /// The publisher's payload types for a producer's codec: (pt, mime).
    fn publisher_payload_types(&mut self, track: &TrackId) -> Vec<(u8, String)> {
        let (Some(prod), Some(src)) = (self.producers.get(track), self.sources.get(track)) else { return Vec::new() };
        let Some(leg) = self.legs.get_mut(&prod.leg) else { return Vec::new() };
        let Some(mut r) = leg.pc.rtp_receiver(src.receiver) else { return Vec::new() };
        r.get_parameters()
            .rtp_parameters
            .codecs
            .iter()
            .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&src.codec.mime_type))
            .map(|c| (c.payload_type, c.rtp_codec.mime_type.clone()))
            .collect()
    }

    fn candidate(&mut self, peer_id: &PeerId, role: Role, c: Candidate) {
        let Some(peer) = self.peers.get(peer_id) else { return };
        let leg = match role {
            Role::Publisher => peer.publisher,
            Role::Subscriber => peer.subscriber,
        };
        let Some(leg) = leg.and_then(|l| self.legs.get_mut(&l)) else { return };
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_m_line_index,
            username_fragment: c.username_fragment,
            ..Default::default()
        };
        // ICE-lite never checks remote candidates; an unparsable one is harmless.
        if let Err(e) = leg.pc.add_remote_candidate(init) {
            tracing::debug!(error = %e, peer = %peer_id, "media: remote candidate ignored");
        }
    }

    /// Send (or re-send) the subscriber offer, unless one is still unanswered.
    fn renegotiate(&mut self, peer_id: &PeerId) {
        let Some(peer) = self.peers.get_mut(peer_id) else { return };
        if peer.awaiting_answer {
            peer.renegotiate = true;
            return;
        }
        peer.renegotiate = false;
        let Some(leg_id) = peer.subscriber else { return };
        let leg = self.legs.get_mut(&leg_id).expect("subscriber leg exists");
        let now = Instant::now();
        let offer = leg.pc.create_offer(None).and_then(|o| leg.pc.set_local_description(now, o.clone()).map(|()| o));
        match offer {
            Ok(o) => {
                peer.awaiting_answer = true;
                peer.in_offer = peer.senders.keys().cloned().collect();
                let first = !std::mem::replace(&mut peer.offered, true);
                let sdp = super::sdp::candidates_everywhere(&o.sdp);
                let _ = self.events.send(MediaEvent::SubscribeOffer { peer: peer_id.clone(), sdp: sdp.clone() });
                if first {
                    self.trickle(peer_id, Role::Subscriber, &sdp);
                }
            }
            Err(e) => tracing::warn!(error = %e, peer = %peer_id, "media: cannot create a subscriber offer"),
        }
        self.dirty.push(leg_id);
    }

    /// Add a producer to a subscriber's leg (created on first use). The
    /// caller renegotiates.
    fn add_sender(&mut self, peer_id: &PeerId, track: &TrackId) {
        let (Some(prod), Some(src)) = (self.producers.get(track), self.sources.get(track)) else { return };
        if &prod.peer == peer_id {
            return;
        }
        let Some(peer) = self.peers.get(peer_id) else { return };
        if peer.senders.contains_key(track) {
            return;
        }
        let kind = match prod.kind {
            TrackKind::Audio => RtpCodecKind::Audio,
            TrackKind::Video => RtpCodecKind::Video,
        };
        let stream = prod.peer.to_string();
        let codec = src.codec.clone();
        let leg_id = match peer.subscriber {
            Some(l) => l,
            None => match self.new_leg(peer_id, Role::Subscriber) {
                Ok(l) => {
                    self.peers.get_mut(peer_id).expect("checked").subscriber = Some(l);
                    l
                }
                Err(e) => return tracing::warn!(error = %e, "media: cannot create a subscriber PeerConnection"),
            },
        };
        let ssrc = rand::random::<u32>();
        let t = MediaStreamTrack::new(
            stream,
            track.to_string(),
            track.to_string(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec,
                ..Default::default()
            }],
        );
        let leg = self.legs.get_mut(&leg_id).expect("subscriber leg exists");
        match leg.pc.add_track(t) {
            Ok(sender) => {
                self.peers.get_mut(peer_id).expect("checked").senders.insert(track.clone(), (sender, ssrc));
            }
            Err(e) => tracing::warn!(error = %e, %track, "media: cannot add a track to a subscriber"),
        }
    }

    fn remove_producer(&mut self, track: &TrackId) {
        let Some(prod) = self.producers.remove(track) else { return };
        self.sources.remove(track);
        self.by_ssrc.retain(|_, t| t != track);
        self.metrics.tracks_published(prod.kind).dec();
        if let Some(leg) = self.legs.get_mut(&prod.leg) {
            leg.remote.retain(|_, t| t != track);
        }
        let subscribers: Vec<PeerId> =
            self.peers.iter().filter(|(_, p)| p.senders.contains_key(track)).map(|(id, _)| id.clone()).collect();
        for s in subscribers {
            let peer = self.peers.get_mut(&s).expect("listed");
            let (sender, _) = peer.senders.remove(track).expect("listed");
            if let Some(leg) = peer.subscriber.and_then(|l| self.legs.get_mut(&l)) {
                if let Err(e) = leg.pc.remove_track(sender) {
                    tracing::debug!(error = %e, "media: remove_track");
                }
            }
            self.renegotiate(&s);
        }
    }

    fn leave(&mut self, peer_id: &PeerId) {
        let Some(peer) = self.peers.remove(peer_id) else { return };
        if let Some(list) = self.rooms.get_mut(&peer.room) {
            list.retain(|p| p != peer_id);
            if list.is_empty() {
                self.rooms.remove(&peer.room);
                self.speakers.remove(&peer.room);
            }
        }
        let own: Vec<TrackId> = self.producers.values().filter(|p| &p.peer == peer_id).map(|p| p.id.clone()).collect();
        for t in own {
            self.remove_producer(&t);
        }
        for p in self.producers.values_mut() {
            p.consumers.retain(|c| &c.peer != peer_id);
        }
        let mut out = Vec::new();
        for l in [peer.publisher, peer.subscriber].into_iter().flatten() {
            self.close_leg(l, &mut out);
        }
        self.closing.extend(out);
    }

    fn set_muted(&mut self, track: &TrackId, muted: bool) {
        let Some(p) = self.producers.get_mut(track) else { return };
        let was = p.muted;
        p.muted = muted;
        for c in &mut p.consumers {
            c.seq.skip();
        }
        // Unmuting video asks for a keyframe so it resumes at once (SPEC 12).
        if was && !muted && p.kind == TrackKind::Video {
            self.keyframe(track, Instant::now());
        }
    }

    /// Ask a publisher for a keyframe, within the rate limit.
    fn keyframe(&mut self, track: &TrackId, now: Instant) {
        let Some(p) = self.producers.get_mut(track) else { return };
        if p.kind == TrackKind::Video && p.keyframes.request(now) {
            self.send_pli(track, now);
        }
    }

    fn send_pli(&mut self, track: &TrackId, now: Instant) {
        let (Some(p), Some(src)) = (self.producers.get_mut(track), self.sources.get(track)) else { return };
        let Some(leg) = self.legs.get_mut(&p.leg) else { return };
        let pli = rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: p.media_ssrc,
        };
        if let Some(mut r) = leg.pc.rtp_receiver(src.receiver) {
            if r.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
                tracing::trace!(%track, ssrc = p.media_ssrc, "media: PLI to the publisher");
                self.metrics.pli.inc();
                p.stats.plis += 1;
            }
        }
        self.dirty.push(p.leg);
    }

    // ---- timers ------------------------------------------------------------

    fn timers(&mut self, now: Instant) {
        if now >= self.next_sender_reports {
            self.next_sender_reports = now + SENDER_REPORT_EVERY;
            self.sender_reports(now);
        }
        for (id, leg) in self.legs.iter_mut() {
            if leg.pc.poll_timeout().is_some_and(|t| t <= now) {
                let _ = leg.pc.handle_timeout(now);
                self.dirty.push(*id);
            }
        }
        let mut i = 0;
        while i < self.followups.len() {
            if self.followups[i].0 <= now {
                let (_, t) = self.followups.swap_remove(i);
                self.keyframe(&t, now);
            } else {
                i += 1;
            }
        }
        let due: Vec<TrackId> =
            self.producers.values_mut().filter_map(|p| p.keyframes.due(now).then(|| p.id.clone())).collect();
        for t in due {
            self.send_pli(&t, now);
        }
    }

    fn active_speakers(&mut self) {
        let mut by_room: HashMap<RoomId, Vec<(PeerId, f64)>> = HashMap::new();
        for p in self.producers.values_mut() {
            if p.kind != TrackKind::Audio {
                continue;
            }
            let level = p.level.take();
            let Some(room) = self.peers.get(&p.peer).map(|x| x.room.clone()) else { continue };
            let list = by_room.entry(room).or_default();
            if let (Some(l), false) = (level, p.muted) {
                list.push((p.peer.clone(), l));
            }
        }
        for (room, mut speakers) in by_room {
            speakers.sort_by(|a, b| b.1.total_cmp(&a.1));
            speakers.dedup_by(|a, b| a.0 == b.0);
            let ids: Vec<PeerId> = speakers.iter().map(|s| s.0.clone()).collect();
            let last = self.speakers.entry(room.clone()).or_default();
            if *last != ids {
                *last = ids;
                let _ = self.events.send(MediaEvent::ActiveSpeakers { room, speakers });
            }
        }
    }

    /// Close an analytics interval: one [`MediaEvent::Stats`] per room.
    fn report(&mut self, secs: f64) {
        use crate::analytics::report::{Directional, StreamReport};
        use crate::model::TrackSource;
        let mut publish: HashMap<PeerId, Directional> = HashMap::new();
        let mut subscribe: HashMap<PeerId, (Directional, [u32; 2])> = HashMap::new();
        // RTT is only measured on subscriber legs (the SFU sends SRs and
        // transport-wide numbers there): from their receiver reports, and
        // from their TWCC feedback where they send it.
        let twcc: HashMap<LegId, f64> =
            self.legs.iter().filter_map(|(&id, l)| Some((id, l.observed.take_rtt()?.as_secs_f64() * 1000.0))).collect();
        let mut rtt: HashMap<PeerId, f64> = HashMap::new();
        for p in self.producers.values() {
            for c in &p.consumers {
                if let Some(r) = c.report.rtt_ms.or_else(|| twcc.get(&c.leg).copied()) {
                    rtt.insert(c.peer.clone(), r);
                }
            }
        }
        for p in self.producers.values_mut() {
            let iv = p.stats.take_interval(secs);
            let video = p.kind == TrackKind::Video;
            let primary = matches!(p.source, TrackSource::Camera | TrackSource::Microphone);
            let dir = publish.entry(p.peer.clone()).or_default();
            let slot = if video { &mut dir.video } else { &mut dir.audio };
            if primary || slot.is_none() {
                *slot = Some(StreamReport {
                    packets: p.stats.received(),
                    bytes: p.stats.bytes(),
                    packets_lost: p.stats.lost() as i64,
                    packet_loss: p.stats.loss(),
                    jitter_ms: p.stats.jitter_ms(),
                    rtt_ms: rtt.get(&p.peer).copied(),
                    bitrate_kbps: iv.bitrate_kbps,
                    nack_count: self.legs.get(&p.leg).map_or(0, |l| l.observed.nacks_sent(p.media_ssrc)),
                    pli_count: p.stats.plis,
                    fir_count: p.stats.firs,
                    frame_rate: video.then_some(iv.frame_rate),
                    frame_width: p.frame_size.map(|(w, _)| u32::from(w)),
                    frame_height: p.frame_size.map(|(_, h)| u32::from(h)),
                    interval_loss: iv.loss,
                    ..Default::default()
                });
            }
            for c in p.consumers.iter_mut() {
                let (dir, n) = subscribe.entry(c.peer.clone()).or_default();
                let slot = if video { &mut dir.video } else { &mut dir.audio };
                let s = slot.get_or_insert_with(StreamReport::default);
                let r = &mut c.report;
                s.packets += r.packets;
                s.bytes += r.bytes;
                s.packets_lost += r.packets_lost;
                s.bitrate_kbps += (r.bytes - r.bytes_at_last_interval) as f64 * 8.0 / 1000.0 / secs.max(0.001);
                r.bytes_at_last_interval = r.bytes;
                // Means over the tracks of this kind, fixed below.
                s.interval_loss += r.fraction_lost;
                s.jitter_ms = s.jitter_ms.max(r.jitter_ms);
                s.rtt_ms = r.rtt_ms.or(s.rtt_ms);
                if let Some(&t) = twcc.get(&c.leg) {
                    s.twcc_rtt_ms = Some(t);
                    s.rtt_ms = s.rtt_ms.or(Some(t));
                }
                s.nack_count += r.nacks;
                s.pli_count += r.plis;
                s.fir_count += r.firs;
                n[usize::from(video)] += 1;
            }
        }
        let mut by_room: HashMap<RoomId, Vec<super::PeerReport>> = HashMap::new();
        for (peer, p) in &self.peers {
            let mut publish = publish.remove(peer).unwrap_or_default();
            for s in [&mut publish.audio, &mut publish.video].into_iter().flatten() {
                round(s);
            }
            let subscribe = match subscribe.remove(peer) {
                Some((mut d, n)) => {
                    for (slot, count) in [(&mut d.audio, n[0]), (&mut d.video, n[1])] {
                        if let Some(s) = slot {
                            s.interval_loss /= f64::from(count.max(1));
                            s.packet_loss = s.interval_loss;
                            round(s);
                        }
                    }
                    d
                }
                None => Directional::default(),
            };
            by_room.entry(p.room.clone()).or_default().push(super::PeerReport {
                peer: peer.clone(),
                publish,
                subscribe,
            });
        }
        for (room, peers) in by_room {
            let _ = self.events.send(MediaEvent::Stats { room, peers });
        }
    }

    // ---- output ------------------------------------------------------------

    /// Drain every leg that may have something to say, until none has, and
    /// send what is queued. Forwarding happens in here too (reading a
    /// publisher's packets queues their copies), so everything goes through
    /// the one batch.
    fn flush(&mut self) {
        let mut failed = 0;
        for (data, to) in self.closing.drain(..) {
            failed += self.out.push(&self.socket, &data, to);
        }
        while let Some(id) = self.dirty.pop() {
            if !self.legs.contains_key(&id) {
                continue;
            }
            self.drain_events(id);
            self.drain_reads(id);
            if let Some(leg) = self.legs.get_mut(&id) {
                while let Some(o) = leg.pc.poll_write() {
                    leg.out.on_transmit(&o.message, o.transport.peer_addr);
                    failed += self.out.push(&self.socket, &o.message, o.transport.peer_addr);
                }
            }
        }
        failed += self.out.flush(&self.socket);
        if failed > 0 {
            self.metrics.send_errors.inc_by(failed as u64);
        }
    }

    fn drain_events(&mut self, id: LegId) {
        let mut events = Vec::new();
        if let Some(leg) = self.legs.get_mut(&id) {
            while let Some(e) = leg.pc.poll_event() {
                events.push(e);
            }
        }
        for e in events {
            match e {
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    self.track_open(id, init.receiver_id, init.track_id, init.ssrc)
                }
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => {
                    let Some(leg) = self.legs.get_mut(&id) else { continue };
                    tracing::debug!(peer = %leg.peer, role = ?leg.role, state = %s, "media: connection state");
                    match s {
                        RTCPeerConnectionState::Connected if !leg.connected => {
                            leg.connected = true;
                            if leg.role == Role::Subscriber {
                                // Keyframes sent before DTLS was up were lost:
                                // ask again for everything this leg carries.
                                let wanted: Vec<TrackId> = self
                                    .producers
                                    .values()
                                    .filter(|p| p.consumers.iter().any(|c| c.leg == id))
                                    .map(|p| p.id.clone())
                                    .collect();
                                // The server finishes DTLS a moment before the
                                // client does, and a keyframe arriving in that
                                // moment is lost: ask again a little later too.
                                let now = Instant::now();
                                for t in wanted {
                                    self.keyframe(&t, now);
                                    for after in KEYFRAME_FOLLOWUPS {
                                        self.followups.push((now + after, t.clone()));
                                    }
                                }
                            }
                        }
                        RTCPeerConnectionState::Failed => {
                            let (peer, role) = (leg.peer.clone(), leg.role);
                            self.error(
                                &peer,
                                "internal",
                                format!("the {role:?} PeerConnection failed; rejoin the room"),
                            );
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }

    /// A publisher's track sent its first RTP: make it a producer.
    fn track_open(&mut self, leg_id: LegId, receiver: RTCRtpReceiverId, remote_track: String, ssrc: u32) {
        let Some(leg) = self.legs.get_mut(&leg_id) else { return };
        if leg.role != Role::Publisher {
            return;
        }
        let peer_id = leg.peer.clone();
        let mid = leg.pc.get_transceivers().collect::<Vec<_>>().into_iter().find_map(|t| {
            let tr = leg.pc.rtp_transceiver(t)?;
            (tr.receiver() == Some(receiver)).then(|| tr.mid().clone()).flatten()
        });
        let Some(announced) = mid.and_then(|m| self.peers.get(&peer_id)?.announced.get(&m).cloned()) else {
            tracing::debug!(peer = %peer_id, "media: a track that publish-offer did not list is ignored");
            return;
        };
        let Some(mut r) = leg.pc.rtp_receiver(receiver) else { return };
        let kind = match r.track().kind() {
            RtpCodecKind::Audio => TrackKind::Audio,
            _ => TrackKind::Video,
        };
        let Some(codec) = r.track().codec(ssrc).cloned() else { return };
        let clock_rate = codec.clock_rate;
        let extensions: Vec<(String, u8)> =
            r.get_parameters().rtp_parameters.header_extensions.iter().map(|h| (h.uri.clone(), h.id as u8)).collect();
        leg.remote.insert(remote_track, announced.id.clone());
        // webrtc-rs opens existing tracks again after a renegotiation.
        if let Some(p) = self.producers.get_mut(&announced.id) {
            p.media_ssrc = ssrc;
            self.by_ssrc.insert((leg_id, ssrc), announced.id.clone());
            return;
        }
        let audio_level_ext = extensions.iter().find(|(u, _)| u == pc::AUDIO_LEVEL_URI).map(|(_, id)| *id);
        self.producers.insert(
            announced.id.clone(),
            Producer {
                id: announced.id.clone(),
                peer: peer_id.clone(),
                kind,
                source: announced.source,
                leg: leg_id,
                media_ssrc: ssrc,
                muted: false,
                consumers: Vec::new(),
                keyframes: KeyframeLimiter::new(KEYFRAME_INTERVAL),
                audio_level_ext,
                level: LevelMeter::default(),
                stats: crate::analytics::stream::StreamStats::new(clock_rate),
                vp8: codec.mime_type.eq_ignore_ascii_case("video/VP8"),
                frame_size: None,
                history: History::new(if kind == TrackKind::Video { VIDEO_HISTORY } else { 0 }),
            },
        );
        self.by_ssrc.insert((leg_id, ssrc), announced.id.clone());
        self.sources.insert(announced.id.clone(), Source { codec, receiver, extensions });
        self.metrics.tracks_published(kind).inc();
        let _ =
            self.events.send(MediaEvent::TrackPublished { peer: peer_id.clone(), track: announced.id.clone(), kind });
        let Some(room) = self.room_of(&peer_id).cloned() else { return };
        let others: Vec<PeerId> =
            self.rooms.get(&room).into_iter().flatten().filter(|p| **p != peer_id).cloned().collect();
        for o in others {
            self.add_sender(&o, &announced.id);
            self.renegotiate(&o);
        }
    }

    fn drain_reads(&mut self, id: LegId) {
        let Some(leg) = self.legs.get_mut(&id) else { return };
        let role = leg.role;
        // One buffer for every drain: no allocation per packet here.
        let mut msgs = std::mem::take(&mut self.reads);
        while let Some(m) = leg.pc.poll_read() {
            msgs.push(m);
        }
        for TaggedRTCMessage { now, message } in msgs.drain(..) {
            match (role, message) {
                (Role::Publisher, RTCMessage::RtpPacket(track, pkt)) => self.forward(id, &track, pkt, now),
                (_, RTCMessage::RtcpPacket(track, pkts)) => self.rtcp(id, role, &track, &pkts, now),
                _ => {}
            }
        }
        self.reads = msgs;
    }

    fn forward(&mut self, leg_id: LegId, remote_track: &str, pkt: rtc::rtp::Packet, now: Instant) {
        let Some(track) = self.legs.get(&leg_id).and_then(|l| l.remote.get(remote_track)) else { return };
        let Some(p) = self.producers.get_mut(track) else { return };
        self.metrics.received(p.kind).inc();
        if let Some(ext) = p.audio_level_ext {
            if let Some(e) = pkt.header.extensions.iter().find(|e| e.id == ext) {
                p.level.on_extension(&e.payload);
            }
        }
        if !p.forwards(pkt.header.ssrc) {
            return;
        }
        if p.vp8 {
            if let Some(size) = super::router::vp8_keyframe_size(&pkt.payload) {
                p.frame_size = Some(size);
            }
        }
        let (forwarded, bytes) = (self.metrics.forwarded(p.kind), self.metrics.forwarded_bytes(p.kind));
        let mut failed = 0;
        for c in p.consumers.iter_mut().filter(|c| !c.paused) {
            let Some(leg) = self.legs.get_mut(&c.leg).filter(|l| l.connected) else {
                c.seq.skip();
                continue;
            };
            if !c.rewrite.accepts(pkt.header.payload_type) {
                continue;
            }
            let seq = c.seq.next(pkt.header.sequence_number);
            let Some(size) =
                write_copy(leg, &mut self.writer, c, &pkt, seq, None, now, &mut self.out, &self.socket, &mut failed)
            else {
                continue;
            };
            forwarded.inc();
            bytes.inc_by(size as u64);
            c.report.packets += 1;
            c.report.bytes += size as u64;
            c.last_sent = Some((pkt.header.timestamp, now));
        }
        if failed > 0 {
            self.metrics.send_errors.inc_by(failed as u64);
        }
        p.history.put(pkt);
    }

    /// Answer a subscriber's NACK from the producer's history: the packets
    /// it names are written to it again, with the numbers it knows them by.
    fn retransmit(
        &mut self,
        leg_id: LegId,
        track: &TrackId,
        nack: &rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack,
        now: Instant,
    ) {
        let Some(Producer { consumers, history, .. }) = self.producers.get_mut(track) else { return };
        let Some(c) = consumers.iter_mut().find(|c| c.leg == leg_id && c.rewrite.ssrc == nack.media_ssrc) else {
            return;
        };
        let Some(leg) = self.legs.get_mut(&leg_id).filter(|l| l.connected) else { return };
        let mut failed = 0;
        // A NACK names at most 17 packets per pair; how many pairs fit is up
        // to the sender, so what one NACK may cost is capped.
        for seq in nack.nacks.iter().flat_map(|pair| *pair).take(MAX_RESENT_PER_NACK) {
            let Some(pkt) = c.seq.original(seq).and_then(|s| history.get(s)) else { continue };
            let rtx = c.rewrite.rtx_for(pkt.header.payload_type).map(|(ssrc, pt)| {
                c.rtx_seq = c.rtx_seq.wrapping_add(1);
                (ssrc, pt, c.rtx_seq)
            });
            let (w, out, socket) = (&mut self.writer, &mut self.out, &self.socket);
            if write_copy(leg, w, c, pkt, seq, rtx, now, out, socket, &mut failed).is_some() {
                self.metrics.retransmitted.inc();
            }
        }
        if failed > 0 {
            self.metrics.send_errors.inc_by(failed as u64);
        }
    }

    /// Sender reports for every forwarded stream that has sent something.
    fn sender_reports(&mut self, now: Instant) {
        let wall = SystemTime::now();
        let mut failed = 0;
        for p in self.producers.values() {
            let clock = self.sources.get(&p.id).map_or(90_000, |s| s.codec.clock_rate.max(1));
            for c in &p.consumers {
                let Some(last) = c.last_sent else { continue };
                let Some(leg) = self.legs.get_mut(&c.leg).filter(|l| l.connected) else { continue };
                let (Some(remote), Some(ctx)) = (leg.out.remote, leg.pc.local_srtp_context()) else { continue };
                let octets = c.report.bytes.saturating_sub(12 * c.report.packets);
                let sr = egress::sender_report(c.rewrite.ssrc, clock, last, c.report.packets, octets, now, wall);
                match egress::protect_rtcp(ctx, &sr) {
                    Ok(data) => failed += self.out.push(&self.socket, &data, remote),
                    Err(e) => tracing::debug!(error = %e, "media: sender report not protected"),
                }
            }
        }
        if failed > 0 {
            self.metrics.send_errors.inc_by(failed as u64);
        }
    }

    fn rtcp(&mut self, leg: LegId, role: Role, track: &str, pkts: &[Box<dyn rtcp::packet::Packet>], now: Instant) {
        use rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
        use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        use rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
        let mut wants_keyframe = false;
        for p in pkts {
            let any = p.as_any();
            let ty = if any.is::<PictureLossIndication>() {
                wants_keyframe = true;
                "pli"
            } else if any.is::<FullIntraRequest>() {
                wants_keyframe = true;
                "fir"
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                self.metrics.nack.inc();
                if role == Role::Subscriber {
                    self.retransmit(leg, &TrackId::from(track), nack, now);
                }
                "nack"
            } else if any.is::<rtcp::receiver_report::ReceiverReport>() {
                "rr"
            } else if any.is::<rtcp::sender_report::SenderReport>() {
                "sr"
            } else if any.is::<rtcp::source_description::SourceDescription>() {
                "sdes"
            } else if any.is::<rtcp::goodbye::Goodbye>() {
                "bye"
            } else {
                "other"
            };
            self.metrics.rtcp(ty).inc();
        }
        if role == Role::Subscriber {
            // A subscriber's feedback names our sender's track, which is the producer's id.
            let track = TrackId::from(track);
            let clock = self.sources.get(&track).map_or(90_000.0, |s| f64::from(s.codec.clock_rate.max(1)));
            if let Some(c) = self.producers.get_mut(&track).and_then(|p| p.consumers.iter_mut().find(|c| c.leg == leg))
            {
                for p in pkts {
                    let any = p.as_any();
                    if let Some(rr) = any.downcast_ref::<rtcp::receiver_report::ReceiverReport>() {
                        for r in rr.reports.iter().filter(|r| r.ssrc == c.rewrite.ssrc) {
                            apply_report(&mut c.report, r, clock);
                        }
                    } else if let Some(sr) = any.downcast_ref::<rtcp::sender_report::SenderReport>() {
                        for r in sr.reports.iter().filter(|r| r.ssrc == c.rewrite.ssrc) {
                            apply_report(&mut c.report, r, clock);
                        }
                    } else if any.is::<PictureLossIndication>() {
                        c.report.plis += 1;
                    } else if any.is::<FullIntraRequest>() {
                        c.report.firs += 1;
                    } else if any.is::<TransportLayerNack>() {
                        c.report.nacks += 1;
                    }
                }
            }
            if wants_keyframe {
                self.keyframe(&track, now);
            }
        }
    }
}

/// Write one forwarded copy to a subscriber leg, numbered `seq` (as an RTX
/// retransmission with `rtx`, see [`egress::Writer::protect`]): rewrite,
/// number it on the leg, protect, queue. The size counted (payload plus the
/// fixed header), or `None` when the leg cannot take it (DTLS not done, no
/// address yet, a payload type it did not negotiate, a protect error).
#[allow(clippy::too_many_arguments)]
fn write_copy(
    leg: &mut Leg,
    writer: &mut egress::Writer,
    c: &Consumer,
    pkt: &rtc::rtp::Packet,
    seq: u16,
    rtx: Option<(u32, u8, u16)>,
    now: Instant,
    out: &mut super::udp::SendBatch,
    socket: &UdpSocket,
    failed: &mut usize,
) -> Option<usize> {
    let remote = leg.out.remote?;
    let ctx = leg.pc.local_srtp_context()?;
    let transport_seq = c.rewrite.transport_cc.map(|_| leg.out.transport_seq());
    let data = match writer.protect(ctx, &c.rewrite, pkt, seq, transport_seq, rtx) {
        Ok(d) => d?,
        Err(e) => {
            tracing::debug!(error = %e, "media: a forwarded packet was not protected");
            return None;
        }
    };
    *failed += out.push(socket, data, remote);
    if let Some(n) = transport_seq {
        leg.observed.sent.record(n, now);
    }
    Some(pkt.payload.len() + 12)
}
