//! A client-side webrtc-rs (`rtc`, sans-IO) PeerConnection driven on its own
//! UDP socket in a task: the load tool's publishers and subscribers, and the
//! tests that need to see the SFU's packets byte by byte (which SSRC, payload
//! type and sequence number arrive, which RTCP comes back). The caller runs
//! closures on the connection and reads what arrived from a channel.

use crate::media::observe::{Observe, Observed};
use bytes::BytesMut;
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_VP8};
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// What the peer saw.
#[derive(Debug, Clone)]
#[allow(dead_code)] // each test reads the fields it needs
pub enum Seen {
    Connected,
    TrackOpen {
        track: String,
        ssrc: u32,
    },
    Rtp {
        track: String,
        ssrc: u32,
        pt: u8,
        seq: u16,
        exts: Vec<(u8, Vec<u8>)>,
        payload: bytes::Bytes,
        /// When the datagram that carried it reached this host: the
        /// kernel's receive time, so that how long this peer's task took to
        /// get round to reading it is not counted (the read time without a
        /// kernel stamp).
        at: Instant,
        /// When this peer's task read that datagram from its socket.
        read: Instant,
    },
    /// RTCP, by type: "pli", "fir", "nack", "rr", "sr", "other".
    Rtcp {
        track: String,
        kinds: Vec<&'static str>,
        /// The media SSRCs a PLI or FIR asks a keyframe of.
        keyframes: Vec<u32>,
    },
}

type Job = Box<dyn FnOnce(&mut RTCPeerConnection, Instant) + Send>;

/// Runs jobs on the connection; cheap to clone into a sending task.
#[derive(Clone)]
pub struct Ctl {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Ctl {
    /// Run `f` on the connection; `None` when the peer has stopped.
    pub async fn try_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RTCPeerConnection, Instant) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |pc, now| {
            let _ = tx.send(f(pc, now));
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }

    /// Run `f` on the connection and return what it returns.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RTCPeerConnection, Instant) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |pc, now| {
            let _ = tx.send(f(pc, now));
        });
        self.jobs.send(job).expect("peer task alive");
        rx.await.expect("peer task alive")
    }
}

#[allow(dead_code)]
pub struct RtcPeer {
    pub ctl: Ctl,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    pub addr: SocketAddr,
}

pub fn vp8() -> RTCRtpCodec {
    RTCRtpCodec { mime_type: MIME_TYPE_VP8.to_owned(), clock_rate: 90_000, ..Default::default() }
}

/// An Opus track with a fixed SSRC, to publish.
pub fn audio_track(id: &str, ssrc: u32) -> MediaStreamTrack {
    MediaStreamTrack::new(
        "test-stream".into(),
        id.into(),
        id.into(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec: RTCRtpCodec {
                mime_type: "audio/opus".to_owned(),
                clock_rate: 48_000,
                channels: 2,
                ..Default::default()
            },
            ..Default::default()
        }],
    )
}

/// A video track with a fixed SSRC, to publish.
pub fn video_track(id: &str, ssrc: u32) -> MediaStreamTrack {
    MediaStreamTrack::new(
        "test-stream".into(),
        id.into(),
        id.into(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec: vp8(),
            ..Default::default()
        }],
    )
}

/// A simulcast video track (SPEC 5.1): encodings with rids `q`, `h`, `f`
/// and fixed SSRCs, in that order.
pub fn simulcast_track(id: &str, ssrcs: [u32; 3]) -> MediaStreamTrack {
    let encoding = |rid: &str, ssrc| RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters { rid: rid.into(), ssrc: Some(ssrc), ..Default::default() },
        codec: vp8(),
        ..Default::default()
    };
    let encodings = ["q", "h", "f"].into_iter().zip(ssrcs).map(|(rid, ssrc)| encoding(rid, ssrc)).collect();
    MediaStreamTrack::new("test-stream".into(), id.into(), id.into(), RtpCodecKind::Video, encodings)
}

impl RtcPeer {
    /// A peer for tests (panics if it cannot start).
    pub async fn start() -> RtcPeer {
        Self::start_with(true, "127.0.0.1".parse().expect("literal")).await.expect("start a webrtc-rs peer")
    }

    /// A peer on `ip` (port chosen by the OS); `want_exts: false` skips
    /// copying header extensions (the load tool does not look at them).
    pub async fn start_with(want_exts: bool, ip: std::net::IpAddr) -> anyhow::Result<RtcPeer> {
        Self::start_capped(want_exts, ip, None).await
    }

    /// [`Self::start_with`], with what reaches its socket going through
    /// `cap` (a [`Shaper`]) first.
    pub async fn start_capped(
        want_exts: bool,
        ip: std::net::IpAddr,
        cap: Option<std::sync::Arc<Cap>>,
    ) -> anyhow::Result<RtcPeer> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        crate::media::udp::stamp_arrivals(&socket);
        let addr = socket.local_addr()?;
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?
            .with(Slot::Custom(20_000), Observe::new(std::sync::Arc::new(Observed::default())));
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .build(Instant::now())?;
        let host = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".into(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        pc.add_local_candidate(RTCIceCandidate::from(&host).to_json()?)?;
        let (jobs, mut job_rx) = mpsc::unbounded_channel::<Job>();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            // When the datagram last handed to the connection arrived, and
            // was read: what it yields is stamped with these.
            let (mut arrived, mut read) = (Instant::now(), Instant::now());
            let mut shaper = Shaper::new(Instant::now());
            let read_into = |pc: &mut RTCPeerConnection, now: Instant, d: BytesMut, from: SocketAddr| {
                let _ = pc.handle_read(TaggedBytesMut {
                    now,
                    transport: TransportContext {
                        local_addr: addr,
                        peer_addr: from,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: d,
                });
            };
            loop {
                while let Some(out) = pc.poll_write() {
                    let _ = socket.send_to(&out.message, out.transport.peer_addr).await;
                }
                while let Some(ev) = pc.poll_event() {
                    match ev {
                        RTCPeerConnectionEvent::OnConnectionStateChangeEvent(RTCPeerConnectionState::Connected) => {
                            let _ = seen_tx.send(Seen::Connected);
                        }
                        RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                            let _ = seen_tx.send(Seen::TrackOpen { track: init.track_id, ssrc: init.ssrc });
                        }
                        _ => {}
                    }
                }
                while let Some(TaggedRTCMessage { message, now }) = pc.poll_read() {
                    let s = match message {
                        RTCMessage::RtpPacket(track, p) => Seen::Rtp {
                            track,
                            ssrc: p.header.ssrc,
                            pt: p.header.payload_type,
                            seq: p.header.sequence_number,
                            exts: if want_exts {
                                p.header.extensions.iter().map(|e| (e.id, e.payload.to_vec())).collect()
                            } else {
                                Vec::new()
                            },
                            payload: p.payload,
                            at: arrived.min(now),
                            read: read.min(now),
                        },
                        RTCMessage::RtcpPacket(track, pkts) => {
                            let kinds = pkts.iter().map(|p| kind(&**p)).collect();
                            Seen::Rtcp {
                                track,
                                kinds,
                                keyframes: pkts.iter().flat_map(|p| keyframe_of(&**p)).collect(),
                            }
                        }
                        _ => continue,
                    };
                    if seen_tx.send(s).is_err() {
                        return;
                    }
                }
                let wake = pc.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
                let bps = cap.as_ref().map_or(0, |c| c.bps());
                let released = shaper.next_release(bps).unwrap_or(wake + Duration::from_secs(1));
                tokio::select! {
                    job = job_rx.recv() => match job {
                        Some(job) => job(&mut pc, Instant::now()),
                        None => { let _ = pc.close(); return; }
                    },
                    r = crate::media::udp::recv_stamped(&socket, &mut buf) => if let Ok((n, from, stamp)) = r {
                        read = Instant::now();
                        let ago = stamp.and_then(|s| std::time::SystemTime::now().duration_since(s).ok());
                        arrived = ago.and_then(|d| read.checked_sub(d)).unwrap_or(read);
                        if let Some((d, from)) = shaper.offer(read, bps, BytesMut::from(&buf[..n]), from) {
                            read_into(&mut pc, read, d, from);
                        }
                    },
                    // What the cap held back leaves the queue: it arrives now.
                    _ = tokio::time::sleep_until(released.into()) => {
                        let now = Instant::now();
                        while let Some((d, from)) = shaper.release(now, bps) {
                            (arrived, read) = (now, now);
                            read_into(&mut pc, now, d, from);
                        }
                    },
                    _ = tokio::time::sleep_until(wake.into()) => { let _ = pc.handle_timeout(Instant::now()); }
                }
            }
        });
        Ok(RtcPeer { ctl: Ctl { jobs }, seen, addr })
    }

    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RTCPeerConnection, Instant) -> T + Send + 'static,
    ) -> T {
        self.ctl.with(f).await
    }

    /// Wait until `pred` matches something seen (others are dropped).
    pub async fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(s)) if pred(&s) => return s,
                Ok(Some(_)) => {}
                _ => panic!("timed out waiting for {what}"),
            }
        }
    }
}

fn kind(p: &dyn rtc::rtcp::packet::Packet) -> &'static str {
    use rtc::rtcp::payload_feedbacks::{
        full_intra_request::FullIntraRequest, picture_loss_indication::PictureLossIndication,
    };
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
    let a = p.as_any();
    if a.is::<PictureLossIndication>() {
        "pli"
    } else if a.is::<FullIntraRequest>() {
        "fir"
    } else if a.is::<TransportLayerNack>() {
        "nack"
    } else if a.is::<rtc::rtcp::receiver_report::ReceiverReport>() {
        "rr"
    } else if a.is::<rtc::rtcp::sender_report::SenderReport>() {
        "sr"
    } else {
        "other"
    }
}

/// The SSRCs a keyframe request asks for (none for any other RTCP).
fn keyframe_of(p: &dyn rtc::rtcp::packet::Packet) -> Vec<u32> {
    use rtc::rtcp::payload_feedbacks::{
        full_intra_request::FullIntraRequest, picture_loss_indication::PictureLossIndication,
    };
    let a = p.as_any();
    if let Some(pli) = a.downcast_ref::<PictureLossIndication>() {
        vec![pli.media_ssrc]
    } else if let Some(fir) = a.downcast_ref::<FullIntraRequest>() {
        fir.fir.iter().map(|e| e.ssrc).collect()
    } else {
        Vec::new()
    }
}

/// A link cap the load tool puts in front of one subscriber's socket, as
/// tests/browser/bandwidth.js does with its proxy: a token bucket at the cap
/// with [`BURST_BYTES`] of burst, then a drop-tail queue of [`QUEUE_MS`] at
/// the cap; what does not fit is dropped. The rate can change while the peer
/// runs (0: no cap).
#[derive(Debug, Default)]
pub struct Cap {
    bps: std::sync::atomic::AtomicU64,
}

impl Cap {
    /// Cap at `kbps`, or lift the cap (`None`).
    pub fn set(&self, kbps: Option<u32>) {
        self.bps.store(kbps.map_or(0, |k| u64::from(k) * 1000), std::sync::atomic::Ordering::Relaxed);
    }

    fn bps(&self) -> u64 {
        self.bps.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The bucket's depth (what a policer lets through at line rate).
pub const BURST_BYTES: f64 = 15_000.0;
/// How much the queue behind it holds, in time at the cap.
pub const QUEUE_MS: u64 = 60;

/// The state of a capped link: tokens, and the datagrams queued behind them.
#[derive(Debug)]
pub struct Shaper {
    tokens: f64,
    last: Instant,
    queue: std::collections::VecDeque<(BytesMut, SocketAddr)>,
    queued_bytes: usize,
    pub dropped: u64,
}

impl Shaper {
    pub fn new(now: Instant) -> Self {
        Self { tokens: BURST_BYTES, last: now, queue: Default::default(), queued_bytes: 0, dropped: 0 }
    }

    fn refill(&mut self, now: Instant, bps: u64) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * bps as f64 / 8.0).min(BURST_BYTES);
    }

    /// A datagram arrives: `Some` if it goes through now, else it is queued or dropped.
    pub fn offer(&mut self, now: Instant, bps: u64, d: BytesMut, from: SocketAddr) -> Option<(BytesMut, SocketAddr)> {
        if bps == 0 {
            self.tokens = BURST_BYTES;
            self.last = now;
            return Some((d, from));
        }
        self.refill(now, bps);
        if self.queue.is_empty() && self.tokens >= d.len() as f64 {
            self.tokens -= d.len() as f64;
            return Some((d, from));
        }
        let limit = (bps * QUEUE_MS / 8000) as usize;
        if self.queued_bytes + d.len() > limit {
            self.dropped += 1;
            return None;
        }
        self.queued_bytes += d.len();
        self.queue.push_back((d, from));
        None
    }

    /// The next queued datagram whose tokens are there by `now` (all of
    /// them once the cap is lifted).
    pub fn release(&mut self, now: Instant, bps: u64) -> Option<(BytesMut, SocketAddr)> {
        let len = self.queue.front()?.0.len();
        if bps > 0 {
            self.refill(now, bps);
            // A thousandth of a byte short is rounding in `next_release`.
            if self.tokens + 1e-3 < len as f64 {
                return None;
            }
            self.tokens = (self.tokens - len as f64).max(0.0);
        }
        self.queued_bytes -= len;
        self.queue.pop_front()
    }

    /// When the head of the queue can go.
    pub fn next_release(&self, bps: u64) -> Option<Instant> {
        let len = self.queue.front()?.0.len() as f64;
        if bps == 0 {
            return Some(self.last);
        }
        let wait = ((len - self.tokens).max(0.0) * 8.0 / bps as f64).max(0.0);
        Some(self.last + Duration::from_secs_f64(wait))
    }
}
