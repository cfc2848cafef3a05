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
    for mode in [&[][..], &["-t"][..]] {
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
    cmd.args(["-t", "-S", "-p", &port.to_string(), "-e", "127.0.0.1", "-r", &peer.1.to_string(), "-X"]).args([
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
