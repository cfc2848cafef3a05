//! A consumer (mediasoup's name): one outgoing copy of a producer on another
//! participant's subscriber leg, with its forwarding state and what the
//! subscriber's RTCP said about it.

use super::allocate::{Layer, Reason};
use super::forwarder::Forwarder;
use super::ids::LegId;
use super::rewrite::Rewrite;
use crate::ids::PeerId;
use std::time::{Duration, Instant, SystemTime};

/// One outgoing copy of a producer.
#[derive(Debug)]
pub struct Consumer {
    pub leg: LegId,
    pub peer: PeerId,
    /// The forwarding decision's state (SSRC, payload types, pause, numbering).
    pub forwarder: Forwarder,
    /// How this leg's headers are written.
    pub rewrite: Rewrite,
    /// What went to this subscriber and what its receiver reports said.
    pub report: LegReport,
    /// The RTP timestamp last sent and when: sender reports extrapolate it.
    pub last_sent: Option<(u32, Instant)>,
    /// The next sequence number on the RTX stream.
    pub rtx_seq: u16,
    /// Simulcast: the highest layer the subscriber asked for
    /// (`track-subscribe {quality}`), and why the target last changed.
    pub ceiling: Layer,
    pub reason: Reason,
    /// Layer switches so far (analytics' `layerSwitches`).
    pub switches: u64,
    /// Its key in the subscriber leg's [`super::allocate::Allocator`].
    pub alloc_id: u32,
    /// NACKed packets waiting for room in the leg's budget.
    pub deferred: Deferred,
    /// Without transport-cc: the last NACK, to be answered again when they stop.
    pub follow_up: FollowUp,
    /// The newest sequence number the subscriber has NACKed: what its NACKs
    /// name past it is new loss (aiortc names every packet still missing in
    /// each NACK, libwebrtc a packet again each round trip).
    pub nacked_up_to: Option<u16>,
    /// The last receiver report's extended highest number and cumulative
    /// loss, and [`Forwarder::unsent`] then: see [`Consumer::link_loss`].
    pub rr_mark: Option<(u32, u32, u64)>,
}

impl Consumer {
    /// The fraction of what was sent to the receiver that it lost since its
    /// last report, from a report block about this consumer's stream (see
    /// [`link_loss`]). `None` for the first report.
    pub fn link_loss(&mut self, highest: u32, total_lost: u32) -> Option<f64> {
        link_loss(&mut self.rr_mark, (highest, total_lost, self.forwarder.unsent()))
    }
}

/// Loss on the SFU's link to a receiver between two of its reports: `now` is
/// the report's extended highest number and cumulative loss (24 bits), and
/// how many numbers the SFU had skipped without a packet by then. A report's
/// own fraction counts those numbers (lost on the way in, passed on as gaps
/// so the receiver can NACK them) as lost too; they are not this link's loss,
/// and a subscriber of a publisher with 10 % upstream loss had its video
/// paused for "congestion" (`tests/analytics.rs`).
pub fn link_loss(mark: &mut Option<(u32, u32, u64)>, now: (u32, u32, u64)) -> Option<f64> {
    let (h0, l0, u0) = mark.replace(now)?;
    let expected = now.0.wrapping_sub(h0);
    if expected == 0 || expected >= 0x8000_0000 {
        return Some(0.0);
    }
    // Cumulative loss is 24 bits, signed: its change, in those 24 bits.
    let lost = ((now.1.wrapping_sub(l0) & 0x00FF_FFFF) ^ 0x0080_0000) as i64 - 0x0080_0000;
    let lost_here = lost - now.2.saturating_sub(u0) as i64;
    Some((lost_here.max(0) as f64 / f64::from(expected)).min(1.0))
}

/// How many of `seqs` (one NACK's) are past `up_to`, the newest NACKed
/// before (see [`Consumer::nacked_up_to`]), which moves on to the newest.
pub fn newly_nacked(up_to: &mut Option<u16>, seqs: impl IntoIterator<Item = u16>) -> u32 {
    let mut new = 0;
    for seq in seqs {
        let newer = up_to.is_none_or(|u| (seq.wrapping_sub(u) as i16) > 0);
        if newer {
            *up_to = Some(seq);
        }
        new += u32::from(newer);
    }
    new
}

/// The layer to forward under `ceiling` given what arrives: the best one at
/// or below it, else the lowest above it; the ceiling itself while nothing
/// arrives yet (it starts when it does).
pub fn choose_layer(ceiling: Layer, available: [bool; 3]) -> Layer {
    let below = Layer::ALL.into_iter().rev().filter(|l| *l <= ceiling).find(|l| available[*l as usize]);
    let above = Layer::ALL.into_iter().filter(|l| *l > ceiling).find(|l| available[*l as usize]);
    below.or(above).unwrap_or(ceiling)
}

/// NACKed packets a consumer waits to resend.
pub const DEFERRED: usize = 32;
/// A NACKed packet is resent at most this long after the NACK; later the
/// receiver has given up on it or asked again.
pub const DEFERRED_FOR: Duration = Duration::from_secs(1);
/// A NACKed packet that has waited this long for room is resent anyway.
/// aiortc asks for a packet again only when it sees a new gap, and waits
/// for it until 512 packets have passed; after a switch down onto a capped link the media can take all of
/// the estimate for seconds (the keyframe took the budget far below zero),
/// and the waiting packets expired unsent (seen in `remb_cap`'s logs),
/// leaving holes aiortc then waits 11 s on. Each NACKed packet is resent
/// once this way, so what the leg overshoots by is what it lost.
pub const DEFERRED_OVERDUE: Duration = Duration::from_millis(400);

/// NACKed packets the subscriber leg's budget had no room for when asked
/// (SPEC 5.1: retransmissions are paid from the estimate), resent as soon as
/// it has. A receiver may not NACK a packet again (aiortc does only on a new
/// gap), so a refused retransmission could be a hole for good, and right after a switch
/// down the keyframe has just emptied the budget: aiortc's jitter buffer then
/// holds back every later frame until 512 packets have passed, 11 s at `h`.
/// Fixed size, so NACK handling allocates nothing; when full, the packet
/// NACKed longest ago makes room.
#[derive(Debug, Default)]
pub struct Deferred {
    slots: [Option<(u16, Instant)>; DEFERRED],
}

impl Deferred {
    /// `seq` (the subscriber's number) was NACKed at `now` and did not fit.
    pub fn push(&mut self, seq: u16, now: Instant) {
        if self.slots.iter().flatten().any(|(s, _)| *s == seq) {
            return;
        }
        let slot = self.slots.iter().position(Option::is_none).unwrap_or_else(|| self.oldest().unwrap_or(0));
        self.slots[slot] = Some((seq, now));
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Offers the waiting packets to `send`, NACKed first first, forgetting
    /// those older than [`DEFERRED_FOR`]; `send`'s second argument says the
    /// packet has waited [`DEFERRED_OVERDUE`] (to be sent without room).
    /// `send` returns whether it is done with the packet (sent, or no longer
    /// resendable); at the first `false` (no room yet) it and every later
    /// one wait for the next call. Returns how many it forgot unsent.
    pub fn retry(&mut self, now: Instant, mut send: impl FnMut(u16, bool) -> bool) -> usize {
        let mut expired = 0;
        while let Some(i) = self.oldest() {
            let (seq, at) = self.slots[i].expect("oldest is a filled slot");
            let waited = now.saturating_duration_since(at);
            if waited > DEFERRED_FOR {
                expired += 1;
                self.slots[i] = None;
            } else if send(seq, waited >= DEFERRED_OVERDUE) {
                self.slots[i] = None;
            } else {
                break;
            }
        }
        expired
    }

    fn oldest(&self) -> Option<usize> {
        (0..DEFERRED).filter(|&i| self.slots[i].is_some()).min_by_key(|&i| self.slots[i].map(|(_, at)| at))
    }
}

/// A receiver without transport-cc's last NACK is answered once more after
/// this long without another NACK.
pub const FOLLOW_UP_QUIET: Duration = Duration::from_millis(600);
/// ... within this long of that NACK, as the leg's budget has room.
pub const FOLLOW_UP_FOR: Duration = Duration::from_secs(5);
/// Numbers of one NACK kept for its follow-up.
pub const FOLLOW_UP: usize = 32;
/// A follow-up is never sent for a packet this far behind the newest sent.
/// aiortc's jitter buffer takes a packet 100 or more behind the one it waits
/// for (its origin, `MAX_MISORDER` in its `jitterbuffer.py`) as a new stream:
/// it drops what it holds and waits for numbers it has already played,
/// until 512 newer ones pass. The follow-up's duplicates of packets that did
/// arrive, sent late, did that (`tests/analytics.rs`: an aiortc subscriber of
/// a lossy publisher decoded nothing for 30 s once; that test's later
/// failures were the pause [`link_loss`] ended, which may have been this
/// one too). Its origin is never past
/// the newest packet it received, so never past the newest sent: a packet
/// under 100 behind that is under 100 behind the origin (it was 64).
pub const FOLLOW_UP_MAX_BEHIND: u16 = 96;
/// A follow-up packet this far behind the newest sent goes even without room
/// in the estimate: it would soon be too old to go at all. Right after a
/// switch down the new layer takes the whole estimate, and one packet of the
/// list waiting for room held the rest (fillers too) until each was too old:
/// `remb_cap`'s traces showed every follow-up after a switch down skipped,
/// at 97-99 behind, and both 10.7 s freezes in nine runs began at such a
/// switch, on a packet the receiver had stopped NACKing. What the leg
/// overshoots by is a few packets, once.
pub const FOLLOW_UP_OVERDUE_BEHIND: u16 = 64;

/// The packets a subscriber without transport-cc last NACKed, to be resent
/// once more when its NACKs stop. Such a receiver cannot tell the SFU which
/// retransmissions arrived, and aiortc (the one seen) NACKs again only when
/// it sees a new gap: a retransmission lost in the congestion that caused
/// the loss, with no loss after it, is a hole it stops asking for 128
/// packets later and its jitter buffer waits on until 512 have passed (10 s
/// at `h`, 25 s at `q`: `benches/remb_cap.rs`, whose summary lists what
/// aiortc gave up on). Each NACK names every packet still missing, so the
/// last one before a quiet spell is what the receiver lacked; once nothing
/// has been NACKed for [`FOLLOW_UP_QUIET`] (the link is clean again, and a
/// deferred retransmission has gone out, see [`DEFERRED_OVERDUE`]) those are
/// resent as the budget has room: those that had arrived cost a duplicate,
/// paid from the estimate. libwebrtc NACKs a packet again every round trip
/// and reports each arrival in transport-cc, so its legs need none of this.
#[derive(Debug, Default)]
pub struct FollowUp {
    seqs: [u16; FOLLOW_UP],
    len: usize,
    /// Resent up to here.
    next: usize,
    nacked_at: Option<Instant>,
}

impl FollowUp {
    /// A NACK at `now` named `seqs` (the first [`FOLLOW_UP`] are kept): they
    /// replace what the one before named.
    pub fn nacked(&mut self, seqs: impl IntoIterator<Item = u16>, now: Instant) {
        self.len = 0;
        self.next = 0;
        for seq in seqs.into_iter().take(FOLLOW_UP) {
            self.seqs[self.len] = seq;
            self.len += 1;
        }
        self.nacked_at = Some(now);
    }

    pub fn is_pending(&self) -> bool {
        self.next < self.len
    }

    /// Offers the last NACK's packets to `send` once it is [`FOLLOW_UP_QUIET`]
    /// old, in its order, until `send` returns `false` (no room yet: the
    /// rest waits for the next call); past [`FOLLOW_UP_FOR`] they are
    /// dropped.
    pub fn due(&mut self, now: Instant, mut send: impl FnMut(u16) -> bool) {
        let Some(at) = self.nacked_at.filter(|_| self.is_pending()) else { return };
        let waited = now.saturating_duration_since(at);
        if waited > FOLLOW_UP_FOR {
            self.next = self.len;
            return;
        }
        if waited < FOLLOW_UP_QUIET {
            return;
        }
        while self.next < self.len && send(self.seqs[self.next]) {
            self.next += 1;
        }
    }
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

impl LegReport {
    /// One RTCP reception report block about this track, received at `wall`
    /// (the round trip is measured against the NTP clock, RFC 3550 6.4.1).
    pub fn apply(&mut self, r: &rtc::rtcp::reception_report::ReceptionReport, clock_rate: u32, wall: SystemTime) {
        use crate::analytics::rtt;
        self.fraction_lost = f64::from(r.fraction_lost) / 256.0;
        // Cumulative loss is a 24-bit signed number (duplicates can make it negative).
        let lost = r.total_lost & 0x00FF_FFFF;
        self.packets_lost = if lost & 0x0080_0000 != 0 { i64::from(lost) - (1 << 24) } else { i64::from(lost) };
        self.jitter_ms = f64::from(r.jitter) * 1000.0 / f64::from(clock_rate.max(1));
        let arrival = rtt::compact(rtt::ntp64(wall));
        if let Some(d) = rtt::rtt_from_report(arrival, r.last_sender_report, r.delay) {
            self.rtt_ms = Some(d.as_secs_f64() * 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::reception_report::ReceptionReport;

    #[test]
    fn link_loss_leaves_out_what_was_never_sent() {
        let mut mark = None;
        assert_eq!(link_loss(&mut mark, (1000, 5, 3)), None, "the first report only marks");
        // 100 numbers, 12 lost by the report, 10 of them never sent.
        assert_eq!(link_loss(&mut mark, (1100, 17, 13)), Some(0.02));
        // All of the loss upstream: none here.
        assert_eq!(link_loss(&mut mark, (1200, 27, 23)), Some(0.0));
        // Across the 24-bit wrap of the cumulative loss, then down (duplicates).
        let mut mark = Some((0, 0x00FF_FFFF, 0));
        assert_eq!(link_loss(&mut mark, (50, 4, 0)), Some(0.1), "5 lost, in 24 bits");
        assert_eq!(link_loss(&mut mark, (100, 2, 0)), Some(0.0));
        // Nothing new: no news.
        assert_eq!(link_loss(&mut mark, (100, 2, 0)), Some(0.0));
    }

    #[test]
    fn deferred_retransmissions_go_oldest_first_until_one_does_not_fit_and_expire() {
        let t0 = Instant::now();
        let mut d = Deferred::default();
        assert!(d.is_empty());
        d.push(10, t0);
        d.push(11, t0 + Duration::from_millis(1));
        d.push(10, t0 + Duration::from_millis(2)); // asked again: still one entry
        d.push(12, t0 + Duration::from_millis(3));
        // Room for one packet only: 10 goes, 11 waits and 12 behind it.
        let mut sent = vec![];
        let mut room = 1;
        d.retry(t0 + Duration::from_millis(5), |s, overdue| {
            assert!(!overdue);
            if room == 0 {
                return false;
            }
            room -= 1;
            sent.push(s);
            true
        });
        assert_eq!(sent, [10]);
        // Overdue, each is offered to be sent without room.
        let mut overdue = vec![];
        d.retry(t0 + DEFERRED_OVERDUE + Duration::from_millis(2), |s, o| {
            overdue.push((s, o));
            false
        });
        assert_eq!(overdue, [(11, true)], "the first refusal still stops the round");
        // Past DEFERRED_FOR nothing is offered any more.
        let expired =
            d.retry(t0 + DEFERRED_FOR + Duration::from_millis(10), |s, _| panic!("{s} offered after expiring"));
        assert_eq!(expired, 2, "11 and 12 expired unsent");
        assert!(d.is_empty());
    }

    #[test]
    fn the_last_nack_is_answered_again_after_a_quiet_spell_as_room_allows() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut f = FollowUp::default();
        let mut sent = vec![];
        f.due(at(5000), |s| panic!("{s} offered with nothing NACKed"));
        f.nacked([10, 11], t0);
        // A later NACK names what is still missing: it replaces the first.
        f.nacked([11, 12, 13], at(100));
        f.due(at(100) + FOLLOW_UP_QUIET - Duration::from_millis(1), |s| panic!("{s} offered before the quiet spell"));
        let mut room = 2;
        f.due(at(100) + FOLLOW_UP_QUIET, |s| {
            if room == 0 {
                return false;
            }
            room -= 1;
            sent.push(s);
            true
        });
        assert_eq!(sent, [11, 12]);
        assert!(f.is_pending());
        f.due(at(1000), |s| {
            sent.push(s);
            true
        });
        assert_eq!(sent, [11, 12, 13], "each once, in order");
        assert!(!f.is_pending());
        f.due(at(2000), |s| panic!("{s} offered twice"));
        // Kept no longer than FOLLOW_UP_FOR, and at most FOLLOW_UP of a NACK.
        f.nacked(0..100, at(3000));
        f.due(at(3000) + FOLLOW_UP_FOR + Duration::from_millis(1), |s| panic!("{s} offered too late"));
        assert!(!f.is_pending());
        f.nacked(0..100, at(10_000));
        let mut n = 0;
        f.due(at(11_000), |_| {
            n += 1;
            true
        });
        assert_eq!(n, FOLLOW_UP);
    }

    #[test]
    fn a_full_deferred_queue_drops_the_packet_nacked_longest_ago() {
        let t0 = Instant::now();
        let mut d = Deferred::default();
        for i in 0..DEFERRED as u16 + 1 {
            d.push(i, t0 + Duration::from_millis(u64::from(i)));
        }
        let mut offered = vec![];
        d.retry(t0 + Duration::from_millis(40), |s, _| {
            offered.push(s);
            true
        });
        assert_eq!(offered, (1..=DEFERRED as u16).collect::<Vec<_>>());
    }

    #[test]
    fn the_layer_is_the_best_under_the_ceiling_that_arrives() {
        use Layer::*;
        assert_eq!(choose_layer(F, [true, true, true]), F);
        assert_eq!(choose_layer(H, [true, true, true]), H);
        assert_eq!(choose_layer(F, [true, true, false]), H, "f is not arriving");
        assert_eq!(choose_layer(Q, [false, true, true]), H, "nothing at or below q: the lowest above");
        assert_eq!(choose_layer(H, [false, false, false]), H, "nothing yet: wait for the ceiling");
    }

    #[test]
    fn a_report_block_gives_loss_jitter_and_negative_cumulative_loss() {
        let mut r = LegReport::default();
        let block = ReceptionReport { fraction_lost: 64, total_lost: 0x00FF_FFFE, jitter: 900, ..Default::default() };
        r.apply(&block, 90_000, SystemTime::now());
        assert_eq!(r.fraction_lost, 0.25);
        assert_eq!(r.packets_lost, -2, "24-bit two's complement");
        assert!((r.jitter_ms - 10.0).abs() < 1e-9, "{}", r.jitter_ms);
        assert_eq!(r.rtt_ms, None, "no sender report was echoed");
    }

    /// aiortc names every packet still missing in each NACK: each counts once, across the wrap.
    #[test]
    fn a_packet_nacked_again_is_not_new_loss() {
        let mut up_to = None;
        assert_eq!(newly_nacked(&mut up_to, [65534, 65535]), 2);
        assert_eq!(newly_nacked(&mut up_to, [65534, 65535, 0, 1]), 2, "the wrap");
        assert_eq!(newly_nacked(&mut up_to, [65535, 1]), 0);
        assert_eq!(newly_nacked(&mut up_to, [5]), 1);
        assert_eq!(up_to, Some(5));
    }
}
