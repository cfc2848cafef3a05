//! `media.public_ip = "auto"`: the public address learned from STUN servers
//! at start, with the TURN server's own codec ([`crate::turn::stun`]).

use crate::turn::stun::{self, Builder, Class, Message};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

/// How long [`discover_public_ip`] waits for the first answer.
pub const STUN_TIMEOUT: Duration = Duration::from_secs(3);

/// Ask every server in `servers` (`host:port`) for the address `socket` is
/// seen from (STUN Binding, RFC 8489), and return the first answer and who
/// gave it. The socket is the SFU's own, before its worker starts, so the
/// answer is the mapping of the very port clients will use. Requests are
/// sent twice (a lost datagram is likely on a cold path); `None` when no
/// server answered within `timeout`.
pub fn discover_public_ip(socket: &UdpSocket, servers: &[String], timeout: Duration) -> Option<(IpAddr, String)> {
    let family_v4 = socket.local_addr().ok()?.is_ipv4();
    let mut asked: Vec<([u8; 12], SocketAddr, &str)> = Vec::new();
    for s in servers {
        let addrs: Vec<SocketAddr> = match s.to_socket_addrs() {
            Ok(a) => a.filter(|a| a.is_ipv4() == family_v4).collect(),
            Err(e) => {
                tracing::warn!(server = %s, error = %e, "media.stun_servers: cannot resolve");
                continue;
            }
        };
        if let Some(&to) = addrs.first() {
            asked.push((rand::random(), to, s.as_str()));
        }
    }
    if asked.is_empty() {
        return None;
    }
    let previous = socket.read_timeout().ok().flatten();
    let deadline = Instant::now() + timeout;
    let resend_at = Instant::now() + timeout / 3;
    let mut resent = false;
    let send_all = |asked: &[([u8; 12], SocketAddr, &str)]| {
        for (tid, to, _) in asked {
            let mut buf = Vec::with_capacity(stun::HEADER);
            Builder::new(&mut buf, stun::BINDING, Class::Request, *tid);
            let _ = socket.send_to(&buf, to);
        }
    };
    send_all(&asked);
    let mut buf = [0u8; 1500];
    let found = loop {
        let now = Instant::now();
        if now >= deadline {
            break None;
        }
        if !resent && now >= resend_at {
            send_all(&asked);
            resent = true;
        }
        let wait = (if resent { deadline } else { resend_at }).saturating_duration_since(now);
        let _ = socket.set_read_timeout(Some(wait.max(Duration::from_millis(1))));
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        let Ok(m) = Message::parse(&buf[..n]) else { continue };
        let Some((_, _, name)) = asked.iter().find(|(tid, to, _)| *tid == m.tid && to.ip() == from.ip()) else {
            continue;
        };
        if m.class != Class::Success || m.method != stun::BINDING {
            continue;
        }
        let mapped = m.xor_addr(stun::XOR_MAPPED_ADDRESS).or_else(|| m.attr(MAPPED_ADDRESS).and_then(plain_addr));
        if let Some(a) = mapped {
            break Some((a.ip(), name.to_string()));
        }
    };
    let _ = socket.set_read_timeout(previous);
    found
}

/// RFC 5389's plain MAPPED-ADDRESS, which old servers send instead.
const MAPPED_ADDRESS: u16 = 0x0001;

fn plain_addr(v: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]);
    match v.get(1)? {
        1 if v.len() >= 8 => Some(SocketAddr::new(IpAddr::from([v[4], v[5], v[6], v[7]]), port)),
        2 if v.len() >= 20 => {
            let b: [u8; 16] = v[4..20].try_into().ok()?;
            Some(SocketAddr::new(IpAddr::from(b), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_answer_gives_the_mapped_address() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = server.local_addr().unwrap();
        let answer = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let m = Message::parse(&buf[..n]).unwrap();
            let mut out = Vec::new();
            Builder::new(&mut out, stun::BINDING, Class::Success, m.tid)
                .xor_addr(stun::XOR_MAPPED_ADDRESS, "203.0.113.77:4000".parse().unwrap());
            server.send_to(&out, from).unwrap();
        });
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let servers = vec![silent.local_addr().unwrap().to_string(), at.to_string()];
        let got = discover_public_ip(&client, &servers, Duration::from_secs(2)).unwrap();
        assert_eq!(got, ("203.0.113.77".parse().unwrap(), at.to_string()));
        answer.join().unwrap();
        let t = Instant::now();
        assert!(discover_public_ip(&client, &servers[..1], Duration::from_millis(300)).is_none());
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
