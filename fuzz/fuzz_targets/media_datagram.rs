//! Any bytes as a datagram on the SFU's media port: the demultiplexer and a
//! connected-looking webrtc-rs PeerConnection (ICE, DTLS, SRTP, RTP/RTCP
//! parsers behind `handle_read`) never panic on it.
#![no_main]

use confer::media::{demux, pc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = demux::binding_ufrag(data);
    pc::fuzz_datagram(data);
});
