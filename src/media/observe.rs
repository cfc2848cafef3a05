//! An interceptor that watches one leg's wire for what call-quality analytics
//! needs and webrtc-rs does not report:
//!
//! - **RTT from transport-wide congestion-control feedback** (subscriber legs).
//!   webrtc-rs's TWCC sender numbers every packet the SFU sends; this records
//!   when each number left, and on each `transport-cc` feedback computes the
//!   round trip the way libwebrtc's GoogCC does (`propagation_rtt`): the time
//!   from sending a packet to hearing about it, less how long the receiver
//!   held the report after that packet arrived (the newest arrival in the
//!   report minus this one's). The smallest value in a report is its estimate.
//! - **NACKs the SFU sends** (publisher legs), per media SSRC: webrtc-rs's NACK
//!   generator writes them without telling the application.
//!
//! - **Delivery of inbound RTCP**: it marks every inbound RTCP packet
//!   `DeliverToApplication`. webrtc-rs ends the inbound RTCP path at its
//!   terminus unless a packet is so marked, and the SFU needs subscribers'
//!   PLI/FIR (keyframe requests to relay), NACKs and receiver reports.
//!
//! It sits wire-most (below the TWCC sender), so it sees packets numbered and
//! feedback before anything else consumes it; the mark does not change what
//! the other interceptors do with a packet. Per packet the work is a lookup
//! in a list of one or two streams and one store into a ring; the engine reads
//! the shared [`Observed`] on its 5-second report timer. Hand-written because
//! webrtc-rs keeps its own send history private to its congestion controller.

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::transport_feedbacks::transport_layer_cc::{PacketStatusChunk, SymbolTypeTcc, TransportLayerCc};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TRANSPORT_CC_URI: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
/// The abs-send-time header extension (webrtc.org): 24-bit 6.18 fixed-point send times that
/// a receiver without transport-cc estimates from and reports in REMB.
pub const ABS_SEND_TIME_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";

/// Send times kept per leg: a second and more of video at 3 Mbit/s.
const RING: usize = 4096;

/// What one leg's interceptor has seen, read by the engine.
#[derive(Default, Debug)]
pub struct Observed {
    rtt_sum_us: AtomicU64,
    rtt_count: AtomicU64,
    /// NACK packets sent, by the media SSRC they ask about.
    nacks: Mutex<Vec<(u32, u64)>>,
    /// When each transport-wide number left: written by the interceptor for
    /// what goes through webrtc-rs, and by the engine for what it forwards
    /// itself ([`super::egress`]).
    pub sent: SendTimes,
}

impl Observed {
    /// The mean TWCC round trip since the last call, if any feedback came.
    pub fn take_rtt(&self) -> Option<Duration> {
        let n = self.rtt_count.swap(0, Ordering::Relaxed);
        let sum = self.rtt_sum_us.swap(0, Ordering::Relaxed);
        (n > 0).then(|| Duration::from_micros(sum / n))
    }

    /// NACK packets sent so far about `ssrc`.
    pub fn nacks_sent(&self, ssrc: u32) -> u64 {
        let nacks = self.nacks.lock().unwrap_or_else(|e| e.into_inner());
        nacks.iter().find(|(s, _)| *s == ssrc).map_or(0, |(_, n)| *n)
    }

    fn add_rtt(&self, rtt: Duration) {
        self.rtt_sum_us.fetch_add(rtt.as_micros() as u64, Ordering::Relaxed);
        self.rtt_count.fetch_add(1, Ordering::Relaxed);
    }

    fn add_nack(&self, ssrc: u32) {
        let mut nacks = self.nacks.lock().unwrap_or_else(|e| e.into_inner());
        match nacks.iter_mut().find(|(s, _)| *s == ssrc) {
            Some((_, n)) => *n += 1,
            None => nacks.push((ssrc, 1)),
        }
    }
}

/// When each transport-wide sequence number left: a ring of words, each
/// the number (high 16 bits) and the time in µs after the ring was made,
/// plus one (low 48 bits; 0 is an empty slot). Lock-free: one relaxed
/// store per packet.
#[derive(Debug)]
pub struct SendTimes {
    base: Instant,
    slots: Box<[AtomicU64]>,
}

const MICROS: u64 = (1 << 48) - 1;

impl Default for SendTimes {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl SendTimes {
    /// Times are kept to the µs from `base` on.
    pub fn new(base: Instant) -> Self {
        Self { base, slots: (0..RING).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Times before the ring was made are not kept.
    pub fn record(&self, seq: u16, at: Instant) {
        let Some(d) = at.checked_duration_since(self.base) else { return };
        let us = (d.as_micros() as u64 + 1).min(MICROS);
        self.slots[usize::from(seq) % RING].store(u64::from(seq) << 48 | us, Ordering::Relaxed);
    }

    pub fn get(&self, seq: u16) -> Option<Instant> {
        let v = self.slots[usize::from(seq) % RING].load(Ordering::Relaxed);
        let us = v & MICROS;
        (us != 0 && (v >> 48) as u16 == seq).then(|| self.base + Duration::from_micros(us - 1))
    }
}

/// The round-trip estimate of one feedback report that arrived at `now`
/// (libwebrtc's minimum propagation RTT), or `None` if it covers no packet
/// whose send time is known.
pub fn feedback_rtt(fb: &TransportLayerCc, sent: &SendTimes, now: Instant) -> Option<Duration> {
    let mut all = Vec::with_capacity(fb.recv_deltas.len());
    feedback_arrivals(fb, &mut all);
    let arrivals: Vec<(u16, i64)> = all.into_iter().filter_map(|(seq, t)| Some((seq, t?))).collect();
    let newest = arrivals.iter().map(|&(_, t)| t).max()?;
    arrivals
        .iter()
        .filter_map(|&(seq, arrived)| {
            let flight = now.checked_duration_since(sent.get(seq)?)?;
            let held = Duration::from_micros(u64::try_from(newest - arrived).ok()?);
            Some(flight.saturating_sub(held))
        })
        .min()
}

/// Every packet a feedback report covers, in order: its transport-wide
/// number and, if it arrived, when (µs on the receiver's clock: the report's
/// reference time plus the deltas). Appended to `out`; a malformed report
/// yields what it held up to the fault.
pub fn feedback_arrivals(fb: &TransportLayerCc, out: &mut Vec<(u16, Option<i64>)>) {
    // Each received packet's delta is relative to the previous one's arrival.
    let mut deltas = fb.recv_deltas.iter();
    let mut t = i64::from(fb.reference_time) * 64_000;
    let mut seq = fb.base_sequence_number;
    let mut remaining = usize::from(fb.packet_status_count);
    let mut on_symbol = |symbol: SymbolTypeTcc, seq: &mut u16| -> bool {
        let arrived =
            if matches!(symbol, SymbolTypeTcc::PacketReceivedSmallDelta | SymbolTypeTcc::PacketReceivedLargeDelta) {
                let Some(d) = deltas.next() else { return false };
                t += d.delta;
                Some(t)
            } else {
                None
            };
        out.push((*seq, arrived));
        *seq = seq.wrapping_add(1);
        true
    };
    'chunks: for chunk in &fb.packet_chunks {
        match chunk {
            PacketStatusChunk::RunLengthChunk(c) => {
                for _ in 0..c.run_length {
                    if remaining == 0 || !on_symbol(c.packet_status_symbol, &mut seq) {
                        break 'chunks;
                    }
                    remaining -= 1;
                }
            }
            PacketStatusChunk::StatusVectorChunk(c) => {
                for &s in &c.symbol_list {
                    if remaining == 0 || !on_symbol(s, &mut seq) {
                        break 'chunks;
                    }
                    remaining -= 1;
                }
            }
        }
    }
}

/// The interceptor; see the module documentation.
pub struct Observe {
    shared: Arc<Observed>,
    /// Local streams that carry a transport-wide sequence number: (ssrc, ext id).
    twcc: Vec<(u32, u8)>,
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl Observe {
    pub fn new(shared: Arc<Observed>) -> Self {
        Self { shared, twcc: Vec::new(), reads: VecDeque::new(), writes: VecDeque::new() }
    }
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for Observe {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(pkts) = &msg.message.packet {
            if pkts.is_empty() {
                self.reads.push_back(msg);
                return Ok(());
            }
            for p in pkts {
                if let Some(fb) = p.as_any().downcast_ref::<TransportLayerCc>() {
                    if let Some(rtt) = feedback_rtt(fb, &self.shared.sent, msg.now) {
                        self.shared.add_rtt(rtt);
                    }
                }
            }
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        match &msg.message.packet {
            Packet::Rtp(p) => {
                if let Some(&(_, id)) = self.twcc.iter().find(|(ssrc, _)| *ssrc == p.header.ssrc) {
                    if let Some(&[hi, lo]) = p.header.extensions.iter().find(|e| e.id == id).map(|e| &e.payload[..]) {
                        self.shared.sent.record(u16::from_be_bytes([hi, lo]), msg.now);
                    }
                }
            }
            Packet::Rtcp(pkts) => {
                for p in pkts {
                    if let Some(n) = p.as_any().downcast_ref::<TransportLayerNack>() {
                        self.shared.add_nack(n.media_ssrc);
                    }
                }
            }
            _ => {}
        }
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for Observe {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        if let Some(e) = info.rtp_header_extensions.iter().find(|e| e.uri == TRANSPORT_CC_URI && e.id != 0) {
            self.twcc.retain(|(s, _)| *s != info.ssrc);
            self.twcc.push((info.ssrc, e.id as u8));
        }
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.twcc.retain(|(s, _)| *s != info.ssrc);
    }
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        RecvDelta, RunLengthChunk, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc,
    };

    fn received(delta_us: i64) -> RecvDelta {
        RecvDelta { type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta, delta: delta_us }
    }

    /// Packets 10..14 leave 5 ms apart; the network takes 20 ms one way and
    /// the return path 20 ms; the receiver reports 3 ms after the last arrival.
    /// Packet 12 is lost.
    #[test]
    fn rtt_from_crafted_feedback_discounts_the_receivers_wait() {
        let t0 = Instant::now();
        let (sent, only_first) = (SendTimes::new(t0), SendTimes::new(t0));
        for (i, seq) in (10u16..15).enumerate() {
            sent.record(seq, t0 + Duration::from_millis(5 * i as u64));
        }
        let fb = TransportLayerCc {
            base_sequence_number: 10,
            packet_status_count: 5,
            reference_time: 100,
            packet_chunks: vec![PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                symbol_size: SymbolSizeTypeTcc::TwoBit,
                symbol_list: vec![
                    SymbolTypeTcc::PacketReceivedSmallDelta,
                    SymbolTypeTcc::PacketReceivedSmallDelta,
                    SymbolTypeTcc::PacketNotReceived,
                    SymbolTypeTcc::PacketReceivedSmallDelta,
                    SymbolTypeTcc::PacketReceivedSmallDelta,
                ],
            })],
            // Arrivals at +0, +5, (lost), +15, +20 ms after the reference time.
            recv_deltas: vec![received(0), received(5_000), received(10_000), received(5_000)],
            ..Default::default()
        };
        // Packet 14 left at t0+20, arrived at t0+40; the report left at
        // t0+43 and came back at t0+63.
        // Every packet then says 43 ms: the 20 ms the receiver held packet 10
        // is taken out; its 3 ms after the newest arrival cannot be seen.
        let rtt = feedback_rtt(&fb, &sent, t0 + Duration::from_millis(63)).expect("an estimate");
        assert_eq!(rtt, Duration::from_millis(43));
        // Without discounting what the receiver held, packet 10 alone would
        // say 63 ms.
        only_first.record(10, t0);
        assert_eq!(feedback_rtt(&fb, &only_first, t0 + Duration::from_millis(63)), Some(Duration::from_millis(43)));
    }

    #[test]
    fn unknown_sequence_numbers_and_empty_reports_give_nothing() {
        let t0 = Instant::now();
        let sent = SendTimes::new(t0);
        let fb = TransportLayerCc {
            base_sequence_number: 65_534,
            packet_status_count: 4,
            packet_chunks: vec![PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                run_length: 4,
            })],
            // One delta too few: a malformed report is read as far as it goes.
            recv_deltas: vec![received(250), received(250), received(250)],
            ..Default::default()
        };
        assert_eq!(feedback_rtt(&fb, &sent, t0), None);
        assert_eq!(feedback_rtt(&TransportLayerCc::default(), &sent, t0), None);
    }

    #[test]
    fn sequence_numbers_wrap_and_old_slots_are_not_mistaken() {
        let t0 = Instant::now();
        let sent = SendTimes::new(t0);
        sent.record(65_535, t0);
        sent.record(0, t0 + Duration::from_millis(1));
        let fb = TransportLayerCc {
            base_sequence_number: 65_535,
            packet_status_count: 2,
            packet_chunks: vec![PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                run_length: 2,
            })],
            recv_deltas: vec![received(0), received(1_000)],
            ..Default::default()
        };
        assert_eq!(feedback_rtt(&fb, &sent, t0 + Duration::from_millis(11)), Some(Duration::from_millis(10)));
        // A slot reused by a later number does not answer for the earlier one.
        sent.record(4096, t0);
        assert_eq!(sent.get(0), None);
        assert_eq!(sent.get(4096), Some(t0));
    }

    #[test]
    fn nacks_are_counted_per_media_ssrc() {
        let o = Observed::default();
        o.add_nack(7);
        o.add_nack(7);
        o.add_nack(9);
        assert_eq!((o.nacks_sent(7), o.nacks_sent(9), o.nacks_sent(1)), (2, 1, 0));
        assert_eq!(o.take_rtt(), None);
        o.add_rtt(Duration::from_millis(10));
        o.add_rtt(Duration::from_millis(20));
        assert_eq!(o.take_rtt(), Some(Duration::from_millis(15)));
        assert_eq!(o.take_rtt(), None, "taken");
    }
}
