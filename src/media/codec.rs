//! Payload-level pieces of simulcast forwarding: which packets start a keyframe (VP8, H.264), the VP8 payload
//! descriptor (RFC 7741 §4.2), and the per-subscriber rewriting that keeps one continuous stream when the forwarded
//! layer changes: VP8 picture ID, TL0PICIDX and KEYIDX ([`Vp8Munger`]) and the RTP timestamp ([`TsRewriter`]).
//! Sequence numbers are another module's. Everything here is pure (no clock reads: the caller passes elapsed time
//! in) and allocation-free. Hand-written because no crate rewrites VP8 descriptors in place for an SFU.

use std::time::Duration;

/// A track's codec, from its negotiated MIME type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Vp8,
    H264,
    Vp9,
    Av1,
    Opus,
    Other,
}

impl Codec {
    /// `video/VP8` → [`Codec::Vp8`] and so on, case-insensitively; anything unknown is [`Codec::Other`].
    pub fn from_mime(mime: &str) -> Codec {
        const KNOWN: [(&str, Codec); 5] = [
            ("video/vp8", Codec::Vp8),
            ("video/h264", Codec::H264),
            ("video/vp9", Codec::Vp9),
            ("video/av1", Codec::Av1),
            ("audio/opus", Codec::Opus),
        ];
        KNOWN.iter().find(|(m, _)| m.eq_ignore_ascii_case(mime)).map_or(Codec::Other, |&(_, c)| c)
    }

    /// Whether simulcast layers of this codec may be switched: only VP8 and H.264, whose keyframes [`is_keyframe`]
    /// recognises. For any other codec it always says false, so the caller must keep the layer it started with
    /// rather than treat "unknown" as "switch at any packet".
    pub fn switchable(self) -> bool {
        matches!(self, Codec::Vp8 | Codec::H264)
    }
}

/// Whether `payload` (an RTP payload) starts a keyframe a decoder can begin at: the point where a forwarder may
/// switch to this stream. Always false for codecs other than VP8 and H.264 (see [`Codec::switchable`]).
///
/// - VP8: the descriptor's S bit set with partition index 0 (the frame's first packet, RFC 7741 §4.2–4.3), then a
///   frame tag with the P bit clear and the keyframe start code `9d 01 2a` (RFC 6386 §9.1).
/// - H.264 (RFC 6184): a single NAL unit of type 5 (IDR) or 7 (SPS), a STAP-A (24) aggregating one, or the start
///   fragment of an FU-A (28) of one.
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8_keyframe(payload),
        Codec::H264 => h264_keyframe(payload),
        Codec::Vp9 | Codec::Av1 | Codec::Opus | Codec::Other => false,
    }
}

fn vp8_keyframe(payload: &[u8]) -> bool {
    let Some(d) = parse_vp8(payload) else { return false };
    if !d.start_of_partition || d.partition_id != 0 {
        return false;
    }
    payload.get(d.header_len..d.header_len + 6).is_some_and(|f| f[0] & 0x01 == 0 && f[3..6] == [0x9d, 0x01, 0x2a])
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

fn is_key_nal(header: u8) -> bool {
    matches!(header & 0x1f, NAL_IDR | NAL_SPS)
}

fn h264_keyframe(payload: &[u8]) -> bool {
    let Some(&header) = payload.first() else { return false };
    match header & 0x1f {
        NAL_STAP_A => {
            // Each aggregated unit is a 16-bit size and the NAL unit; a unit running past the end stops the walk.
            let mut rest = &payload[1..];
            while rest.len() >= 2 {
                let size = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                let Some(nal) = rest.get(2..2 + size) else { return false };
                if nal.first().is_some_and(|&h| is_key_nal(h)) {
                    return true;
                }
                rest = &rest[2 + size..];
            }
            false
        }
        // The FU header: S (start fragment) and the fragmented unit's type.
        NAL_FU_A => payload.get(1).is_some_and(|&fu| fu & 0x80 != 0 && is_key_nal(fu)),
        _ => is_key_nal(header),
    }
}

/// The VP8 payload descriptor at the start of an RTP payload (RFC 7741 §4.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// PictureID, when the I bit is set: 15 bits if `picture_id_15bit` (M set), else 7.
    pub picture_id: Option<u16>,
    pub picture_id_15bit: bool,
    /// TL0PICIDX, when the L bit is set.
    pub tl0picidx: Option<u8>,
    /// Temporal layer index, when the T bit is set.
    pub tid: Option<u8>,
    /// Y: the frame depends only on temporal base layer frames (meaningful with `tid`).
    pub layer_sync: bool,
    /// KEYIDX, when the K bit is set.
    pub key_idx: Option<u8>,
    /// S: this packet starts a VP8 partition.
    pub start_of_partition: bool,
    /// PID: the partition index (3 bits).
    pub partition_id: u8,
    /// N: the frame is not used as a reference and may be discarded.
    pub non_reference: bool,
    /// Length of the descriptor; the VP8 payload starts there.
    pub header_len: usize,
}

/// Parses the VP8 payload descriptor at the start of `payload`. `None` if it is truncated or no VP8 data follows
/// it; never panics.
pub fn parse_vp8(payload: &[u8]) -> Option<Vp8Descriptor> {
    let b0 = *payload.first()?;
    let mut d = Vp8Descriptor {
        non_reference: b0 & 0x20 != 0,
        start_of_partition: b0 & 0x10 != 0,
        partition_id: b0 & 0x07,
        header_len: 1,
        ..Vp8Descriptor::default()
    };
    if b0 & 0x80 != 0 {
        let x = *payload.get(1)?;
        let mut at = 2;
        if x & 0x80 != 0 {
            let m = *payload.get(at)?;
            if m & 0x80 != 0 {
                d.picture_id = Some(u16::from_be_bytes([m & 0x7f, *payload.get(at + 1)?]));
                d.picture_id_15bit = true;
                at += 2;
            } else {
                d.picture_id = Some(u16::from(m));
                at += 1;
            }
        }
        if x & 0x40 != 0 {
            d.tl0picidx = Some(*payload.get(at)?);
            at += 1;
        }
        if x & 0x30 != 0 {
            let tk = *payload.get(at)?;
            at += 1;
            if x & 0x20 != 0 {
                d.tid = Some(tk >> 6);
                d.layer_sync = tk & 0x20 != 0;
            }
            if x & 0x10 != 0 {
                d.key_idx = Some(tk & 0x1f);
            }
        }
        d.header_len = at;
    }
    (d.header_len < payload.len()).then_some(d)
}

/// One rewritten counter of `bits` bits: out = in + offset, the offset recomputed at the first packet after a
/// switch that carries the field so that it continues at the highest value sent so far + 1.
#[derive(Clone, Copy, Debug, Default)]
struct Field {
    offset: u32,
    /// The highest outgoing value (in the field's full width), by wrapping comparison.
    highest: Option<u32>,
    pending: bool,
}

impl Field {
    /// Maps an incoming `value` of `width` bits (≤ `bits`; a 7-bit picture ID in a 15-bit field) to the outgoing
    /// value in the same width.
    fn map(&mut self, value: u32, width: u32, bits: u32) -> u32 {
        let (full, mask) = (1u32 << bits, (1u32 << width) - 1);
        if std::mem::take(&mut self.pending) {
            if let Some(h) = self.highest {
                self.offset = (h + 1 + full - value) & (full - 1);
            }
        }
        let out = (value + self.offset) & mask;
        match self.highest {
            None => self.highest = Some(out),
            Some(h) => {
                // Newer if ahead by less than half the packet's own number space.
                let ahead = (out + mask + 1 - (h & mask)) & mask;
                if ahead != 0 && ahead <= mask / 2 {
                    self.highest = Some((h + ahead) & (full - 1));
                }
            }
        }
        out
    }
}

/// Keeps the VP8 picture ID, TL0PICIDX and KEYIDX of one outgoing (subscriber, track) stream continuous while the
/// incoming stream it forwards changes (simulcast layer switches), so the subscriber's decoder sees one stream.
///
/// Within an incoming stream every field is the incoming one plus a fixed offset, so packets of one picture share
/// an outgoing picture ID and reordered or retransmitted packets keep their mapping. At the first packet after
/// [`Vp8Munger::switch`] the offsets are recomputed so that the picture ID and TL0PICIDX continue at the highest
/// value sent + 1 and KEYIDX moves on by one (the new stream starts with its own keyframe). The first stream ever
/// forwarded goes out unchanged. Rewriting is in place and keeps each field's width (7- or 15-bit picture IDs are
/// rewritten in the width the packet uses, the 7-bit ones modulo 128), so the payload length never changes.
#[derive(Clone, Debug, Default)]
pub struct Vp8Munger {
    picture_id: Field,
    tl0picidx: Field,
    key_idx: Field,
}

impl Vp8Munger {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next packets come from a different incoming stream (a layer switch); the first of them is a keyframe.
    /// Packets the old stream sent before the switch must not be rewritten afterwards: they would get the new
    /// stream's mapping.
    pub fn switch(&mut self) {
        for f in [&mut self.picture_id, &mut self.tl0picidx, &mut self.key_idx] {
            f.pending = true;
        }
    }

    /// Rewrites the descriptor of one forwarded packet in place; `payload` is the packet's RTP payload. Returns
    /// false, leaving it untouched, if it is not a valid VP8 payload: the caller drops the packet.
    pub fn rewrite(&mut self, payload: &mut [u8]) -> bool {
        self.plan(payload).is_some_and(|r| r.apply(payload))
    }

    /// What [`Vp8Munger::rewrite`] would write into this payload's descriptor, advancing the munger as it does,
    /// without touching the payload: a forwarder decides, the writer applies it to its own copy (and a
    /// retransmission applies the same plan again). `None`: not a valid VP8 payload.
    pub fn plan(&mut self, payload: &[u8]) -> Option<Vp8Rewrite> {
        let d = parse_vp8(payload)?;
        let picture_id = d.picture_id.map(|id| {
            let width = if d.picture_id_15bit { 15 } else { 7 };
            self.picture_id.map(u32::from(id), width, 15) as u16
        });
        let tl0picidx = d.tl0picidx.map(|t| self.tl0picidx.map(u32::from(t), 8, 8) as u8);
        let key_idx = d.key_idx.map(|k| self.key_idx.map(u32::from(k), 5, 5) as u8);
        Some(Vp8Rewrite { picture_id, tl0picidx, key_idx })
    }
}

/// The outgoing values of one packet's VP8 descriptor fields, as a [`Vp8Munger`] planned them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vp8Rewrite {
    pub picture_id: Option<u16>,
    pub tl0picidx: Option<u8>,
    pub key_idx: Option<u8>,
}

impl Vp8Rewrite {
    /// Write the planned values into `payload`'s descriptor, in place, in the widths the payload uses. False
    /// (payload untouched) if it is not a valid VP8 payload.
    pub fn apply(&self, payload: &mut [u8]) -> bool {
        let Some(d) = parse_vp8(payload) else { return false };
        let mut at = 2;
        if let (Some(_), Some(out)) = (d.picture_id, self.picture_id) {
            if d.picture_id_15bit {
                payload[2] = 0x80 | ((out >> 8) as u8 & 0x7f);
                payload[3] = out as u8;
                at = 4;
            } else {
                payload[2] = out as u8 & 0x7f;
                at = 3;
            }
        } else if d.picture_id.is_some() {
            at = if d.picture_id_15bit { 4 } else { 3 };
        }
        if let Some(tl0) = d.tl0picidx {
            payload[at] = self.tl0picidx.unwrap_or(tl0);
            at += 1;
        }
        if let (Some(_), Some(k)) = (d.key_idx, self.key_idx) {
            payload[at] = (payload[at] & 0xe0) | (k & 0x1f);
        }
        true
    }
}

/// Keeps the RTP timestamps of one outgoing stream continuous across switches between incoming streams, whose
/// timestamps are unrelated. Within a stream out = in + offset (wrapping); the first packet after
/// [`TsRewriter::switch`] goes out at the highest timestamp sent + the time since then in clock ticks (at least 1).
#[derive(Clone, Debug)]
pub struct TsRewriter {
    clock_rate: u32,
    offset: u32,
    highest: Option<u32>,
    pending: bool,
}

impl TsRewriter {
    pub fn new(clock_rate: u32) -> Self {
        Self { clock_rate, offset: 0, highest: None, pending: false }
    }

    /// The next packets come from a different incoming stream.
    pub fn switch(&mut self) {
        self.pending = true;
    }

    /// The outgoing timestamp for incoming `ts`; `since_last_sent` (time since this stream's last forwarded
    /// packet, from the caller's clock) is used only for the first packet after a switch.
    pub fn rewrite(&mut self, ts: u32, since_last_sent: Duration) -> u32 {
        if std::mem::take(&mut self.pending) {
            if let Some(h) = self.highest {
                // Capped below 2^31 so that the jump still reads as forwards.
                let ticks = (since_last_sent.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000)
                    .clamp(1, i32::MAX as u128) as u32;
                self.offset = h.wrapping_add(ticks).wrapping_sub(ts);
            }
        }
        let out = ts.wrapping_add(self.offset);
        if self.highest.is_none_or(|h| (out.wrapping_sub(h) as i32) > 0) {
            self.highest = Some(out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_TAG: [u8; 10] = [0x50, 0x2d, 0x01, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]; // 640×480
    const DELTA_TAG: [u8; 6] = [0x51, 0x2d, 0x01, 0x11, 0x22, 0x33];

    /// A packet with every optional field: I (7- or 15-bit), L, T with Y, K.
    fn packet(id: u16, wide: bool, tl0: u8, tid: u8, key: u8, start: bool, keyframe: bool) -> Vec<u8> {
        let mut p = vec![0x80 | if start { 0x10 } else { 0 }, 0xf0];
        if wide {
            p.extend([0x80 | (id >> 8) as u8, id as u8]);
        } else {
            p.push(id as u8 & 0x7f);
        }
        p.extend([tl0, tid << 6 | 0x20 | key]);
        match (start, keyframe) {
            (true, true) => p.extend(KEY_TAG),
            (true, false) => p.extend(DELTA_TAG),
            _ => p.extend([0xcc; 7]),
        }
        p
    }

    #[test]
    fn vp8_keyframes() {
        let key = packet(1000, true, 5, 0, 3, true, true);
        assert!(is_keyframe(Codec::Vp8, &key));
        assert!(!is_keyframe(Codec::Vp8, &packet(1000, true, 5, 0, 3, true, false)), "an interframe");
        assert!(!is_keyframe(Codec::Vp8, &packet(1000, true, 5, 0, 3, false, true)), "a continuation");
        let mut p_bit = key.clone();
        p_bit[6] |= 0x01;
        assert!(!is_keyframe(Codec::Vp8, &p_bit), "P set, even with the start code's bytes");
        let mut no_start_code = key.clone();
        no_start_code[10] = 0;
        assert!(!is_keyframe(Codec::Vp8, &no_start_code));
        let mut other_partition = key.clone();
        other_partition[0] |= 0x01;
        assert!(!is_keyframe(Codec::Vp8, &other_partition));
        let mut minimal = vec![0x10];
        minimal.extend(KEY_TAG);
        assert!(is_keyframe(Codec::Vp8, &minimal), "no extension");
        for n in 0..key.len() {
            // The descriptor (6 bytes) and the frame tag with its start code (6) are needed, not the dimensions.
            assert_eq!(is_keyframe(Codec::Vp8, &key[..n]), n >= 12, "truncated to {n}");
        }
        for c in [Codec::Vp9, Codec::Av1, Codec::Opus, Codec::Other] {
            assert!(!is_keyframe(c, &key) && !is_keyframe(c, &minimal), "{c:?}");
        }
        assert_eq!(Codec::from_mime("video/VP8"), Codec::Vp8);
        assert_eq!(Codec::from_mime("VIDEO/h264"), Codec::H264);
        assert_eq!(Codec::from_mime("video/rtx"), Codec::Other);
        assert!(Codec::Vp8.switchable() && Codec::H264.switchable() && !Codec::Vp9.switchable());
    }

    #[test]
    fn h264_keyframes() {
        let yes: [&[u8]; 5] = [
            &[0x65, 0x88, 0x84],                                                 // IDR
            &[0x67, 0x42, 0xc0, 0x1f],                                           // SPS
            &[0x78, 0, 3, 0x67, 0x42, 0xc0, 0, 2, 0x68, 0xce, 0, 2, 0x65, 0x88], // STAP-A
            &[0x78, 0, 2, 0x68, 0xce, 0, 0, 0, 2, 0x65, 0x88],                   // PPS, empty, IDR
            &[0x7c, 0x85, 0x88, 0x84],                                           // FU-A start, IDR
        ];
        for p in yes {
            assert!(is_keyframe(Codec::H264, p), "{p:02x?}");
        }
        let no: [&[u8]; 8] = [
            &[],
            &[0x41, 0x9a],                         // non-IDR slice
            &[0x68, 0xce],                         // PPS alone
            &[0x7c, 0x05, 0x88],                   // FU-A middle of an IDR
            &[0x7c, 0x81, 0x9a],                   // FU-A start of a non-IDR slice
            &[0x7c],                               // FU-A without its header
            &[0x78, 0, 2, 0x68, 0xce, 0, 2, 0x41], // STAP-A: PPS, non-IDR
            &[0x78, 0, 9, 0x65, 0x88],             // STAP-A whose IDR runs past the end
        ];
        for p in no {
            assert!(!is_keyframe(Codec::H264, p), "{p:02x?}");
        }
        // Only whole aggregated units count: the SPS is complete from 6 bytes on; PPS then IDR, from 11.
        for (stap, whole) in [(yes[2], 6), (yes[3], 11)] {
            for n in 0..stap.len() {
                assert_eq!(is_keyframe(Codec::H264, &stap[..n]), n >= whole, "{stap:02x?} truncated to {n}");
            }
        }
    }

    #[test]
    fn parses_descriptors() {
        assert_eq!(
            parse_vp8(&[0x10, 0x50]),
            Some(Vp8Descriptor { start_of_partition: true, header_len: 1, ..Default::default() })
        );
        assert_eq!(parse_vp8(&[0x23, 0x00]).map(|d| (d.non_reference, d.partition_id)), Some((true, 3)));
        let full = [0x90, 0xf0, 0x83, 0xe8, 0x05, 0x7e, 0xaa];
        let want = Vp8Descriptor {
            picture_id: Some(1000),
            picture_id_15bit: true,
            tl0picidx: Some(5),
            tid: Some(1),
            layer_sync: true,
            key_idx: Some(0x1e),
            start_of_partition: true,
            partition_id: 0,
            non_reference: false,
            header_len: 6,
        };
        assert_eq!(parse_vp8(&full), Some(want));
        let short = parse_vp8(&[0x80, 0x80, 0x7f, 0xaa]).unwrap();
        assert_eq!((short.picture_id, short.picture_id_15bit, short.header_len), (Some(127), false, 3));
        let lt = parse_vp8(&[0x80, 0x60, 0x09, 0x40, 0xaa]).unwrap();
        assert_eq!(
            (lt.picture_id, lt.tl0picidx, lt.tid, lt.layer_sync, lt.key_idx),
            (None, Some(9), Some(1), false, None)
        );
        let k = parse_vp8(&[0x80, 0x10, 0xff, 0xaa]).unwrap();
        assert_eq!((k.tid, k.key_idx, k.header_len), (None, Some(0x1f), 3));
        let x_empty = parse_vp8(&[0x80, 0x00, 0xaa]).unwrap();
        assert_eq!(x_empty.header_len, 2);
        for p in [&full[..], &[0x80, 0x80, 0x7f, 0xaa], &[0x80, 0x60, 0x09, 0x40, 0xaa], &[0x10, 0x50]] {
            for n in 0..p.len() {
                assert_eq!(parse_vp8(&p[..n]), None, "{p:02x?} truncated to {n}");
            }
        }
    }

    /// One incoming simulcast encoding: every picture is three packets; TL0PICIDX counts TID 0 pictures.
    struct Stream {
        id: u16,
        wide: bool,
        tl0: u8,
        key: u8,
        n: u32,
    }

    impl Stream {
        fn picture(&mut self, keyframe: bool) -> (u8, [Vec<u8>; 3]) {
            let tid = if keyframe { 0 } else { (self.n % 2) as u8 };
            if tid == 0 {
                self.tl0 = self.tl0.wrapping_add(1);
            }
            let (id, tl0, key) = (self.id, self.tl0, self.key);
            self.id = (self.id + 1) & if self.wide { 0x7fff } else { 0x7f };
            self.n += 1;
            let p = |start| packet(id, self.wide, tl0, tid, key, start, keyframe);
            (tid, [p(true), p(false), p(false)])
        }
    }

    /// Rewrites `p`, checks that only the three counters changed, and returns them.
    fn forward(m: &mut Vp8Munger, p: &[u8]) -> (u16, u8, u8) {
        let mut out = p.to_vec();
        assert!(m.rewrite(&mut out));
        let (a, b) = (parse_vp8(p).unwrap(), parse_vp8(&out).unwrap());
        assert_eq!(out.len(), p.len());
        assert_eq!(out[..2], p[..2]);
        assert_eq!(out[b.header_len..], p[a.header_len..]);
        assert_eq!(out[b.header_len - 1] & 0xe0, p[a.header_len - 1] & 0xe0, "TID and Y");
        let strip = |d: Vp8Descriptor| Vp8Descriptor { picture_id: None, tl0picidx: None, key_idx: None, ..d };
        assert_eq!(strip(a), strip(b), "widths and flags");
        (b.picture_id.unwrap(), b.tl0picidx.unwrap(), b.key_idx.unwrap())
    }

    #[test]
    fn munger_keeps_counters_continuous_across_switches() {
        let mut q = Stream { id: 1000, wide: true, tl0: 10, key: 3, n: 0 };
        let mut f = Stream { id: 20000, wide: true, tl0: 200, key: 17, n: 0 };
        let mut m = Vp8Munger::new();
        let mut out = Vec::new(); // (tid, id, tl0, keyidx) per forwarded picture
        for t in 0..15 {
            // q for pictures 0..5 and 10..15, f for 5..10; each switch lands on the new stream's keyframe.
            let on_f = (5..10).contains(&t);
            let switch = t == 5 || t == 10;
            let pq = q.picture(t == 0 || t == 10);
            let pf = f.picture(t == 5);
            let (tid, packets) = if on_f { pf } else { pq };
            if switch {
                assert!(is_keyframe(Codec::Vp8, &packets[0]));
                m.switch();
            }
            let got: Vec<_> = packets.iter().map(|p| forward(&mut m, p)).collect();
            assert!(got.iter().all(|g| *g == got[0]), "one picture, one set of ids: {got:?}");
            out.push((tid, got[0].0, got[0].1, got[0].2));
        }
        assert_eq!((out[0].1, out[0].2, out[0].3), (1000, 11, 3), "the first stream goes out unchanged");
        for (i, w) in out.windows(2).enumerate() {
            let ((_, id0, tl0, k0), (tid, id1, tl1, k1)) = (w[0], w[1]);
            assert_eq!(id1, id0 + 1, "picture {}", i + 1);
            assert_eq!(tl1, if tid == 0 { tl0 + 1 } else { tl0 }, "picture {}", i + 1);
            assert_eq!(k1, if i + 1 == 5 || i + 1 == 10 { (k0 + 1) & 0x1f } else { k0 }, "picture {}", i + 1);
        }
    }

    #[test]
    fn munger_wraps_and_maps_seven_bit_ids() {
        let mut m = Vp8Munger::new();
        let mut a = Stream { id: 0x7ffd, wide: true, tl0: 255, key: 31, n: 0 };
        let ids: Vec<_> = (0..2).map(|i| forward(&mut m, &a.picture(i == 0).1[0])).collect();
        assert_eq!(ids, [(0x7ffd, 0, 31), (0x7ffe, 0, 31)]);
        // A 7-bit stream wrapping at 128: mapped modulo 128, in 7 bits.
        let mut b = Stream { id: 126, wide: false, tl0: 40, key: 0, n: 0 };
        m.switch();
        let ids: Vec<_> = (0..4).map(|i| forward(&mut m, &b.picture(i == 0).1[0])).collect();
        assert_eq!(ids.iter().map(|x| x.0).collect::<Vec<_>>(), [0x7f, 0, 1, 2]);
        assert_eq!(ids[0].1, 1, "TL0PICIDX wraps to 0 then +1");
        assert_eq!(ids[0].2, 0, "KEYIDX 31 + 1 wraps");
        // Back to 15 bits: continues after the 15-bit value whose low bits were sent (0x7ffe + 4 → 0x0002).
        let mut c = Stream { id: 5, wide: true, tl0: 0, key: 9, n: 0 };
        m.switch();
        let ids: Vec<_> = (0..2).map(|i| forward(&mut m, &c.picture(i == 0).1[0]).0).collect();
        assert_eq!(ids, [3, 4]);
    }

    #[test]
    fn munger_keeps_mapping_for_late_packets() {
        let mut m = Vp8Munger::new();
        let mut a = Stream { id: 100, wide: true, tl0: 0, key: 0, n: 0 };
        for i in 0..3 {
            forward(&mut m, &a.picture(i == 0).1[0]);
        }
        let mut b = Stream { id: 9000, wide: true, tl0: 50, key: 4, n: 0 };
        m.switch();
        let p0 = b.picture(true).1;
        let p1 = b.picture(false).1;
        assert_eq!(forward(&mut m, &p0[0]).0, 103);
        assert_eq!(forward(&mut m, &p1[0]).0, 104);
        assert_eq!(forward(&mut m, &p1[1]).0, 104);
        assert_eq!(forward(&mut m, &p0[2]).0, 103, "a late packet of the previous picture");
        let mut c = Stream { id: 7, wide: true, tl0: 0, key: 0, n: 0 };
        m.switch();
        assert_eq!(forward(&mut m, &c.picture(true).1[0]).0, 105, "continues after the highest, not the latest");
        // A descriptor without I, L or K passes through; a malformed one is refused untouched.
        let mut plain = [0x10, 0x51, 0x00];
        assert!(m.rewrite(&mut plain));
        assert_eq!(plain, [0x10, 0x51, 0x00]);
        let mut bad = [0x90, 0xf0, 0x83];
        assert!(!m.rewrite(&mut bad));
        assert_eq!(bad, [0x90, 0xf0, 0x83]);
    }

    #[test]
    fn timestamps_continue_across_switches() {
        let ms = Duration::from_millis;
        let mut r = TsRewriter::new(90_000);
        assert_eq!(r.rewrite(1000, ms(0)), 1000);
        assert_eq!(r.rewrite(4000, ms(33)), 4000, "no switch: elapsed time is ignored");
        assert_eq!(r.rewrite(4000, ms(0)), 4000);
        r.switch();
        assert_eq!(r.rewrite(5_000_000, ms(33)), 4000 + 2970);
        assert_eq!(r.rewrite(5_000_000, ms(1)), 6970, "the same frame");
        assert_eq!(r.rewrite(5_003_000, ms(33)), 9970);
        assert_eq!(r.rewrite(4_997_000, ms(0)), 3970, "an older packet keeps the mapping");
        r.switch();
        assert_eq!(r.rewrite(77, ms(0)), 9971, "at least one tick, after the highest");
        let mut w = TsRewriter::new(90_000);
        assert_eq!(w.rewrite(u32::MAX - 1000, ms(0)), u32::MAX - 1000);
        w.switch();
        assert_eq!(w.rewrite(123, ms(100)), 9000 - 1001);
        assert_eq!(w.rewrite(3123, ms(33)), 10_999);
        w.switch();
        let far = w.rewrite(0, Duration::from_secs(1 << 40));
        assert_eq!(far.wrapping_sub(10_999), i32::MAX as u32, "a huge gap still reads as forwards");
    }

    #[test]
    fn random_payloads_never_panic_or_resize() {
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut m = Vp8Munger::new();
        let mut ts = TsRewriter::new(90_000);
        let (mut buf, mut orig) = ([0u8; 40], [0u8; 40]);
        for i in 0..100_000u32 {
            let len = (next() % 41) as usize;
            for b in &mut buf[..len] {
                *b = next() as u8;
            }
            if len > 0 && i % 2 == 0 {
                buf[0] |= 0x80; // exercise the extension fields half the time
            }
            orig[..len].copy_from_slice(&buf[..len]);
            let d = parse_vp8(&buf[..len]);
            for c in [Codec::Vp8, Codec::H264, Codec::Vp9, Codec::Av1, Codec::Opus, Codec::Other] {
                is_keyframe(c, &buf[..len]);
            }
            if i % 97 == 0 {
                m.switch();
                ts.switch();
            }
            ts.rewrite(next() as u32, Duration::from_micros(next() % 1_000_000));
            let payload = &mut buf[..len];
            let ok = m.rewrite(payload);
            assert_eq!(payload.len(), len);
            assert_eq!(ok, d.is_some());
            match d {
                None => assert_eq!(buf[..len], orig[..len]),
                Some(d) => {
                    let e = parse_vp8(&buf[..len]).expect("still parses");
                    assert_eq!(e.header_len, d.header_len);
                    assert_eq!(e.picture_id_15bit, d.picture_id_15bit);
                    assert_eq!(
                        (e.picture_id.is_some(), e.tl0picidx.is_some(), e.tid, e.key_idx.is_some()),
                        (d.picture_id.is_some(), d.tl0picidx.is_some(), d.tid, d.key_idx.is_some())
                    );
                    assert_eq!(buf[..2.min(len)], orig[..2.min(len)]);
                    assert_eq!(buf[d.header_len..len], orig[d.header_len..len]);
                }
            }
        }
    }
}
