//! Round-trip time from RTCP sender and receiver reports (RFC 3550 6.4.1).
//!
//! We send an SR stamped with NTP time; the receiver's report block echoes its
//! middle 32 bits as LSR and says how long it held it (DLSR, 1/65536 s). When
//! that RR arrives at time A (also in compact NTP), RTT = A − LSR − DLSR.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from 1900-01-01 (NTP era 0) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A full 64-bit NTP timestamp (32.32 fixed point seconds since 1900).
pub fn ntp64(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits of an NTP timestamp: the units of LSR and DLSR.
pub fn compact(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// RTT from a report block received when the local compact NTP time was
/// `arrival`. `None` when the peer has no SR yet (LSR = 0) or the values are
/// inconsistent (a negative RTT, a clock step).
pub fn rtt_from_report(arrival: u32, lsr: u32, dlsr: u32) -> Option<Duration> {
    if lsr == 0 {
        return None;
    }
    let rtt = arrival.wrapping_sub(lsr).wrapping_sub(dlsr);
    // More than half the 65536 s compact range means it went negative.
    if rtt > u32::MAX / 2 {
        return None;
    }
    Some(Duration::from_secs_f64(f64::from(rtt) / 65536.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3550_example() {
        // RFC 3550 6.4.1: A = 0xb710:8000 (46864.500 s), LSR = 0xb705:2000
        // (46853.125 s), DLSR = 0x0005:4000 (5.250 s) → RTT 6.125 s.
        let rtt = rtt_from_report(0xb710_8000, 0xb705_2000, 0x0005_4000).unwrap();
        assert!((rtt.as_secs_f64() - 6.125).abs() < 1e-9);
    }

    #[test]
    fn crafted_sr_rr_round_trip() {
        let sent = SystemTime::now();
        let lsr = compact(ntp64(sent));
        // The peer holds the SR for 30 ms; the RR arrives 50 ms after we sent.
        let dlsr = (0.030 * 65536.0) as u32;
        let arrival = compact(ntp64(sent + Duration::from_millis(50)));
        let rtt = rtt_from_report(arrival, lsr, dlsr).unwrap();
        assert!((rtt.as_secs_f64() - 0.020).abs() < 0.0005, "{rtt:?}");
        assert_eq!(rtt_from_report(arrival, 0, dlsr), None, "no SR yet");
        assert_eq!(rtt_from_report(lsr, arrival, 0), None, "negative");
        // Wraparound of the compact clock.
        assert!((rtt_from_report(0x0000_8000, 0xffff_8000, 0).unwrap().as_secs_f64() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn ntp_epoch() {
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(ntp64(t) >> 32, NTP_UNIX_OFFSET + 1);
        assert_eq!(ntp64(t) as u32, 1 << 31);
    }
}
