//! The forwarding decision for one consumer, without I/O: given a packet of
//! the producer and the consumer's state, drop it or send it with this SSRC,
//! sequence number, timestamp and payload type. The router asks, the writer
//! ([`super::egress`]) writes; LiveKit splits `forwarder.go` from
//! `downtrack.go` the same way, and [`tests`] drive it with synthetic packets.

use super::ids::Ssrc;

/// What the forwarder needs to know of an incoming packet.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    pub ssrc: Ssrc,
    pub seq: u16,
    pub ts: u32,
    pub pt: u8,
    pub marker: bool,
    pub payload: &'a [u8],
}

impl<'a> Packet<'a> {
    /// The forwarder's view of a parsed RTP packet.
    pub fn of(pkt: &'a rtc::rtp::Packet) -> Self {
        let h = &pkt.header;
        Self {
            ssrc: Ssrc(h.ssrc),
            seq: h.sequence_number,
            ts: h.timestamp,
            pt: h.payload_type,
            marker: h.marker,
            payload: &pkt.payload,
        }
    }
}

/// Why a packet is not sent to a consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The subscriber unsubscribed (`track-subscribe {subscribe: false}`).
    Paused,
    /// The subscriber leg cannot take media yet (DTLS not up).
    NotReady,
    /// The subscriber leg did not negotiate the packet's payload type.
    PayloadType,
}

/// How a forwarded copy is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Send {
    pub ssrc: Ssrc,
    pub seq: u16,
    pub ts: u32,
    pub pt: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Drop(DropReason),
    Send(Send),
}

/// One consumer's forwarding state: its outgoing SSRC, payload-type map,
/// whether it is paused, and its sequence-number rewriting.
#[derive(Debug, Clone)]
pub struct Forwarder {
    ssrc: Ssrc,
    /// Publisher payload type → the subscriber leg's, per codec.
    payload_types: Vec<(u8, u8)>,
    paused: bool,
    seq: SeqRewriter,
}

impl Forwarder {
    pub fn new(ssrc: Ssrc, payload_types: Vec<(u8, u8)>) -> Self {
        Self { ssrc, payload_types, paused: false, seq: SeqRewriter::default() }
    }

    /// The SSRC the subscriber knows this track by.
    pub fn ssrc(&self) -> Ssrc {
        self.ssrc
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Pause or resume (`track-subscribe`); what is not sent meanwhile
    /// leaves no gap in the sequence numbers.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        self.seq.skip();
    }

    /// The producer skipped packets on purpose (muted): no gap either.
    pub fn skip(&mut self) {
        self.seq.skip();
    }

    /// The leg's payload type for the publisher's `pt`, if negotiated.
    pub fn leg_payload_type(&self, pt: u8) -> Option<u8> {
        self.payload_types.iter().find(|(from, _)| *from == pt).map(|&(_, to)| to)
    }

    /// Drop or send `pkt`; `ready` says whether the leg can take media now.
    pub fn decide(&mut self, pkt: &Packet<'_>, ready: bool) -> Decision {
        if self.paused {
            return Decision::Drop(DropReason::Paused);
        }
        if !ready {
            // Nothing reached the subscriber: continue from the last it got.
            self.seq.skip();
            return Decision::Drop(DropReason::NotReady);
        }
        let Some(pt) = self.leg_payload_type(pkt.pt) else {
            return Decision::Drop(DropReason::PayloadType);
        };
        Decision::Send(Send { ssrc: self.ssrc, seq: self.seq.next(pkt.seq), ts: pkt.ts, pt })
    }

    /// The incoming sequence number an outgoing one was sent for (to answer
    /// a NACK from the history), if still known.
    pub fn original(&self, out: u16) -> Option<u16> {
        self.seq.original(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16, pt: u8) -> Packet<'static> {
        Packet { ssrc: Ssrc(1111), seq, ts: u32::from(seq) * 3000, pt, marker: false, payload: b"x" }
    }

    fn sent(d: Decision) -> Send {
        match d {
            Decision::Send(s) => s,
            Decision::Drop(r) => panic!("dropped: {r:?}"),
        }
    }

    fn forwarder() -> Forwarder {
        Forwarder::new(Ssrc(4242), vec![(96, 100), (111, 109)])
    }

    #[test]
    fn sends_with_the_consumers_ssrc_and_payload_type() {
        let mut f = forwarder();
        let s = sent(f.decide(&pkt(7, 96), true));
        assert_eq!(s, Send { ssrc: Ssrc(4242), seq: 7, ts: 21_000, pt: 100 });
        assert_eq!(sent(f.decide(&pkt(8, 111), true)).pt, 109);
    }

    #[test]
    fn an_unnegotiated_payload_type_is_dropped_and_leaves_no_gap() {
        let mut f = forwarder();
        sent(f.decide(&pkt(10, 96), true));
        assert_eq!(f.decide(&pkt(11, 97), true), Decision::Drop(DropReason::PayloadType));
        // The publisher's own numbering has the gap; the dropped one is not
        // renumbered away (it was the publisher's packet, just not ours).
        assert_eq!(sent(f.decide(&pkt(12, 96), true)).seq, 12);
    }

    #[test]
    fn a_pause_drops_everything_and_resumes_contiguously() {
        let mut f = forwarder();
        for seq in 100..=102 {
            sent(f.decide(&pkt(seq, 96), true));
        }
        f.set_paused(true);
        for seq in 103..=400 {
            assert_eq!(f.decide(&pkt(seq, 96), true), Decision::Drop(DropReason::Paused));
        }
        f.set_paused(false);
        let s = sent(f.decide(&pkt(401, 96), true));
        assert_eq!(s.seq, 103, "follows the last sent");
        assert_eq!(s.ts, 401 * 3000, "timestamps pass through");
        assert_eq!(f.original(103), Some(401));
        assert_eq!(f.original(102), Some(102));
    }

    #[test]
    fn a_leg_not_ready_drops_and_resyncs() {
        let mut f = forwarder();
        sent(f.decide(&pkt(1, 96), true));
        assert_eq!(f.decide(&pkt(2, 96), false), Decision::Drop(DropReason::NotReady));
        assert_eq!(f.decide(&pkt(3, 96), false), Decision::Drop(DropReason::NotReady));
        assert_eq!(sent(f.decide(&pkt(4, 96), true)).seq, 2);
    }

    #[test]
    fn a_mute_leaves_no_gap() {
        let mut f = forwarder();
        sent(f.decide(&pkt(50, 96), true));
        f.skip();
        assert_eq!(sent(f.decide(&pkt(90, 96), true)).seq, 51);
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
}
