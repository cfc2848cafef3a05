//! What a receiver's REMB says about its downstream, for a sender that is
//! application-limited.
//!
//! A receive-side estimator (libwebrtc's abs-send-time one, aiortc's port of
//! it) never reports more than about 1.5 × what it receives, and at start it
//! reports what it receives. An SFU sends discrete layers, not what an
//! encoder could fill, so a REMB taken as the link's capacity holds a
//! subscriber at the layer it had when the receiver started estimating: at
//! `q`, it reports about `q`, `h` never fits, and if the REMB dips below `q`
//! the video pauses and no REMB comes again. So a REMB is read against what
//! the receiver was sent (the bytes it counts: payload and padding of the
//! packets stamped with abs-send-time):
//!
//! - **below 90 % of it, and lower than the REMB before** the receiver gets
//!   less than it is sent and has cut its estimate: congestion. (A receiver
//!   that is still ramping up its estimate reports less than it is sent too,
//!   but rising: libwebrtc's and aiortc's estimators start from what they
//!   received in their first seconds and grow 8 %/s from there.)
//!   "It" is the lower of the rates of the last two spans of at least 500 ms:
//!   a receiver's estimate lags a step up (a layer switch), and is bounded by
//!   what it received before, so a step up is not taken for congestion.
//!   The REMB is the limit (the receiver cuts to 85 % of what it receives).
//! - **otherwise** it is keeping up, and the REMB says nothing about the
//!   headroom. (Under 90 % but not falling, it holds: no news.) An existing
//!   limit grows 5 %/s (as the loss-based part does),
//!   or to the REMB if that is higher, but within [`super::CONGESTION_MEMORY`]
//!   of the last congestion no higher than 1.1 × the REMB then (a memory that
//!   doubles, up to 60 s, when congestion comes back within 20 s of its end;
//!   one cut per second of falling REMBs); once it
//!   reaches the configured maximum there is no limit. With no congestion
//!   seen there is no limit at all.
//!
//! - **NACKs** are the receiver's quicker word of the same: over a quarter of a
//!   second, more than 10 % of what it was sent NACKed is congestion at what got
//!   through ([`RembLimit::on_nack_loss`]), remembered the same way. A step up the
//!   link cannot take (trying is switching the video up, see below) then costs a
//!   quarter of a second of loss, not the second or more aiortc's estimate takes
//!   to fall; and it counts as congestion, where its REMB, still reporting the
//!   layer before, would have been taken for a ramp and the step tried again as
//!   soon as the limit had grown back. A lower REMB in the same episode replaces
//!   the NACKs' figure (they are counted before the last of the loss is known).
//!   What got through over a quarter of a second overstates a policed link: a
//!   token bucket lets its burst through on top of its rate (a 600 kbit/s link
//!   with a 15 kB bucket passes about 1.1 Mbit/s for those 250 ms). So NACKs
//!   always cut the limit, to 90 % of it at most, and within
//!   the memory the limit also stays under 90 % of the limit that let the
//!   failed step up happen, or of the rate sent when the NACKs came if that
//!   is lower ([`FAILED_MARGIN`]): the layer that failed is not tried again
//!   until the memory is over (a step up needs 10 % of headroom, see
//!   `allocate::HEADROOM_PCT`). Without that bound the limit could be back
//!   over `f` within the memory after a failed step up from `h`.
//!
//! The limit also grows between REMBs ([`RembLimit::tick`], called on receiver
//! reports), because a receiver whose video is paused stops sending REMB.
//! Pure, like the rest of the estimator: time comes in as `now`.

use std::time::{Duration, Instant};

/// A REMB under this fraction of the rate the receiver was sent is congestion.
const CONGESTED: f64 = 0.9;
/// Falling REMBs this close after a cut are the same congestion.
const EPISODE: Duration = Duration::from_secs(1);
/// Congestion within this of the end of the memory doubles the memory ...
const AGAIN: Duration = Duration::from_secs(20);
/// ... up to this: a link that congests each time the limit reaches a layer is not tried every
/// 12 s (with REMB there are no probes: trying is switching the video up).
const MEMORY_MAX: Duration = Duration::from_secs(60);
/// ... and under this fraction of the REMB before it (a cut, not a ramp).
const FELL: f64 = 0.97;
/// The sent rate is measured over at least this long, between REMBs.
const RATE_SPAN: Duration = Duration::from_millis(500);
/// How fast a limit grows while the receiver keeps up, per second.
const GROWTH: f64 = 1.05;
/// Within [`super::CONGESTION_MEMORY`] of congestion, the limit stays under this times the REMB
/// then.
const MEMORY_CEILING: f64 = 1.1;
/// ... and, for congestion seen by NACKs, under this times the limit (or the rate sent, if lower)
/// then (the module doc says why).
const FAILED_MARGIN: f64 = 0.9;

#[derive(Clone, Copy, Debug)]
pub struct RembLimit {
    /// The limit, in bits per second; `None`: REMB limits nothing.
    limit: Option<f64>,
    grown_at: Option<Instant>,
    /// Stamped bytes sent so far and when, at the start of the current rate span.
    mark: Option<(Instant, u64)>,
    /// The lower of the last two spans' sent rates, and the last one's.
    sent_bps: Option<f64>,
    last_span: Option<f64>,
    last_remb: Option<f64>,
    /// The REMB at the last congestion, and when.
    congested: Option<(f64, Instant)>,
    /// The limit, or the rate sent if lower, when NACKs saw the last congestion: the memory keeps
    /// the limit under it.
    failed_bps: Option<f64>,
    /// How long the limit stays near the last congestion's REMB.
    memory: Duration,
    /// The last congestion was seen by NACKs (see [`RembLimit::on_nack_loss`]).
    by_nacks: bool,
}

impl Default for RembLimit {
    fn default() -> Self {
        RembLimit {
            limit: None,
            grown_at: None,
            mark: None,
            sent_bps: None,
            last_span: None,
            last_remb: None,
            congested: None,
            failed_bps: None,
            memory: super::CONGESTION_MEMORY,
            by_nacks: false,
        }
    }
}

impl RembLimit {
    /// A REMB of `bps`, with `sent_bytes` the leg's stamped bytes so far; `max` the configured
    /// maximum estimate.
    pub fn on_remb(&mut self, bps: u64, sent_bytes: u64, max: f64, now: Instant) {
        match self.mark {
            Some((at, bytes)) if now.saturating_duration_since(at) >= RATE_SPAN => {
                let secs = now.saturating_duration_since(at).as_secs_f64();
                let rate = sent_bytes.saturating_sub(bytes) as f64 * 8.0 / secs;
                self.sent_bps = Some(self.last_span.map_or(rate, |last| last.min(rate)));
                self.last_span = Some(rate);
                self.mark = Some((now, sent_bytes));
            }
            Some(_) => {}
            None => self.mark = Some((now, sent_bytes)),
        }
        let remb = bps as f64;
        let fell = self.last_remb.is_some_and(|last| remb < FELL * last);
        self.last_remb = Some(remb);
        let below = self.sent_bps.is_some_and(|sent| remb < CONGESTED * sent);
        if below && !fell {
            // Ramping up, or holding under what it is sent: no news, and no growth.
            self.grown_at = Some(now);
        } else if below {
            self.congestion(remb, now, false);
        } else {
            self.tick(max, now);
            if let Some(l) = self.limit {
                self.limit = Some(l.max(self.ceiling(remb, now)));
            }
        }
    }

    /// The receiver lost much of what it was sent at `sent_bps`, by its NACKs
    /// (see [`super::Estimator::on_nack`]): congestion at `got_through_bps`, as
    /// a falling REMB is, but seen within a quarter of a second rather than
    /// when the receiver's estimate has caught up (aiortc's takes a second or
    /// more). A step up that the link cannot take is then undone while it
    /// has cost a few packets, and remembered like any congestion (taken for
    /// a ramp, it would be tried again as soon as the limit grows back), with
    /// the limit kept under the rate that failed for the memory.
    pub fn on_nack_loss(&mut self, got_through_bps: f64, sent_bps: f64, now: Instant) {
        // A cut, even when a burst let more through than the limit.
        let remembered = self.limit.map_or(got_through_bps, |l| (FAILED_MARGIN * l).min(got_through_bps));
        let failed = self.limit.map_or(sent_bps, |l| l.min(sent_bps));
        if self.congestion(remembered, now, true) {
            self.failed_bps = Some(failed);
        }
    }

    /// Congestion at `bps`, seen by the REMB or by NACKs: the limit, and remembered (see the
    /// module doc). True if it starts a new episode.
    fn congestion(&mut self, bps: f64, now: Instant, by_nacks: bool) -> bool {
        // One cut per episode: the REMBs right after a cut still fall (the
        // receiver's window holds the congested second, and the layer
        // switch down halves what it receives), and following them would
        // pause video that the cut alone leaves room for.
        let episode = self.congested.is_some_and(|(_, at)| now.saturating_duration_since(at) < EPISODE);
        // But NACKs are counted before the last of a loss is known, so the receiver's own
        // estimate, when it comes lower within the episode, takes the NACKs' place.
        let corrects = episode && self.by_nacks && !by_nacks && self.limit.is_some_and(|l| bps < l);
        if corrects {
            self.limit = Some(bps);
            self.congested = self.congested.map(|(_, at)| (bps, at));
            self.by_nacks = false;
        } else if !episode {
            self.by_nacks = by_nacks;
            // Congestion again soon after the memory ended: remember longer.
            let again = self.congested.is_some_and(|(_, at)| now.saturating_duration_since(at) < self.memory + AGAIN);
            self.memory = if again { (self.memory * 2).min(MEMORY_MAX) } else { super::CONGESTION_MEMORY };
            self.congested = Some((bps, now));
            self.failed_bps = None;
            self.limit = Some(bps);
        }
        self.grown_at = Some(now);
        !episode
    }

    /// Let the limit grow with time while nothing says congestion.
    pub fn tick(&mut self, max: f64, now: Instant) {
        let Some(l) = self.limit else { return };
        let secs = self.grown_at.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64().min(1.0));
        self.grown_at = Some(now);
        let grown = self.ceiling(l * GROWTH.powf(secs), now).max(l);
        self.limit = (grown < max).then_some(grown);
    }

    fn ceiling(&self, bps: f64, now: Instant) -> f64 {
        match self.congested {
            Some((at_rate, at)) if now.saturating_duration_since(at) < self.memory => {
                let failed = self.failed_bps.map_or(f64::INFINITY, |f| FAILED_MARGIN * f);
                bps.min(MEMORY_CEILING * at_rate).min(failed)
            }
            _ => bps,
        }
    }

    /// The limit REMB puts on the estimate, if any.
    pub fn limit(&self) -> Option<f64> {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: f64 = 10e6;

    /// Feed REMBs every 500 ms while the leg is sent `sent_bps`; the limit after `secs`.
    fn run(r: &mut RembLimit, t: &mut Instant, bytes: &mut u64, remb: u64, sent_bps: u64, secs: u64) -> Option<f64> {
        for _ in 0..secs * 2 {
            *t += Duration::from_millis(500);
            *bytes += sent_bps / 16;
            r.on_remb(remb, *bytes, MAX, *t);
        }
        r.limit()
    }

    #[test]
    fn a_receiver_that_keeps_up_limits_nothing_even_when_it_reports_little() {
        // An aiortc receiver sent q (150 kbit/s) reports about what it gets: h must still be
        // possible, so the REMB is no limit.
        let (mut r, mut t, mut b) = (RembLimit::default(), Instant::now(), 0);
        assert_eq!(run(&mut r, &mut t, &mut b, 150_000, 150_000, 5), None);
        assert_eq!(run(&mut r, &mut t, &mut b, 220_000, 150_000, 5), None);
        // Moved up to f, the receiver's estimate ramps from there: less than it is sent, but
        // rising, is no congestion.
        for remb in (300_000..1_500_000).step_by(100_000) {
            assert_eq!(run(&mut r, &mut t, &mut b, remb, 1_500_000, 1), None, "REMB {remb}");
        }
    }

    #[test]
    fn a_receiver_that_gets_less_than_it_is_sent_is_congested_and_the_limit_climbs_back_slowly() {
        let (mut r, mut t, mut b) = (RembLimit::default(), Instant::now(), 0);
        run(&mut r, &mut t, &mut b, 1_600_000, 1_500_000, 2);
        assert_eq!(r.limit(), None);
        // A 600 kbit/s link: the receiver cuts to 85 % of what arrives.
        let l = run(&mut r, &mut t, &mut b, 510_000, 1_500_000, 1).expect("congestion limits");
        assert!((l - 510_000.0).abs() < 1.0, "{l}");
        // Sent 480 kbit/s (h) now, and it keeps up: within the congestion memory the limit
        // stays under 1.1 × 510 k ...
        let l = run(&mut r, &mut t, &mut b, 560_000, 480_000, 10).unwrap();
        assert!(l > 510_000.0 && l <= 561_000.0 + 1.0, "{l}");
        // ... then grows about 5 %/s: from 561 k past the maximum in well under a minute.
        let l = run(&mut r, &mut t, &mut b, 600_000, 480_000, 10).unwrap();
        assert!(l > 561_000.0 * 1.4, "{l}");
        assert_eq!(run(&mut r, &mut t, &mut b, 600_000, 480_000, 60), None, "no limit once past the maximum");
    }

    #[test]
    fn a_step_up_the_receiver_has_not_seen_yet_is_not_congestion() {
        let (mut r, mut t, mut b) = (RembLimit::default(), Instant::now(), 0);
        run(&mut r, &mut t, &mut b, 700_000, 480_000, 3);
        // Moved from h to f: for a span the receiver still reports 1.5 × h.
        assert_eq!(run(&mut r, &mut t, &mut b, 720_000, 1_500_000, 0), None);
        t += Duration::from_millis(500);
        b += 1_500_000 / 16;
        r.on_remb(720_000, b, MAX, t);
        assert_eq!(r.limit(), None, "one span at the new rate");
        // Still under it a span later, but steady: a receiver ramping up, no congestion.
        assert_eq!(run(&mut r, &mut t, &mut b, 720_000, 1_500_000, 1), None);
        // A cut while under it: congestion.
        let l = run(&mut r, &mut t, &mut b, 650_000, 1_500_000, 1);
        assert_eq!(l, Some(650_000.0));
    }

    #[test]
    fn one_cut_per_episode_and_a_longer_memory_when_congestion_comes_back() {
        let (mut r, mut t, mut b) = (RembLimit::default(), Instant::now(), 0);
        run(&mut r, &mut t, &mut b, 1_600_000, 1_500_000, 2);
        assert_eq!(run(&mut r, &mut t, &mut b, 510_000, 1_500_000, 0), None);
        t += Duration::from_millis(500);
        b += 1_500_000 / 16;
        r.on_remb(510_000, b, MAX, t);
        assert_eq!(r.limit(), Some(510_000.0));
        // Half a second later the REMB falls again: the same episode, no second cut.
        t += Duration::from_millis(500);
        b += 480_000 / 16;
        r.on_remb(200_000, b, MAX, t);
        assert_eq!(r.limit(), Some(510_000.0));
        // Kept up for 20 s: the limit grows past 1.1 × 510 k once the 12 s memory is over ...
        let l = run(&mut r, &mut t, &mut b, 600_000, 480_000, 20).unwrap();
        assert!(l > 561_000.0 * 1.2, "{l}");
        // ... congestion again soon after: the limit stays near it for 24 s now, not 12.
        run(&mut r, &mut t, &mut b, 1_000_000, 900_000, 1);
        run(&mut r, &mut t, &mut b, 700_000, 900_000, 1);
        let l = run(&mut r, &mut t, &mut b, 800_000, 480_000, 20).unwrap();
        assert!(l <= 1.1 * 700_000.0 + 1.0, "{l}");
    }

    #[test]
    fn nacks_set_the_limit_first_and_a_lower_remb_in_the_same_episode_corrects_it() {
        let (mut r, mut t, mut b) = (RembLimit::default(), Instant::now(), 0);
        run(&mut r, &mut t, &mut b, 1_600_000, 1_500_000, 2);
        // The NACKs' count of a policer's loss comes early, and low: 1.5 Mbit/s less 40 %.
        r.on_nack_loss(900_000.0, 1_500_000.0, t);
        assert_eq!(r.limit(), Some(900_000.0));
        // Half a second later the receiver's estimate has caught up: 600 kbit/s.
        t += Duration::from_millis(500);
        b += 1_500_000 / 16;
        r.on_remb(600_000, b, MAX, t);
        assert_eq!(r.limit(), Some(600_000.0), "the REMB takes the NACKs' place");
        // Falling REMBs after that are the same episode: no second cut.
        t += Duration::from_millis(300);
        b += 450_000 / 16 * 6 / 10;
        r.on_remb(300_000, b, MAX, t);
        assert_eq!(r.limit(), Some(600_000.0));
        // NACKs again within it are no new cut either.
        r.on_nack_loss(200_000.0, 450_000.0, t + Duration::from_millis(100));
        assert_eq!(r.limit(), Some(600_000.0));
    }

    #[test]
    fn a_rate_nacks_failed_at_is_not_reached_again_within_the_memory() {
        let (mut r, mut t, mut b) = (RembLimit::default(), Instant::now(), 0);
        run(&mut r, &mut t, &mut b, 1_200_000, 900_000, 2);
        // Sent 900 kbit/s into a policed link: 15 % NACKed over a quarter second, but its burst
        // let 800 kbit/s through in that window, more than the link's rate.
        r.on_nack_loss(800_000.0, 900_000.0, t);
        assert_eq!(r.limit(), Some(800_000.0));
        // Moved down, the receiver keeps up: the limit grows, but within the memory stays under
        // 90 % of the 900 kbit/s that failed (1.1 × 800 k alone would let it back to 880 k).
        let l = run(&mut r, &mut t, &mut b, 600_000, 400_000, 10).unwrap();
        assert!(l > 800_000.0 && l <= 810_000.0 + 1.0, "{l}");
        // Once the memory is over it grows past it.
        let l = run(&mut r, &mut t, &mut b, 600_000, 400_000, 5).unwrap();
        assert!(l > 900_000.0, "{l}");
        // A step up at that limit fails the same way, its keyframe sent at 1.3 Mbit/s, with more
        // let through than the limit: the limit that allowed it is what is cut, and what the
        // memory stays under.
        r.on_nack_loss(1.1 * l, 1_300_000.0, t);
        assert_eq!(r.limit(), Some(0.9 * l));
        let after = run(&mut r, &mut t, &mut b, 1_200_000, 400_000, 10).unwrap();
        assert!(after <= 0.9 * l + 1.0, "{l} -> {after}");
    }

    #[test]
    fn a_limit_grows_on_receiver_reports_when_rembs_stop() {
        let (mut r, mut t, mut b) = (RembLimit::default(), Instant::now(), 0);
        run(&mut r, &mut t, &mut b, 1_000_000, 1_000_000, 1);
        let l = run(&mut r, &mut t, &mut b, 100_000, 1_000_000, 1).unwrap();
        for _ in 0..20 {
            t += Duration::from_secs(1);
            r.tick(MAX, t);
        }
        let grown = r.limit().unwrap();
        assert!(grown > l * 1.5, "{l} -> {grown}");
    }
}
