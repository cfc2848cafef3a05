//! Receiver statistics for one RTP stream (RFC 3550 appendix A): the extended
//! highest sequence number with wraparound (A.1), expected and lost packets,
//! interval loss (A.3), interarrival jitter in the media clock (A.8), and the
//! byte, bitrate and frame counters SPEC 8 reports. `on_packet` is O(1) and
//! allocates nothing; `take_interval` is called on a timer.

const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
const SEQ_MOD: u64 = 1 << 16;

#[derive(Clone, Debug, Default)]
pub struct StreamStats {
    clock_rate: u32,
    started: bool,
    base_seq: u64,
    max_seq: u16,
    cycles: u64,
    bad_seq: Option<u16>,
    received: u64,
    bytes: u64,
    /// Interarrival jitter in media clock units (A.8), as a float to keep the 1/16 gain exact.
    jitter: f64,
    last_transit: Option<i64>,
    frames: u64,
    pub nacks: u64,
    pub plis: u64,
    pub firs: u64,
    // Interval bookkeeping (A.3).
    expected_prior: u64,
    received_prior: u64,
    bytes_prior: u64,
    frames_prior: u64,
}

/// What one interval (between two `take_interval` calls) looked like.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub expected: u64,
    pub lost: u64,
    /// Lost / expected in this interval, 0–1.
    pub loss: f64,
    pub bitrate_kbps: f64,
    pub frame_rate: f64,
}

impl StreamStats {
    /// A stream whose RTP timestamps tick at `clock_rate` Hz (48000 for Opus, 90000 for video).
    pub fn new(clock_rate: u32) -> Self {
        Self { clock_rate, ..Self::default() }
    }

    /// One received packet: its sequence number and RTP timestamp, the arrival
    /// time in seconds on any monotonic clock, its size, and the marker bit
    /// (the last packet of a video frame).
    pub fn on_packet(&mut self, seq: u16, rtp_ts: u32, arrival_secs: f64, size: usize, marker: bool) {
        if !self.started {
            self.restart(seq);
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta < MAX_DROPOUT {
                if seq < self.max_seq {
                    self.cycles += SEQ_MOD;
                }
                self.max_seq = seq;
            } else if delta <= u16::MAX - MAX_MISORDER {
                // A very large jump: the sender restarted or the sequence is
                // garbage. Believe it only when the next packet follows it.
                if self.bad_seq == Some(seq) {
                    self.restart(seq);
                } else {
                    self.bad_seq = Some(seq.wrapping_add(1));
                    return;
                }
            }
            // else: a duplicate or reordered packet; counted as received (A.1).
        }
        self.received += 1;
        self.bytes += size as u64;
        if marker {
            self.frames += 1;
        }
        // A.8: transit time in media clock units; its variation smooths into jitter.
        let arrival = (arrival_secs * f64::from(self.clock_rate)) as i64;
        let transit = arrival - i64::from(rtp_ts);
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    fn restart(&mut self, seq: u16) {
        self.started = true;
        self.base_seq = u64::from(seq);
        self.max_seq = seq;
        self.cycles = 0;
        self.bad_seq = None;
        self.received = 0;
        self.expected_prior = 0;
        self.received_prior = 0;
    }

    pub fn extended_max(&self) -> u64 {
        self.cycles + u64::from(self.max_seq)
    }

    pub fn expected(&self) -> u64 {
        if self.started {
            self.extended_max() + 1 - self.base_seq
        } else {
            0
        }
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Cumulative packets lost (never negative: duplicates can exceed losses).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// Cumulative loss fraction 0–1.
    pub fn loss(&self) -> f64 {
        let e = self.expected();
        if e == 0 {
            0.0
        } else {
            self.lost() as f64 / e as f64
        }
    }

    /// Jitter in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        if self.clock_rate == 0 {
            0.0
        } else {
            self.jitter * 1000.0 / f64::from(self.clock_rate)
        }
    }

    /// Close the interval that began at the previous call, `secs` long.
    pub fn take_interval(&mut self, secs: f64) -> Interval {
        let expected = self.expected() - self.expected_prior;
        let received = self.received - self.received_prior;
        let lost = expected.saturating_sub(received);
        let bytes = self.bytes - self.bytes_prior;
        let frames = self.frames - self.frames_prior;
        self.expected_prior = self.expected();
        self.received_prior = self.received;
        self.bytes_prior = self.bytes;
        self.frames_prior = self.frames;
        let per_sec = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
        Interval {
            expected,
            lost,
            loss: if expected == 0 { 0.0 } else { lost as f64 / expected as f64 },
            bitrate_kbps: per_sec(bytes as f64 * 8.0 / 1000.0),
            frame_rate: per_sec(frames as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut StreamStats, seqs: impl IntoIterator<Item = u16>) {
        for (i, seq) in seqs.into_iter().enumerate() {
            s.on_packet(seq, 0, i as f64 * 0.02, 100, false);
        }
    }

    #[test]
    fn loss_and_reordering() {
        let mut s = StreamStats::new(48000);
        feed(&mut s, [10, 11, 13, 12, 14, 17]); // 15 and 16 lost; 12 late
        assert_eq!((s.expected(), s.received(), s.lost()), (8, 6, 2));
        assert!((s.loss() - 0.25).abs() < 1e-9);
    }

    #[test]
    fn duplicates_do_not_make_loss_negative() {
        let mut s = StreamStats::new(48000);
        feed(&mut s, [1, 2, 2, 3, 3, 3]);
        assert_eq!((s.expected(), s.lost()), (3, 0));
    }

    #[test]
    fn sequence_wraps_at_65535() {
        let mut s = StreamStats::new(90000);
        feed(&mut s, [65533, 65534, 65535, 0, 1, 3]); // 2 lost across the wrap
        assert_eq!(s.extended_max(), 65536 + 3);
        assert_eq!((s.expected(), s.lost()), (7, 1));
    }

    #[test]
    fn a_wild_jump_is_believed_only_when_followed() {
        let mut s = StreamStats::new(48000);
        feed(&mut s, [100, 101]);
        s.on_packet(40000, 0, 1.0, 100, false);
        assert_eq!(s.expected(), 2, "one stray packet is ignored");
        s.on_packet(40001, 0, 1.02, 100, false);
        assert_eq!((s.expected(), s.received()), (1, 1), "the sender restarted at 40001");
    }

    #[test]
    fn jitter_against_known_transit_times() {
        // 8 kHz clock, 20 ms packets (160 ticks). Constant transit: no jitter.
        let mut s = StreamStats::new(8000);
        for i in 0..50u16 {
            s.on_packet(i, u32::from(i) * 160, f64::from(i) * 0.020, 100, false);
        }
        assert!(s.jitter_ms() < 1e-6);
        // Transit alternates by 10 ms (80 ticks): jitter converges to 80 ticks = 10 ms.
        let mut s = StreamStats::new(8000);
        for i in 0..400u16 {
            let late = if i % 2 == 0 { 0.0 } else { 0.010 };
            s.on_packet(i, u32::from(i) * 160, f64::from(i) * 0.020 + late, 100, false);
        }
        assert!((s.jitter_ms() - 10.0).abs() < 0.1, "{}", s.jitter_ms());
    }

    #[test]
    fn intervals_report_loss_bitrate_and_frame_rate() {
        let mut s = StreamStats::new(90000);
        for i in 0..100u16 {
            if i % 10 == 9 {
                continue; // 10 % loss
            }
            s.on_packet(i, u32::from(i / 3) * 3000, f64::from(i) * 0.01, 1000, i % 3 == 2);
        }
        let iv = s.take_interval(1.0);
        // 99 is lost too, but nothing after it has arrived yet: not counted.
        assert_eq!((iv.expected, iv.lost), (99, 9));
        assert!((iv.loss - 9.0 / 99.0).abs() < 1e-9);
        assert!((iv.bitrate_kbps - 90.0 * 8.0).abs() < 1e-9);
        assert!(iv.frame_rate > 25.0 && iv.frame_rate < 34.0, "{}", iv.frame_rate);
        // A clean second interval, which learns that 99 was lost.
        for i in 100..200u16 {
            s.on_packet(i, 0, 1.0 + f64::from(i) * 0.01, 1000, false);
        }
        let iv = s.take_interval(1.0);
        assert_eq!((iv.expected, iv.lost), (101, 1));
        assert_eq!(s.lost(), 10);
    }
}
