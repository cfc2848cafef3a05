//! Which addresses confer tells clients to use (SPEC 1, 6, 12): a specific
//! listen address is itself; a wildcard one (`0.0.0.0`, `[::]`) stands for
//! every usable interface address of its family, which the media plane
//! advertises as ICE host candidates and TURN binds a UDP socket on.
//!
//! Interfaces come from `getifaddrs(3)` through nix, which the tree already
//! builds (webrtc-rs's `rtc-shared` needs it with the same `net` feature),
//! so no crate is added for it. Plain data for `media`, `turn` and `app`;
//! depends on nothing of confer's.

use std::net::IpAddr;

/// Every address of an interface that is up, of the family of `like`:
/// loopback included, link-local (which needs a scope to be reached) and
/// multicast not. Non-loopback first, in the kernel's order, no repeats.
pub fn local_ips(like: IpAddr) -> Vec<IpAddr> {
    use nix::net::if_::InterfaceFlags;
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        tracing::warn!("cannot list the network interfaces (getifaddrs)");
        return Vec::new();
    };
    let mut out: Vec<(bool, IpAddr)> = Vec::new();
    for a in ifaddrs {
        if !a.flags.contains(InterfaceFlags::IFF_UP) {
            continue;
        }
        let Some(addr) = a.address else { continue };
        let ip = match (like, addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
            (IpAddr::V4(_), Some(v4), _) => IpAddr::V4(v4.ip()),
            (IpAddr::V6(_), _, Some(v6)) => IpAddr::V6(v6.ip()),
            _ => continue,
        };
        if ip.is_unspecified() || ip.is_multicast() || is_link_local(ip) || out.iter().any(|(_, o)| *o == ip) {
            continue;
        }
        out.push((ip.is_loopback() || a.flags.contains(InterfaceFlags::IFF_LOOPBACK), ip));
    }
    out.sort_by_key(|(lo, _)| *lo);
    out.into_iter().map(|(_, ip)| ip).collect()
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// What a client can reach on `ips` (from [`local_ips`]): loopback only
/// when nothing else exists.
pub fn usable(ips: &[IpAddr]) -> Vec<IpAddr> {
    let outside: Vec<IpAddr> = ips.iter().copied().filter(|ip| !ip.is_loopback()).collect();
    if outside.is_empty() {
        ips.to_vec()
    } else {
        outside
    }
}

/// The addresses to advertise for a socket bound on `listen`: `public`
/// first when known, then `listen` itself, or on a wildcard the usable
/// interface addresses of its family (SPEC 1). Never a wildcard, never empty.
pub fn advertised(listen: IpAddr, public: Option<IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = public.into_iter().collect();
    let own = if listen.is_unspecified() { usable(&local_ips(listen)) } else { vec![listen] };
    for ip in own {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    if out.is_empty() {
        // No interface is up at all: what the host itself can still reach.
        out.push(if listen.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_when_nothing_else() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lan: IpAddr = "198.18.0.1".parse().unwrap();
        assert_eq!(usable(&[lan, lo]), [lan]);
        assert_eq!(usable(&[lo]), [lo]);
        assert!(is_link_local("169.254.1.2".parse().unwrap()) && is_link_local("fe80::1".parse().unwrap()));
        assert!(!is_link_local("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn specific_listen_is_itself_after_the_public_ip() {
        let listen: IpAddr = "198.18.0.1".parse().unwrap();
        let public: IpAddr = "203.0.113.10".parse().unwrap();
        assert_eq!(advertised(listen, None), [listen]);
        assert_eq!(advertised(listen, Some(public)), [public, listen]);
        assert_eq!(advertised(listen, Some(listen)), [listen]);
        let any = advertised("0.0.0.0".parse().unwrap(), Some(public));
        assert_eq!(any[0], public);
        assert!(any.len() >= 2 && any.iter().all(|ip| ip.is_ipv4() && !ip.is_unspecified()), "{any:?}");
    }
}
