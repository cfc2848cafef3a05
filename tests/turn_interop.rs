//! The built-in TURN server against coturn's own client (`turnutils_uclient`,
//! installed by scripts/setup-test-deps.sh) and a hand-driven STUN client:
//! credentials come from `GET /ice-config`, exactly as a browser gets them.

mod common;

use common::{tool, TestServer};
use confer::turn::stun::{self, Builder, Class, Message};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

async fn turn_server(allow_loopback: bool, ports: (u16, u16)) -> (TestServer, SocketAddr) {
    let s = TestServer::start_with(|c| {
        c.turn.allow_loopback_peers = allow_loopback;
        c.turn.relay_port_min = ports.0;
        c.turn.relay_port_max = ports.1;
    })
    .await;
    let (_, ice) = s.get("/ice-config", "alice").await;
    let url = ice["iceServers"][1]["urls"][0].as_str().unwrap().to_owned();
    let addr: SocketAddr = url.trim_start_matches("turn:").trim_end_matches("?transport=udp").parse().unwrap();
    (s, addr)
}

async fn credentials(s: &TestServer) -> (String, String) {
    let (_, ice) = s.get("/ice-config", "alice").await;
    let t = &ice["iceServers"][1];
    (t["username"].as_str().unwrap().to_owned(), t["credential"].as_str().unwrap().to_owned())
}

/// `turnutils_peer` on a free loopback port (killed on drop).
struct Peer(Child, u16);

impl Peer {
    fn start() -> Peer {
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(tool("turnutils_peer"))
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        Peer(child, port)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run the uclient; returns (success, combined output).
async fn uclient(turn: SocketAddr, peer: u16, user: &str, pass: &str, extra: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(tool("turnutils_uclient"));
    cmd.args(extra).args(["-p", &turn.port().to_string(), "-e", "127.0.0.1", "-r", &peer.to_string(), "-X"]).args([
        "-u",
        user,
        "-w",
        pass,
        "-n",
        "100",
        "-m",
        "10",
        "-l",
        "170",
        "127.0.0.1",
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn coturn_client_relays_without_loss_over_udp_and_tcp() {
    let (s, turn) = turn_server(true, (50000, 50099)).await;
    let peer = Peer::start();
    let (user, pass) = credentials(&s).await;
    // Send indications (-s): the uclient picks channel numbers from RFC
    // 5766's 0x4000-0x7FFF, and RFC 8656 (SPEC 6) refuses those above 0x4FFF.
    // Channels are driven by hand in rfc_8656_details.
    for mode in [&["-s"][..], &["-s", "-t"][..]] {
        let (ok, out) = uclient(turn, peer.1, &user, &pass, mode).await;
        assert!(ok, "uclient {mode:?} failed:\n{out}");
        assert!(out.contains("tot_send_msgs=1000, tot_recv_msgs=1000"), "{mode:?}:\n{out}");
        assert!(out.contains("Total lost packets 0 (0.000000%)"), "{mode:?}:\n{out}");
    }
    let relayed = s.metric("confer_turn_bytes_relayed_total").await.unwrap();
    assert!(relayed >= 2.0 * 2.0 * 170_000.0, "relayed {relayed} bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_expired_username_cannot_allocate() {
    let (s, turn) = turn_server(true, (50100, 50149)).await;
    let peer = Peer::start();
    let (user, _) = credentials(&s).await;
    let (ok, out) = uclient(turn, peer.1, &user, "not-the-password", &[]).await;
    assert!(!ok && out.contains("Cannot complete Allocation"), "{out}");

    let secret = std::fs::read_to_string(s.data_dir().join("turn.secret")).unwrap();
    let expired = "1000:alice";
    let pass = confer::turn::credentials::password_for(secret.trim().as_bytes(), expired);
    let (ok, out) = uclient(turn, peer.1, expired, &pass, &[]).await;
    assert!(!ok && out.contains("Cannot complete Allocation"), "{out}");
    assert!(s.metric("confer_turn_auth_failures_total").await.unwrap() >= 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn default_server_refuses_a_loopback_peer() {
    let (s, turn) = turn_server(false, (50150, 50199)).await;
    let peer = Peer::start();
    let (user, pass) = credentials(&s).await;
    let (ok, out) = uclient(turn, peer.1, &user, &pass, &[]).await;
    assert!(!ok && out.contains("403"), "{out}");
    assert!(s.metric("confer_turn_denied_peers_total").await.unwrap() >= 1.0);
}

/// A minimal TURN client over UDP, for what the uclient does not show.
struct Client {
    sock: tokio::net::UdpSocket,
    server: SocketAddr,
    buf: Vec<u8>,
}

impl Client {
    async fn new(server: SocketAddr) -> Client {
        Client { sock: tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(), server, buf: Vec::new() }
    }

    async fn roundtrip(&mut self) -> Vec<u8> {
        self.sock.send_to(&self.buf, self.server).await.unwrap();
        let mut b = vec![0u8; 2048];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), self.sock.recv_from(&mut b)).await.unwrap().unwrap();
        b.truncate(n);
        b
    }
}

fn error_code(m: &Message<'_>) -> Option<u16> {
    m.attr(stun::ERROR_CODE).map(|v| u16::from(v[2]) * 100 + u16::from(v[3]))
}

#[tokio::test]
async fn binding_challenge_allocate_and_explicit_403() {
    let (s, turn) = turn_server(false, (50200, 50249)).await;
    let (user, pass) = credentials(&s).await;
    let mut c = Client::new(turn).await;

    // STUN Binding (the stun: URL of /ice-config).
    Builder::new(&mut c.buf, stun::BINDING, Class::Request, [1; 12]).fingerprint();
    let r = c.roundtrip().await;
    let m = Message::parse(&r).unwrap();
    assert_eq!(m.class, Class::Success);
    assert_eq!(m.xor_addr(stun::XOR_MAPPED_ADDRESS), Some(c.sock.local_addr().unwrap()));

    // Allocate without credentials: 401 with REALM and NONCE.
    Builder::new(&mut c.buf, stun::ALLOCATE, Class::Request, [2; 12]).u32(stun::REQUESTED_TRANSPORT, 17 << 24);
    let r = c.roundtrip().await;
    let m = Message::parse(&r).unwrap();
    assert_eq!((m.class, error_code(&m)), (Class::Error, Some(401)));
    let realm = m.text(stun::REALM).unwrap().to_owned();
    let nonce = m.text(stun::NONCE).unwrap().to_owned();
    assert_eq!(realm, "confer");

    // With a stale (forged) nonce: 438.
    let key = stun::long_term_key(&user, &realm, &pass);
    Builder::new(&mut c.buf, stun::ALLOCATE, Class::Request, [3; 12])
        .u32(stun::REQUESTED_TRANSPORT, 17 << 24)
        .attr(stun::USERNAME, user.as_bytes())
        .attr(stun::REALM, realm.as_bytes())
        .attr(stun::NONCE, b"1-00")
        .integrity(&key)
        .fingerprint();
    let r = c.roundtrip().await;
    assert_eq!(error_code(&Message::parse(&r).unwrap()), Some(438));

    // Properly authenticated: a relayed address in the configured range.
    let signed = |c: &mut Client, method, tid, f: &dyn Fn(&mut Builder<'_>)| {
        let mut b = Builder::new(&mut c.buf, method, Class::Request, tid);
        f(&mut b);
        b.attr(stun::USERNAME, user.as_bytes())
            .attr(stun::REALM, realm.as_bytes())
            .attr(stun::NONCE, nonce.as_bytes())
            .integrity(&key)
            .fingerprint();
    };
    signed(&mut c, stun::ALLOCATE, [4; 12], &|b| {
        b.u32(stun::REQUESTED_TRANSPORT, 17 << 24);
    });
    let r = c.roundtrip().await;
    let m = Message::parse(&r).unwrap();
    assert_eq!(m.class, Class::Success, "{:?}", error_code(&m));
    assert!(m.check_integrity(&key), "responses carry MESSAGE-INTEGRITY");
    let relayed = m.xor_addr(stun::XOR_RELAYED_ADDRESS).unwrap();
    assert!((50200..=50249).contains(&relayed.port()), "{relayed}");
    assert_eq!(s.metric("confer_turn_allocations_active").await, Some(1.0));

    // Permission to loopback and to a private range: explicit 403.
    for peer in ["127.0.0.1:9", "10.0.0.1:9", "[::1]:9"] {
        let peer: SocketAddr = peer.parse().unwrap();
        signed(&mut c, stun::CREATE_PERMISSION, [5; 12], &|b| {
            b.xor_addr(stun::XOR_PEER_ADDRESS, peer);
        });
        let r = c.roundtrip().await;
        assert_eq!(error_code(&Message::parse(&r).unwrap()), Some(403), "{peer}");
    }
    // A public peer is fine.
    signed(&mut c, stun::CREATE_PERMISSION, [6; 12], &|b| {
        b.xor_addr(stun::XOR_PEER_ADDRESS, "192.0.2.10:9".parse().unwrap());
    });
    let r = c.roundtrip().await;
    assert_eq!(Message::parse(&r).unwrap().class, Class::Success);

    // Refresh with lifetime 0 deletes the allocation.
    signed(&mut c, stun::REFRESH, [7; 12], &|b| {
        b.u32(stun::LIFETIME, 0);
    });
    let r = c.roundtrip().await;
    assert_eq!(Message::parse(&r).unwrap().class, Class::Success);
    assert_eq!(s.metric("confer_turn_allocations_active").await, Some(0.0));

    // Garbage on the TURN port is dropped and the server keeps answering.
    for junk in [&b"\x00\x01\x00"[..], &[0xff; 64][..], &[0x40, 0x00, 0xff, 0xff][..]] {
        c.sock.send_to(junk, turn).await.unwrap();
    }
    Builder::new(&mut c.buf, stun::BINDING, Class::Request, [8; 12]).fingerprint();
    let r = c.roundtrip().await;
    assert_eq!(Message::parse(&r).unwrap().class, Class::Success);
}

#[tokio::test(flavor = "multi_thread")]
async fn coturn_client_relays_over_tls() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = TestServer::start_with(|c| {
        c.turn.allow_loopback_peers = true;
        c.turn.relay_port_min = 50250;
        c.turn.relay_port_max = 50299;
        // No certificate configured: a self-signed one is made in certs/.
        c.turn.tls_listen = Some(SocketAddr::from(([127, 0, 0, 1], port)));
    })
    .await;
    let peer = Peer::start();
    let (user, pass) = credentials(&s).await;
    let tls = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(tool("turnutils_uclient"));
    // -s: Send indications, as in coturn_client_relays_without_loss_over_udp_and_tcp.
    cmd.args(["-s", "-t", "-S", "-p", &port.to_string(), "-e", "127.0.0.1", "-r", &peer.1.to_string(), "-X"]).args([
        "-u",
        &user,
        "-w",
        &pass,
        "-n",
        "100",
        "-m",
        "5",
        "-l",
        "170",
        &tls.ip().to_string(),
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The uclient first offers old protocol versions, which rustls refuses
    // (the "handshake failure" lines), then connects with TLS 1.2/1.3.
    let totals =
        text.lines().rev().find(|l| l.contains("start_mclient: tot_send_msgs=")).unwrap_or_else(|| panic!("{text}"));
    let nums: Vec<u64> = totals.split(['=', ',']).filter_map(|w| w.trim().parse().ok()).collect();
    assert!(nums.len() == 2 && nums[0] >= 500 && nums[0] == nums[1], "{totals}\n{text}");
    assert!(text.contains("Total lost packets 0 (0.000000%)"), "{text}");
    assert!(text.contains("method=TLSv1.3") || text.contains("method=TLSv1.2"), "{text}");
}

/// SPEC 6's RFC 8656 details over real UDP: 420 lists the unknown
/// comprehension-required attributes (each once, none of the optional ones),
/// REQUESTED-ADDRESS-FAMILY for IPv6 on an IPv4 relay gets 440 and no
/// allocation, a retransmitted Allocate gets the very same success while a
/// new transaction on the 5-tuple gets 437, channel numbers outside
/// 0x4000-0x4FFF get 400 while ChannelData on a bound one is relayed both
/// ways, and a peer of the other family gets 443.
#[tokio::test]
async fn rfc_8656_details() {
    let (s, turn) = turn_server(true, (50300, 50349)).await;
    let (user, pass) = credentials(&s).await;
    let mut c = Client::new(turn).await;
    let unknown_list = |m: &Message<'_>| -> Vec<u16> {
        let v = m.attr(stun::UNKNOWN_ATTRIBUTES).unwrap_or_default();
        v.chunks(2).map(|p| u16::from_be_bytes([p[0], p[1]])).collect()
    };

    // A Binding with unknown attributes: 0x0030 twice and 0x7FFE must be
    // understood, 0x8030 may be ignored.
    Builder::new(&mut c.buf, stun::BINDING, Class::Request, [1; 12])
        .attr(0x0030, b"x")
        .attr(0x8030, b"y")
        .attr(0x7FFE, b"")
        .attr(0x0030, b"z")
        .fingerprint();
    let r = c.roundtrip().await;
    let m = Message::parse(&r).unwrap();
    assert_eq!((m.class, m.method, error_code(&m)), (Class::Error, stun::BINDING, Some(420)));
    assert_eq!(unknown_list(&m), vec![0x0030, 0x7FFE]);
    // With only the optional one, Binding works.
    Builder::new(&mut c.buf, stun::BINDING, Class::Request, [2; 12]).attr(0x8030, b"y").fingerprint();
    assert_eq!(Message::parse(&c.roundtrip().await).unwrap().class, Class::Success);

    // The nonce, then signed requests.
    Builder::new(&mut c.buf, stun::ALLOCATE, Class::Request, [3; 12]).u32(stun::REQUESTED_TRANSPORT, 17 << 24);
    let r = c.roundtrip().await;
    let m = Message::parse(&r).unwrap();
    assert_eq!(error_code(&m), Some(401));
    let (realm, nonce) = (m.text(stun::REALM).unwrap().to_owned(), m.text(stun::NONCE).unwrap().to_owned());
    let key = stun::long_term_key(&user, &realm, &pass);
    let signed = |c: &mut Client, method, tid, f: &dyn Fn(&mut Builder<'_>)| {
        let mut b = Builder::new(&mut c.buf, method, Class::Request, tid);
        f(&mut b);
        b.attr(stun::USERNAME, user.as_bytes())
            .attr(stun::REALM, realm.as_bytes())
            .attr(stun::NONCE, nonce.as_bytes())
            .integrity(&key)
            .fingerprint();
    };

    // An Allocate with an unknown comprehension-required attribute: 420.
    signed(&mut c, stun::ALLOCATE, [4; 12], &|b| {
        b.u32(stun::REQUESTED_TRANSPORT, 17 << 24).attr(0x0031, b"????");
    });
    let m_bytes = c.roundtrip().await;
    let m = Message::parse(&m_bytes).unwrap();
    assert_eq!((m.method, error_code(&m)), (stun::ALLOCATE, Some(420)));
    assert_eq!(unknown_list(&m), vec![0x0031]);

    // IPv6 asked of an IPv4 relay: 440, and nothing was allocated (the
    // IPv4 Allocate below is not a 437).
    signed(&mut c, stun::ALLOCATE, [5; 12], &|b| {
        b.u32(stun::REQUESTED_TRANSPORT, 17 << 24).u32(stun::REQUESTED_ADDRESS_FAMILY, 0x02 << 24);
    });
    let r = c.roundtrip().await;
    let m = Message::parse(&r).unwrap();
    assert_eq!((m.class, error_code(&m)), (Class::Error, Some(440)));
    assert!(m.check_integrity(&key), "an authenticated error carries MESSAGE-INTEGRITY");

    // IPv4 asked explicitly: allocated.
    signed(&mut c, stun::ALLOCATE, [6; 12], &|b| {
        b.u32(stun::REQUESTED_TRANSPORT, 17 << 24).u32(stun::REQUESTED_ADDRESS_FAMILY, 0x01 << 24);
    });
    let allocate = c.buf.clone();
    let first = c.roundtrip().await;
    let m = Message::parse(&first).unwrap();
    assert_eq!(m.class, Class::Success, "{:?}", error_code(&m));
    let relayed = m.xor_addr(stun::XOR_RELAYED_ADDRESS).unwrap();
    assert!(relayed.is_ipv4() && (50300..=50349).contains(&relayed.port()), "{relayed}");

    // The same request again (a retransmission): the same success, byte for byte.
    c.buf = allocate;
    let again = c.roundtrip().await;
    assert_eq!(Message::parse(&again).unwrap().class, Class::Success);
    assert_eq!(again, first, "a retransmitted Allocate gets the same response");
    // A new Allocate transaction on the same 5-tuple: 437.
    signed(&mut c, stun::ALLOCATE, [7; 12], &|b| {
        b.u32(stun::REQUESTED_TRANSPORT, 17 << 24);
    });
    assert_eq!(error_code(&Message::parse(&c.roundtrip().await).unwrap()), Some(437));

    // Channel numbers: 0x4000-0x4FFF only (binding sends nothing to the peer).
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    for (i, (ch, want)) in
        [(0x3FFFu16, Some(400)), (0x5000, Some(400)), (0x7FFF, Some(400)), (0x4FFF, None), (0x4000, None)]
            .into_iter()
            .enumerate()
    {
        // One peer per channel (a peer has one channel); the last is the real one.
        let to = if ch == 0x4000 { peer_addr } else { SocketAddr::new(peer_addr.ip(), 1 + i as u16) };
        signed(&mut c, stun::CHANNEL_BIND, [20 + i as u8; 12], &|b| {
            b.u32(stun::CHANNEL_NUMBER, u32::from(ch) << 16).xor_addr(stun::XOR_PEER_ADDRESS, to);
        });
        let r = c.roundtrip().await;
        let m = Message::parse(&r).unwrap();
        assert_eq!(error_code(&m), want, "channel {ch:#06x}");
        assert_eq!(m.class, if want.is_some() { Class::Error } else { Class::Success }, "channel {ch:#06x}");
    }
    // ChannelData on 0x4000 reaches the peer from the relayed address, and
    // the peer's answer comes back on the channel.
    c.buf = [&0x4000u16.to_be_bytes()[..], &4u16.to_be_bytes(), b"ping"].concat();
    c.sock.send_to(&c.buf, turn).await.unwrap();
    let mut b = [0u8; 64];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut b)).await.unwrap().unwrap();
    assert_eq!((&b[..n], from), (&b"ping"[..], relayed));
    peer.send_to(b"pong", relayed).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), c.sock.recv_from(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b[..n], [&0x4000u16.to_be_bytes()[..], &4u16.to_be_bytes(), b"pong"].concat());

    // A peer of the other family: 443, for a permission and for a channel.
    let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
    signed(&mut c, stun::CREATE_PERMISSION, [30; 12], &|b| {
        b.xor_addr(stun::XOR_PEER_ADDRESS, v6);
    });
    assert_eq!(error_code(&Message::parse(&c.roundtrip().await).unwrap()), Some(443));
    signed(&mut c, stun::CHANNEL_BIND, [31; 12], &|b| {
        b.u32(stun::CHANNEL_NUMBER, 0x4100 << 16).xor_addr(stun::XOR_PEER_ADDRESS, v6);
    });
    assert_eq!(error_code(&Message::parse(&c.roundtrip().await).unwrap()), Some(443));
}
