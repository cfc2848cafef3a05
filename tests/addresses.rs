//! Addresses a client can use (SPEC 1, 6, 12), each test inside a network
//! namespace of its own (tests/common/netns.rs: `lo` plus 198.18.0.1 and
//! 198.18.0.2 on a veth pair), with the real binary on wildcard listens: the
//! SFU's ICE candidates are the interface addresses (never 0.0.0.0, loopback
//! not while another exists), `media.public_ip = "auto"` learns an address
//! from a STUN server, and TURN on 0.0.0.0 relays on the address each
//! Allocate arrived on, or on `turn.relay_ip`; `/ice-config` names the host
//! the request came in on.

mod common;

use common::netns::{NetNs, A, B};
use common::{child_client, parse_listening, ChildServer, TestServer};
use confer::loadtest::peer::{RtcPeer, Seen};
use confer::turn::stun::{self, Builder, Class, Message};
use rtc::peer_connection::sdp::RTCSessionDescription;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The host candidates' addresses in an SDP.
fn candidate_ips(sdp: &str) -> Vec<String> {
    let mut ips: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a=candidate:"))
        .filter_map(|c| c.split_whitespace().nth(4).map(str::to_owned))
        .collect();
    ips.dedup();
    ips
}

/// Publish one video track from a webrtc-rs peer on `from` and return the
/// server's answer SDP, after the connection is up.
async fn publish_and_connect(c: &TestServer, from: IpAddr) -> String {
    let (_, v) = c.post("/rooms", "alice", json!({"name": "addr"})).await;
    let room = v["room"]["id"].as_str().unwrap().to_owned();
    let mut ws = c.ws_ready("alice").await;
    ws.send(json!({"type": "room-join", "roomId": room})).await;
    ws.recv_type("room-joined").await;
    let peer = RtcPeer::start_with(false, from).await.unwrap();
    let (offer, mid) = common::camera_offer(&peer).await;
    ws.send(
        json!({"type": "publish-offer", "roomId": room, "sdp": offer, "tracks": [{"mid": mid, "source": "camera"}]}),
    )
    .await;
    let answer = ws.recv_type("publish-answer").await["sdp"].as_str().unwrap().to_owned();
    let a = answer.clone();
    peer.with(move |pc, now| pc.set_remote_description(now, RTCSessionDescription::answer(a).unwrap()).unwrap()).await;
    let mut peer = peer;
    tokio::time::timeout(Duration::from_secs(15), peer.wait_for("connected", |s| matches!(s, Seen::Connected)))
        .await
        .unwrap_or_else(|_| panic!("no connection to the SFU through {:?}", candidate_ips(&answer)));
    answer
}

#[test]
fn wildcard_media_listen_advertises_the_interface_addresses() {
    let ns = NetNs::new("media");
    ns.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let s = ChildServer::spawn(dir.path(), &[("CONFER_MEDIA_LISTEN", "0.0.0.0:0"), ("CONFER_MEDIA_WORKERS", "1")]);
        assert!(s.media.ip().is_unspecified(), "{}", s.line);
        let c = child_client(s.addr);
        let answer = publish_and_connect(&c, B.parse().unwrap()).await;
        let ips = candidate_ips(&answer);
        println!("answer candidates: {ips:?}");
        assert!(ips.contains(&A.to_owned()) && ips.contains(&B.to_owned()), "{ips:?}");
        assert!(!ips.iter().any(|ip| ip == "0.0.0.0" || ip.starts_with("127.")), "{ips:?}");
    });
}

/// A STUN server that answers every Binding with `mapped` (what a server on
/// the far side of a NAT would report).
fn stun_responder(at: &str, mapped: SocketAddr) -> SocketAddr {
    let sock = std::net::UdpSocket::bind(at).unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let mut out = Vec::new();
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let Ok(m) = Message::parse(&buf[..n]) else { continue };
            Builder::new(&mut out, stun::BINDING, Class::Success, m.tid).xor_addr(stun::XOR_MAPPED_ADDRESS, mapped);
            let _ = sock.send_to(&out, from);
        }
    });
    addr
}

#[test]
fn public_ip_auto_learns_the_address_from_stun_and_falls_back_without_an_answer() {
    let ns = NetNs::new("stun");
    ns.block_on(async {
        let public = "198.19.7.7";
        let stun_at = stun_responder(&format!("{B}:0"), format!("{public}:40000").parse().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let servers = format!("198.18.0.3:3478, {stun_at}"); // the first answers nothing
        let s = ChildServer::spawn(
            dir.path(),
            &[
                ("CONFER_MEDIA_LISTEN", "0.0.0.0:0"),
                ("CONFER_MEDIA_WORKERS", "1"),
                ("CONFER_MEDIA_PUBLIC_IP", "auto"),
                ("CONFER_MEDIA_STUN_SERVERS", &servers),
            ],
        );
        let c = child_client(s.addr);
        let ips = candidate_ips(&publish_and_connect(&c, B.parse().unwrap()).await);
        println!("with a STUN answer: {ips:?}");
        assert_eq!(ips.first().map(String::as_str), Some(public), "the learned address comes first: {ips:?}");
        assert!(ips.contains(&A.to_owned()), "{ips:?}");
        drop(s);

        // No server answers: a warning, and the interface addresses only.
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let s = ChildServer::spawn(
            dir.path(),
            &[
                ("CONFER_MEDIA_LISTEN", "0.0.0.0:0"),
                ("CONFER_MEDIA_WORKERS", "1"),
                ("CONFER_MEDIA_PUBLIC_IP", "auto"),
                ("CONFER_MEDIA_STUN_SERVERS", "198.18.0.3:3478"),
            ],
        );
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(8), "start waited {waited:?}");
        let c = child_client(s.addr);
        let ips = candidate_ips(&publish_and_connect(&c, B.parse().unwrap()).await);
        println!("without one (start took {waited:?}): {ips:?}");
        assert!(!ips.iter().any(|ip| ip == public || ip == "0.0.0.0") && ips.contains(&A.to_owned()), "{ips:?}");
    });
}

/// An authenticated Allocate over UDP or TCP to `turn`; the XOR-RELAYED-ADDRESS.
async fn allocate(turn: SocketAddr, tcp: bool, user: &str, pass: &str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    enum Conn {
        Udp(tokio::net::UdpSocket),
        Tcp(tokio::net::TcpStream),
    }
    let mut conn = if tcp {
        Conn::Tcp(tokio::net::TcpStream::connect(turn).await.unwrap())
    } else {
        let s = tokio::net::UdpSocket::bind(SocketAddr::new(turn.ip(), 0)).await.unwrap();
        s.connect(turn).await.unwrap();
        Conn::Udp(s)
    };
    async fn roundtrip(conn: &mut Conn, req: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let n = tokio::time::timeout(Duration::from_secs(3), async {
            match conn {
                Conn::Udp(s) => {
                    s.send(req).await.unwrap();
                    s.recv(&mut buf).await.unwrap()
                }
                Conn::Tcp(s) => {
                    s.write_all(req).await.unwrap();
                    s.read_exact(&mut buf[..20]).await.unwrap();
                    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
                    s.read_exact(&mut buf[20..20 + len]).await.unwrap();
                    20 + len
                }
            }
        })
        .await
        .expect("a TURN answer within 3 s");
        buf.truncate(n);
        buf
    }
    let mut req = Vec::new();
    Builder::new(&mut req, stun::ALLOCATE, Class::Request, [1; 12]).u32(stun::REQUESTED_TRANSPORT, 17 << 24);
    let r = roundtrip(&mut conn, &req).await;
    let m = Message::parse(&r).unwrap();
    let (realm, nonce) = (m.text(stun::REALM).unwrap().to_owned(), m.text(stun::NONCE).unwrap().to_owned());
    let key = stun::long_term_key(user, &realm, pass);
    Builder::new(&mut req, stun::ALLOCATE, Class::Request, [2; 12])
        .u32(stun::REQUESTED_TRANSPORT, 17 << 24)
        .attr(stun::USERNAME, user.as_bytes())
        .attr(stun::REALM, realm.as_bytes())
        .attr(stun::NONCE, nonce.as_bytes())
        .integrity(&key)
        .fingerprint();
    let r = roundtrip(&mut conn, &req).await;
    let m = Message::parse(&r).unwrap();
    assert_eq!(m.class, Class::Success, "Allocate to {turn} (tcp: {tcp})");
    m.xor_addr(stun::XOR_RELAYED_ADDRESS).unwrap()
}

/// `/ice-config` as alice, with the request's Host header.
async fn ice_urls(c: &TestServer, host: &str) -> (Vec<String>, String, String) {
    let r = c.http.get(c.url("/ice-config")).header("host", host).bearer_auth(c.token("alice")).send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let t = &v["iceServers"][1];
    let urls = t["urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()).collect();
    (urls, t["username"].as_str().unwrap().to_owned(), t["credential"].as_str().unwrap().to_owned())
}

#[test]
fn turn_on_a_wildcard_relays_on_the_address_the_request_arrived_on_or_relay_ip() {
    let ns = NetNs::new("turn");
    ns.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let s = ChildServer::spawn(dir.path(), &[("CONFER_TURN_LISTEN", "0.0.0.0:0")]);
        let turn = parse_listening(&s.line, "turn").unwrap();
        assert!(turn.ip().is_unspecified(), "{}", s.line);
        let c = child_client(s.addr);
        let host = format!("{A}:{}", s.addr.port());
        let (urls, user, pass) = ice_urls(&c, &host).await;
        println!("/ice-config with Host {host}: {urls:?}");
        assert_eq!(urls[0], format!("turn:{A}:{}?transport=udp", turn.port()), "{urls:?}");
        assert!(!urls.iter().any(|u| u.contains("0.0.0.0")), "{urls:?}");
        for ip in [A, B] {
            for tcp in [false, true] {
                let at = SocketAddr::new(ip.parse().unwrap(), turn.port());
                let relayed = allocate(at, tcp, &user, &pass).await;
                println!("Allocate to {at} (tcp: {tcp}): relayed {relayed}");
                assert_eq!(relayed.ip(), at.ip(), "tcp: {tcp}");
            }
        }
        drop(s);

        // turn.relay_ip (1:1 NAT): that address, whatever the request arrived on.
        let dir = tempfile::tempdir().unwrap();
        let relay_ip = "198.19.0.9";
        let s =
            ChildServer::spawn(dir.path(), &[("CONFER_TURN_LISTEN", "0.0.0.0:0"), ("CONFER_TURN_RELAY_IP", relay_ip)]);
        let turn = parse_listening(&s.line, "turn").unwrap();
        let c = child_client(s.addr);
        let (urls, user, pass) = ice_urls(&c, &format!("{A}:{}", s.addr.port())).await;
        println!("/ice-config with relay_ip: {urls:?}");
        assert_eq!(urls[0], format!("turn:{relay_ip}:{}?transport=udp", turn.port()), "{urls:?}");
        for (ip, tcp) in [(A, false), (B, true)] {
            let relayed = allocate(SocketAddr::new(ip.parse().unwrap(), turn.port()), tcp, &user, &pass).await;
            assert_eq!(relayed.ip().to_string(), relay_ip);
        }
    });
}
