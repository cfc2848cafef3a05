//! A producer (mediasoup's name): one incoming track, with what the SFU keeps
//! about it without I/O: which SSRC it forwards, its retransmission history,
//! when a keyframe may be requested from its publisher, how loud it is, and
//! the statistics of what reaches the socket. Its
//! [`super::consumer::Consumer`]s are the outgoing copies.

use super::allocate::{Layer, LayerDemand};
use super::codec::Codec;
use super::consumer::Consumer;
use super::ids::{LegId, Ssrc};
use crate::ids::{PeerId, TrackId};
use crate::model::{TrackKind, TrackSource};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use rtc::rtp_transceiver::RTCRtpReceiverId;
use std::time::{Duration, Instant};

/// Packets of a video producer kept for retransmission: about 3 s at
/// 1.5 Mbit/s. A power of two, so the ring stays aligned across the 16-bit wrap.
pub const VIDEO_HISTORY: usize = 512;

/// The last packets a producer sent, by sequence number, for answering
/// NACKs. An empty one keeps nothing.
#[derive(Debug)]
pub struct History {
    slots: Box<[Option<rtp::Packet>]>,
}

impl History {
    /// `len` must be a power of two no larger than 65,536 (or 0).
    pub fn new(len: usize) -> Self {
        debug_assert!(len == 0 || (len.is_power_of_two() && len <= 1 << 16));
        Self { slots: (0..len).map(|_| None).collect() }
    }

    pub fn put(&mut self, pkt: rtp::Packet) {
        if self.slots.is_empty() {
            return;
        }
        let i = usize::from(pkt.header.sequence_number) % self.slots.len();
        self.slots[i] = Some(pkt);
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, seq: u16) -> Option<&rtp::Packet> {
        if self.slots.is_empty() {
            return None;
        }
        self.slots[usize::from(seq) % self.slots.len()].as_ref().filter(|p| p.header.sequence_number == seq)
    }
}

/// Minimum time between keyframe requests to one publisher track.
pub const KEYFRAME_INTERVAL: Duration = Duration::from_millis(300);

/// What a producer's codec is, as negotiated on the publisher's leg.
#[derive(Debug, Clone)]
pub struct Source {
    pub codec: RTCRtpCodec,
    pub receiver: RTCRtpReceiverId,
    /// Header extensions the publisher negotiated: (uri, id).
    pub extensions: Vec<(String, u8)>,
}

/// An incoming track and everyone it goes to.
#[derive(Debug)]
pub struct Producer {
    pub id: TrackId,
    pub peer: PeerId,
    pub kind: TrackKind,
    pub source: TrackSource,
    pub leg: LegId,
    pub codec: Source,
    /// A single-layer track: the SSRC whose packets are forwarded. A
    /// simulcast one: the first layer seen (whose packets the statistics at
    /// the socket count).
    pub media_ssrc: Ssrc,
    /// Simulcast (SPEC 5.1): each layer's SSRC, learnt from the rid its first
    /// packet carried; all `None` for a single-layer track.
    pub layers: [Option<Ssrc>; 3],
    /// When each layer last had a packet (a layer that stops is gone).
    pub last_seen: [Option<Instant>; 3],
    pub muted: bool,
    pub consumers: Vec<Consumer>,
    /// Keyframe requests per layer (index 0 for a single-layer track).
    pub keyframes: [KeyframeLimiter; 3],
    /// What keyframes look like (a simulcast switch waits for one).
    pub codec_kind: Codec,
    /// The publisher's id for RFC 6464 audio levels, when negotiated.
    pub audio_level_ext: Option<u8>,
    pub level: LevelMeter,
    /// RFC 3550 receiver statistics of what reaches the SFU's socket (before
    /// any retransmission), for analytics.
    pub stats: crate::analytics::stream::StreamStats,
    /// VP8: the frame size of the last keyframe (what the video score
    /// measures the bitrate against).
    pub vp8: bool,
    pub frame_size: Option<(u16, u16)>,
    /// What it sent lately, per layer, for subscribers' NACKs.
    pub history: [History; 3],
    /// Dynacast: which layers some subscriber receives or may be moved to.
    pub demand: LayerDemand,
    /// Bytes per layer since the last measurement, and the bitrates measured
    /// (what the allocator weighs layers by).
    pub layer_bytes: [u64; 3],
    pub layer_bps: [Option<u64>; 3],
}

/// A layer that sent nothing for this long is treated as gone (SPEC 5.1).
pub const LAYER_GONE_AFTER: Duration = Duration::from_millis(1500);

/// Who publishes a producer and what it is.
#[derive(Debug, Clone)]
pub struct Origin {
    pub id: TrackId,
    pub peer: PeerId,
    pub kind: TrackKind,
    pub source: TrackSource,
    pub leg: LegId,
}

impl Producer {
    pub fn new(origin: Origin, codec: Source, media_ssrc: Ssrc, audio_level_ext: Option<u8>, now: Instant) -> Self {
        let Origin { id, peer, kind, source, leg } = origin;
        let clock_rate = codec.codec.clock_rate;
        let vp8 = codec.codec.mime_type.eq_ignore_ascii_case("video/VP8");
        let codec_kind = Codec::from_mime(&codec.codec.mime_type);
        Self {
            id,
            peer,
            kind,
            source,
            leg,
            codec,
            media_ssrc,
            layers: [None; 3],
            last_seen: [None; 3],
            muted: false,
            consumers: Vec::new(),
            keyframes: std::array::from_fn(|_| KeyframeLimiter::new(KEYFRAME_INTERVAL)),
            codec_kind,
            audio_level_ext,
            level: LevelMeter::default(),
            stats: crate::analytics::stream::StreamStats::new(clock_rate),
            vp8,
            frame_size: None,
            history: std::array::from_fn(|_| History::new(0)),
            demand: LayerDemand::new(now),
            layer_bytes: [0; 3],
            layer_bps: [None; 3],
        }
        .with_history()
    }

    fn with_history(mut self) -> Self {
        if self.kind == TrackKind::Video {
            self.history[0] = History::new(VIDEO_HISTORY);
        }
        self
    }

    pub fn is_simulcast(&self) -> bool {
        self.layers.iter().any(Option::is_some)
    }

    /// A simulcast layer's first packet arrived with SSRC `ssrc`.
    pub fn add_layer(&mut self, layer: Layer, ssrc: Ssrc) {
        let i = layer as usize;
        self.layers[i] = Some(ssrc);
        if self.kind == TrackKind::Video && self.history[i].is_empty() {
            self.history[i] = History::new(VIDEO_HISTORY);
        }
    }

    /// Which layer a packet from `ssrc` belongs to, if it is forwarded at all.
    pub fn layer_of(&self, ssrc: Ssrc) -> Option<Layer> {
        if self.muted {
            return None;
        }
        if self.is_simulcast() {
            return self.layers.iter().position(|l| *l == Some(ssrc)).and_then(|i| Layer::ALL.get(i).copied());
        }
        (ssrc == self.media_ssrc).then_some(Layer::Q)
    }

    /// Whether a packet from `ssrc` goes anywhere at all.
    pub fn forwards(&self, ssrc: Ssrc) -> bool {
        self.layer_of(ssrc).is_some()
    }

    /// The layers arriving now (a single-layer track's one layer is `Q`).
    pub fn available(&self, now: Instant) -> [bool; 3] {
        if !self.is_simulcast() {
            return [true, false, false];
        }
        std::array::from_fn(|i| {
            self.layers[i].is_some()
                && self.last_seen[i].is_some_and(|t| now.saturating_duration_since(t) < LAYER_GONE_AFTER)
        })
    }

    /// Close a bitrate measurement of `secs` seconds.
    pub fn measure(&mut self, secs: f64) {
        for i in 0..3 {
            let bytes = std::mem::take(&mut self.layer_bytes[i]);
            let bps = bytes as f64 * 8.0 / secs.max(0.001);
            // Smoothed: a keyframe is a burst several times a frame's size.
            self.layer_bps[i] = (bytes > 0).then(|| match self.layer_bps[i] {
                Some(old) => (0.8 * old as f64 + 0.2 * bps) as u64,
                None => bps as u64,
            });
        }
    }

    /// What each layer costs now, for the allocator: measured, else a
    /// nominal rate for a layer that arrives but was not measured yet;
    /// `None` for a layer not arriving.
    pub fn layer_bitrates(&self, now: Instant) -> [Option<u64>; 3] {
        const NOMINAL: [u64; 3] = [150_000, 400_000, 1_200_000];
        let available = self.available(now);
        let single = if self.kind == TrackKind::Audio { 48_000 } else { 1_000_000 };
        std::array::from_fn(|i| {
            let nominal = if self.is_simulcast() { NOMINAL[i] } else { single };
            available[i].then(|| self.layer_bps[i].unwrap_or(nominal).max(1))
        })
    }

    /// The SSRC a keyframe request for `layer` goes to.
    pub fn ssrc_of(&self, layer: Layer) -> Ssrc {
        if self.is_simulcast() {
            self.layers[layer as usize].unwrap_or(self.media_ssrc)
        } else {
            self.media_ssrc
        }
    }

    /// The codec's clock rate (90 kHz when unknown).
    pub fn clock_rate(&self) -> u32 {
        match self.codec.codec.clock_rate {
            0 => 90_000,
            r => r,
        }
    }
}

/// Rate-limits keyframe requests (PLI) to one publisher track. A request
/// inside the interval is remembered and sent when the interval passes, so a
/// late joiner never waits longer than one interval.
#[derive(Debug)]
pub struct KeyframeLimiter {
    last: Option<Instant>,
    pending: bool,
    interval: Duration,
}

impl KeyframeLimiter {
    pub fn new(interval: Duration) -> Self {
        Self { last: None, pending: false, interval }
    }

    /// Someone wants a keyframe: `true` means send a PLI now.
    pub fn request(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|t| now.duration_since(t) < self.interval) {
            self.pending = true;
            return false;
        }
        self.last = Some(now);
        self.pending = false;
        true
    }

    /// On a timer: `true` when a deferred request is now due.
    pub fn due(&mut self, now: Instant) -> bool {
        self.pending && self.request(now)
    }
}

/// RFC 6464 levels over a window: the loudest level heard, in −dBov (0 is
/// loudest, 127 silence), among packets with the voice-activity bit.
#[derive(Debug, Default)]
pub struct LevelMeter {
    loudest: Option<u8>,
}

/// The frame size a VP8 RTP payload announces, if it starts a keyframe
/// (RFC 7741 4.2 payload descriptor, then RFC 6386 9.1 frame header). The SFU
/// reads nothing else of the payload; other codecs are not parsed.
pub fn vp8_keyframe_size(payload: &[u8]) -> Option<(u16, u16)> {
    let d = *payload.first()?;
    // S (start of partition) set and partition index 0.
    if d & 0x10 == 0 || d & 0x0f != 0 {
        return None;
    }
    let mut i = 1;
    if d & 0x80 != 0 {
        let x = *payload.get(1)?;
        i = 2;
        if x & 0x80 != 0 {
            // PictureID: 15 bits when M is set.
            i += if payload.get(i)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    let f = payload.get(i..i + 10)?;
    // P bit clear: a keyframe, followed by the start code 9d 01 2a.
    if f[0] & 0x01 != 0 || f[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([f[6], f[7]]) & 0x3fff;
    let h = u16::from_le_bytes([f[8], f[9]]) & 0x3fff;
    (w > 0 && h > 0).then_some((w, h))
}

/// Louder than this (in −dBov) counts as speaking.
pub const SPEAKING_DBOV: u8 = 50;

impl LevelMeter {
    /// One packet's audio-level extension payload.
    pub fn on_extension(&mut self, payload: &[u8]) {
        let Some(&b) = payload.first() else { return };
        let (voice, level) = (b & 0x80 != 0, b & 0x7f);
        // Some senders leave the V bit clear; trust a loud level anyway.
        if voice || level < SPEAKING_DBOV {
            self.loudest = Some(self.loudest.map_or(level, |l| l.min(level)));
        }
    }

    /// The window's level as 0..=1 when speaking, then start a new window.
    pub fn take(&mut self) -> Option<f64> {
        let l = self.loudest.take()?;
        (l < SPEAKING_DBOV).then(|| ((127 - l) as f64 / 127.0 * 100.0).round() / 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc::rtp::header::Header;

    fn packet(seq: u16, payload: &'static [u8], _padding: bool) -> rtp::Packet {
        rtp::Packet {
            header: Header { sequence_number: seq, ..Default::default() },
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn history_answers_only_for_the_number_it_holds() {
        let mut h = History::new(VIDEO_HISTORY);
        h.put(packet(65535, b"a", false));
        h.put(packet(0, b"b", false));
        assert_eq!(h.get(65535).map(|p| &p.payload[..]), Some(&b"a"[..]));
        assert_eq!(h.get(0).map(|p| &p.payload[..]), Some(&b"b"[..]));
        assert!(h.get(1).is_none());
        h.put(packet(512, b"c", false));
        assert!(h.get(0).is_none(), "its slot now holds 512");
        let mut none = History::new(0);
        none.put(packet(1, b"a", false));
        assert!(none.get(1).is_none());
    }

    #[test]
    fn keyframe_requests_are_rate_limited_and_deferred() {
        let t0 = Instant::now();
        let mut k = KeyframeLimiter::new(Duration::from_millis(500));
        assert!(k.request(t0));
        assert!(!k.request(t0 + Duration::from_millis(100)));
        assert!(!k.due(t0 + Duration::from_millis(300)));
        assert!(k.due(t0 + Duration::from_millis(500)), "the deferred request goes out once allowed");
        assert!(!k.due(t0 + Duration::from_millis(1200)), "and only once");
        assert!(k.request(t0 + Duration::from_millis(1200)));
    }

    #[test]
    fn level_meter_reports_the_loudest_voiced_level() {
        let mut m = LevelMeter::default();
        assert_eq!(m.take(), None);
        m.on_extension(&[0x80 | 30]);
        m.on_extension(&[0x80 | 20]);
        m.on_extension(&[127]);
        assert_eq!(m.take(), Some(0.84));
        assert_eq!(m.take(), None, "a new window starts empty");
        m.on_extension(&[0x80 | 90]);
        assert_eq!(m.take(), None, "quiet is not speaking");
        m.on_extension(&[]);
        assert_eq!(m.take(), None);
    }

    #[test]
    fn vp8_keyframes_announce_their_size_and_nothing_else_does() {
        // 640×480 keyframe: descriptor with X, I (15-bit picture id), then
        // the frame tag (P = 0), start code, sizes.
        let key = [0x90, 0x80, 0x81, 0x23, 0x50, 0x2d, 0x01, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 0xff];
        assert_eq!(vp8_keyframe_size(&key), Some((640, 480)));
        // The minimal descriptor, 1280×720 with a scaling field that is ignored.
        let small = [0x10, 0x50, 0x2d, 0x01, 0x9d, 0x01, 0x2a, 0x00, 0x45, 0xd0, 0x02];
        assert_eq!(vp8_keyframe_size(&small), Some((1280, 720)));
        let mut delta = key;
        delta[4] |= 0x01;
        assert_eq!(vp8_keyframe_size(&delta), None, "an interframe");
        let mut middle = key;
        middle[0] &= !0x10;
        assert_eq!(vp8_keyframe_size(&middle), None, "not the start of the frame");
        let mut bad = key;
        bad[8] = 0x00;
        assert_eq!(vp8_keyframe_size(&bad), None, "no start code");
        for n in 0..key.len() - 1 {
            assert_eq!(vp8_keyframe_size(&key[..n]), None, "truncated to {n}");
        }
    }

    #[test]
    fn muted_or_other_ssrc_is_not_forwarded() {
        let origin = Origin {
            id: "tr_1".into(),
            peer: "peer_1".into(),
            kind: TrackKind::Video,
            source: TrackSource::Camera,
            leg: LegId(0),
        };
        let codec = Source {
            codec: RTCRtpCodec { mime_type: "video/VP8".into(), clock_rate: 90_000, ..Default::default() },
            receiver: Default::default(),
            extensions: Vec::new(),
        };
        let mut p = Producer::new(origin, codec, Ssrc(1111), None, Instant::now());
        assert!(p.vp8 && p.clock_rate() == 90_000);
        assert!(p.forwards(Ssrc(1111)));
        assert!(!p.forwards(Ssrc(2222)));
        p.muted = true;
        assert!(!p.forwards(Ssrc(1111)));
    }
}
