//! Which peers a TURN allocation may relay to. Private, loopback, link-local,
//! CGNAT, multicast, unspecified and broadcast addresses (and their IPv6
//! equivalents, including IPv4-mapped ones) are refused unless the operator
//! allows them: a TURN server must never be a proxy into its own network.

use std::net::IpAddr;

/// A CIDR range, e.g. `10.1.0.0/16` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, bits) = s.split_once('/').unwrap_or((s, ""));
        let net: IpAddr = ip.trim().parse().map_err(|_| format!("{s:?} is not a CIDR range like 10.0.0.0/8"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits =
            if bits.is_empty() { max } else { bits.trim().parse().map_err(|_| format!("{s:?}: bad prefix length"))? };
        if bits > max {
            return Err(format!("{s:?}: prefix length over {max}"));
        }
        Ok(Cidr { net, bits })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.bits == 0 { 0 } else { u32::MAX << (32 - self.bits) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.bits == 0 { 0 } else { u128::MAX << (128 - self.bits) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

const DENIED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

#[derive(Clone, Debug)]
pub struct PeerFilter {
    denied: Vec<Cidr>,
    allowed: Vec<Cidr>,
    allow_loopback: bool,
}

impl PeerFilter {
    pub fn new(allow_loopback: bool, allowed_ranges: &[String]) -> Result<Self, String> {
        let allowed = allowed_ranges.iter().map(|s| s.parse()).collect::<Result<Vec<Cidr>, _>>()?;
        let denied = DENIED.iter().map(|s| s.parse().expect("built-in ranges parse")).collect();
        Ok(Self { denied, allowed, allow_loopback })
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.allowed.iter().any(|c| c.contains(ip)) || (self.allow_loopback && ip.is_loopback()) {
            return true;
        }
        !self.denied.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_ranges_are_refused_by_default() {
        let f = PeerFilter::new(false, &[]).unwrap();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!f.permits(ip(bad)), "{bad} permitted");
        }
        for good in ["8.8.8.8", "172.32.0.1", "2001:4860::8888", "::ffff:8.8.8.8"] {
            assert!(f.permits(ip(good)), "{good} refused");
        }
    }

    #[test]
    fn config_opens_loopback_or_ranges() {
        let f = PeerFilter::new(true, &[]).unwrap();
        assert!(f.permits(ip("127.0.0.1")) && f.permits(ip("::1")) && !f.permits(ip("10.0.0.1")));
        let f = PeerFilter::new(false, &["10.1.0.0/16".into()]).unwrap();
        assert!(f.permits(ip("10.1.9.9")) && !f.permits(ip("10.2.0.1")) && !f.permits(ip("127.0.0.1")));
        assert!(PeerFilter::new(false, &["10.0.0.0/33".into()]).is_err());
        assert!(PeerFilter::new(false, &["nonsense".into()]).is_err());
    }
}
