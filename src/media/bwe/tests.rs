//! The estimator against a simulated link, and its budget.

use super::*;

const PKT: usize = 1200;
const PROP_US: i64 = 20_000;
const QUEUE_US: f64 = 100_000.0;
const RX_EPOCH_US: i64 = 7_000_000_000;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// A paced sender, a drop-tail bottleneck of `cap_bps` (100 ms of queue, 20 ms each way,
/// up to 1 ms of jitter, optional random loss) and a receiver reporting every 100 ms, in
/// 1 ms steps. Sequence numbers start near the wrap.
struct Sim {
    base: Instant,
    est: Estimator,
    net: Net,
    probes: Vec<ProbeResult>,
}

#[derive(Default)]
struct Net {
    now_us: i64,
    cap_bps: f64,
    loss: f64,
    rng: u64,
    link_free_us: f64,
    seq: u16,
    credit: f64,
    flight: VecDeque<(u16, Option<i64>, i64)>,
    reports: VecDeque<(i64, Vec<Arrival>)>,
    /// A policer in front of the queue: a token bucket this deep (bits) lets packets through
    /// at once while it holds tokens, refilling at `cap_bps` while the queue is empty; 0: none.
    burst_bits: f64,
    tokens: f64,
    tokens_at_us: f64,
    /// The queue's length in time at the cap; 0: [`QUEUE_US`].
    queue_us: f64,
    /// A receiver short of CPU from this µs: what it reads is late by half the time since,
    /// for 300 ms, and then catches up as fast.
    stall_from: Option<i64>,
}

impl Sim {
    fn new(initial_bps: u64, cap_bps: f64) -> Self {
        let (base, cfg) = (Instant::now(), Config { initial_bps, min_bps: 50_000, max_bps: 20_000_000 });
        let net = Net { cap_bps, rng: 0x9E37_79B9_7F4A_7C15, seq: 65_000, ..Net::default() };
        Sim { base, est: Estimator::new(cfg, base), net, probes: Vec::new() }
    }

    fn rand(&mut self) -> f64 {
        (xorshift(&mut self.net.rng) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.net.now_us as u64)
    }

    fn est(&self) -> f64 {
        self.est.estimate_bps() as f64
    }

    /// One millisecond: the sender follows the estimate up to `source` bit/s and, with
    /// `probe`, probes towards `source` as the router does.
    fn step(&mut self, source: f64, probe: bool) {
        self.step_with(source, probe.then_some(source));
    }

    /// One millisecond: media follows the estimate up to `media` bit/s; with `desired`, the
    /// sender probes towards it and pads up to the probe's target while a cluster runs.
    fn step_with(&mut self, media: f64, desired: Option<f64>) {
        let now = self.instant();
        if let Some(r) = self.est.poll_probe(now) {
            self.probes.push(r);
        }
        if let Some(d) = desired {
            self.est.start_probe(d as u64, now);
        }
        let mut rate = self.est().min(media);
        if let Some(target) = self.est.probing(now) {
            rate = rate.max(target as f64);
        }
        let bits = (PKT * 8) as f64;
        self.net.credit = (self.net.credit + rate / 1000.0).min(2.0 * bits);
        while self.net.credit >= bits {
            self.net.credit -= bits;
            self.send();
        }
        let now = self.net.now_us;
        if now > 0 && now % 100_000 == 0 {
            let mut report = Vec::new();
            while let Some(&(seq, arrival, _)) = self.net.flight.front().filter(|f| f.2 <= now) {
                self.net.flight.pop_front();
                let arrived = arrival.map(|a| Duration::from_micros((a + RX_EPOCH_US) as u64));
                report.push(Arrival { transport_seq: seq, arrived });
            }
            self.net.reports.push_back((now + PROP_US, report));
        }
        while self.net.reports.front().is_some_and(|r| r.0 <= now) {
            let (_, report) = self.net.reports.pop_front().unwrap();
            self.est.on_feedback(&report, self.instant());
        }
        self.net.now_us += 1000;
    }

    fn send(&mut self) {
        self.est.on_sent(SentPacket { transport_seq: self.net.seq, size: PKT, at: self.instant() });
        let (now, lost) = (self.net.now_us, self.rand() < self.net.loss);
        let queued = (self.net.link_free_us - now as f64).max(0.0);
        if self.net.burst_bits > 0.0 && queued == 0.0 && !lost {
            let net = &mut self.net;
            let since = now as f64 - net.tokens_at_us.max(net.link_free_us);
            net.tokens = (net.tokens + since.max(0.0) * net.cap_bps / 1e6).min(net.burst_bits);
            net.tokens_at_us = now as f64;
            if net.tokens >= (PKT * 8) as f64 {
                net.tokens -= (PKT * 8) as f64;
                let at = now + PROP_US + (self.rand() * 1000.0) as i64;
                self.net.flight.push_back((self.net.seq, Some(at), at));
                self.net.seq = self.net.seq.wrapping_add(1);
                return;
            }
        }
        let queue_us = if self.net.queue_us > 0.0 { self.net.queue_us } else { QUEUE_US };
        let arrival = (!lost && queued <= queue_us).then(|| {
            let net = &mut self.net;
            net.link_free_us = net.link_free_us.max(now as f64) + (PKT * 8) as f64 * 1e6 / net.cap_bps;
            let at = net.link_free_us as i64;
            let lag = net.stall_from.map_or(0, |s| {
                let t = at - s;
                if (0..300_000).contains(&t) {
                    t / 2
                } else if (300_000..600_000).contains(&t) {
                    (600_000 - t) / 2
                } else {
                    0
                }
            });
            at + lag + PROP_US + (self.rand() * 1000.0) as i64
        });
        let known = arrival.unwrap_or(now + PROP_US + queued as i64);
        self.net.flight.push_back((self.net.seq, arrival, known));
        self.net.seq = self.net.seq.wrapping_add(1);
    }

    /// Runs up to `ms` steps; the first step (1-based) after which `done` holds.
    fn run_until(&mut self, ms: u32, source: f64, probe: bool, mut done: impl FnMut(&Sim) -> bool) -> Option<u32> {
        (1..=ms).find(|_| {
            self.step(source, probe);
            done(self)
        })
    }

    /// As [`Sim::run_until`], with media and desired rates apart.
    fn run_with(
        &mut self,
        ms: u32,
        media: f64,
        desired: Option<f64>,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<u32> {
        (1..=ms).find(|_| {
            self.step_with(media, desired);
            done(self)
        })
    }
}

#[test]
fn capacity_step_down_is_detected_within_two_seconds() {
    let mut sim = Sim::new(1_500_000, 2.5e6);
    sim.run_until(10_000, 1.5e6, false, |_| false);
    assert!(sim.est() >= 1.35e6, "before the step: {}", sim.est());
    sim.net.cap_bps = 600e3;
    let detected = sim.run_until(2_000, 1.5e6, false, |s| s.est() < 660e3);
    assert!(detected.is_some(), "estimate still {} 2 s after the step to 600 kbit/s", sim.est());
    sim.run_until(5_000, 1.5e6, false, |_| false);
    assert!((300e3..700e3).contains(&sim.est()), "5 s later: {} on a 600 kbit/s link", sim.est());
}

#[test]
fn clean_link_is_not_underestimated() {
    let mut sim = Sim::new(1_000_000, 10e6);
    sim.run_until(12_000, 1.5e6, false, |_| false);
    let (mut low, mut high) = (f64::MAX, 0f64);
    sim.run_until(30_000, 1.5e6, false, |s| {
        (low, high) = (low.min(s.est()), high.max(s.est()));
        false
    });
    assert!(low >= 0.9 * 1.5e6, "estimate fell to {low} while sending 1.5 Mbit/s on a 10 Mbit/s link");
    assert!(high <= 1.5 * 1.5e6 + 100e3, "estimate ran away to {high} while sending 1.5 Mbit/s");
    let acked = sim.est.acknowledged_bps().unwrap_or(0);
    assert!((1_350_000..1_650_000).contains(&acked), "acknowledged {acked}");
    assert_eq!(sim.est.usage(), Usage::Normal);
}

#[test]
fn estimate_recovers_after_capacity_returns() {
    let mut sim = Sim::new(1_500_000, 2.5e6);
    sim.run_until(10_000, 1.5e6, true, |_| false);
    sim.net.cap_bps = 600e3;
    sim.run_until(10_000, 1.5e6, true, |_| false);
    assert!(sim.est() < 800e3, "estimate {} after 10 s at 600 kbit/s", sim.est());
    sim.net.cap_bps = 2.5e6;
    let back = sim.run_until(25_000, 1.5e6, true, |s| s.est() > 1.2e6);
    let ms = back.unwrap_or_else(|| panic!("estimate only {} 25 s after the link returned to 2.5 Mbit/s", sim.est()));
    // Probes stay near the old congestion point for CONGESTION_MEMORY (12 s), then climb.
    assert!(ms <= 20_000, "{ms} ms to climb back above 1.2 Mbit/s: {:?}", sim.probes);
}

/// A subscriber moved down to 150 kbit/s of video: what it receives alone can lift the
/// estimate to 1.5 × that at most, so only probes bring it back to what the allocator wants.
#[test]
fn probes_lift_an_application_limited_estimate() {
    let mut sim = Sim::new(200_000, 10e6);
    sim.run_with(5_000, 150e3, None, |_| false);
    assert!(sim.est() < 300e3, "media alone lifted the estimate to {}", sim.est());
    assert!(sim.probes.is_empty());
    let lifted = sim.run_with(10_000, 150e3, Some(1.5e6), |s| s.est() >= 1.4e6);
    let ms = lifted.unwrap_or_else(|| panic!("estimate {} after 10 s of probing for 1.5 Mbit/s", sim.est()));
    assert!(ms <= 4_000, "took {ms} ms to probe up to 1.4 Mbit/s: {:?}", sim.probes);
    assert!(sim.probes.iter().all(|p| p.raised), "{:?}", sim.probes);
    assert!(sim.probes.iter().all(|p| p.target_bps as f64 <= 1.5e6));
    // Got what it wanted: no more probing.
    let n = sim.probes.len();
    sim.run_with(5_000, 150e3, Some(1.4e6), |_| false);
    assert_eq!(sim.probes.len(), n, "probed again with the estimate above what is wanted");
}

/// Probing a link that cannot take more finds its capacity, does not push the estimate past
/// it, and backs off.
#[test]
fn probes_on_a_capped_link_stop_at_its_capacity_and_back_off() {
    let mut sim = Sim::new(200_000, 600e3);
    sim.run_with(5_000, 150e3, None, |_| false);
    sim.run_with(20_000, 150e3, Some(3e6), |_| false);
    let est = sim.est();
    assert!((400e3..=700e3).contains(&est), "estimate {est} on a 600 kbit/s link after probing: {:?}", sim.probes);
    let failed = sim.probes.iter().filter(|p| !p.raised).count();
    assert!(failed >= 1, "{:?}", sim.probes);
    // Backing off: over 20 s, far fewer than one probe per 750 ms (duration + gap).
    assert!(sim.probes.len() <= 12, "{} probes in 20 s: {:?}", sim.probes.len(), sim.probes);
    assert!(sim.probes.iter().all(|p| p.measured_bps.is_none_or(|m| m < 800_000)), "{:?}", sim.probes);
}

/// Video paused for a stall upstream: only 150 kbit/s flow under a 2 Mbit/s estimate when
/// the receiver falls behind for a moment. The cut (to 85 % of what arrives) would leave the
/// subscriber paused; one probe straight back restores the estimate.
#[test]
fn a_false_drop_while_application_limited_is_probed_straight_back() {
    let mut sim = Sim::new(2_000_000, 10e6);
    sim.run_with(5_000, 150e3, Some(1.5e6), |_| false);
    assert!(sim.est() >= 1.5e6, "before: {}", sim.est());
    sim.net.stall_from = Some(sim.net.now_us);
    let cut = sim.run_with(2_000, 150e3, Some(1.5e6), |s| s.est() < 500e3);
    assert!(cut.is_some(), "the stall did not cut the estimate: {}", sim.est());
    let back = sim.run_with(2_000, 150e3, Some(1.5e6), |s| s.est() >= 1.2e6);
    assert!(back.is_some(), "estimate {} 2 s after the cut: {:?}", sim.est(), sim.probes);
    // A link that really shrank is not pushed back up: the one probe fails.
    let mut real = Sim::new(2_000_000, 10e6);
    real.run_with(5_000, 150e3, Some(1.5e6), |_| false);
    real.net.cap_bps = 140e3;
    real.run_with(3_000, 150e3, Some(1.5e6), |_| false);
    assert!(real.est() < 300e3, "estimate {} on a 140 kbit/s link: {:?}", real.est(), real.probes);
}

/// An estimate never tested (the initial 10 Mbit/s) over 1.5 Mbit/s of media, when the link
/// shrinks under the media: the cut looks like a drop while application-limited (the media was
/// far under the estimate), but the loss that follows says the link did shrink. It congested at
/// what got through, and probes stay near that instead of going straight back to 1.5 Mbit/s
/// (through a policer's burst, such a probe looks as if it got through).
#[test]
fn a_link_that_shrinks_under_the_media_is_congestion_not_a_drop_to_probe_back_from() {
    let mut sim = Sim::new(10_000_000, 2.5e6);
    sim.run_with(5_000, 1.5e6, Some(1.5e6), |_| false);
    assert!(sim.est() >= 9e6 && sim.probes.is_empty(), "before: {} {:?}", sim.est(), sim.probes);
    sim.net.cap_bps = 600e3;
    sim.run_with(6_000, 1.5e6, Some(1.5e6), |_| false);
    assert!(sim.est() < 800e3, "estimate {} on a 600 kbit/s link", sim.est());
    assert!(
        sim.probes.iter().all(|p| p.target_bps <= 800_000),
        "probed far past where the link congested: {:?}",
        sim.probes
    );
}

/// A subscriber at `h` (450 kbit/s) behind a policer of 600 kbit/s whose bucket holds 15 kB,
/// with 60 ms of queue behind it, as the load tool caps a link: after `f` (1.5 Mbit/s) congested
/// it, no probe over the next 40 s lifts the estimate to where `f` would be sent again. A short
/// probe (60 ms at 1.5 × the estimate) fits in the bucket and looks as if it got through.
#[test]
fn a_policers_burst_does_not_fool_probes_into_sending_f_again() {
    let mut sim = Sim::new(2_000_000, 600e3);
    (sim.net.burst_bits, sim.net.queue_us) = (15_000.0 * 8.0, 60_000.0);
    sim.net.tokens = sim.net.burst_bits;
    // f while it fits, h once the estimate is under it: what the allocator does.
    let (f, h, wanted) = (1.5e6, 450e3, 1.55e6);
    let (mut f_ms, mut highest) = (0, 0.0f64);
    for ms in 0..45_000 {
        let media = if sim.est() >= wanted { f } else { h };
        if ms >= 5_000 {
            f_ms += u32::from(media == f);
            highest = highest.max(sim.est());
        }
        sim.step_with(media, Some(wanted));
    }
    assert_eq!(f_ms, 0, "f was sent again for {f_ms} ms: {:?}", sim.probes);
    // Fooled by the bucket by no more than its depth over a long probe: short of f.
    assert!(highest < 1.3e6, "the estimate reached {highest} on a 600 kbit/s link: {:?}", sim.probes);
    assert!(!sim.probes.is_empty(), "it kept probing");
    // Once the policer is gone, it gets back to f.
    (sim.net.cap_bps, sim.net.burst_bits) = (10e6, 0.0);
    let back = sim.run_with(25_000, f, Some(wanted), |s| s.est() >= wanted);
    assert!(back.is_some(), "estimate {} 25 s after the cap lifted: {:?}", sim.est(), sim.probes);
}

#[test]
fn random_loss_drives_the_estimate_down_and_no_loss_lets_it_grow() {
    let mut lossy = Sim::new(1_000_000, 1e9);
    lossy.net.loss = 0.2;
    let mut clean = Sim::new(1_000_000, 1e9);
    lossy.run_until(10_000, 5e6, false, |_| false);
    clean.run_until(10_000, 5e6, false, |_| false);
    let (est, loss) = (lossy.est(), lossy.est.loss());
    assert!(est < 500e3 && (0.15..0.25).contains(&loss), "20 % loss: estimate {est}, loss {loss}");
    assert_eq!(lossy.est.usage(), Usage::Normal, "random loss is not a queue");
    assert!(!lossy.est.should_probe(5_000_000));
    assert!(clean.est() > 1.3e6 && clean.est.loss() == 0.0, "no loss: estimate {}", clean.est());
    let before = clean.est();
    clean.est.on_receiver_report(1.0, clean.instant());
    assert_eq!(clean.est(), before, "receiver-report loss is ignored while transport-cc flows");
}

#[test]
fn remb_and_receiver_reports_without_twcc() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let cfg = Config { initial_bps: 1_000_000, min_bps: 100_000, max_bps: 5_000_000 };
    let mut remb = Estimator::new(cfg, t0);
    assert_eq!(remb.estimate_bps(), 1_000_000);
    assert_eq!(remb.acknowledged_bps(), None);
    // Until a REMB says the receiver gets less than it is sent, REMB limits nothing (a
    // receive-side estimate reports about what it receives: it says nothing of headroom).
    remb.on_remb(800_000, 0, at(0));
    remb.on_remb(u64::MAX, 125_000, at(1));
    assert_eq!(remb.estimate_bps(), 1_000_000, "no congestion seen: the initial estimate");
    // Sent 1 Mbit/s over the next second, received (says the REMB) 600 kbit/s: the limit.
    remb.on_remb(600_000, 250_000, at(2));
    assert_eq!(remb.estimate_bps(), 600_000, "REMB under what was sent");
    remb.on_remb(0, 375_000, at(3));
    assert_eq!(remb.estimate_bps(), 100_000, "clamped to the minimum");
    // Receiver reports with 50 % loss halve what the REMB allowed.
    remb.on_remb(2_000_000, 500_000, at(4));
    assert!(remb.estimate_bps() <= 110_000, "within the congestion memory: {}", remb.estimate_bps());

    let mut rr = Estimator::new(cfg, t0);
    let steps = [(0.0, 1_050_000), (0.05, 1_050_000), (0.3, 892_500), (f64::NAN, 892_500), (-1.0, 892_500)];
    for (s, (loss, expect)) in (1..).zip(steps) {
        rr.on_receiver_report(loss, at(s));
        assert_eq!(rr.estimate_bps(), expect, "after RR loss {loss}");
    }
    (10..100).for_each(|s| rr.on_receiver_report(0.0, at(s)));
    assert_eq!(rr.estimate_bps(), 5_000_000);
    (100..200).for_each(|s| rr.on_receiver_report(1.0, at(s)));
    assert_eq!(rr.estimate_bps(), 100_000);
    assert_eq!(rr.loss(), 1.0);
    assert!(!rr.should_probe(1_000_000));
}

/// A REMB receiver (aiortc) moved up to a layer its link cannot take: its NACKs say so within
/// a quarter of a second, long before its REMB falls, and the limit they set is remembered like
/// a falling REMB's (not tried again before the memory ends, and longer when it comes back).
#[test]
fn a_remb_receivers_nacks_are_congestion_at_what_got_through() {
    let t0 = Instant::now();
    let ms = |m: u64| t0 + Duration::from_millis(m);
    let cfg = Config { initial_bps: 3_000_000, min_bps: 100_000, max_bps: 10_000_000 };
    let mut e = Estimator::new(cfg, t0);
    // 1.5 Mbit/s sent as 150 packets a second of 1,250 bytes; a few NACKs, now and then, are
    // the random loss of any link (under 10 %): nothing changes.
    let (mut pkts, mut bytes) = (0u64, 0u64);
    let mut send = |until_ms: u64, from_ms: u64| {
        let n = (until_ms - from_ms) * 150 / 1000;
        pkts += n;
        bytes += n * 1250;
        (pkts, bytes)
    };
    // (Windows close at the first NACK 250 ms or more after they opened: here every 300 ms, the
    // last at 1.6 s.)
    let mut t = 0;
    for _ in 0..16 {
        let (p, b) = send(t + 100, t);
        t += 100;
        e.on_nack(1, p, b, ms(t));
    }
    assert_eq!(e.estimate_bps(), 3_000_000, "{:?}", e.limits());
    // Then 40 % of what is sent is NACKed: within 250 ms the limit is what got through.
    for _ in 0..3 {
        let (p, b) = send(t + 100, t);
        t += 100;
        e.on_nack(6, p, b, ms(t));
    }
    let limit = e.estimate_bps() as f64;
    assert!((850_000.0..=950_000.0).contains(&limit), "1.5 Mbit/s less 40 %: {limit}");
    // Its memory holds the limit near that rate for 12 s, REMBs of a receiver that keeps up
    // notwithstanding ...
    for s in 1..=11 {
        let (p, b) = send(t + 1000, t);
        t += 1000;
        e.on_remb(2_000_000, b, ms(t));
        e.on_nack(0, p, b, ms(t));
        assert!((e.estimate_bps() as f64) <= 1.1 * limit + 1.0, "{s} s on: {:?}", e.limits());
    }
    // ... after which it grows again; congestion soon after doubles the memory.
    for _ in 0..5 {
        let (_, b) = send(t + 1000, t);
        t += 1000;
        e.on_remb(2_000_000, b, ms(t));
    }
    assert!(e.estimate_bps() as f64 > 1.1 * limit, "{:?}", e.limits());
    for _ in 0..4 {
        let (p, b) = send(t + 100, t);
        t += 100;
        e.on_nack(6, p, b, ms(t));
    }
    let again = e.estimate_bps() as f64;
    for _ in 0..20 {
        let (_, b) = send(t + 1000, t);
        t += 1000;
        e.on_remb(2_000_000, b, ms(t));
    }
    assert!(e.estimate_bps() as f64 <= 1.1 * again + 1.0, "20 s on, within 24 s of memory: {:?}", e.limits());

    // With transport-cc, NACKs are left to its own loss count.
    let mut twcc = Estimator::new(cfg, t0);
    twcc.on_sent(SentPacket { transport_seq: 0, size: 1200, at: t0 });
    twcc.on_feedback(&[Arrival { transport_seq: 0, arrived: Some(Duration::from_millis(5)) }], ms(30));
    let before = twcc.estimate_bps();
    (1..10).for_each(|i| twcc.on_nack(50, i * 60, i * 75_000, ms(i * 100)));
    assert_eq!(twcc.estimate_bps(), before);
}

#[test]
fn the_budget_lets_resends_through_only_while_media_leaves_room() {
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let mut b = Budget::default();
    // 1 Mbit/s = 125 bytes per ms; at most 100 ms (12,500 bytes) saved up.
    assert!(b.take(12_000, 1_000_000, t0), "a fresh leg has a burst's worth");
    assert!(!b.take(1_200, 1_000_000, t0));
    assert!(b.take(1_200, 1_000_000, ms(10)), "10 ms later: 1,250 bytes more");
    // Media at 1.2 Mbit/s on a 1 Mbit/s estimate: the bucket runs dry, no resend fits.
    for i in 11..=500 {
        b.spend(150);
        if i % 50 == 0 {
            assert!(!b.fits(200, 1_000_000, ms(i)), "at {i} ms");
        }
    }
    assert!(!b.take(200, 1_000_000, ms(500)));
    // Media at half the estimate leaves room again.
    for _ in 501..=800 {
        b.spend(60);
    }
    assert!(b.take(1_200, 1_000_000, ms(800)));
    // A clock that goes backwards takes nothing.
    assert!(!b.take(1_000_000, 1_000_000, ms(100)));
}

#[test]
fn garbage_feedback_never_panics_or_leaves_bounds() {
    let t0 = Instant::now();
    let cfg = Config { initial_bps: 1_000_000, min_bps: 100_000, max_bps: 5_000_000 };
    let mut e = Estimator::new(cfg, t0);
    let check = |e: &Estimator| {
        let b = e.estimate_bps();
        assert!((100_000..=5_000_000).contains(&b), "estimate {b}");
        assert!((0.0..=1.0).contains(&e.loss()), "loss {}", e.loss());
    };
    e.on_feedback(&[], t0);
    e.on_feedback(&[Arrival { transport_seq: 7, arrived: Some(Duration::MAX) }], t0);
    check(&e);
    let weird = [Duration::ZERO, Duration::MAX, Duration::from_secs(1 << 40), Duration::from_nanos(1)];
    let (mut rng, mut report) = (42u64, Vec::new());
    for i in 0..70_000u64 {
        let now = t0 + Duration::from_millis(i);
        e.on_sent(SentPacket { transport_seq: i as u16, size: if i % 7 == 0 { 0 } else { 1200 }, at: now });
        if i % 10 == 0 {
            e.start_probe([0, 1, 3_000_000, u64::MAX][(i / 10 % 4) as usize], now);
            e.poll_probe(now);
        }
        if i % 50 != 49 {
            continue;
        }
        report.clear();
        for _ in 0..80 {
            let r = xorshift(&mut rng);
            let seq = (i + 100).wrapping_sub(r % 200) as u16; // sent, resent-to-be, or never sent
            let arrived = match r % 5 {
                0 => None,
                1 => Some(weird[(r >> 8) as usize % weird.len()]),
                _ => Some(Duration::from_millis(i + (r >> 16) % 300)), // reordered
            };
            report.push(Arrival { transport_seq: seq, arrived });
        }
        let when = if i % 500 == 49 { now.checked_sub(Duration::from_secs(30)).unwrap_or(t0) } else { now };
        e.on_feedback(&report, when);
        e.on_feedback(&report, when); // repeated
        e.on_receiver_report([f64::NAN, -1.0, 5.0, 0.5, f64::INFINITY][(i / 50 % 5) as usize], now);
        if i % 5000 == 49 {
            e.on_remb([0, u64::MAX, 3_000_000][(i / 5000 % 3) as usize], i * 100, now);
        }
        check(&e);
    }
}
