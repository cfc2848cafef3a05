//! Call-quality analytics (SPEC 8): pure calculators over the RTP and RTCP the
//! SFU terminates, with `now` passed in and no I/O or locks, so the media plane
//! can call them per packet and aggregate on a timer.
//!
//! - [`stream`]: RFC 3550 receiver statistics (sequence, loss, jitter, rates).
//! - [`rtt`]: round-trip time from SR/RR (LSR/DLSR, RFC 3550 6.4.1).
//! - [`score`]: the ITU-T G.107 E-model MOS, the video score and ratings.
//! - [`report`]: SPEC 8's shapes, participant scores and samples.
//!
//! Depends on nothing else in confer.

pub mod report;
pub mod rtt;
pub mod score;
pub mod stream;
