//! Any text as a publisher's SDP offer: setting it on a server-side
//! PeerConnection and answering either works or fails with an error.
#![no_main]

use confer::media::pc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        pc::fuzz_offer(text);
    }
});
