//! Probing (see the module documentation of [`super`]): a cluster of
//! packets sent above the media rate for a while, and what its feedback
//! says got through. The [`Estimator`] records what each cluster sent and
//! received as feedback comes (`on_sent`, `on_feedback`); this part opens
//! clusters and judges them.

use super::*;

/// How long a probe cluster sends at its target.
pub const PROBE_DURATION: Duration = Duration::from_millis(60);
/// How long a probe cluster sends when it goes past a rate the link congested at before (its
/// memory over): a policer's bucket lets a short probe through at once, so a 60 ms probe at
/// 2.5 × a 600 kbit/s policer with a 15 kB bucket looks clean, and the media it lets through
/// then congests the link again. Over 250 ms such a bucket and a 60 ms queue add at most their
/// depth / 250 ms to what the probe measures (about 600 kbit/s here, short of the 1.5 Mbit/s
/// that looked clean), and what the probe sends past that is lost: longer costs more media.
pub const PROBE_DURATION_PAST_CONGESTION: Duration = Duration::from_millis(250);
/// Probes are at least this far apart (end of one to start of the next).
pub const PROBE_GAP: Duration = Duration::from_millis(300);
/// The longest gap after probes that failed in a row.
pub const PROBE_GAP_MAX: Duration = Duration::from_secs(8);
/// A probe goes at most this many times the estimate: on a link already full, a probe of
/// 1.5 × for [`PROBE_DURATION`] queues 30 ms, well within what a short queue holds.
pub(super) const PROBE_STEP: f64 = 1.5;
/// Feedback this long after a cluster ends is not waited for.
pub(super) const PROBE_WAIT: Duration = Duration::from_secs(1);
/// Fewer packets than this received of a cluster give no result.
pub(super) const PROBE_MIN_PACKETS: u32 = 5;
/// A cluster goes on past its duration until it has sent this many packets, for at most
/// [`PROBE_STRETCH`] more.
pub(super) const PROBE_MIN_SENT: u32 = 8;
pub(super) const PROBE_STRETCH: Duration = Duration::from_millis(200);

/// One probe (see the module documentation): what was sent in it and what of it arrived.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cluster {
    pub(super) id: u8,
    pub(super) target: f64,
    /// The estimate when it started: a probe succeeded if it ends above it.
    pub(super) from: f64,
    pub(super) start: Instant,
    pub(super) end: Instant,
    pub(super) sent: Span,
    pub(super) received: Span,
    pub(super) lost: u32,
    pub(super) overused: bool,
}

impl Cluster {
    /// Whether packets sent at `at` still belong to it.
    pub(super) fn sending(&self, at: Instant) -> bool {
        at < self.end || (self.sent.count < PROBE_MIN_SENT && at < self.end + PROBE_STRETCH)
    }
}

/// Bytes over a stretch of time, µs on one clock.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Span {
    pub(super) count: u32,
    pub(super) bytes: u64,
    pub(super) first: i64,
    pub(super) last: i64,
    pub(super) first_size: u32,
    pub(super) last_size: u32,
}

impl Span {
    pub(super) fn add(&mut self, at: i64, size: u32) {
        if self.count == 0 || at < self.first {
            (self.first, self.first_size) = (at, size);
        }
        if self.count == 0 || at >= self.last {
            (self.last, self.last_size) = (at, size);
        }
        self.count += 1;
        self.bytes += u64::from(size);
    }

    /// Bits per second over the span, but over at least `min_span_us`, leaving out the packet
    /// at one end (`skip_first`: the first, whose arrival opens the span; else the last, whose
    /// sending closes it).
    pub(super) fn rate(&self, skip_first: bool, min_span_us: i64) -> Option<f64> {
        let span = (self.last - self.first).max(min_span_us);
        let edge = if skip_first { self.first_size } else { self.last_size };
        (self.count >= 2 && span > 0).then(|| (self.bytes - u64::from(edge)) as f64 * 8e6 / span as f64)
    }
}

/// What one probe cluster concluded, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeResult {
    pub target_bps: u64,
    /// The rate that got through; `None` when too little of the cluster was reported.
    pub measured_bps: Option<u64>,
    /// It raised the estimate.
    pub raised: bool,
    /// Packets sent in the cluster, reported received, and reported lost.
    pub sent: u32,
    pub received: u32,
    pub lost: u32,
}

impl Estimator {
    /// Opens a probe cluster if the allocator wants `desired_bps`, more than the estimate, the
    /// link looks clean ([`Estimator::should_probe`]), transport-cc feedback flows, and no probe
    /// ran within the gap. Returns the rate to send at until [`Estimator::probing`] says `None`:
    /// `desired_bps`, but at most 1.5 × the estimate and, within [`CONGESTION_MEMORY`] of
    /// congestion, 1.1 × the rate that got through then (no probe if that is no higher than the
    /// estimate).
    pub fn start_probe(&mut self, desired_bps: u64, now: Instant) -> Option<u64> {
        let twcc = self.last_twcc.is_some_and(|t| now.saturating_duration_since(t) < TWCC_FRESH);
        if !twcc || self.cluster.is_some() || !self.should_probe(desired_bps) {
            return None;
        }
        // Straight back after a drop while application-limited: no gap, no step, once.
        if let Some((before, _, _)) =
            self.dropped.take().filter(|&(_, at, _)| now.saturating_duration_since(at) < DROP_RECOVERY)
        {
            let target = self.clamp((desired_bps as f64).min(0.85 * before));
            if target > self.target() * 1.05 {
                return Some(self.open_cluster(target, now, PROBE_DURATION));
            }
        }
        if self.next_probe.is_some_and(|t| now < t) {
            return None;
        }
        let mut target = (desired_bps as f64).min(PROBE_STEP * self.target());
        if let Some((rate, _)) = self.congested.filter(|&(_, at)| now.saturating_duration_since(at) < CONGESTION_MEMORY)
        {
            target = target.min(1.1 * rate);
        }
        let target = self.clamp(target);
        if target <= self.target() * 1.05 {
            return None;
        }
        let past = self.congested.is_some_and(|(rate, _)| target > 1.1 * rate);
        Some(self.open_cluster(target, now, if past { PROBE_DURATION_PAST_CONGESTION } else { PROBE_DURATION }))
    }

    pub(super) fn open_cluster(&mut self, target: f64, now: Instant, duration: Duration) -> u64 {
        let id = self.next_cluster_id;
        self.next_cluster_id = id.checked_add(1).unwrap_or(1);
        self.cluster = Some(Cluster {
            id,
            target,
            from: self.target(),
            start: now,
            end: now + duration,
            sent: Span::default(),
            received: Span::default(),
            lost: 0,
            overused: false,
        });
        target.round() as u64
    }

    /// The rate a probe cluster sending now asks for, if one is.
    pub fn probing(&self, now: Instant) -> Option<u64> {
        self.cluster.filter(|c| c.sending(now)).map(|c| c.target.round() as u64)
    }

    /// Whether the caller may probe (pad or send RTX above the media rate) towards `desired_bps`:
    /// the estimate is below it, and the link looks clean (no queue building or draining, low
    /// loss, the controller increasing). Probes need no special handling: they are just packets.
    pub fn should_probe(&self, desired_bps: u64) -> bool {
        self.estimate_bps() < desired_bps
            && self.detector.usage == Usage::Normal
            && self.loss < LOSS_LOW
            && self.control == Control::Increase
    }

    /// Closes the probe cluster once everything sent in it is reported (or [`PROBE_WAIT`] after
    /// its end) and applies what it measured; returns the result when it closed one. Call it
    /// after feedback or on a timer, before reading the estimate.
    pub fn poll_probe(&mut self, now: Instant) -> Option<ProbeResult> {
        let c = self.cluster?;
        let reported = c.sent.count > 0 && c.received.count + c.lost >= c.sent.count;
        if c.sending(now) || !(reported || now >= c.end + PROBE_WAIT) {
            return None;
        }
        self.cluster = None;
        // What arrived is spread over at least the time it took to send: a cluster that lost
        // packets, or arrived in one burst (a token bucket's depth), does not look faster.
        // Both over at least the cluster's own duration: the caller sends at its ticks, in bursts,
        // and a cluster sent in fewer ticks than it lasted was not sent faster.
        let nominal = c.end.saturating_duration_since(c.start).as_micros() as i64;
        let send_span = (c.sent.last - c.sent.first).max(nominal);
        let rates = (c.received.count >= PROBE_MIN_PACKETS)
            .then(|| c.sent.rate(false, nominal).zip(c.received.rate(true, send_span)));
        let (measured, saturated) = match rates.flatten() {
            Some((send, recv)) if recv < 0.9 * send => (Some((0.95 * recv).min(c.target)), true),
            // Bursts at the caller's ticks can make a short cluster look faster than it was sent.
            Some((send, recv)) => (Some(send.min(recv).min(c.target)), false),
            None => (None, false),
        };
        let loss = f64::from(c.lost) / f64::from(c.sent.count.max(1));
        // A probe that filled the link measured its capacity: the queue and the loss it caused are
        // its own. One that did not fill it counts only if it saw no queue building and little loss.
        let clean = saturated || (!c.overused && loss < LOSS_HIGH);
        if let Some(rate) = measured.filter(|_| saturated) {
            self.on_congestion(rate, now);
        }
        if let Some(rate) = measured.filter(|&r| clean && r > self.delay_bps) {
            let rate = self.clamp(rate);
            self.delay_bps = rate;
            self.capacity.kbps = None;
            self.loss_bps = self.loss_bps.map(|l| l.max(rate));
            self.last_change = now;
        }
        let raised = self.target() > c.from * 1.05;
        self.probe_gap = if raised { PROBE_GAP } else { (self.probe_gap * 2).min(PROBE_GAP_MAX) };
        self.next_probe = Some(now + self.probe_gap);
        Some(ProbeResult {
            target_bps: c.target.round() as u64,
            measured_bps: measured.map(|r| r.round() as u64),
            raised,
            sent: c.sent.count,
            received: c.received.count,
            lost: c.lost,
        })
    }
}
