//! The SFU's own write path for forwarded media.
//!
//! Through webrtc-rs's public API, every packet written to a PeerConnection
//! goes through its handler chain (endpoint, interceptors, SRTP, DTLS, ICE),
//! about ten queues and several allocations per packet. An SFU writes each
//! packet a publisher sends once per subscriber, so that chain was most of
//! the server's CPU (issue 7's profile: 54 %). Here a forwarded copy is
//! rewritten into a reused header, marshalled into a reused buffer, protected
//! there in place with the leg's own outbound SRTP context and queued for
//! `sendmmsg` — the way mediasoup and Janus write — with no allocation per
//! copy. webrtc-rs exposes neither the context nor in-place protection, so
//! confer builds vendored copies of `rtc` and `rtc-srtp` with one addition
//! each (`vendor/*/CONFER-PATCH.md`).
//!
//! What the subscriber leg's interceptors did for those packets is done here
//! and in the engine instead:
//!
//! - **transport-wide sequence numbers** ([`LegOut::transport_seq`]), whose
//!   send times go to the leg's [`super::observe::Observed`] so TWCC feedback
//!   still gives a round trip, or on a leg without transport-cc the
//!   **abs-send-time** of each packet ([`LegOut::send_time`]), which a REMB
//!   receiver's estimator needs;
//! - **retransmission on NACK**, from a per-producer [`super::producer::History`]
//!   of what the publisher sent, rewritten again for the consumer that asks
//!   (one copy of each packet is kept, not one per subscriber), on the leg's
//!   RTX stream when it negotiated one (RFC 4588), else as the packet again;
//! - **RTCP sender reports**, once a second per consumer ([`sender_report`]),
//!   which receivers need for their round-trip reports and lip sync.
//!
//! Publisher legs (reading) and everything else a leg writes (RTCP feedback,
//! DTLS, STUN) still go through webrtc-rs.

use super::forwarder::Send;
use super::rewrite::Rewrite;
use bytes::{Bytes, BytesMut};
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp;
use rtc::rtp::header::Header;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::context::Context;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

pub type Error = rtc::shared::error::Error;

/// Reused buffers for writing forwarded copies; one per engine.
pub struct Writer {
    header: Header,
    plain: Vec<u8>,
    /// Every transport-wide sequence number as two big-endian bytes: a
    /// packet's number is a slice of this one buffer, not an allocation.
    numbers: Bytes,
}

impl Default for Writer {
    fn default() -> Self {
        let numbers: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_be_bytes).collect();
        Self { header: Header::default(), plain: Vec::with_capacity(1500), numbers: numbers.into() }
    }
}

/// What a leg stamps on each packet it sends: its transport-wide sequence
/// number when it negotiated transport-cc, else its abs-send-time (24-bit
/// 6.18 fixed-point seconds) when it negotiated that.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stamps {
    pub transport_seq: Option<u16>,
    pub send_time: Option<u32>,
}

impl Writer {
    /// The header as `rewrite` and `stamps` want it, marshalled at the start
    /// of the writer's buffer; its length. The abs-send-time placeholder is
    /// filled in here, in the marshalled bytes (no allocation).
    fn write_header(&mut self, rewrite: &Rewrite, src: &Header, send: &Send, stamps: Stamps) -> Result<usize, Error> {
        let number = stamps.transport_seq.map(|n| {
            let at = usize::from(n) * 2;
            self.numbers.slice(at..at + 2)
        });
        rewrite.apply_into(src, send, &mut self.header, number, stamps.send_time.is_some());
        let head = self.header.marshal_size();
        self.plain.clear();
        self.plain.resize(head, 0);
        self.header.marshal_to(&mut self.plain[..head])?;
        if let (Some(t), Some(id)) = (stamps.send_time, rewrite.abs_send_time) {
            if let Some(at) = extension_at(&self.plain[..head], id) {
                self.plain[at..at + 3].copy_from_slice(&t.to_be_bytes()[1..]);
            }
        }
        Ok(head)
    }

    /// `pkt` rewritten for one consumer as `send` decided (and stamped
    /// with `stamps` on the leg), then protected in the writer's own buffer:
    /// the datagram to send, valid until the next call (nothing is
    /// allocated). With `rtx` (SSRC, payload type, sequence number) it is
    /// written as an RFC 4588 retransmission instead: on the RTX stream,
    /// `send.seq` leading the payload.
    pub fn protect(
        &mut self,
        ctx: &mut Context,
        rewrite: &Rewrite,
        pkt: &rtp::Packet,
        send: &Send,
        stamps: Stamps,
        rtx: Option<(u32, u8, u16)>,
    ) -> Result<&[u8], Error> {
        // On RTX the header names the RTX stream; the payload is the
        // original's, led by its (rewritten) sequence number.
        let on_rtx = rtx.map(|(ssrc, pt, seq)| Send { ssrc: super::ids::Ssrc(ssrc), pt, seq, vp8: None, ..*send });
        let head = self.write_header(rewrite, &pkt.header, on_rtx.as_ref().unwrap_or(send), stamps)?;
        if rtx.is_some() {
            self.plain.extend_from_slice(&send.seq.to_be_bytes());
        }
        let at = self.plain.len();
        self.plain.extend_from_slice(&pkt.payload);
        if let Some(v) = &send.vp8 {
            v.apply(&mut self.plain[at..]);
        }
        if self.header.padding {
            // As webrtc-rs writes it: to a multiple of 4, at least 1 byte
            // (4 when already aligned), the last byte giving the count.
            let n = match (self.plain.len() - head) % 4 {
                0 => 4,
                r => 4 - r,
            };
            self.plain.extend(std::iter::repeat_n(0, n - 1));
            self.plain.push(n as u8);
        }
        ctx.encrypt_rtp_in_place(&mut self.plain, &self.header)?;
        Ok(&self.plain)
    }
}

/// Where the payload of header extension `id` starts in a marshalled RTP
/// header (RFC 8285, one- and two-byte forms), if it is there.
fn extension_at(head: &[u8], id: u8) -> Option<usize> {
    let b0 = *head.first()?;
    if b0 & 0x10 == 0 {
        return None;
    }
    let start = 12 + 4 * usize::from(b0 & 0x0f);
    let profile = u16::from_be_bytes([*head.get(start)?, *head.get(start + 1)?]);
    let words = u16::from_be_bytes([*head.get(start + 2)?, *head.get(start + 3)?]);
    let end = (start + 4 + 4 * usize::from(words)).min(head.len());
    let two_byte = profile & 0xfff0 == 0x1000;
    let mut i = start + 4;
    while i < end {
        let b = head[i];
        if b == 0 {
            i += 1; // padding between elements
            continue;
        }
        let (eid, len, at) = if two_byte {
            (b, usize::from(*head.get(i + 1)?), i + 2)
        } else if b >> 4 == 15 {
            return None; // reserved: stop reading (RFC 8285 4.2)
        } else {
            (b >> 4, usize::from(b & 0x0f) + 1, i + 1)
        };
        if eid == id {
            return (at + len <= end).then_some(at);
        }
        i = at + len;
    }
    None
}

/// The largest padding a packet carries (RFC 3550 5.1: the count is one byte).
pub const MAX_PADDING: usize = 255;

impl Writer {
    /// A padding-only packet for a bandwidth probe, protected in the writer's
    /// buffer: on the leg's RTX stream `(ssrc, payload type, sequence number)`,
    /// with `ts`, the leg's mid and `stamps`, and `padding` bytes
    /// (1..=255) of RTP padding as its whole payload. A receiver counts it in
    /// its transport-wide feedback and drops it (an RTX packet too short to
    /// hold an original sequence number), as it does libwebrtc's own padding.
    #[allow(clippy::too_many_arguments)]
    pub fn padding(
        &mut self,
        ctx: &mut Context,
        rewrite: &Rewrite,
        rtx: (u32, u8, u16),
        ts: u32,
        stamps: Stamps,
        padding: usize,
    ) -> Result<&[u8], Error> {
        let (ssrc, pt, seq) = rtx;
        let send = Send { ssrc: super::ids::Ssrc(ssrc), seq, ts, pt, vp8: None, switched: false };
        let src = Header { version: 2, padding: true, ..Header::default() };
        self.write_header(rewrite, &src, &send, stamps)?;
        let n = padding.clamp(1, MAX_PADDING);
        self.plain.extend(std::iter::repeat_n(0, n - 1));
        self.plain.push(n as u8);
        ctx.encrypt_rtp_in_place(&mut self.plain, &self.header)?;
        Ok(&self.plain)
    }
}

/// What the engine keeps per subscriber leg for writing to it directly.
#[derive(Debug, Default)]
pub struct LegOut {
    /// Where the leg's SRTP and DTLS go: the remote address of the pair ICE
    /// selected, learnt from what webrtc-rs itself sends.
    pub remote: Option<SocketAddr>,
    next_transport_seq: u16,
    /// What abs-send-time counts from.
    epoch: Option<Instant>,
    /// Every byte written to the leg directly (media, retransmissions,
    /// padding): what a probe's padding tops up.
    pub sent_bytes: u64,
    /// Payload and padding bytes of the packets stamped with abs-send-time:
    /// what a REMB receiver's estimate is measured against.
    pub stamped_bytes: u64,
    /// Every packet written to the leg directly.
    pub sent_packets: u64,
}

impl LegOut {
    /// Note a datagram webrtc-rs sends on this leg: DTLS (first byte 20–63)
    /// and SRTP/SRTCP (128–191) go to the selected pair; STUN answers
    /// (0–3) go to whoever checked, so they are not taken as the address.
    pub fn on_transmit(&mut self, data: &[u8], to: SocketAddr) {
        if matches!(data.first(), Some(20..=63 | 128..=191)) {
            self.remote = Some(to);
        }
    }

    /// The leg's next transport-wide sequence number.
    pub fn transport_seq(&mut self) -> u16 {
        let n = self.next_transport_seq;
        self.next_transport_seq = n.wrapping_add(1);
        n
    }

    /// `now` as abs-send-time: seconds in 6.18 fixed point, 24 bits (it
    /// wraps every 64 s; receivers use only differences), counted from the
    /// leg's first packet.
    pub fn send_time(&mut self, now: Instant) -> u32 {
        let since = now.saturating_duration_since(*self.epoch.get_or_insert(now));
        ((since.as_nanos() << 18) / 1_000_000_000) as u32 & 0x00ff_ffff
    }
}

/// An RTCP sender report for a consumer that last sent RTP timestamp
/// `last.0` at `last.1`: the timestamp is carried forward to `now` at the
/// codec's clock rate, against the wall clock `wall` (RFC 3550 6.4.1).
/// `octets` counts payload only.
pub fn sender_report(
    ssrc: u32,
    clock_rate: u32,
    last: (u32, Instant),
    packets: u64,
    octets: u64,
    now: Instant,
    wall: SystemTime,
) -> SenderReport {
    let elapsed = now.saturating_duration_since(last.1).as_secs_f64();
    let ticks = (elapsed * f64::from(clock_rate)) as u64;
    SenderReport {
        ssrc,
        ntp_time: crate::analytics::rtt::ntp64(wall),
        rtp_time: last.0.wrapping_add(ticks as u32),
        // RFC 3550: the counts wrap.
        packet_count: packets as u32,
        octet_count: octets as u32,
        ..Default::default()
    }
}

/// Marshal and protect an RTCP packet for a leg.
pub fn protect_rtcp(ctx: &mut Context, pkt: &impl Marshal) -> Result<BytesMut, Error> {
    let raw = pkt.marshal()?;
    ctx.encrypt_rtcp(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp::header::Extension;
    use rtc::shared::marshal::Unmarshal;
    use rtc::srtp::protection_profile::ProtectionProfile;
    use std::time::Duration;

    /// A sender and a receiver context with the same keys, as the two ends
    /// of a leg would have after DTLS.
    fn contexts(profile: ProtectionProfile) -> (Context, Context) {
        let provider = rtc::crypto::default_provider().expect("a crypto provider");
        let key = vec![7u8; profile.key_len()];
        let salt = vec![9u8; profile.salt_len()];
        let tx = Context::new(&key, &salt, profile, None, None, provider.crypto()).expect("context");
        let rx = Context::new(&key, &salt, profile, None, None, provider.crypto()).expect("context");
        (tx, rx)
    }

    fn publisher_packet(seq: u16, payload: &'static [u8], padding: bool) -> rtp::Packet {
        rtp::Packet {
            header: Header {
                version: 2,
                padding,
                marker: true,
                payload_type: 96,
                sequence_number: seq,
                timestamp: 3000,
                ssrc: 1111,
                extension: true,
                extension_profile: rtp::header::EXTENSION_PROFILE_ONE_BYTE,
                extensions: vec![
                    Extension { id: 1, payload: Bytes::from_static(b"\x90") },
                    Extension { id: 9, payload: Bytes::from_static(b"rid") },
                ],
                ..Default::default()
            },
            payload: Bytes::from_static(payload),
        }
    }

    fn send(seq: u16) -> Send {
        Send { ssrc: crate::media::ids::Ssrc(4242), seq, ts: 3000, pt: 100, vp8: None, switched: false }
    }

    fn rewrite() -> Rewrite {
        Rewrite {
            extensions: vec![(1, 3)],
            mid: Some((4, Bytes::from_static(b"1"))),
            transport_cc: Some(5),
            ..Default::default()
        }
    }

    fn seq_stamp(n: u16) -> Stamps {
        Stamps { transport_seq: Some(n), send_time: None }
    }

    /// A leg without transport-cc that negotiated abs-send-time: every copy,
    /// retransmission and padding packet carries the SFU's send time in that
    /// extension, whatever else the header holds (one- or two-byte form).
    #[test]
    fn abs_send_time_is_written_where_the_leg_wants_it() {
        let (mut tx, mut rx) = contexts(ProtectionProfile::AeadAes128Gcm);
        let mut w = Writer::default();
        let mut r = Rewrite {
            extensions: vec![(1, 3)],
            mid: Some((4, Bytes::from_static(b"1"))),
            abs_send_time: Some(2),
            ..Default::default()
        };
        let stamps = Stamps { transport_seq: None, send_time: Some(0x12_3456) };
        let mut check = |r: &Rewrite, out: Vec<u8>| {
            let mut plain = rx.decrypt_rtp(&out).expect("decrypts");
            let got = rtp::Packet::unmarshal(&mut plain).expect("parses");
            assert_eq!(got.header.get_extension(2).as_deref(), Some(&[0x12, 0x34, 0x56][..]), "{r:?}");
            assert_eq!(got.header.get_extension(4).as_deref(), Some(&b"1"[..]));
        };
        let out =
            w.protect(&mut tx, &r, &publisher_packet(1, b"media", false), &send(1), stamps, None).unwrap().to_vec();
        check(&r, out);
        let out = w
            .protect(&mut tx, &r, &publisher_packet(2, b"again", true), &send(2), stamps, Some((5555, 101, 3)))
            .unwrap()
            .to_vec();
        check(&r, out);
        let out = w.padding(&mut tx, &r, (5555, 101, 4), 3000, stamps, 40).unwrap().to_vec();
        check(&r, out);
        // A mid longer than 16 bytes forces the two-byte form.
        r.mid = Some((4, Bytes::from_static(b"a-mid-of-twenty-bytes")));
        let out =
            w.protect(&mut tx, &r, &publisher_packet(3, b"media", false), &send(3), stamps, None).unwrap().to_vec();
        let mut plain = rx.decrypt_rtp(&out).expect("decrypts");
        let got = rtp::Packet::unmarshal(&mut plain).expect("parses");
        assert_eq!(got.header.extension_profile, rtp::header::EXTENSION_PROFILE_TWO_BYTE);
        assert_eq!(got.header.get_extension(2).as_deref(), Some(&[0x12, 0x34, 0x56][..]));
        // Without send_time (a leg numbered by transport-cc), no placeholder.
        r.mid = None;
        let out = w
            .protect(&mut tx, &r, &publisher_packet(4, b"media", false), &send(4), Stamps::default(), None)
            .unwrap()
            .to_vec();
        let mut plain = rx.decrypt_rtp(&out).expect("decrypts");
        let got = rtp::Packet::unmarshal(&mut plain).expect("parses");
        assert_eq!(got.header.get_extension(2), None);
    }

    #[test]
    fn extensions_are_found_in_marshalled_headers_and_garbage_is_not_read_past() {
        // One-byte form: id 1 (1 byte), padding, id 2 (3 bytes).
        let head = [0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0xbe, 0xde, 0, 2, 0x10, 0xaa, 0, 0x22, 1, 2, 3, 0];
        assert_eq!(extension_at(&head, 2), Some(20));
        assert_eq!(extension_at(&head, 1), Some(17));
        assert_eq!(extension_at(&head, 3), None);
        assert_eq!(extension_at(&head[..21], 2), None, "cut short");
        assert_eq!(extension_at(&head[..3], 2), None);
        let mut no_x = head;
        no_x[0] = 0x80;
        assert_eq!(extension_at(&no_x, 2), None);
    }

    #[test]
    fn send_times_are_6_18_fixed_point_seconds_from_the_first() {
        let t0 = Instant::now();
        let mut l = LegOut::default();
        assert_eq!(l.send_time(t0), 0);
        assert_eq!(l.send_time(t0 + std::time::Duration::from_millis(250)), 1 << 16);
        assert_eq!(l.send_time(t0 + std::time::Duration::from_secs(1)), 1 << 18);
        assert_eq!(l.send_time(t0 + std::time::Duration::from_secs(65)), 1 << 18, "wraps at 64 s");
    }

    /// What a receiver decrypts is the rewritten packet, for both profiles,
    /// and the writer's reused buffers carry nothing from one copy to the next.
    #[test]
    fn a_protected_copy_decrypts_to_the_rewritten_packet() {
        for profile in [ProtectionProfile::AeadAes128Gcm, ProtectionProfile::Aes128CmHmacSha1_80] {
            let (mut tx, mut rx) = contexts(profile);
            let mut w = Writer::default();
            for (i, (payload, padding)) in
                [(&b"keyframe!"[..], false), (&b"abcd"[..], true), (&b"xyz"[..], true)].into_iter().enumerate()
            {
                let src = publisher_packet(7000 + i as u16, payload, padding);
                let out = w
                    .protect(&mut tx, &rewrite(), &src, &send(10 + i as u16), seq_stamp(65535), None)
                    .expect("protect");
                let mut plain = rx.decrypt_rtp(out).expect("decrypts");
                let got = rtp::Packet::unmarshal(&mut plain).expect("parses");
                let h = &got.header;
                assert_eq!((h.ssrc, h.payload_type, h.sequence_number, h.timestamp), (4242, 100, 10 + i as u16, 3000));
                let exts: Vec<(u8, &[u8])> = h.extensions.iter().map(|e| (e.id, &e.payload[..])).collect();
                assert_eq!(exts, vec![(3, &b"\x90"[..]), (4, &b"1"[..]), (5, &[0xff, 0xff][..])]);
                assert_eq!(&got.payload[..], payload, "{profile:?}: padding is added and stripped again");
            }
            // A retransmission on RTX: its own SSRC, type and number; the
            // original number leads the payload.
            let src = publisher_packet(7000, b"lost", true);
            let out =
                w.protect(&mut tx, &rewrite(), &src, &send(42), seq_stamp(3), Some((5555, 101, 9))).expect("protect");
            let mut plain = rx.decrypt_rtp(out).expect("decrypts");
            let got = rtp::Packet::unmarshal(&mut plain).expect("parses");
            let h = &got.header;
            assert_eq!((h.ssrc, h.payload_type, h.sequence_number, h.timestamp), (5555, 101, 9, 3000));
            assert_eq!(&got.payload[..], b"\x00\x2alost");
        }
    }

    /// A probe's padding: on the RTX stream, numbered on the leg, the mid
    /// written, and nothing but padding once the receiver strips it.
    #[test]
    fn a_padding_packet_is_all_padding_on_the_rtx_stream() {
        let (mut tx, mut rx) = contexts(ProtectionProfile::AeadAes128Gcm);
        let mut w = Writer::default();
        // A used writer: the media copy before must not leak into the padding.
        w.protect(&mut tx, &rewrite(), &publisher_packet(1, b"media", false), &send(1), seq_stamp(1), None).unwrap();
        for (n, want) in [(255usize, 255usize), (1, 1), (0, 1), (9000, 255)] {
            let out = w.padding(&mut tx, &rewrite(), (5555, 101, 77), 3000, seq_stamp(513), n).expect("padding");
            let len = out.len();
            let mut plain = rx.decrypt_rtp(out).expect("decrypts");
            let raw = plain.clone();
            let got = rtp::Packet::unmarshal(&mut plain).expect("parses");
            let h = &got.header;
            assert!(h.padding && got.payload.is_empty(), "padding {n}: payload {:?}", got.payload);
            assert_eq!((h.ssrc, h.payload_type, h.sequence_number, h.timestamp), (5555, 101, 77, 3000));
            let exts: Vec<(u8, &[u8])> = h.extensions.iter().map(|e| (e.id, &e.payload[..])).collect();
            assert_eq!(exts, vec![(4, &b"1"[..]), (5, &[2, 1][..])], "the mid and the leg's number only");
            assert_eq!(usize::from(*raw.last().unwrap()), want);
            assert!(len > want + 12);
        }
    }

    /// The vendored in-place protection (vendor/rtc-srtp/CONFER-PATCH.md)
    /// writes byte for byte what the published `encrypt_rtp` returns, for
    /// both profiles, across a sequence-number rollover (the ROC must move).
    #[test]
    fn in_place_protection_matches_the_published_encrypt() {
        for profile in [ProtectionProfile::AeadAes128Gcm, ProtectionProfile::Aes128CmHmacSha1_80] {
            let (mut in_place, mut published) = contexts(profile);
            let (_, mut rx) = contexts(profile);
            let mut w = Writer::default();
            for seq in [65533u16, 65534, 65535, 0, 1, 2] {
                let src = publisher_packet(seq, b"same bytes either way", seq % 2 == 0);
                let ours =
                    w.protect(&mut in_place, &rewrite(), &src, &send(seq), seq_stamp(seq), None).expect("protect");
                let ours = ours.to_vec();
                let plain = rx.decrypt_rtp(&ours).expect("decrypts");
                let theirs = published.encrypt_rtp(&plain).expect("published encrypt");
                assert_eq!(ours, &theirs[..], "{profile:?} seq {seq}");
            }
        }
    }

    #[test]
    fn remote_is_learnt_from_dtls_and_srtp_not_stun() {
        let mut l = LegOut::default();
        let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        l.on_transmit(&[0x01, 0x01], a);
        assert_eq!(l.remote, None);
        l.on_transmit(&[22, 254, 253], a);
        l.on_transmit(&[0x01, 0x01], b);
        assert_eq!(l.remote, Some(a));
        l.on_transmit(&[0x80, 96], b);
        assert_eq!(l.remote, Some(b));
        assert_eq!((l.transport_seq(), l.transport_seq()), (0, 1));
    }

    #[test]
    fn sender_reports_carry_the_timestamp_forward() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let sr = sender_report(9, 90_000, (u32::MAX - 10, t0), 5, 5000, t0 + Duration::from_millis(100), wall);
        assert_eq!(sr.rtp_time, 9_000 - 11, "100 ms at 90 kHz, across the wrap");
        assert_eq!((sr.ssrc, sr.packet_count, sr.octet_count), (9, 5, 5000));
        assert_eq!(sr.ntp_time, crate::analytics::rtt::ntp64(wall));
        let (mut tx, mut rx) = contexts(ProtectionProfile::AeadAes128Gcm);
        let out = protect_rtcp(&mut tx, &sr).expect("protect");
        let mut plain = rx.decrypt_rtcp(&out).expect("decrypts");
        let pkts = rtc::rtcp::packet::unmarshal(&mut plain).expect("parses");
        assert_eq!(pkts[0].as_any().downcast_ref::<SenderReport>(), Some(&sr));
    }
}
