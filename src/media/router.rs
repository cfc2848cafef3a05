//! Forwarding decisions, without I/O: which consumer gets a packet and with
//! which SSRC, payload type and header-extension ids (each subscriber leg
//! negotiated its own), when a keyframe may be requested from a publisher, and
//! how loud a speaker is. The engine asks; it alone writes to the socket.
//!
//! Names follow mediasoup: a [`Producer`] is an incoming track, each of its
//! [`Consumer`]s an outgoing copy on another participant's subscriber leg.

use crate::ids::{PeerId, TrackId};
use crate::model::{TrackKind, TrackSource};
use rtc::rtp;
use std::time::{Duration, Instant};

/// An index into the engine's table of PeerConnections.
pub type LegId = u32;

/// How one subscriber leg wants a producer's packets written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rewrite {
    pub ssrc: u32,
    /// Publisher payload type → the subscriber's, per codec.
    pub payload_types: Vec<(u8, u8)>,
    /// Publisher header-extension id → the subscriber's, per URI; ids the
    /// subscriber did not negotiate are stripped.
    pub extensions: Vec<(u8, u8)>,
    /// The subscriber leg's `sdes:mid` extension id and this consumer's mid
    /// there: receivers demultiplex bundled m-lines by it (RFC 8843 15).
    pub mid: Option<(u8, bytes::Bytes)>,
    /// The subscriber leg's transport-wide sequence number extension id, when
    /// it negotiated transport-cc: every packet on the leg is numbered.
    pub transport_cc: Option<u8>,
    /// RFC 4588 retransmission stream, when the leg negotiated one.
    pub rtx: Option<Rtx>,
}

/// A consumer's retransmission stream: its SSRC, and the leg's RTX payload
/// type for each of its media payload types (`apt`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rtx {
    pub ssrc: u32,
    pub payload_types: Vec<(u8, u8)>,
}

impl Rewrite {
    /// Whether this leg negotiated the packet's payload type (if not, the
    /// packet is not forwarded to it).
    pub fn accepts(&self, payload_type: u8) -> bool {
        self.payload_types.iter().any(|(from, _)| *from == payload_type)
    }

    /// How a retransmission of a packet with the publisher's `payload_type`
    /// goes out on RTX: (SSRC, RTX payload type), if the leg negotiated it.
    pub fn rtx_for(&self, payload_type: u8) -> Option<(u32, u8)> {
        let rtx = self.rtx.as_ref()?;
        let &(_, media) = self.payload_types.iter().find(|(from, _)| *from == payload_type)?;
        rtx.payload_types.iter().find(|(m, _)| *m == media).map(|&(_, pt)| (rtx.ssrc, pt))
    }

    /// Write `src` rewritten for this leg into `dst`, reusing `dst`'s
    /// buffers (no allocation once they have grown): SSRC, payload type,
    /// extension ids, the leg's mid, and `transport_seq` (two bytes, big
    /// endian) when the leg numbers its packets. Sequence number and
    /// timestamp are copied; the caller sets the sequence number. `false`
    /// means drop the packet (a payload type this leg did not negotiate).
    pub fn apply_into(
        &self,
        src: &rtp::header::Header,
        dst: &mut rtp::header::Header,
        transport_seq: Option<bytes::Bytes>,
    ) -> bool {
        let Some(&(_, pt)) = self.payload_types.iter().find(|(from, _)| *from == src.payload_type) else {
            return false;
        };
        dst.version = src.version;
        dst.padding = src.padding;
        dst.marker = src.marker;
        dst.payload_type = pt;
        dst.sequence_number = src.sequence_number;
        dst.timestamp = src.timestamp;
        dst.ssrc = self.ssrc;
        dst.csrc.clear();
        dst.csrc.extend_from_slice(&src.csrc);
        dst.extensions_padding = 0;
        dst.extensions.clear();
        if src.extension {
            for e in &src.extensions {
                if let Some(&(_, to)) = self.extensions.iter().find(|(from, _)| *from == e.id) {
                    dst.extensions.push(rtp::header::Extension { id: to, payload: e.payload.clone() });
                }
            }
        }
        if let Some((id, mid)) = &self.mid {
            dst.extensions.push(rtp::header::Extension { id: *id, payload: mid.clone() });
        }
        if let (Some(id), Some(n)) = (self.transport_cc, transport_seq) {
            dst.extensions.push(rtp::header::Extension { id, payload: n });
        }
        dst.extension = !dst.extensions.is_empty();
        if dst.extension {
            dst.extension_profile = if dst.extensions.iter().all(|e| (1..=14).contains(&e.id) && e.payload.len() <= 16)
            {
                rtp::header::EXTENSION_PROFILE_ONE_BYTE
            } else {
                rtp::header::EXTENSION_PROFILE_TWO_BYTE
            };
        }
        true
    }
}

/// Keeps a consumer's sequence numbers contiguous across pauses (mute,
/// unsubscribe), so the receiver sees no loss for packets deliberately not
/// sent and does not NACK them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SeqRewriter {
    offset: u16,
    last_out: Option<u16>,
    resync: bool,
    /// The offsets in use lately, newest last, each with the first outgoing
    /// number written with it: what maps a NACKed number back to the
    /// incoming one. Older ones are forgotten.
    epochs: [(u16, u16); EPOCHS],
    epoch_count: usize,
}

/// Offsets remembered for answering NACKs (pauses within the history's span).
const EPOCHS: usize = 4;

impl SeqRewriter {
    /// Packets were skipped on purpose: the next one follows the last sent.
    pub fn skip(&mut self) {
        self.resync = true;
    }

    /// The outgoing sequence number for an incoming one.
    pub fn next(&mut self, seq: u16) -> u16 {
        if self.resync {
            self.resync = false;
            if let Some(last) = self.last_out {
                self.offset = seq.wrapping_sub(last.wrapping_add(1));
                self.begin_epoch(last.wrapping_add(1));
            }
        }
        let out = seq.wrapping_sub(self.offset);
        if self.last_out.is_none() {
            self.begin_epoch(out);
        }
        // Only move forward; a late (reordered) packet keeps its place.
        if self.last_out.is_none_or(|l| out.wrapping_sub(l) < 0x8000) {
            self.last_out = Some(out);
        }
        out
    }

    fn begin_epoch(&mut self, since: u16) {
        if self.epoch_count == EPOCHS {
            self.epochs.rotate_left(1);
            self.epoch_count -= 1;
        }
        self.epochs[self.epoch_count] = (since, self.offset);
        self.epoch_count += 1;
    }

    /// The incoming number an outgoing one was written for (to answer a
    /// NACK): not ahead of the last one written, and under an offset still
    /// remembered.
    pub fn original(&self, out: u16) -> Option<u16> {
        let last = self.last_out?;
        let back = last.wrapping_sub(out);
        if back >= 0x8000 {
            return None;
        }
        // Outgoing numbers are contiguous across offsets: the newest epoch
        // that began at or before `out` wrote it.
        self.epochs[..self.epoch_count]
            .iter()
            .rev()
            .find(|(since, _)| back <= last.wrapping_sub(*since))
            .map(|(_, offset)| out.wrapping_add(*offset))
    }
}

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

    pub fn get(&self, seq: u16) -> Option<&rtp::Packet> {
        if self.slots.is_empty() {
            return None;
        }
        self.slots[usize::from(seq) % self.slots.len()].as_ref().filter(|p| p.header.sequence_number == seq)
    }
}

/// One outgoing copy of a producer.
#[derive(Debug)]
pub struct Consumer {
    pub leg: LegId,
    pub peer: PeerId,
    /// The subscriber's sender, by the track id it was added with.
    pub track: String,
    pub rewrite: Rewrite,
    /// `track-subscribe {subscribe: false}`.
    pub paused: bool,
    pub seq: SeqRewriter,
    /// What went to this subscriber and what its receiver reports said.
    pub report: LegReport,
    /// The RTP timestamp last sent and when: sender reports extrapolate it.
    pub last_sent: Option<(u32, Instant)>,
    /// The next sequence number on the RTX stream.
    pub rtx_seq: u16,
}

/// A subscriber leg's view of one forwarded track: counted as sent, and
/// updated from the subscriber's RTCP receiver reports and feedback.
#[derive(Debug, Default, Clone)]
pub struct LegReport {
    pub packets: u64,
    pub bytes: u64,
    pub bytes_at_last_interval: u64,
    pub packets_lost: i64,
    /// RR fraction lost, 0–1.
    pub fraction_lost: f64,
    pub jitter_ms: f64,
    pub rtt_ms: Option<f64>,
    pub nacks: u64,
    pub plis: u64,
    pub firs: u64,
}

/// An incoming track and everyone it goes to.
#[derive(Debug)]
pub struct Producer {
    pub id: TrackId,
    pub peer: PeerId,
    pub kind: TrackKind,
    pub source: TrackSource,
    pub leg: LegId,
    /// The SSRC whose packets are forwarded (the first one seen).
    pub media_ssrc: u32,
    pub muted: bool,
    pub consumers: Vec<Consumer>,
    pub keyframes: KeyframeLimiter,
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
    /// What it sent lately, for subscribers' NACKs.
    pub history: History,
}

impl Producer {
    /// Whether a packet from `ssrc` goes anywhere at all.
    pub fn forwards(&self, ssrc: u32) -> bool {
        !self.muted && ssrc == self.media_ssrc
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
    use rtc::rtp::header::{Extension, Header};

    fn header(pt: u8, exts: &[(u8, &'static [u8])]) -> Header {
        Header {
            version: 2,
            payload_type: pt,
            sequence_number: 7,
            timestamp: 90_000,
            ssrc: 1111,
            extension: !exts.is_empty(),
            extension_profile: rtp::header::EXTENSION_PROFILE_ONE_BYTE,
            extensions: exts.iter().map(|(id, p)| Extension { id: *id, payload: Bytes::from_static(p) }).collect(),
            ..Default::default()
        }
    }

    fn leg_rewrite() -> Rewrite {
        Rewrite {
            ssrc: 4242,
            payload_types: vec![(96, 100), (111, 109)],
            extensions: vec![(1, 3), (4, 2)],
            mid: None,
            transport_cc: None,
            rtx: None,
        }
    }

    fn applied(r: &Rewrite, src: &Header) -> Option<Header> {
        // A used header: what it held before must not leak into the result.
        let mut dst = header(1, &[(7, b"old"), (8, b"old")]);
        dst.csrc = vec![9, 9];
        dst.padding = true;
        r.apply_into(src, &mut dst, Some(Bytes::from_static(b"\x01\x02"))).then_some(dst)
    }

    #[test]
    fn rewrites_ssrc_pt_and_extension_ids_keeping_seq_and_ts() {
        let h = applied(&leg_rewrite(), &header(96, &[(1, b"\x10"), (4, b"ab"), (9, b"x")])).expect("forwarded");
        assert!(h.csrc.is_empty() && !h.padding);
        assert_eq!((h.ssrc, h.payload_type, h.sequence_number, h.timestamp), (4242, 100, 7, 90_000));
        let ids: Vec<u8> = h.extensions.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![3, 2], "id 9 is not negotiated on the leg and is stripped");
        assert!(h.extension);
    }

    #[test]
    fn the_subscriber_mid_is_written() {
        let mut r = leg_rewrite();
        r.mid = Some((5, Bytes::from_static(b"2")));
        let h = applied(&r, &header(96, &[(1, b"\x10"), (9, b"0")])).expect("forwarded");
        let exts: Vec<(u8, &[u8])> = h.extensions.iter().map(|e| (e.id, &e.payload[..])).collect();
        assert_eq!(exts, vec![(3, &b"\x10"[..]), (5, &b"2"[..])]);
        let bare = applied(&r, &header(96, &[])).expect("forwarded");
        assert!(bare.extension && bare.extensions.len() == 1);
        // With transport-cc negotiated, the leg's number comes last.
        r.transport_cc = Some(6);
        let h = applied(&r, &header(96, &[(1, b"\x10")])).expect("forwarded");
        let exts: Vec<(u8, &[u8])> = h.extensions.iter().map(|e| (e.id, &e.payload[..])).collect();
        assert_eq!(exts, vec![(3, &b"\x10"[..]), (5, &b"2"[..]), (6, &b"\x01\x02"[..])]);
    }

    #[test]
    fn unknown_payload_type_is_dropped_and_empty_extensions_cleared() {
        assert!(applied(&leg_rewrite(), &header(97, &[])).is_none());
        assert!(!leg_rewrite().accepts(97) && leg_rewrite().accepts(111));
        let h = applied(&leg_rewrite(), &header(111, &[(9, b"x")])).expect("forwarded");
        assert!(!h.extension && h.extensions.is_empty());
        assert_eq!(h.payload_type, 109);
    }

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
    fn sequence_numbers_stay_contiguous_across_a_pause() {
        let mut s = SeqRewriter::default();
        assert_eq!((s.next(100), s.next(101), s.next(102)), (100, 101, 102));
        s.skip(); // 103..=499 were not sent (muted)
        assert_eq!(s.next(500), 103);
        assert_eq!(s.next(501), 104);
        assert_eq!(s.next(499), 102, "a reordered packet keeps its relative place");
        assert_eq!(s.next(502), 105);
        // Across the 16-bit wrap.
        let mut w = SeqRewriter::default();
        assert_eq!(w.next(65534), 65534);
        w.skip();
        assert_eq!(w.next(10), 65535);
        assert_eq!(w.next(11), 0);
    }

    #[test]
    fn retransmissions_use_the_rtx_type_of_the_legs_media_type() {
        let mut r = leg_rewrite();
        assert_eq!(r.rtx_for(96), None, "no RTX negotiated");
        r.rtx = Some(Rtx { ssrc: 77, payload_types: vec![(100, 101)] });
        assert_eq!(r.rtx_for(96), Some((77, 101)), "publisher 96 is the leg's 100, whose RTX is 101");
        assert_eq!(r.rtx_for(111), None, "the leg's 109 has no RTX");
        assert_eq!(r.rtx_for(97), None, "not negotiated at all");
    }

    #[test]
    fn outgoing_numbers_map_back_only_under_the_current_offset() {
        let mut s = SeqRewriter::default();
        assert_eq!(s.original(5), None, "nothing written yet");
        for seq in 100..=102 {
            s.next(seq);
        }
        assert_eq!((s.original(100), s.original(102)), (Some(100), Some(102)));
        assert_eq!((s.original(99), s.original(103)), (None, None), "before the first, after the last");
        s.skip();
        assert_eq!(s.next(500), 103);
        assert_eq!(s.original(103), Some(500));
        assert_eq!(s.original(102), Some(102), "written under the previous offset");
        for pause in 1..=4u16 {
            s.skip();
            s.next(1000 * pause);
        }
        assert_eq!(s.original(102), None, "offsets four pauses back are forgotten");
        assert_eq!(s.original(104), Some(1000), "the oldest remembered");
        assert_eq!(s.original(107), Some(4000));
        // Across the 16-bit wrap.
        let mut w = SeqRewriter::default();
        w.next(65535);
        w.next(0);
        assert_eq!((w.original(65535), w.original(0)), (Some(65535), Some(0)));
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
        let mut p = Producer {
            id: "tr_1".into(),
            peer: "peer_1".into(),
            kind: TrackKind::Video,
            source: TrackSource::Camera,
            leg: 0,
            media_ssrc: 1111,
            muted: false,
            consumers: Vec::new(),
            keyframes: KeyframeLimiter::new(Duration::from_millis(500)),
            audio_level_ext: None,
            level: LevelMeter::default(),
            stats: Default::default(),
            vp8: true,
            frame_size: None,
            history: History::new(0),
        };
        assert!(p.forwards(1111));
        assert!(!p.forwards(2222));
        p.muted = true;
        assert!(!p.forwards(1111));
    }
}
