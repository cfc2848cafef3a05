//! STUN message codec (RFC 8489) with the TURN attributes of RFC 8656.
//!
//! Hand-written: the codec is small, it sits on the relay's hot path, and the
//! server needs exact control over MESSAGE-INTEGRITY and FINGERPRINT placement;
//! the crates we looked at (stun-rs, webrtc-rs `stun`) allocate per attribute
//! and per message. Parsing borrows from the datagram and never panics on
//! untrusted bytes (see the fuzz smoke test below).

use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC: u32 = 0x2112_A442;
pub const HEADER: usize = 20;

// Methods.
pub const BINDING: u16 = 0x001;
pub const ALLOCATE: u16 = 0x003;
pub const REFRESH: u16 = 0x004;
pub const SEND: u16 = 0x006;
pub const DATA: u16 = 0x007;
pub const CREATE_PERMISSION: u16 = 0x008;
pub const CHANNEL_BIND: u16 = 0x009;

// Classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

// Attributes.
pub const USERNAME: u16 = 0x0006;
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ERROR_CODE: u16 = 0x0009;
pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub const CHANNEL_NUMBER: u16 = 0x000C;
pub const LIFETIME: u16 = 0x000D;
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
pub const DATA_ATTR: u16 = 0x0013;
pub const REALM: u16 = 0x0014;
pub const NONCE: u16 = 0x0015;
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const SOFTWARE: u16 = 0x8022;
pub const FINGERPRINT: u16 = 0x8028;

const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// A parsed message borrowing the datagram.
#[derive(Debug)]
pub struct Message<'a> {
    pub method: u16,
    pub class: Class,
    pub tid: [u8; 12],
    raw: &'a [u8],
    /// (type, value, offset of the attribute header in `raw`)
    attrs: Vec<(u16, &'a [u8], usize)>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("too short")]
    Short,
    #[error("not a STUN message")]
    NotStun,
    #[error("bad length")]
    Length,
    #[error("bad fingerprint")]
    Fingerprint,
}

/// Whether `b` starts like a STUN message (first two bits zero, magic cookie).
pub fn looks_like_stun(b: &[u8]) -> bool {
    b.len() >= HEADER && b[0] & 0xC0 == 0 && u32::from_be_bytes([b[4], b[5], b[6], b[7]]) == MAGIC
}

impl<'a> Message<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Message<'a>, StunError> {
        if b.len() < HEADER {
            return Err(StunError::Short);
        }
        if !looks_like_stun(b) {
            return Err(StunError::NotStun);
        }
        let ty = u16::from_be_bytes([b[0], b[1]]);
        let len = u16::from_be_bytes([b[2], b[3]]) as usize;
        if !len.is_multiple_of(4) || HEADER + len != b.len() {
            return Err(StunError::Length);
        }
        let method = (ty & 0x000F) | ((ty & 0x00E0) >> 1) | ((ty & 0x3E00) >> 2);
        let class = match ((ty >> 4) & 1) | ((ty >> 7) & 2) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&b[8..20]);
        let mut attrs = Vec::with_capacity(8);
        let mut off = HEADER;
        while off + 4 <= b.len() {
            let t = u16::from_be_bytes([b[off], b[off + 1]]);
            let l = u16::from_be_bytes([b[off + 2], b[off + 3]]) as usize;
            let end = off + 4 + l;
            if end > b.len() {
                return Err(StunError::Length);
            }
            attrs.push((t, &b[off + 4..end], off));
            off = end + (4 - l % 4) % 4;
        }
        let m = Message { method, class, tid, raw: b, attrs };
        if let Some((v, at)) = m.attr_at(FINGERPRINT) {
            if v.len() != 4 || fingerprint(&b[..at], b.len()) != u32::from_be_bytes([v[0], v[1], v[2], v[3]]) {
                return Err(StunError::Fingerprint);
            }
        }
        Ok(m)
    }

    fn attr_at(&self, t: u16) -> Option<(&'a [u8], usize)> {
        self.attrs.iter().find(|a| a.0 == t).map(|a| (a.1, a.2))
    }

    pub fn attr(&self, t: u16) -> Option<&'a [u8]> {
        self.attr_at(t).map(|a| a.0)
    }

    /// Every value of attribute `t` (XOR-PEER-ADDRESS may repeat).
    pub fn attrs(&self, t: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.attrs.iter().filter(move |a| a.0 == t).map(|a| a.1)
    }

    /// Attribute types the server does not understand but must (0x0000-0x7FFF),
    /// each once, in the order they first appear.
    pub fn unknown_required(&self) -> Vec<u16> {
        const KNOWN: &[u16] = &[
            USERNAME,
            MESSAGE_INTEGRITY,
            ERROR_CODE,
            CHANNEL_NUMBER,
            LIFETIME,
            XOR_PEER_ADDRESS,
            DATA_ATTR,
            REALM,
            NONCE,
            XOR_RELAYED_ADDRESS,
            REQUESTED_TRANSPORT,
            XOR_MAPPED_ADDRESS,
            REQUESTED_ADDRESS_FAMILY,
            0x0018, // EVEN-PORT
            0x001A, // DONT-FRAGMENT
            0x0022, // RESERVATION-TOKEN
            0x0024, // PRIORITY (ICE)
            0x0025, // USE-CANDIDATE (ICE)
        ];
        let mut unknown: Vec<u16> = Vec::new();
        for t in self.attrs.iter().map(|a| a.0) {
            if t < 0x8000 && !KNOWN.contains(&t) && !unknown.contains(&t) {
                unknown.push(t);
            }
        }
        unknown
    }

    pub fn text(&self, t: u16) -> Option<&'a str> {
        self.attr(t).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn u32_attr(&self, t: u16) -> Option<u32> {
        self.attr(t).filter(|v| v.len() == 4).map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }

    pub fn xor_addr(&self, t: u16) -> Option<SocketAddr> {
        self.attr(t).and_then(|v| decode_xor_addr(v, &self.tid))
    }

    /// Check MESSAGE-INTEGRITY with `key`; false when absent or wrong.
    pub fn check_integrity(&self, key: &[u8]) -> bool {
        let Some((v, at)) = self.attr_at(MESSAGE_INTEGRITY) else { return false };
        if v.len() != 20 {
            return false;
        }
        let mut head = [0u8; HEADER];
        head.copy_from_slice(&self.raw[..HEADER]);
        let len = (at + 24 - HEADER) as u16;
        head[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("any key length");
        mac.update(&head);
        mac.update(&self.raw[HEADER..at]);
        mac.verify_slice(v).is_ok()
    }
}

pub fn decode_xor_addr(v: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
    match v[1] {
        1 if v.len() == 8 => {
            let ip = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        2 if v.len() == 20 => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC.to_be_bytes());
            key[4..].copy_from_slice(tid);
            let mut ip = [0u8; 16];
            for i in 0..16 {
                ip[i] = v[4 + i] ^ key[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

fn fingerprint(before: &[u8], total_len: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut head = [0u8; 4];
    head.copy_from_slice(&before[..4]);
    head[2..4].copy_from_slice(&((total_len - HEADER) as u16).to_be_bytes());
    h.update(&head);
    h.update(&before[4..]);
    h.finalize() ^ FINGERPRINT_XOR
}

/// Builds one message into a reusable buffer.
pub struct Builder<'b> {
    buf: &'b mut Vec<u8>,
    tid: [u8; 12],
}

impl<'b> Builder<'b> {
    pub fn new(buf: &'b mut Vec<u8>, method: u16, class: Class, tid: [u8; 12]) -> Self {
        buf.clear();
        let c = match class {
            Class::Request => 0,
            Class::Indication => 1,
            Class::Success => 2,
            Class::Error => 3,
        };
        let ty =
            (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7);
        buf.extend_from_slice(&ty.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC.to_be_bytes());
        buf.extend_from_slice(&tid);
        Builder { buf, tid }
    }

    pub fn attr(&mut self, t: u16, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf.extend_from_slice(&(v.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(v);
        let pad = (4 - v.len() % 4) % 4;
        self.buf.extend_from_slice(&[0, 0, 0][..pad]);
        self.set_len();
        self
    }

    pub fn u32(&mut self, t: u16, v: u32) -> &mut Self {
        self.attr(t, &v.to_be_bytes())
    }

    pub fn error(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attr(ERROR_CODE, &v)
    }

    pub fn xor_addr(&mut self, t: u16, a: SocketAddr) -> &mut Self {
        let port = a.port() ^ (MAGIC >> 16) as u16;
        let mut v = Vec::with_capacity(20);
        match a.ip() {
            IpAddr::V4(ip) => {
                v.extend_from_slice(&[0, 1]);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend_from_slice(&(u32::from(ip) ^ MAGIC).to_be_bytes());
            }
            IpAddr::V6(ip) => {
                v.extend_from_slice(&[0, 2]);
                v.extend_from_slice(&port.to_be_bytes());
                let mut key = [0u8; 16];
                key[..4].copy_from_slice(&MAGIC.to_be_bytes());
                key[4..].copy_from_slice(&self.tid);
                for (i, b) in ip.octets().iter().enumerate() {
                    v.push(b ^ key[i]);
                }
            }
        }
        self.attr(t, &v)
    }

    /// Append MESSAGE-INTEGRITY over everything so far.
    pub fn integrity(&mut self, key: &[u8]) -> &mut Self {
        let len = (self.buf.len() + 24 - HEADER) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("any key length");
        mac.update(self.buf);
        let tag = mac.finalize().into_bytes();
        self.attr(MESSAGE_INTEGRITY, &tag)
    }

    /// Append FINGERPRINT; the last attribute.
    pub fn fingerprint(&mut self) -> &mut Self {
        let total = self.buf.len() + 8;
        let fp = fingerprint(self.buf, total);
        self.u32(FINGERPRINT, fp)
    }

    fn set_len(&mut self) {
        let len = (self.buf.len() - HEADER) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }
}

/// The long-term credential key: MD5(username ":" realm ":" password).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_parse_round_trip_with_integrity_and_fingerprint() {
        let mut buf = Vec::new();
        let tid = [7u8; 12];
        let key = long_term_key("1:alice", "confer", "pw");
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        Builder::new(&mut buf, CREATE_PERMISSION, Class::Request, tid)
            .attr(USERNAME, b"1:alice")
            .xor_addr(XOR_PEER_ADDRESS, peer)
            .xor_addr(XOR_PEER_ADDRESS, "[2001:db8::1]:9".parse().unwrap())
            .integrity(&key)
            .fingerprint();
        let m = Message::parse(&buf).unwrap();
        assert_eq!((m.method, m.class), (CREATE_PERMISSION, Class::Request));
        assert_eq!(m.text(USERNAME), Some("1:alice"));
        assert_eq!(m.xor_addr(XOR_PEER_ADDRESS), Some(peer));
        let all: Vec<_> = m.attrs(XOR_PEER_ADDRESS).filter_map(|v| decode_xor_addr(v, &tid)).collect();
        assert_eq!(all[1], "[2001:db8::1]:9".parse::<SocketAddr>().unwrap());
        assert!(m.check_integrity(&key));
        assert!(!m.check_integrity(&long_term_key("1:alice", "confer", "wrong")));
        // A flipped bit breaks the fingerprint.
        let mut bad = buf.clone();
        bad[30] ^= 1;
        assert!(Message::parse(&bad).is_err());
    }

    #[test]
    fn rfc5769_sample_request_integrity() {
        // RFC 5769 2.1: short-term credential, password "VOkJxbRl1RmTxUk/WvJxBt".
        let hex = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf";
        let b: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.text(USERNAME), Some("evtj:h6vY"));
        assert!(m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut buf = Vec::new();
        Builder::new(&mut buf, ALLOCATE, Class::Request, [1; 12]).u32(REQUESTED_TRANSPORT, 17 << 24).fingerprint();
        for _ in 0..50_000 {
            let mut b = buf.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            b.truncate(rng.gen_range(0..=b.len()));
            if let Ok(m) = Message::parse(&b) {
                let _ = (m.xor_addr(XOR_PEER_ADDRESS), m.unknown_required(), m.check_integrity(b"k"));
            }
        }
    }
}
