//! A consumer (mediasoup's name): one outgoing copy of a producer on another
//! participant's subscriber leg, with its forwarding state and what the
//! subscriber's RTCP said about it.

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
