//! The forwarding decision for one consumer, without I/O: given a packet of
//! the producer and the consumer's state, drop it or send it with this SSRC,
//! sequence number, timestamp, payload type and VP8 descriptor. The router
//! asks, the writer ([`super::egress`]) writes; LiveKit splits `forwarder.go`
//! from `downtrack.go` the same way, and the tests below drive it with
//! synthetic packets.
//!
//! Simulcast (SPEC 5.1): a producer's packets carry the [`Layer`] they belong
//! to; the forwarder sends one layer at a time and moves to its target layer
//! only at a keyframe of that layer, so the subscriber sees one stream: one
//! SSRC, contiguous sequence numbers, timestamps that continue by the time
//! elapsed, and VP8 picture ids that continue ([`super::codec`]).

use super::allocate::Layer;
use super::codec::{TsRewriter, Vp8Munger, Vp8Rewrite};
use super::ids::Ssrc;
use std::time::{Duration, Instant};

/// What the forwarder needs to know of an incoming packet.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    pub ssrc: Ssrc,
    pub seq: u16,
    pub ts: u32,
    pub pt: u8,
    pub marker: bool,
    pub payload: &'a [u8],
    /// The simulcast layer the packet belongs to (`Q` for a single-layer track).
    pub layer: Layer,
    /// It starts a keyframe (only looked at for a switch).
    pub keyframe: bool,
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
            layer: Layer::Q,
            keyframe: false,
        }
    }

    pub fn with_layer(self, layer: Layer, keyframe: bool) -> Self {
        Self { layer, keyframe, ..self }
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
    /// A layer other than the one forwarded, or the target before its keyframe.
    Layer,
}

/// How a forwarded copy is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Send {
    pub ssrc: Ssrc,
    pub seq: u16,
    pub ts: u32,
    pub pt: u8,
    /// VP8: the descriptor fields to write (picture id, TL0PICIDX, KEYIDX).
    pub vp8: Option<Vp8Rewrite>,
    /// This packet starts the forwarded layer (a switch, or the first packet).
    pub switched: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Drop(DropReason),
    Send(Send),
}

/// One consumer's forwarding state: its outgoing SSRC, payload-type map,
/// whether it is paused, which layer it forwards and wants, and its rewriting.
#[derive(Debug, Clone)]
pub struct Forwarder {
    ssrc: Ssrc,
    /// Publisher payload type → the subscriber leg's, per codec.
    payload_types: Vec<(u8, u8)>,
    paused: bool,
    seq: SeqRewriter,
    ts: TsRewriter,
    /// VP8 tracks: descriptor continuity across layer switches.
    vp8: Option<Vp8Munger>,
    /// The layer being forwarded; `None` until the first (key)frame of the
    /// target arrives.
    current: Option<Layer>,
    /// The layer to forward; `None` forwards nothing (paused for bandwidth).
    target: Option<Layer>,
    /// A simulcast track switches only at keyframes; a single-layer one
    /// forwards from the first packet, as it always did.
    simulcast: bool,
    last_sent: Option<Instant>,
    /// What went out lately, for NACKs.
    log: SentLog,
    /// The number the last layer switch's keyframe went out under, while it
    /// is within the log: what was sent before it is superseded
    /// ([`Self::filler`]). Forgotten once [`SENT_LOG`] newer have gone, so
    /// it is never compared across the wrap of the numbers.
    switched_at: Option<u16>,
}

impl Forwarder {
    /// A single-layer consumer: forwards every packet of layer `Q`.
    pub fn new(ssrc: Ssrc, payload_types: Vec<(u8, u8)>) -> Self {
        Self {
            ssrc,
            payload_types,
            paused: false,
            seq: SeqRewriter::default(),
            ts: TsRewriter::new(90_000),
            vp8: None,
            current: Some(Layer::Q),
            target: Some(Layer::Q),
            simulcast: false,
            last_sent: None,
            log: SentLog::new(),
            switched_at: None,
        }
    }

    /// A simulcast consumer of a codec at `clock_rate` (VP8 gets its
    /// descriptors rewritten), starting at `target` from its next keyframe.
    pub fn simulcast(mut self, clock_rate: u32, vp8: bool, target: Option<Layer>) -> Self {
        self.simulcast = true;
        self.ts = TsRewriter::new(clock_rate);
        self.vp8 = vp8.then(Vp8Munger::new);
        self.current = None;
        self.target = target;
        self
    }

    /// How many outgoing numbers were skipped without a packet (lost before
    /// the SFU): the receiver counts them as lost, but not on its link.
    pub fn unsent(&self) -> u64 {
        self.seq.unsent
    }

    /// The SSRC the subscriber knows this track by.
    pub fn ssrc(&self) -> Ssrc {
        self.ssrc
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    pub fn is_simulcast(&self) -> bool {
        self.simulcast
    }

    /// The layer forwarded now (`None`: nothing yet, or paused).
    pub fn current(&self) -> Option<Layer> {
        if self.paused {
            None
        } else {
            self.current
        }
    }

    pub fn target(&self) -> Option<Layer> {
        self.target
    }

    /// Forward `layer` from its next keyframe on (`None`: stop forwarding).
    /// `true` when a keyframe of that layer is now needed.
    pub fn set_target(&mut self, layer: Option<Layer>) -> bool {
        self.target = layer;
        if layer.is_none() {
            self.current = None;
            self.seq.skip();
        }
        layer.is_some() && layer != self.current
    }

    /// Like [`Forwarder::set_target`], but the layer forwarded now stops at
    /// once instead of at the new layer's keyframe: for a link that cannot
    /// carry it, a short freeze until that keyframe instead of the heavy
    /// loss (and the freeze after it) of pushing on. What is not sent
    /// meanwhile leaves no gap.
    pub fn set_target_now(&mut self, layer: Option<Layer>) -> bool {
        if self.current.is_some() && layer != self.current {
            self.current = None;
            self.seq.skip();
        }
        self.set_target(layer)
    }

    /// The layer whose keyframe this consumer waits for, if it waits.
    pub fn wants_keyframe(&self) -> Option<Layer> {
        (!self.paused && self.target != self.current).then_some(self.target).flatten()
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

    /// Drop or send `pkt` at `now`; `ready` says whether the leg can take
    /// media now.
    pub fn decide(&mut self, pkt: &Packet<'_>, ready: bool, now: Instant) -> Decision {
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
        let mut switched = false;
        if self.current != Some(pkt.layer) {
            // A simulcast layer starts at its keyframe; a single-layer track
            // resumes from any packet, as it always did.
            let can_start = pkt.keyframe || !self.simulcast;
            if self.target != Some(pkt.layer) || !can_start {
                return Decision::Drop(DropReason::Layer);
            }
            self.current = self.target;
            switched = true;
            if self.simulcast {
                // The new layer's numbers, times and pictures continue ours
                // (a NACK for what came before is answered from the log).
                self.seq.switch();
                self.ts.switch();
                if let Some(m) = &mut self.vp8 {
                    m.switch();
                }
            } else {
                // The same stream resumes after a pause: no gap either.
                self.seq.skip();
            }
        }
        let since = self.last_sent.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.last_sent = Some(now);
        let vp8 = self.vp8.as_mut().and_then(|m| m.plan(pkt.payload));
        let send = Send {
            ssrc: self.ssrc,
            seq: self.seq.next(pkt.seq),
            ts: self.ts.rewrite(pkt.ts, since),
            pt,
            vp8,
            switched,
        };
        if switched && self.simulcast {
            self.switched_at = Some(send.seq);
        } else if self.switched_at.is_some_and(|k| usize::from(send.seq.wrapping_sub(k)) >= SENT_LOG) {
            self.switched_at = None;
        }
        self.log.record(Sent { out: send.seq, layer: pkt.layer, original: pkt.seq, ts: send.ts, pt, vp8 });
        Decision::Send(send)
    }

    /// Where a packet sent as `out` came from: its layer and incoming
    /// sequence number, if it is among the last [`SENT_LOG`] sent. Also from
    /// before a layer switch: a receiver whose jitter buffer is not
    /// keyframe-aware (aiortc) waits for every number it missed, and with
    /// such a packet unanswered it held every frame after a switch down on a
    /// lossy link until 512 packets had passed (11 s frozen).
    /// How many numbers `out` is behind the newest sent (0: it is the
    /// newest; `None`: nothing sent yet, or `out` is ahead of it).
    pub fn behind_newest(&self, out: u16) -> Option<u16> {
        let newest = self.seq.last_out?;
        Some(newest.wrapping_sub(out)).filter(|&d| d < 0x8000)
    }

    pub fn source_of(&self, out: u16) -> Option<(Layer, u16)> {
        self.log.get(out).map(|p| (p.layer, p.original))
    }

    /// How the packet sent as `out` (publisher payload type `pt`) goes out
    /// again for a NACK: the same number, timestamp and VP8 descriptor as
    /// the first time, whichever layer it came from.
    pub fn resend(&self, out: u16, pt: u8) -> Option<Send> {
        let p = self.log.get(out)?;
        let pt = self.leg_payload_type(pt)?;
        Some(Send { ssrc: self.ssrc, seq: out, ts: p.ts, pt, vp8: p.vp8, switched: false })
    }

    /// For a NACK of `out` sent before the last layer switch: the header of a
    /// padding-only packet under that number (the payload type it went out
    /// with), which answers it in place of the packet. What came before the
    /// new layer's keyframe cannot help the receiver decode anything after
    /// it, but a jitter buffer that is not keyframe-aware (aiortc's) holds
    /// every later frame until each number it missed has arrived or 512
    /// more have: resending the old layer's packets into the congestion
    /// that caused the switch (down) lost them again and froze such a
    /// receiver for 10-15 s, where a padding packet of a few bytes fills
    /// the hole. `None` for the keyframe and what followed it, and for a
    /// number not in the log.
    ///
    /// Its timestamp is the one the receiver holds for the number before
    /// (that packet's, or its filler's), so that a filler always joins the
    /// frame before it. With the packet's own, a frame whose packets were
    /// all lost came back as fillers alone, a frame of no data, and aiortc
    /// hands that to its VP8 decoder as an empty packet, which FFmpeg takes
    /// for the end of the stream: every frame after it failed to decode, for
    /// the rest of the call, keyframes included (`remb_cap`: C's video
    /// stopped after a failed step up to `f` in 3 runs of 6, each frame
    /// answered by a PLI). The log keeps the timestamp a filler went with.
    pub fn filler(&mut self, out: u16) -> Option<Send> {
        let switched_at = self.switched_at?;
        let behind = switched_at.wrapping_sub(out);
        if behind == 0 || behind >= 0x8000 {
            return None;
        }
        let p = *self.log.get(out)?;
        let ts = self.log.get(out.wrapping_sub(1)).map_or(p.ts, |before| before.ts);
        self.log.record(Sent { ts, ..p });
        Some(Send { ssrc: self.ssrc, seq: out, ts, pt: p.pt, vp8: None, switched: false })
    }
}

/// How many sent packets a consumer remembers for NACKs: the span of the
/// producer's history of a layer ([`crate::media::producer::VIDEO_HISTORY`]).
pub const SENT_LOG: usize = 512;

/// What went out under each of the last [`SENT_LOG`] outgoing sequence
/// numbers (LiveKit's `sequencer.go` keeps the same): a NACK is answered
/// with exactly what was sent, across pauses and layer switches, without
/// working numbers and timestamps back through offsets that have moved on.
/// Written once per forwarded packet into a fixed ring: no allocation.
#[derive(Debug, Clone)]
struct SentLog {
    slots: Box<[Option<Sent>]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    out: u16,
    layer: Layer,
    original: u16,
    ts: u32,
    /// The leg's payload type it went out with.
    pt: u8,
    vp8: Option<Vp8Rewrite>,
}

impl SentLog {
    fn new() -> Self {
        SentLog { slots: vec![None; SENT_LOG].into_boxed_slice() }
    }

    fn record(&mut self, p: Sent) {
        self.slots[usize::from(p.out) % SENT_LOG] = Some(p);
    }

    fn get(&self, out: u16) -> Option<&Sent> {
        self.slots[usize::from(out) % SENT_LOG].as_ref().filter(|p| p.out == out)
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
    /// Numbers skipped so far without a packet: what was lost on the way in
    /// (a gap is passed on, so that the receiver can NACK it).
    unsent: u64,
}

impl SeqRewriter {
    /// Packets were skipped on purpose: the next one follows the last sent.
    pub fn skip(&mut self) {
        self.resync = true;
    }

    /// The next packet is of another stream (a layer switch): it follows the
    /// last sent.
    pub fn switch(&mut self) {
        self.resync = true;
    }

    /// The outgoing sequence number for an incoming one.
    pub fn next(&mut self, seq: u16) -> u16 {
        if self.resync {
            self.resync = false;
            if let Some(last) = self.last_out {
                self.offset = seq.wrapping_sub(last.wrapping_add(1));
            }
        }
        let out = seq.wrapping_sub(self.offset);
        // Only move forward; a late (reordered) packet keeps its place.
        if self.last_out.is_none_or(|l| out.wrapping_sub(l) < 0x8000) {
            if let Some(l) = self.last_out {
                self.unsent += u64::from(out.wrapping_sub(l).saturating_sub(1));
            }
            self.last_out = Some(out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16, pt: u8) -> Packet<'static> {
        Packet {
            ssrc: Ssrc(1111),
            seq,
            ts: u32::from(seq) * 3000,
            pt,
            marker: false,
            payload: b"x",
            layer: Layer::Q,
            keyframe: false,
        }
    }

    fn t0() -> Instant {
        Instant::now()
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
        let s = sent(f.decide(&pkt(7, 96), true, t0()));
        assert_eq!(s, Send { ssrc: Ssrc(4242), seq: 7, ts: 21_000, pt: 100, vp8: None, switched: false });
        assert_eq!(sent(f.decide(&pkt(8, 111), true, t0())).pt, 109);
    }

    #[test]
    fn how_far_a_number_is_behind_the_newest_sent_across_the_wrap() {
        let mut f = forwarder();
        assert_eq!(f.behind_newest(5), None, "nothing sent");
        for seq in [65_530, 65_535, 0, 3] {
            sent(f.decide(&pkt(seq, 96), true, t0()));
        }
        assert_eq!(f.behind_newest(3), Some(0));
        assert_eq!(f.behind_newest(65_535), Some(4));
        assert_eq!(f.behind_newest(65_530), Some(9));
        assert_eq!(f.behind_newest(4), None, "ahead of the newest");
        // A reordered (late) packet does not move the newest back.
        sent(f.decide(&pkt(1, 96), true, t0()));
        assert_eq!(f.behind_newest(1), Some(2));
    }

    #[test]
    fn an_unnegotiated_payload_type_is_dropped_and_leaves_no_gap() {
        let mut f = forwarder();
        sent(f.decide(&pkt(10, 96), true, t0()));
        assert_eq!(f.decide(&pkt(11, 97), true, t0()), Decision::Drop(DropReason::PayloadType));
        // The publisher's own numbering has the gap; the dropped one is not
        // renumbered away (it was the publisher's packet, just not ours).
        assert_eq!(sent(f.decide(&pkt(12, 96), true, t0())).seq, 12);
    }

    #[test]
    fn a_pause_drops_everything_and_resumes_contiguously() {
        let mut f = forwarder();
        for seq in 100..=102 {
            sent(f.decide(&pkt(seq, 96), true, t0()));
        }
        f.set_paused(true);
        for seq in 103..=400 {
            assert_eq!(f.decide(&pkt(seq, 96), true, t0()), Decision::Drop(DropReason::Paused));
        }
        f.set_paused(false);
        let s = sent(f.decide(&pkt(401, 96), true, t0()));
        assert_eq!(s.seq, 103, "follows the last sent");
        assert_eq!(s.ts, 401 * 3000, "timestamps pass through");
        assert_eq!(f.source_of(103), Some((Layer::Q, 401)));
        assert_eq!(f.source_of(102), Some((Layer::Q, 102)), "sent before the pause");
        assert_eq!(f.source_of(104), None, "not sent yet");
    }

    #[test]
    fn a_leg_not_ready_drops_and_resyncs() {
        let mut f = forwarder();
        sent(f.decide(&pkt(1, 96), true, t0()));
        assert_eq!(f.decide(&pkt(2, 96), false, t0()), Decision::Drop(DropReason::NotReady));
        assert_eq!(f.decide(&pkt(3, 96), false, t0()), Decision::Drop(DropReason::NotReady));
        assert_eq!(sent(f.decide(&pkt(4, 96), true, t0())).seq, 2);
    }

    #[test]
    fn a_mute_leaves_no_gap() {
        let mut f = forwarder();
        sent(f.decide(&pkt(50, 96), true, t0()));
        f.skip();
        assert_eq!(sent(f.decide(&pkt(90, 96), true, t0())).seq, 51);
    }

    /// Three synthetic simulcast layers of one VP8 track, each with its own
    /// SSRC, sequence numbers, timestamps and picture ids, 30 fps, three
    /// packets a frame, a keyframe every `gop` frames.
    struct Layers {
        frame: u32,
        gop: u32,
        payloads: Vec<[u8; 16]>,
    }

    const KEY: [u8; 10] = [0x50, 0x2d, 0x01, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];

    impl Layers {
        fn new(gop: u32) -> Self {
            Self { frame: 0, gop, payloads: Vec::new() }
        }

        /// One frame of every layer: (layer, seq, ts, keyframe, payload index).
        fn frame(&mut self) -> Vec<(Layer, u16, u32, bool, usize)> {
            let f = self.frame;
            self.frame += 1;
            let mut out = Vec::new();
            for (i, layer) in Layer::ALL.into_iter().enumerate() {
                let key = f.is_multiple_of(self.gop);
                let pic = (1000 * (i as u32 + 1) + f) as u16 & 0x7fff;
                for k in 0..3u32 {
                    let mut p = [0u8; 16];
                    p[0] = 0x80 | if k == 0 { 0x10 } else { 0 };
                    p[1] = 0x80;
                    p[2] = 0x80 | (pic >> 8) as u8;
                    p[3] = pic as u8;
                    if k == 0 && key {
                        p[4..14].copy_from_slice(&KEY);
                    } else {
                        p[4] = 0x01;
                    }
                    self.payloads.push(p);
                    let seq = (10_000 * (i as u32 + 1) + f * 3 + k) as u16;
                    let ts = 1_000_000 * (i as u32 + 1) + f * 3000;
                    out.push((layer, seq, ts, k == 0 && key, self.payloads.len() - 1));
                }
            }
            out
        }

        /// The packet of one entry of [`Self::frame`] (VP8, payload type 96).
        fn packet(&self, (layer, seq, ts, keyframe, i): (Layer, u16, u32, bool, usize)) -> Packet<'_> {
            let payload = &self.payloads[i];
            Packet { ssrc: Ssrc(layer as u32), seq, ts, pt: 96, marker: false, payload, layer, keyframe }
        }
    }

    #[test]
    fn simulcast_switches_only_at_a_keyframe_and_stays_one_stream() {
        let start = Instant::now();
        let mut f = Forwarder::new(Ssrc(9), vec![(96, 100)]).simulcast(90_000, true, Some(Layer::F));
        assert_eq!(f.wants_keyframe(), Some(Layer::F), "nothing forwarded until f's keyframe");
        let mut src = Layers::new(30);
        let mut sent: Vec<(Layer, Send)> = Vec::new();
        let mut drops = 0;
        for n in 0..150u32 {
            let now = start + Duration::from_millis(33 * u64::from(n));
            if n == 40 {
                assert!(f.set_target(Some(Layer::Q)), "q needs a keyframe");
            }
            if n == 100 {
                assert!(f.set_target(Some(Layer::F)));
            }
            for entry in src.frame() {
                let p = src.packet(entry);
                match f.decide(&p, true, now) {
                    Decision::Send(s) => sent.push((p.layer, s)),
                    Decision::Drop(r) => {
                        assert_eq!(r, DropReason::Layer);
                        drops += 1;
                    }
                }
            }
        }
        assert!(drops > 0);
        // f from frame 0, q from its keyframe at 60 (not at 40), f again at 120.
        let switches: Vec<(usize, Layer)> =
            sent.iter().enumerate().filter(|(_, (_, s))| s.switched).map(|(i, (l, _))| (i, *l)).collect();
        assert_eq!(switches.iter().map(|s| s.1).collect::<Vec<_>>(), [Layer::F, Layer::Q, Layer::F], "{switches:?}");
        assert_eq!(
            sent.iter().filter(|(l, _)| *l == Layer::F).count(),
            (60 + 30) * 3,
            "f for frames 0..60 and 120..150"
        );
        // q for frames 60..=120: frame 120's q packets arrive before f's keyframe.
        assert_eq!(sent.iter().filter(|(l, _)| *l == Layer::Q).count(), 61 * 3);
        for w in sent.windows(2) {
            let (a, b) = (&w[0].1, &w[1].1);
            assert_eq!(b.seq, a.seq.wrapping_add(1), "contiguous sequence numbers");
            assert_eq!(b.ssrc, Ssrc(9));
            let dt = b.ts.wrapping_sub(a.ts);
            if b.switched {
                // By the wall-clock time since the last packet: one frame
                // (33 ms) into q, none into f (q's packets of that frame
                // came at the same instant), which is still one tick.
                assert!(dt == 33 * 90 || dt == 1, "across a switch, by the time since the last packet: {dt}");
            } else {
                assert!(dt == 0 || dt == 3000, "timestamps continue by the frame interval: {dt}");
            }
            let (pa, pb) = (a.vp8.unwrap().picture_id.unwrap(), b.vp8.unwrap().picture_id.unwrap());
            assert!(pb == pa || pb == (pa + 1) & 0x7fff, "picture ids continue: {pa} -> {pb}");
        }
    }

    #[test]
    fn a_nack_is_answered_with_what_was_sent_also_from_before_a_switch() {
        let start = Instant::now();
        let mut f = Forwarder::new(Ssrc(9), vec![(96, 100)]).simulcast(90_000, false, Some(Layer::H));
        let mut src = Layers::new(10);
        let mut outs = Vec::new();
        for n in 0..25u32 {
            if n == 12 {
                f.set_target(Some(Layer::Q));
            }
            for (layer, seq, ts, key, i) in src.frame() {
                let p = Packet {
                    ssrc: Ssrc(0),
                    seq,
                    ts,
                    pt: 96,
                    marker: false,
                    payload: &src.payloads[i],
                    layer,
                    keyframe: key,
                };
                if let Decision::Send(s) = f.decide(&p, true, start + Duration::from_millis(33 * u64::from(n))) {
                    outs.push((layer, seq, ts, s));
                }
            }
        }
        let (layer, seq, _, last) = *outs.last().unwrap();
        assert_eq!(layer, Layer::Q);
        assert_eq!(f.source_of(last.seq), Some((Layer::Q, seq)));
        let again = f.resend(last.seq, 96).expect("the last packet is resent");
        assert_eq!(again, Send { switched: false, ..last });
        // Every h packet sent before the switch maps back to h, and goes out
        // again exactly as it went out then.
        let hs: Vec<_> = outs.iter().filter(|(l, ..)| *l == Layer::H).collect();
        assert!(hs.len() > 20, "{}", hs.len());
        for &&(_, seq, _, before) in &hs {
            assert_eq!(f.source_of(before.seq), Some((Layer::H, seq)));
            assert_eq!(f.resend(before.seq, 96), Some(Send { switched: false, ..before }));
        }
        assert_eq!(f.resend(last.seq.wrapping_add(1), 96), None, "not sent yet");
        assert_eq!(f.resend(last.seq, 97), None, "a payload type the leg does not have");
    }

    #[test]
    fn a_single_layer_track_has_no_fillers() {
        let mut f = forwarder();
        let first = sent(f.decide(&pkt(10, 96), true, t0()));
        f.skip();
        sent(f.decide(&pkt(20, 96), true, t0()));
        assert_eq!(f.filler(first.seq), None, "a resume after a pause is not a layer switch");
    }

    #[test]
    fn the_sent_log_keeps_the_last_512_across_the_wrap() {
        let mut f = forwarder();
        let first = 65_000u16;
        for k in 0..2000u16 {
            sent(f.decide(&pkt(first.wrapping_add(k), 96), true, t0()));
        }
        let last = first.wrapping_add(1999);
        assert_eq!(f.source_of(last), Some((Layer::Q, last)));
        let oldest = last.wrapping_sub(SENT_LOG as u16 - 1);
        assert_eq!(f.source_of(oldest), Some((Layer::Q, oldest)));
        assert_eq!(f.source_of(oldest.wrapping_sub(1)), None, "overwritten");
    }

    #[test]
    fn no_target_forwards_nothing_until_a_keyframe_of_the_new_one() {
        let mut f = Forwarder::new(Ssrc(9), vec![(96, 100)]).simulcast(90_000, false, Some(Layer::Q));
        let key = Packet { keyframe: true, ..pkt(1, 96) };
        assert!(matches!(f.decide(&key, true, t0()), Decision::Send(Send { switched: true, .. })));
        assert!(!f.set_target(None));
        assert_eq!(f.current(), None);
        assert_eq!(f.decide(&pkt(2, 96), true, t0()), Decision::Drop(DropReason::Layer));
        assert!(f.set_target(Some(Layer::Q)), "a keyframe is needed to resume");
        assert_eq!(f.decide(&pkt(3, 96), true, t0()), Decision::Drop(DropReason::Layer));
        let s = match f.decide(&Packet { keyframe: true, ..pkt(4, 96) }, true, t0()) {
            Decision::Send(s) => s,
            d => panic!("{d:?}"),
        };
        assert_eq!(s.seq, 2, "follows the last sent");
    }

    #[test]
    fn numbers_lost_on_the_way_in_are_passed_on_as_gaps_and_counted() {
        let mut f = forwarder();
        for seq in [1, 2, 5, 6, 4, 9] {
            f.decide(&pkt(seq, 96), true, t0());
        }
        // 3 and 4 skipped after 2, 7 and 8 after 6; 4 came late, behind.
        assert_eq!(f.unsent(), 4);
    }

    #[test]
    fn a_frame_lost_whole_before_a_switch_is_filled_into_the_frame_before_it() {
        let mut f = Forwarder::new(Ssrc(9), vec![(96, 100)]).simulcast(90_000, true, Some(Layer::F));
        let mut src = Layers::new(30);
        let mut sent: Vec<(Layer, Send)> = Vec::new();
        let start = Instant::now();
        for n in 0..70u32 {
            if n == 40 {
                f.set_target_now(Some(Layer::H));
            }
            let now = start + Duration::from_millis(33 * u64::from(n));
            for entry in src.frame() {
                let p = src.packet(entry);
                if let Decision::Send(s) = f.decide(&p, true, now) {
                    sent.push((p.layer, s));
                }
            }
        }
        // Every packet of the last f frame before the cut lost, and NACKed.
        let old: Vec<Send> = sent.iter().filter(|(l, _)| *l == Layer::F).map(|(_, s)| *s).collect();
        let last_ts = old.last().unwrap().ts;
        let frame: Vec<Send> = old.iter().filter(|s| s.ts == last_ts).copied().collect();
        let before = old[old.len() - frame.len() - 1];
        assert!(frame.len() > 1 && before.ts != last_ts, "{frame:?}");
        // Fillers of the frame's own timestamp would make a frame of no data.
        for round in ["NACKed", "NACKed again"] {
            for s in &frame {
                let filler = f.filler(s.seq).unwrap_or_else(|| panic!("{s:?} is before the switch"));
                assert_eq!((filler.seq, filler.ts), (s.seq, before.ts), "{round}: joins the frame before");
            }
        }
        // The packet before the frame arrived: it is not filled.
        assert_eq!(f.filler(before.seq).map(|x| x.ts), Some(before.ts));
    }

    #[test]
    fn a_switch_down_now_stops_the_old_layer_at_once_and_resumes_at_the_new_keyframe() {
        let mut f = Forwarder::new(Ssrc(9), vec![(96, 100)]).simulcast(90_000, true, Some(Layer::F));
        let mut src = Layers::new(30);
        let mut sent: Vec<(u32, Layer, Send)> = Vec::new();
        let start = Instant::now();
        for n in 0..70u32 {
            if n == 40 {
                assert!(f.set_target_now(Some(Layer::H)), "h needs a keyframe");
                assert_eq!((f.current(), f.wants_keyframe()), (None, Some(Layer::H)));
            }
            let now = start + Duration::from_millis(33 * u64::from(n));
            for entry in src.frame() {
                let p = src.packet(entry);
                if let Decision::Send(s) = f.decide(&p, true, now) {
                    sent.push((n, p.layer, s));
                }
            }
        }
        assert!(
            sent.iter().all(|(n, l, _)| (*n < 40 && *l == Layer::F) || (*n >= 60 && *l == Layer::H)),
            "f until the cut, nothing until h's keyframe at frame 60, then h"
        );
        assert_eq!(sent.iter().filter(|(_, l, _)| *l == Layer::H).count(), 10 * 3);
        for w in sent.windows(2) {
            assert_eq!(w[1].2.seq, w[0].2.seq.wrapping_add(1), "no gap across the cut");
        }
        let (_, _, first_h) = sent.iter().find(|(_, l, _)| *l == Layer::H).unwrap();
        assert!(first_h.switched);
        // A NACK of an f packet is answered by a filler under its number (the
        // leg's payload type, no payload rewrite, the timestamp the receiver
        // holds for the number before: filled in order from the first, whose
        // number before is not in the log, the first one's); the keyframe and
        // what came after it by the packets themselves.
        for (_, l, s) in &sent {
            let filler = f.filler(s.seq);
            if *l == Layer::F {
                assert_eq!(
                    filler,
                    Some(Send { ssrc: Ssrc(9), seq: s.seq, ts: sent[0].2.ts, pt: 100, vp8: None, switched: false })
                );
            } else {
                assert_eq!(filler, None, "{s:?} is h, after the switch");
            }
        }
        assert_eq!(f.filler(sent[0].2.seq.wrapping_sub(1)), None, "not in the log");
        // Once the switch is out of the log, nothing is before it: not even
        // 32768 and more packets later, when the numbers have wrapped.
        let mut checked = 0;
        for n in 70..40_070u32 {
            let now = start + Duration::from_millis(33 * u64::from(n));
            for entry in src.frame() {
                let p = src.packet(entry);
                if let Decision::Send(s) = f.decide(&p, true, now) {
                    checked += 1;
                    if checked > SENT_LOG {
                        assert_eq!(f.filler(s.seq.wrapping_sub(1)), None, "sent as {} ({checked} since)", s.seq);
                    }
                }
            }
        }
        assert!(checked > 65_536, "{checked}: the numbers wrapped");
        // Already at the target: nothing to cut.
        assert!(!f.set_target_now(Some(Layer::H)));
        assert_eq!(f.current(), Some(Layer::H));
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
}
