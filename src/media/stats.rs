//! What the media plane measures, every [`REPORT_EVERY`], per participant:
//! plain numbers as measured. Signaling turns them into the API's analytics
//! (rounding, field names, SPEC 8).

use crate::ids::PeerId;
use std::time::Duration;

/// SPEC 8: analytics samples every 5 s.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// One direction of one kind of media of a participant, over its life so
/// far and over the last interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSample {
    pub packets: u64,
    pub bytes: u64,
    pub packets_lost: i64,
    /// Fraction 0–1, cumulative (publish) or of the last interval (subscribe).
    pub packet_loss: f64,
    pub jitter_ms: f64,
    pub rtt_ms: Option<f64>,
    /// The round trip from transport-wide feedback, where negotiated.
    pub twcc_rtt_ms: Option<f64>,
    pub bitrate_kbps: f64,
    pub nack_count: u64,
    pub pli_count: u64,
    pub fir_count: u64,
    pub frame_rate: Option<f64>,
    pub frame_size: Option<(u16, u16)>,
    /// The last interval's loss, fraction 0–1.
    pub interval_loss: f64,
    /// Subscribed simulcast video: the layer forwarded now (the best of the
    /// participant's video tracks) and the switches so far.
    pub layer: Option<super::allocate::Layer>,
    pub layer_switches: Option<u64>,
}

/// Audio and video of one direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Streams {
    pub audio: Option<StreamSample>,
    pub video: Option<StreamSample>,
}

/// One participant's interval report.
#[derive(Debug, Clone)]
pub struct PeerStats {
    pub peer: PeerId,
    /// Measured at the SFU from the publisher's RTP and RTCP.
    pub publish: Streams,
    /// From the subscriber's RTCP about what the SFU forwarded to it.
    pub subscribe: Streams,
    /// The downstream estimate of its subscriber leg, if it has one.
    pub bandwidth_estimate_bps: Option<u64>,
}
