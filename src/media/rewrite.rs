//! How one subscriber leg wants forwarded headers written: which header
//! extension ids it negotiated, its mid, its transport-wide numbering and its
//! RTX stream. Pure; [`super::egress::Writer`] applies it to every copy with
//! the [`super::forwarder`]'s decision (SSRC, sequence number, timestamp,
//! payload type).

use super::forwarder::Send;
use rtc::rtp;

/// A leg's header rewriting for one consumer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rewrite {
    /// Publisher header-extension id → the subscriber's, per URI; ids the
    /// subscriber did not negotiate are stripped.
    pub extensions: Vec<(u8, u8)>,
    /// The subscriber leg's `sdes:mid` extension id and this consumer's mid
    /// there: receivers demultiplex bundled m-lines by it (RFC 8843 15).
    pub mid: Option<(u8, bytes::Bytes)>,
    /// The subscriber leg's transport-wide sequence number extension id, when
    /// it negotiated transport-cc: every packet on the leg is numbered.
    pub transport_cc: Option<u8>,
    /// The leg's abs-send-time extension id, when it negotiated that and not
    /// transport-cc: a receiver without transport-cc feedback (aiortc) runs
    /// its own estimator on these send times and tells the SFU its result
    /// in REMB. Like transport-wide numbers it is per hop: the leg writes the
    /// time the SFU sends ([`super::egress::Stamps`]), never the publisher's.
    pub abs_send_time: Option<u8>,
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
    /// How a retransmission of a packet the leg knows with `payload_type`
    /// goes out on RTX: (SSRC, RTX payload type), if the leg negotiated it.
    pub fn rtx_for(&self, payload_type: u8) -> Option<(u32, u8)> {
        let rtx = self.rtx.as_ref()?;
        rtx.payload_types.iter().find(|(m, _)| *m == payload_type).map(|&(_, pt)| (rtx.ssrc, pt))
    }

    /// Write `src` rewritten for this leg into `dst` as `send` decided,
    /// reusing `dst`'s buffers (no allocation once they have grown): SSRC,
    /// payload type, sequence number, timestamp, extension ids, the leg's mid,
    /// `transport_seq` (two bytes, big endian) when the leg numbers its
    /// packets, and with `send_time` the leg's abs-send-time extension last,
    /// as three zero bytes the writer fills in once the header is marshalled.
    pub fn apply_into(
        &self,
        src: &rtp::header::Header,
        send: &Send,
        dst: &mut rtp::header::Header,
        transport_seq: Option<bytes::Bytes>,
        send_time: bool,
    ) {
        dst.version = src.version;
        dst.padding = src.padding;
        dst.marker = src.marker;
        dst.payload_type = send.pt;
        dst.sequence_number = send.seq;
        dst.timestamp = send.ts;
        dst.ssrc = send.ssrc.0;
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
        if let (Some(id), true) = (self.abs_send_time, send_time) {
            dst.extensions.push(rtp::header::Extension { id, payload: bytes::Bytes::from_static(&[0; 3]) });
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ids::Ssrc;
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
        Rewrite { extensions: vec![(1, 3), (4, 2)], ..Default::default() }
    }

    const SEND: Send = Send { ssrc: Ssrc(4242), seq: 70, ts: 91_000, pt: 100, vp8: None, switched: false };

    fn applied(r: &Rewrite, src: &Header) -> Header {
        // A used header: what it held before must not leak into the result.
        let mut dst = header(1, &[(7, b"old"), (8, b"old")]);
        dst.csrc = vec![9, 9];
        dst.padding = true;
        r.apply_into(src, &SEND, &mut dst, Some(Bytes::from_static(b"\x01\x02")), true);
        dst
    }

    #[test]
    fn writes_the_decision_and_maps_extension_ids() {
        let h = applied(&leg_rewrite(), &header(96, &[(1, b"\x10"), (4, b"ab"), (9, b"x")]));
        assert!(h.csrc.is_empty() && !h.padding);
        assert_eq!((h.ssrc, h.payload_type, h.sequence_number, h.timestamp), (4242, 100, 70, 91_000));
        let ids: Vec<u8> = h.extensions.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![3, 2], "id 9 is not negotiated on the leg and is stripped");
        assert!(h.extension);
    }

    #[test]
    fn the_subscriber_mid_is_written() {
        let mut r = leg_rewrite();
        r.mid = Some((5, Bytes::from_static(b"2")));
        let h = applied(&r, &header(96, &[(1, b"\x10"), (9, b"0")]));
        let exts: Vec<(u8, &[u8])> = h.extensions.iter().map(|e| (e.id, &e.payload[..])).collect();
        assert_eq!(exts, vec![(3, &b"\x10"[..]), (5, &b"2"[..])]);
        let bare = applied(&r, &header(96, &[]));
        assert!(bare.extension && bare.extensions.len() == 1);
        // With transport-cc negotiated, the leg's number comes last.
        r.transport_cc = Some(6);
        let h = applied(&r, &header(96, &[(1, b"\x10")]));
        let exts: Vec<(u8, &[u8])> = h.extensions.iter().map(|e| (e.id, &e.payload[..])).collect();
        assert_eq!(exts, vec![(3, &b"\x10"[..]), (5, &b"2"[..]), (6, &b"\x01\x02"[..])]);
        // With abs-send-time, three bytes for the writer to fill in, last.
        r.abs_send_time = Some(7);
        let h = applied(&r, &header(96, &[(1, b"\x10")]));
        let exts: Vec<(u8, &[u8])> = h.extensions.iter().map(|e| (e.id, &e.payload[..])).collect();
        assert_eq!(exts, vec![(3, &b"\x10"[..]), (5, &b"2"[..]), (6, &b"\x01\x02"[..]), (7, &[0, 0, 0][..])]);
    }

    #[test]
    fn empty_extensions_are_cleared() {
        let h = applied(&leg_rewrite(), &header(111, &[(9, b"x")]));
        assert!(!h.extension && h.extensions.is_empty());
    }

    #[test]
    fn retransmissions_use_the_rtx_type_of_the_legs_media_type() {
        let mut r = leg_rewrite();
        assert_eq!(r.rtx_for(100), None, "no RTX negotiated");
        r.rtx = Some(Rtx { ssrc: 77, payload_types: vec![(100, 101)] });
        assert_eq!(r.rtx_for(100), Some((77, 101)), "the leg's 100 has RTX 101");
        assert_eq!(r.rtx_for(109), None, "the leg's 109 has no RTX");
    }
}
