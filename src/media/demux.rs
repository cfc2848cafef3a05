//! Which PeerConnection a datagram on the shared media port belongs to.
//!
//! Every PeerConnection shares one UDP socket (like mediasoup's WebRtcServer
//! or LiveKit's `udp_port`). A known remote address maps straight to its leg;
//! a new address is learnt from the first STUN Binding request it sends, whose
//! USERNAME is `<our ufrag>:<their ufrag>` (RFC 8445 7.2.2). Anything else from
//! an unknown address is dropped. Hand-written: it reads one attribute of one
//! message type, and the full STUN codec lives in the ICE agent.

/// RFC 7983 demultiplexing: the first byte says STUN (0..=3), DTLS (20..=63)
/// or RTP/RTCP (128..=191).
pub fn is_stun(b: &[u8]) -> bool {
    b.len() >= 20 && b[0] < 4 && b[4..8] == [0x21, 0x12, 0xA4, 0x42]
}

const BINDING_REQUEST: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;

/// Our ufrag from a STUN Binding request's USERNAME, or `None` for anything
/// else (not STUN, not a request, no or malformed USERNAME).
pub fn binding_ufrag(b: &[u8]) -> Option<&str> {
    if !is_stun(b) || u16::from_be_bytes([b[0], b[1]]) != BINDING_REQUEST {
        return None;
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    let body = b.get(20..20 + len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let ty = u16::from_be_bytes([body[at], body[at + 1]]);
        let alen = u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize;
        let value = body.get(at + 4..at + 4 + alen)?;
        if ty == ATTR_USERNAME {
            let user = std::str::from_utf8(value).ok()?;
            let (ours, _theirs) = user.split_once(':')?;
            return (!ours.is_empty()).then_some(ours);
        }
        at += 4 + alen.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(username: &[u8]) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attr.len() as u16 + 8).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        // PRIORITY first, so the parser has to skip an attribute.
        m.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn finds_our_ufrag() {
        assert_eq!(binding_ufrag(&binding(b"srv1:cli")), Some("srv1"));
        assert_eq!(binding_ufrag(&binding(b"abc:")), Some("abc"));
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(binding_ufrag(&binding(b"nocolon")), None);
        assert_eq!(binding_ufrag(&binding(b":x")), None);
        let mut resp = binding(b"a:b");
        resp[1] = 0x01; // a success response, not a request
        resp[0] = 0x01;
        assert_eq!(binding_ufrag(&resp), None);
        assert_eq!(binding_ufrag(&[0x80; 40]), None);
        let mut truncated = binding(b"srv:cli");
        truncated.truncate(30);
        assert_eq!(binding_ufrag(&truncated), None);
        assert_eq!(binding_ufrag(&[]), None);
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let seed = binding(b"server:client");
        for _ in 0..20_000 {
            let mut b = seed.clone();
            for _ in 0..rng.gen_range(1..5) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            b.truncate(rng.gen_range(0..=b.len()));
            let _ = binding_ufrag(&b);
        }
    }
}
