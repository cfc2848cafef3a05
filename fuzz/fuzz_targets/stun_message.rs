//! Any bytes as a datagram on the TURN port: the STUN parser never panics, and
//! whatever parses can be read attribute by attribute.
#![no_main]

use confer::turn::stun::{self, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let _ = m.xor_addr(stun::XOR_PEER_ADDRESS);
        let _ = m.text(stun::USERNAME);
        let _ = m.u32_attr(stun::LIFETIME);
        let _ = m.unknown_required();
        let _ = m.check_integrity(b"key");
    }
});
