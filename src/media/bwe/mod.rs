//! How much one subscriber's downstream can take: a send-side bandwidth estimator.
//!
//! An [`Estimator`] owns one subscriber's estimate. It remembers when each transport-wide sequence
//! number left and turns the subscriber's transport-cc feedback (or, without it, REMB and
//! receiver-report loss) into the bitrate the allocator may send. It is pure: no I/O and no clock
//! reads. Time comes in as `now: Instant` arguments, and receiver arrival times as `Duration`s
//! since the receiver's own epoch. It is hand-written because the estimator is the product itself:
//! how fast the SFU backs off from a congested link, and how fast it recovers, is what subscribers see.
//!
//! It follows draft-ietf-rmcat-gcc-02 in libwebrtc's send-side form (GoogCC):
//! - **delay-based**: packets are grouped into 5 ms send-time bursts. Each group's delay variation
//!   (arrival delta − send delta) feeds a trendline filter: the least-squares slope of the smoothed
//!   accumulated delay over the last 20 groups, as libwebrtc's TrendlineEstimator computes it. It is
//!   used instead of the draft's Kalman filter because libwebrtc runs it on send-side feedback, it
//!   has no noise variances to tune, and it follows a growing queue within a few groups. The draft's
//!   adaptive threshold (gamma; K_u = 0.01, K_d = 0.00018) classifies the trend as a [`Usage`], and
//!   its Increase / Hold / Decrease controller acts on that. On overuse the controller cuts to 0.85 ×
//!   the acknowledged rate, at most once per round trip. Otherwise it grows 8 %/s far from the last
//!   congestion point and about one packet per response time near it, never above
//!   1.5 × acknowledged + 10 kbit/s.
//! - **loss-based**: per feedback window of at least 1 s, loss > 10 % → × (1 − 0.5·loss),
//!   loss < 2 % → × 1.05, otherwise hold.
//! - the estimate is the minimum of both (and of a REMB, or NACKs, that say the receiver gets
//!   less than it is sent, see [`remb`]), clamped to [`Config`].
//! - **probing**: the delay-based estimate never grows above 1.5 × what arrives, so once the
//!   allocator has moved a subscriber down (or paused its video) the media alone cannot lift it
//!   back. When the allocator wants more than the estimate and the link looks clean,
//!   [`Estimator::start_probe`] opens a probe cluster: for [`PROBE_DURATION`] (or
//!   [`PROBE_DURATION_PAST_CONGESTION`], past a rate where the link congested before) the caller sends at
//!   the probe's target (padding on top of media), and every packet sent meanwhile belongs to the
//!   cluster. From the cluster's feedback the rate that got through is libwebrtc's
//!   ProbeBitrateEstimator's: the lower of the send and the receive rate, and 95 % of the receive
//!   rate when that is under 90 % of the send rate (the link was full). Unlike libwebrtc, the
//!   receive rate is taken over at least the cluster's send span, so lost packets and a burst
//!   let through at once by a token bucket count as the shortfall they are. A cluster that saw no
//!   overuse and little loss, or that filled the link, raises the estimate to that rate at once. Clusters start at most
//!   every [`PROBE_GAP`], and after a probe that failed to raise the estimate the gap doubles, up
//!   to [`PROBE_GAP_MAX`]. For [`CONGESTION_MEMORY`] after a delay or loss cut (or a probe that
//!   filled the link), probes stay within 10 % of the rate that got through then. A large delay
//!   cut while the sender was using far less than its estimate (a stalled publisher, a receiver
//!   short of CPU: the cut is 85 % of what arrives, which says little about the link) is instead
//!   followed by one probe straight back to 85 % of the estimate before it, as libwebrtc probes
//!   after a large drop in ALR; if the link really shrank, that probe fails and nothing changes,
//!   and if loss follows the cut first (a stall loses nothing; a link that shrank under the media
//!   drops what its queue cannot hold), it was congestion at what got through, and there is no
//!   such probe: through a policer's burst a short probe looks as if it got through.

mod probe;
mod remb;

pub use probe::ProbeResult;
use probe::*;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Where the estimate starts and the bounds it stays in, in bits per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub initial_bps: u64,
    /// Raised to 1 if 0: the estimate is never 0.
    pub min_bps: u64,
    pub max_bps: u64,
}

/// One packet the SFU sent to the subscriber (media, RTX or padding), recorded as it leaves.
#[derive(Clone, Copy, Debug)]
pub struct SentPacket {
    pub transport_seq: u16,
    /// Bytes on the wire.
    pub size: usize,
    pub at: Instant,
}

/// One packet's fate, from transport-cc feedback.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub transport_seq: u16,
    /// When it arrived, on the receiver's clock since any epoch (only differences matter); `None`
    /// if the feedback reports it lost.
    pub arrived: Option<Duration>,
}

/// What the delay-based detector last concluded about the path's queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Usage {
    #[default]
    Normal,
    /// Delay is growing: a queue is building.
    Overusing,
    /// Delay is shrinking: a queue is draining.
    Underusing,
}

/// Send times kept: indexed by sequence number modulo this (it divides 2^16, so wrap is free).
const RING: usize = 4096;
const BURST_US: i64 = 5_000;
const BURST_SPAN_US: i64 = 100_000;
/// An arrival or group delta this far off is a receiver clock jump: start grouping afresh.
const MAX_JUMP_US: i64 = 3_000_000;
const TREND_WINDOW: usize = 20;
const TREND_SMOOTHING: f64 = 0.9;
const TREND_GAIN: f64 = 4.0;
const OVERUSE_MS: f64 = 10.0;
const K_UP: f64 = 0.01;
const K_DOWN: f64 = 0.000_18;
const BETA: f64 = 0.85;
/// Acknowledged bitrate: what the receiver got over this much of its own clock.
const ACK_WINDOW_US: i64 = 300_000;
const ACK_MIN_SPAN_US: i64 = 50_000;
const LOSS_HIGH: f64 = 0.10;
const LOSS_LOW: f64 = 0.02;
const LOSS_WINDOW: Duration = Duration::from_secs(1);
const LOSS_MIN_PACKETS: u32 = 10;
/// Loss-based cuts are at least this plus a round trip apart (libwebrtc's pacing of cuts).
const LOSS_CUT_GAP_US: f64 = 300_000.0;
/// While transport-cc came this recently, receiver-report loss is ignored (TWCC counts loss itself).
const TWCC_FRESH: Duration = Duration::from_secs(5);
/// NACKed packets are counted against those sent over windows of at least this long ...
const NACK_WINDOW: Duration = Duration::from_millis(250);
/// ... in which at least this many were sent ...
const NACK_MIN_SENT: u64 = 20;
/// ... and a window that saw no NACK for this long is over.
const NACK_STALE: Duration = Duration::from_secs(1);

/// After congestion, probes go no higher than 10 % above the rate that got through then, for
/// this long: a link that congested at a rate is not pushed past it again at once (a policer's
/// burst allowance lets a short probe through that the media then could not sustain).
pub const CONGESTION_MEMORY: Duration = Duration::from_secs(12);
/// Congestion events this close together are one: the ceiling is the rate at the first (later
/// ones see the rate fall as the sender backs off, or a probe's burst).
const CONGESTION_EPISODE: Duration = Duration::from_secs(1);

/// A delay cut while sending under this fraction of the estimate, that takes the estimate under
/// this fraction of what it was, is a drop worth one probe straight back ...
const DROP_LIMITED: f64 = 0.66;
/// ... within this long of the drop, to 85 % of the estimate before it.
const DROP_RECOVERY: Duration = Duration::from_secs(5);

/// ... unless a feedback message reports at least this many lost (and over [`LOSS_LOW`]) first.
const DROP_DISPROVED_LOST: u32 = 2;

const EMPTY: u8 = 0;
const SENT: u8 = 1;
const LOST: u8 = 2;
const RECEIVED: u8 = 3;

#[derive(Clone, Copy, Default)]
struct Slot {
    seq: u16,
    state: u8,
    /// The probe cluster it was sent in, 0 if none.
    cluster: u8,
    size: u32,
    sent_us: i64,
}

fn signed_us(t: Instant, base: Instant) -> i64 {
    match t.checked_duration_since(base) {
        Some(d) => d.as_micros().min(i64::MAX as u128) as i64,
        None => -(base.duration_since(t).as_micros().min(i64::MAX as u128) as i64),
    }
}

fn rx_us(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

/// A send-time burst: times in µs (send: since the estimator's base; arrival: receiver clock).
#[derive(Clone, Copy)]
struct Group {
    first_send: i64,
    last_send: i64,
    first_arrival: i64,
    last_arrival: i64,
}

impl Group {
    fn new(send: i64, arrival: i64) -> Self {
        Group { first_send: send, last_send: send, first_arrival: arrival, last_arrival: arrival }
    }
}

/// Burst grouping, trendline filter and overuse detector with its adaptive threshold.
#[derive(Default)]
struct Detector {
    cur: Option<Group>,
    prev: Option<Group>,
    first_ms: Option<f64>,
    acc_ms: f64,
    smoothed_ms: f64,
    deltas: u32,
    window: VecDeque<(f64, f64)>,
    trend: f64,
    threshold: f64,
    threshold_at: Option<f64>,
    over_ms: f64,
    over_count: u32,
    usage: Usage,
}

impl Detector {
    fn new() -> Self {
        Detector { threshold: 12.5, over_ms: -1.0, window: VecDeque::with_capacity(TREND_WINDOW), ..Default::default() }
    }

    /// Forgets the grouping and the trend (not the learnt threshold), starting from this packet.
    fn restart(&mut self, send: i64, arrival: i64) {
        let threshold = self.threshold;
        *self = Detector { threshold, cur: Some(Group::new(send, arrival)), ..Detector::new() };
    }

    /// One received packet, in arrival order.
    fn packet(&mut self, send: i64, arrival: i64) {
        let Some(cur) = self.cur.as_mut() else { return self.restart(send, arrival) };
        let arrival_delta = arrival - cur.last_arrival;
        if arrival_delta.unsigned_abs() > MAX_JUMP_US as u64 {
            return self.restart(send, arrival);
        }
        if send < cur.first_send {
            return; // sent before the group now being built: reordered, skipped as libwebrtc does
        }
        let send_delta = send.saturating_sub(cur.last_send);
        let burst = arrival_delta <= BURST_US
            && arrival_delta.saturating_sub(send_delta) < 0
            && arrival - cur.first_arrival < BURST_SPAN_US;
        if send.saturating_sub(cur.first_send) <= BURST_US || burst {
            cur.last_send = cur.last_send.max(send);
            cur.last_arrival = cur.last_arrival.max(arrival);
            return;
        }
        let done = *cur;
        self.cur = Some(Group::new(send, arrival));
        let Some(prev) = self.prev.replace(done) else { return };
        let ds = done.last_send.saturating_sub(prev.last_send);
        let da = done.last_arrival - prev.last_arrival;
        if da < 0 || da.saturating_sub(ds).unsigned_abs() > MAX_JUMP_US as u64 {
            return self.restart(send, arrival);
        }
        self.update(ds as f64 / 1e3, da as f64 / 1e3, done.last_arrival as f64 / 1e3);
    }

    fn update(&mut self, ds_ms: f64, da_ms: f64, at_ms: f64) {
        self.deltas = (self.deltas + 1).min(1000);
        self.acc_ms += da_ms - ds_ms;
        self.smoothed_ms = TREND_SMOOTHING * self.smoothed_ms + (1.0 - TREND_SMOOTHING) * self.acc_ms;
        let first = *self.first_ms.get_or_insert(at_ms);
        if self.window.len() == TREND_WINDOW {
            self.window.pop_front();
        }
        self.window.push_back((at_ms - first, self.smoothed_ms));
        let prev_trend = self.trend;
        if self.window.len() == TREND_WINDOW {
            self.trend = slope(&self.window).unwrap_or(self.trend);
        }
        if self.deltas < 2 {
            return;
        }
        let m = f64::from(self.deltas.min(60)) * self.trend * TREND_GAIN;
        if m > self.threshold {
            self.over_ms = if self.over_ms < 0.0 { ds_ms / 2.0 } else { self.over_ms + ds_ms };
            self.over_count += 1;
            if self.over_ms > OVERUSE_MS && self.over_count > 1 && self.trend >= prev_trend {
                (self.over_ms, self.over_count, self.usage) = (0.0, 0, Usage::Overusing);
            }
        } else {
            (self.over_ms, self.over_count) = (-1.0, 0);
            self.usage = if m < -self.threshold { Usage::Underusing } else { Usage::Normal };
        }
        // gamma(t_i) = gamma(t_i-1) + dt * K * (|m| - gamma), not adapting to outliers (draft 5.4).
        let last = self.threshold_at.replace(at_ms).unwrap_or(at_ms);
        if m.abs() <= self.threshold + 15.0 {
            let k = if m.abs() < self.threshold { K_DOWN } else { K_UP };
            let dt = (at_ms - last).clamp(0.0, 100.0);
            self.threshold = (self.threshold + dt * k * (m.abs() - self.threshold)).clamp(6.0, 600.0);
        }
    }
}

/// Least-squares slope of (x, y), if the x values are spread.
fn slope(points: &VecDeque<(f64, f64)>) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) =
        points.iter().fold((0.0, 0.0), |(a, b), &(x, y)| (a + (x - mx) * (y - my), b + (x - mx) * (x - mx)));
    (den > 0.0 && (num / den).is_finite()).then(|| num / den)
}

/// Where the link congested before (libwebrtc's LinkCapacityEstimator), in kbit/s.
#[derive(Default)]
struct Capacity {
    kbps: Option<f64>,
    var: f64,
}

impl Capacity {
    fn deviation(&self, kbps: f64) -> f64 {
        3.0 * (self.var * kbps).sqrt()
    }

    fn upper(&self) -> Option<f64> {
        self.kbps.map(|e| e + self.deviation(e))
    }

    fn on_overuse(&mut self, sample: f64) {
        if self.kbps.is_some_and(|e| sample < e - self.deviation(e)) {
            self.kbps = None;
        }
        let e = self.kbps.map_or(sample, |e| 0.95 * e + 0.05 * sample);
        self.var = (0.95 * self.var + 0.05 * (e - sample).powi(2) / e.max(1.0)).clamp(0.4, 2.5);
        self.kbps = Some(e);
    }
}

/// The draft's rate-control states (section 5.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    Increase,
    Hold,
    Decrease,
}

/// One subscriber's bandwidth estimate; see the module documentation. About 64 KiB (the send ring).
pub struct Estimator {
    min: f64,
    max: f64,
    initial: f64,
    base: Instant,
    ring: Vec<Slot>,
    detector: Detector,
    delay_bps: f64,
    control: Control,
    last_change: Instant,
    capacity: Capacity,
    last_twcc: Option<Instant>,
    acked: VecDeque<(i64, u32)>,
    acked_bytes: u64,
    rtt_us: f64,
    loss_bps: Option<f64>,
    loss: f64,
    window_lost: u32,
    window_total: u32,
    window_start: Option<Instant>,
    last_loss_update: Option<Instant>,
    last_loss_cut: Option<Instant>,
    remb: remb::RembLimit,
    nacks: Option<NackWindow>,
    scratch: Vec<(i64, i64, u32)>,
    cluster: Option<Cluster>,
    /// The rate that got through at the last congestion, and when.
    congested: Option<(f64, Instant)>,
    /// The estimate before a large cut while application-limited, when, and what got through
    /// then.
    dropped: Option<(f64, Instant, f64)>,
    next_cluster_id: u8,
    next_probe: Option<Instant>,
    probe_gap: Duration,
}

impl Estimator {
    pub fn new(cfg: Config, now: Instant) -> Self {
        let min = cfg.min_bps.max(1) as f64;
        let max = (cfg.max_bps as f64).max(min);
        let initial = (cfg.initial_bps as f64).clamp(min, max);
        Estimator {
            min,
            max,
            initial,
            base: now,
            ring: vec![Slot::default(); RING],
            detector: Detector::new(),
            delay_bps: initial,
            control: Control::Increase,
            last_change: now,
            capacity: Capacity::default(),
            last_twcc: None,
            acked: VecDeque::new(),
            acked_bytes: 0,
            rtt_us: 100_000.0,
            loss_bps: None,
            loss: 0.0,
            window_lost: 0,
            window_total: 0,
            window_start: None,
            last_loss_update: None,
            last_loss_cut: None,
            remb: remb::RembLimit::default(),
            nacks: None,
            scratch: Vec::new(),
            cluster: None,
            congested: None,
            dropped: None,
            next_cluster_id: 1,
            next_probe: None,
            probe_gap: PROBE_GAP,
        }
    }

    /// Records a packet as it leaves: one store into a fixed ring, no allocation.
    pub fn on_sent(&mut self, p: SentPacket) {
        let size = p.size.min(u32::MAX as usize) as u32;
        let sent_us = signed_us(p.at, self.base);
        let mut cluster = 0;
        if let Some(c) = self.cluster.as_mut().filter(|c| c.sending(p.at)) {
            c.sent.add(sent_us, size);
            cluster = c.id;
        }
        self.ring[usize::from(p.transport_seq) % RING] =
            Slot { seq: p.transport_seq, state: SENT, cluster, size, sent_us };
    }

    /// One transport-cc feedback message, in any order. Numbers not sent (or no longer in the
    /// ring), repeats and arrivals already reported are ignored; a packet reported lost and then
    /// received counts as received.
    pub fn on_feedback(&mut self, arrivals: &[Arrival], now: Instant) {
        let mut got = std::mem::take(&mut self.scratch);
        got.clear();
        let (mut lost, mut total) = (0u32, 0u32);
        for a in arrivals {
            let slot = &mut self.ring[usize::from(a.transport_seq) % RING];
            if slot.state == EMPTY || slot.seq != a.transport_seq {
                continue;
            }
            let probe = self.cluster.as_mut().filter(|c| slot.cluster != 0 && c.id == slot.cluster);
            match (a.arrived, slot.state) {
                (None, SENT) => {
                    (slot.state, lost, total) = (LOST, lost + 1, total + 1);
                    if let Some(c) = probe {
                        c.lost += 1;
                    }
                }
                (Some(at), SENT | LOST) => {
                    if slot.state == LOST {
                        self.window_lost = self.window_lost.saturating_sub(1);
                    } else {
                        total += 1;
                    }
                    if let Some(c) = probe {
                        c.lost = c.lost.saturating_sub(u32::from(slot.state == LOST));
                        c.received.add(rx_us(at), slot.size);
                    }
                    slot.state = RECEIVED;
                    got.push((rx_us(at), slot.sent_us, slot.size));
                }
                _ => {}
            }
        }
        if total > 0 || !got.is_empty() {
            self.last_twcc = Some(now);
        }
        if let Some(newest) = got.iter().map(|p| p.0).max() {
            // libwebrtc's propagation RTT: flight time less how long the report held the packet.
            let now_us = signed_us(now, self.base);
            let rtt = got.iter().map(|&(at, sent, _)| now_us.saturating_sub(sent).saturating_sub(newest - at)).min();
            if let Some(rtt) = rtt.filter(|&r| r > 0 && r < 10_000_000) {
                self.rtt_us = 0.875 * self.rtt_us + 0.125 * rtt as f64;
            }
            got.sort_unstable_by_key(|&(at, sent, _)| (at, sent));
            for &(at, sent, size) in &got {
                self.ack(at, size);
                self.detector.packet(sent, at);
            }
            self.update_delay(now);
        }
        self.scratch = got;
        if let Some(c) = self.cluster.as_mut() {
            c.overused |= self.detector.usage == Usage::Overusing;
        }
        // Loss after a drop while application-limited says the link did shrink (a stalled
        // publisher or a slow receiver loses nothing): it congested at what got through, and
        // there is no probe straight back.
        if lost >= DROP_DISPROVED_LOST && f64::from(lost) > LOSS_LOW * f64::from(total) {
            if let Some((_, _, through)) = self.dropped.take() {
                self.on_congestion(through, now);
            }
        }
        if total > 0 {
            self.window_lost += lost;
            self.window_total += total;
            let start = *self.window_start.get_or_insert(now);
            if now.saturating_duration_since(start) >= LOSS_WINDOW && self.window_total >= LOSS_MIN_PACKETS {
                self.apply_loss(f64::from(self.window_lost) / f64::from(self.window_total), now);
                (self.window_lost, self.window_total, self.window_start) = (0, 0, Some(now));
            }
        }
    }

    /// The receiver's own estimate (REMB), with `stamped_bytes` what the leg has sent so far in
    /// the packets that receiver estimates from (payload and padding of those stamped with
    /// abs-send-time). It caps everything else when it says the receiver gets less than it is
    /// sent ([`remb`] says why only then).
    pub fn on_remb(&mut self, bps: u64, stamped_bytes: u64, now: Instant) {
        let bps = (bps as f64).clamp(self.min, self.max) as u64;
        self.remb.on_remb(bps, stamped_bytes, self.max, now);
    }

    /// A NACK naming `nacked` packets not NACKed before, with `sent_packets` and `stamped_bytes`
    /// what the leg has sent so far (all packets; those counted by a REMB receiver, see
    /// [`Estimator::on_remb`]). Without transport-cc, NACKs are the quickest word of loss: a
    /// receiver NACKs a gap as soon as it sees it, and reports the loss in a receiver report a
    /// second later. So over each [`NACK_WINDOW`], more than [`LOSS_HIGH`] of what was sent NACKed
    /// is congestion at what got through (the sent rate less the loss) for the REMB limit. Only
    /// for a REMB receiver (its packets stamped with abs-send-time), whose limit remembers
    /// congestion as [`remb`] says; the loss-based part still acts on receiver reports.
    pub fn on_nack(&mut self, nacked: u32, sent_packets: u64, stamped_bytes: u64, now: Instant) {
        if self.last_twcc.is_some_and(|t| now.saturating_duration_since(t) < TWCC_FRESH) {
            return;
        }
        let fresh = NackWindow { from: now, sent_packets, stamped_bytes, nacked: 0, last_nack: now };
        let w = match &mut self.nacks {
            Some(w) if now.saturating_duration_since(w.last_nack) < NACK_STALE => w,
            slot => slot.insert(fresh),
        };
        w.nacked += u64::from(nacked);
        w.last_nack = now;
        let span = now.saturating_duration_since(w.from);
        let sent = sent_packets.saturating_sub(w.sent_packets);
        if span < NACK_WINDOW || sent < NACK_MIN_SENT {
            return;
        }
        let loss = (w.nacked as f64 / sent as f64).min(1.0);
        let sent_bps = stamped_bytes.saturating_sub(w.stamped_bytes) as f64 * 8.0 / span.as_secs_f64();
        *w = NackWindow { from: now, sent_packets, stamped_bytes, nacked: 0, last_nack: now };
        if loss > LOSS_HIGH && sent_bps > 0.0 {
            let got_through = self.clamp(sent_bps * (1.0 - loss));
            self.remb.on_nack_loss(got_through, sent_bps, now);
        }
    }

    /// Loss from an RTCP receiver report (fraction lost, 0..=1; others ignored). It drives the
    /// loss-based part for subscribers without transport-cc, and is ignored while transport-cc
    /// feedback flows.
    pub fn on_receiver_report(&mut self, fraction_lost: f64, now: Instant) {
        let twcc = self.last_twcc.is_some_and(|t| now.saturating_duration_since(t) < TWCC_FRESH);
        self.remb.tick(self.max, now);
        if !twcc && (0.0..=1.0).contains(&fraction_lost) {
            self.apply_loss(fraction_lost, now);
        }
    }

    /// What the SFU may send to this subscriber, in bits per second: within [min, max], never 0.
    pub fn estimate_bps(&self) -> u64 {
        self.target().round() as u64
    }

    /// What the receiver got over the last 300 ms of its clock, from the feedback; `None` before
    /// there is enough.
    pub fn acknowledged_bps(&self) -> Option<u64> {
        self.acked_rate().map(|r| r.round() as u64)
    }

    pub fn usage(&self) -> Usage {
        self.detector.usage
    }

    /// What each part of the estimate says, in bits per second (for logs): the delay-based
    /// estimate (with transport-cc), the loss-based limit and the REMB limit, where they limit.
    pub fn limits(&self) -> [Option<u64>; 3] {
        let delay = self.last_twcc.map(|_| self.delay_bps);
        [delay, self.loss_bps, self.remb.limit()].map(|l| l.map(|b| b.round() as u64))
    }

    /// The fraction lost in the last loss window (transport-cc) or receiver report.
    pub fn loss(&self) -> f64 {
        self.loss
    }

    fn clamp(&self, bps: f64) -> f64 {
        bps.clamp(self.min, self.max)
    }

    fn target(&self) -> f64 {
        let mut t = if self.last_twcc.is_some() { self.delay_bps } else { f64::INFINITY };
        for limit in [self.loss_bps, self.remb.limit()].into_iter().flatten() {
            t = t.min(limit);
        }
        if t.is_finite() {
            self.clamp(t)
        } else {
            self.initial
        }
    }

    fn ack(&mut self, at: i64, size: u32) {
        if let Some(&(newest, _)) = self.acked.back() {
            if at < newest - 1_000_000 || at > newest.saturating_add(MAX_JUMP_US) {
                self.acked.clear();
                self.acked_bytes = 0;
            }
        }
        let at = self.acked.back().map_or(at, |&(newest, _)| at.max(newest));
        self.acked.push_back((at, size));
        self.acked_bytes += u64::from(size);
        while let Some(&(t, s)) = self.acked.front() {
            if t >= at - ACK_WINDOW_US {
                break;
            }
            self.acked.pop_front();
            self.acked_bytes -= u64::from(s);
        }
    }

    fn acked_rate(&self) -> Option<f64> {
        let (&(first, first_size), &(last, _)) = (self.acked.front()?, self.acked.back()?);
        let span = last - first;
        (span >= ACK_MIN_SPAN_US).then(|| (self.acked_bytes - u64::from(first_size)) as f64 * 8e6 / span as f64)
    }

    /// The draft's rate controller, once per feedback with received packets.
    fn update_delay(&mut self, now: Instant) {
        let acked = self.acked_rate();
        if acked.zip(self.capacity.upper()).is_some_and(|(a, upper)| a / 1e3 > upper) {
            self.capacity.kbps = None; // well past the old congestion point: grow fast again
        }
        let since = now.saturating_duration_since(self.last_change);
        match (self.detector.usage, self.control) {
            (Usage::Overusing, control) => {
                // Cut at once from Increase, else once per round trip (sooner if half is not getting through).
                let interval = self.rtt_us.clamp(10_000.0, 200_000.0);
                let starved = acked.is_some_and(|a| a < self.delay_bps / 2.0);
                if control == Control::Increase || since.as_micros() as f64 >= interval || starved {
                    if let Some(a) = acked {
                        self.capacity.on_overuse(a / 1e3);
                    }
                    let before = self.delay_bps;
                    let cut = BETA * acked.unwrap_or(self.delay_bps);
                    self.delay_bps = self.clamp(cut.min(self.delay_bps));
                    self.last_change = now;
                    // Sending well below the estimate, a cut to 85 % of what arrives says little
                    // about the link (a stalled publisher, a receiver short of CPU): remember
                    // where it was, for one probe straight back (libwebrtc's probe after a large
                    // drop in ALR). Otherwise the link congested at what got through.
                    let limited = acked.is_none_or(|a| a < DROP_LIMITED * before);
                    if limited && self.delay_bps < DROP_LIMITED * before {
                        let fresh =
                            self.dropped.filter(|&(_, at, _)| now.saturating_duration_since(at) < DROP_RECOVERY);
                        let through = acked.unwrap_or(self.delay_bps / BETA);
                        self.dropped = Some((fresh.map_or(before, |(b, ..)| b.max(before)), now, through));
                    } else if !limited {
                        self.on_congestion(acked.unwrap_or(before), now);
                    }
                }
                self.control = Control::Decrease;
            }
            (Usage::Underusing, _) | (Usage::Normal, Control::Decrease) => self.control = Control::Hold,
            (Usage::Normal, Control::Hold) => (self.control, self.last_change) = (Control::Increase, now),
            (Usage::Normal, Control::Increase) => {
                let dt = since.min(Duration::from_secs(1)).as_secs_f64();
                let rate = self.delay_bps;
                let step = if self.capacity.kbps.is_some() {
                    let packet_bits = self.acked_bytes as f64 * 8.0 / self.acked.len().max(1) as f64;
                    (packet_bits / (self.rtt_us / 1e6 + 0.1)).max(4_000.0) * dt // response time: RTT + 100 ms
                } else {
                    (rate * (1.08f64.powf(dt) - 1.0)).max(1_000.0 * dt)
                };
                // Never above 1.5 × what arrives (+ 10 kbit/s), but that limit does not cut either.
                let limit = acked.map_or(f64::INFINITY, |a| 1.5 * a + 10_000.0);
                self.delay_bps = self.clamp((rate + step).min(limit.max(rate)));
                self.last_change = now;
            }
        }
    }

    /// Remember where the link congested (see [`CONGESTION_MEMORY`]).
    fn on_congestion(&mut self, got_through_bps: f64, now: Instant) {
        let rate = match self.congested {
            Some((r, at)) if now.saturating_duration_since(at) < CONGESTION_EPISODE => r,
            _ => got_through_bps,
        };
        self.congested = Some((rate, now));
    }

    /// The draft's loss-based controller (section 6), acting on the current estimate.
    fn apply_loss(&mut self, loss: f64, now: Instant) {
        let elapsed = self.last_loss_update.map_or(1.0, |t| now.saturating_duration_since(t).as_secs_f64().min(1.0));
        self.last_loss_update = Some(now);
        self.loss = loss;
        let current = self.target();
        let next = if loss > LOSS_HIGH {
            let gap = LOSS_CUT_GAP_US + self.rtt_us;
            if self.last_loss_cut.is_some_and(|t| (now.saturating_duration_since(t).as_micros() as f64) < gap) {
                return;
            }
            self.last_loss_cut = Some(now);
            self.on_congestion(self.acked_rate().unwrap_or(current), now);
            current * (1.0 - 0.5 * loss)
        } else if loss < LOSS_LOW {
            current * 1.05f64.powf(elapsed)
        } else {
            current
        };
        self.loss_bps = Some(self.clamp(next));
    }
}

/// NACKed packets against packets sent, since `from` (see [`Estimator::on_nack`]).
#[derive(Clone, Copy, Debug)]
struct NackWindow {
    from: Instant,
    sent_packets: u64,
    stamped_bytes: u64,
    nacked: u64,
    last_nack: Instant,
}

/// What a subscriber leg may still send beyond its media: a token bucket filled at the
/// estimate, emptied by everything the leg sends, holding at most [`BUDGET_BURST`] of it. SPEC
/// 5.1: retransmissions are paid from the same budget as media, so a subscriber on a capped link
/// that keeps NACKing does not get more than its estimate (a NACK storm is a congestion signal).
/// Media itself is not held back (the allocator keeps it within the estimate), so the bucket can
/// go below zero, and then nothing is resent until the media has left room again.
#[derive(Clone, Copy, Debug, Default)]
pub struct Budget {
    bytes: f64,
    /// Spent since the last refill.
    spent: u64,
    at: Option<Instant>,
}

/// The most a [`Budget`] saves up: this long at the estimate.
pub const BUDGET_BURST: Duration = Duration::from_millis(100);

impl Budget {
    /// Adds the estimate's worth since the last refill and takes off what was spent meanwhile
    /// (as one step: spending is counted without the estimate, once per packet).
    fn refill(&mut self, bps: u64, now: Instant) {
        let cap = bps as f64 / 8.0 * BUDGET_BURST.as_secs_f64();
        let elapsed = self.at.map_or(BUDGET_BURST, |t| now.saturating_duration_since(t));
        let spent = std::mem::take(&mut self.spent) as f64;
        self.bytes = (self.bytes + bps as f64 / 8.0 * elapsed.as_secs_f64() - spent).min(cap);
        self.at = Some(self.at.map_or(now, |t| t.max(now)));
    }

    /// `bytes` were sent on the leg: one add, nothing else on the per-packet path.
    pub fn spend(&mut self, bytes: usize) {
        self.spent += bytes as u64;
    }

    /// Whether `bytes` more (a retransmission) fit now, the estimate being `bps`; sending them
    /// is a [`Budget::spend`].
    pub fn fits(&mut self, bytes: usize, bps: u64, now: Instant) -> bool {
        self.refill(bps, now);
        self.bytes >= bytes as f64
    }

    /// [`Budget::fits`], and if so spent.
    pub fn take(&mut self, bytes: usize, bps: u64, now: Instant) -> bool {
        let fits = self.fits(bytes, bps, now);
        if fits {
            self.bytes -= bytes as f64;
        }
        fits
    }
}

#[cfg(test)]
mod tests;
