//! A consumer (mediasoup's name): one outgoing copy of a producer on another
//! participant's subscriber leg, with its forwarding state and what the
//! subscriber's RTCP said about it.

use super::allocate::{Layer, Reason};
use super::forwarder::Forwarder;
use super::ids::LegId;
use super::rewrite::Rewrite;
use crate::ids::PeerId;
use std::time::{Instant, SystemTime};

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
}

/// The layer to forward under `ceiling` given what arrives: the best one at
/// or below it, else the lowest above it; the ceiling itself while nothing
/// arrives yet (it starts when it does).
pub fn choose_layer(ceiling: Layer, available: [bool; 3]) -> Layer {
    let below = Layer::ALL.into_iter().rev().filter(|l| *l <= ceiling).find(|l| available[*l as usize]);
    let above = Layer::ALL.into_iter().filter(|l| *l > ceiling).find(|l| available[*l as usize]);
    below.or(above).unwrap_or(ceiling)
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
}
