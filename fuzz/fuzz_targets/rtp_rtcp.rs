//! Any bytes as a decrypted RTP or RTCP packet, as the SFU's own code meets
//! them after SRTP: the webrtc-rs RTP and RTCP parsers, the VP8 keyframe
//! reader (`producer::vp8_keyframe_size`) and the TWCC round-trip estimator
//! (`observe::feedback_rtt`, `observe::feedback_arrivals`), and the simulcast
//! payload readers and VP8 descriptor rewriting (`codec`) never panic, and a
//! rewrite never changes a payload's length.
#![no_main]

use confer::media::{codec, observe, producer};
use libfuzzer_sys::fuzz_target;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::shared::marshal::Unmarshal;

fuzz_target!(|data: &[u8]| {
    let _ = producer::vp8_keyframe_size(data);
    for c in [codec::Codec::Vp8, codec::Codec::H264] {
        let _ = codec::is_keyframe(c, data);
    }
    let mut munger = codec::Vp8Munger::new();
    if let Some(plan) = munger.plan(data) {
        let mut copy = data.to_vec();
        assert!(plan.apply(&mut copy));
        assert_eq!(copy.len(), data.len());
    }
    if let Ok(p) = rtc::rtp::Packet::unmarshal(&mut &data[..]) {
        let _ = producer::vp8_keyframe_size(&p.payload);
    }
    if let Ok(pkts) = rtc::rtcp::packet::unmarshal(&mut &data[..]) {
        let sent = observe::SendTimes::default();
        let now = std::time::Instant::now();
        for p in &pkts {
            if let Some(fb) = p.as_any().downcast_ref::<TransportLayerCc>() {
                let _ = observe::feedback_rtt(fb, &sent, now);
                let mut arrivals = Vec::new();
                observe::feedback_arrivals(fb, &mut arrivals);
            }
        }
    }
});
