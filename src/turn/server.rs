//! The TURN server: UDP and TCP on `turn.listen`, one relay socket per
//! allocation. Requests are decided in [`Inner::handle`]; the socket loops
//! only move bytes.
//!
//! Addresses (SPEC 6): XOR-RELAYED-ADDRESS is never a wildcard. It is
//! `turn.relay_ip` when set (1:1 NAT: the public address of the relay
//! ports), else the server address the allocation's request arrived on, and
//! the relay socket is bound on that address. TCP learns it per connection
//! (`getsockname` of the accepted stream). For UDP on a wildcard
//! `turn.listen`, the server binds one socket per interface address (from
//! [`crate::netif`]) on the listen port instead of one wildcard socket, as
//! coturn does when no `listening-ip` is given: each socket knows its
//! address, and replies leave from the address the client wrote to, which a
//! wildcard socket guarantees only with IP_PKTINFO on both `recvmsg` and
//! `sendmsg` (per-datagram control messages through tokio's readiness API,
//! unsafe code for what binding already gives). The cost: an address added
//! after start is not served until a restart.
//!
//! Hand-written rather than built on the `turn` crate: its stock auth handler
//! parses the whole username as a number (the REST scheme is
//! `<expiry>:<user>`), and it has no TCP listener, peer filtering, quotas or
//! bandwidth caps, which are the point of this server.

use super::credentials;
use super::filter::PeerFilter;
use super::stun::{self, Builder, Class, Message};
use crate::config::TurnConfig;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha1::Sha1;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

pub const DEFAULT_LIFETIME: u32 = 600;
pub const MAX_LIFETIME: u32 = 3600;
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
pub const NONCE_LIFETIME: u64 = 3600;
/// Relay bandwidth per allocation, each direction counted: 5 Mbit/s with a
/// one-second burst. Enough for HD video; caps abuse of the relay.
pub const BANDWIDTH_BYTES_PER_SEC: f64 = 5_000_000.0 / 8.0;
const MAX_TCP_FRAME: usize = 65_535 + 20;

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("cannot bind TURN on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("turn.allowed_peer_ranges: {0}")]
    Config(String),
}

/// The metrics of SPEC 9 this server owns.
#[derive(Clone)]
struct TurnMetrics {
    allocations: prometheus::IntGauge,
    bytes: prometheus::IntCounter,
    auth_failures: prometheus::IntCounter,
    denied_peers: prometheus::IntCounter,
}

impl TurnMetrics {
    fn register(r: &prometheus::Registry) -> Self {
        let m = Self {
            allocations: prometheus::IntGauge::new("confer_turn_allocations_active", "TURN allocations").unwrap(),
            bytes: prometheus::IntCounter::new(
                "confer_turn_bytes_relayed_total",
                "Bytes relayed by TURN, both directions",
            )
            .unwrap(),
            auth_failures: prometheus::IntCounter::new(
                "confer_turn_auth_failures_total",
                "TURN requests refused for bad credentials",
            )
            .unwrap(),
            denied_peers: prometheus::IntCounter::new(
                "confer_turn_denied_peers_total",
                "TURN permissions or channels refused because the peer address is not allowed",
            )
            .unwrap(),
        };
        // A second server in the same process (tests) shares the first's metrics.
        let _ = r.register(Box::new(m.allocations.clone()));
        let _ = r.register(Box::new(m.bytes.clone()));
        let _ = r.register(Box::new(m.auth_failures.clone()));
        let _ = r.register(Box::new(m.denied_peers.clone()));
        m
    }
}

/// Where replies to one client go.
#[derive(Clone)]
enum Sink {
    Udp(Arc<UdpSocket>, SocketAddr),
    Tcp(mpsc::Sender<Vec<u8>>),
}

impl Sink {
    async fn send(&self, b: &[u8]) {
        match self {
            Sink::Udp(s, to) => {
                // The socket is almost always writable: skip the readiness
                // future unless the kernel buffer is full.
                match s.try_send_to(b, *to) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let _ = s.send_to(b, to).await;
                    }
                    _ => {}
                }
            }
            Sink::Tcp(tx) => {
                let _ = tx.try_send(b.to_vec());
            }
        }
    }
    fn is_tcp(&self) -> bool {
        matches!(self, Sink::Tcp(_))
    }
}

/// A client's 5-tuple as far as the server can tell (TCP clients are unique by address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ClientKey {
    tcp: bool,
    addr: SocketAddr,
    /// The server's side: the address the client's packets arrive on.
    local: IpAddr,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, n: usize, now: Instant) -> bool {
        self.tokens = (self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * BANDWIDTH_BYTES_PER_SEC)
            .min(BANDWIDTH_BYTES_PER_SEC);
        self.last = now;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[derive(Default)]
struct AllocState {
    perms: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    by_peer: HashMap<SocketAddr, u16>,
}

struct Alloc {
    user: String,
    /// The full TURN username that created it; later requests must match (441).
    username: String,
    relay: Arc<UdpSocket>,
    relay_addr: SocketAddr,
    /// The transaction id of the Allocate that made it, and the success
    /// sent for it: a retransmission of that request gets the same again
    /// (RFC 8656 7.2), any other Allocate on the 5-tuple 437.
    tid: [u8; 12],
    response: Vec<u8>,
    sink: Sink,
    expires: Mutex<Instant>,
    state: Mutex<AllocState>,
    bucket: Mutex<Bucket>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Alloc {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.state.lock().perms.get(&ip).is_some_and(|t| *t > now)
    }
}

struct Inner {
    realm: String,
    secret: Vec<u8>,
    nonce_key: [u8; 16],
    filter: PeerFilter,
    /// `turn.listen`'s IP: relay sockets bind here unless it is a wildcard.
    listen_ip: IpAddr,
    /// `turn.relay_ip`: advertised instead of the relay socket's own address.
    relay_ip: Option<IpAddr>,
    ports: (u16, u16),
    /// Allocations one user (the part of the username after the expiry) may hold.
    user_quota: usize,
    allocs: Mutex<HashMap<ClientKey, Arc<Alloc>>>,
    metrics: TurnMetrics,
}

pub struct TurnServer {
    /// One socket, or on a wildcard listen one per interface address.
    udp: Vec<Arc<UdpSocket>>,
    tcp: TcpListener,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    inner: Arc<Inner>,
}

impl TurnServer {
    /// Bind UDP and TCP on `cfg.listen` and, when `tls` is given, TLS on
    /// `cfg.tls_listen`.
    pub async fn bind(
        cfg: &TurnConfig,
        secret: Vec<u8>,
        registry: &prometheus::Registry,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<TurnServer, TurnError> {
        let filter = PeerFilter::new(cfg.allow_loopback_peers, &cfg.allowed_peer_ranges).map_err(TurnError::Config)?;
        let (udp, tcp) = bind_listeners(cfg.listen).await?;
        let tls = match (tls, cfg.tls_listen) {
            (Some(config), Some(at)) => {
                let l = TcpListener::bind(at).await.map_err(|source| TurnError::Bind { addr: at, source })?;
                Some((l, tokio_rustls::TlsAcceptor::from(config)))
            }
            _ => None,
        };
        let nonce_key: [u8; 16] = rand::random();
        let inner = Arc::new(Inner {
            realm: cfg.realm.clone(),
            secret,
            nonce_key,
            filter,
            listen_ip: cfg.listen.ip(),
            relay_ip: cfg.relay_ip,
            ports: (cfg.relay_port_min, cfg.relay_port_max),
            user_quota: cfg.user_quota as usize,
            allocs: Mutex::new(HashMap::new()),
            metrics: TurnMetrics::register(registry),
        });
        Ok(TurnServer { udp: udp.into_iter().map(Arc::new).collect(), tcp, tls, inner })
    }

    /// `turn.listen` with the port it got (a wildcard stays a wildcard).
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().expect("bound")
    }

    /// The UDP addresses served: `local_addr`, or on a wildcard one per
    /// interface address.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp.iter().filter_map(|s| s.local_addr().ok()).collect()
    }

    /// The TURN-over-TLS address, when TLS is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serve until `shutdown`, then drop every allocation.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let TurnServer { udp, tcp, tls, inner } = self;
        let mut tasks = vec![tokio::spawn(sweep(inner.clone())), tokio::spawn(tcp_loop(tcp, inner.clone()))];
        for u in udp {
            tasks.push(tokio::spawn(udp_loop(u, inner.clone())));
        }
        if let Some((listener, acceptor)) = tls {
            tasks.push(tokio::spawn(tls_loop(listener, acceptor, inner.clone())));
        }
        shutdown.await;
        for t in tasks {
            t.abort();
        }
        let all: Vec<_> = inner.allocs.lock().drain().collect();
        for (_, a) in all {
            inner.drop_alloc(&a);
        }
    }
}

/// UDP and TCP on the same port. With port 0 the kernel picks the UDP port,
/// which TCP may already use (another process's connection): pick again.
async fn bind_pair(at: SocketAddr) -> Result<(UdpSocket, TcpListener), TurnError> {
    let mut tries = if at.port() == 0 { 50 } else { 1 };
    loop {
        let udp = UdpSocket::bind(at).await.map_err(|source| TurnError::Bind { addr: at, source })?;
        let addr = udp.local_addr().map_err(|source| TurnError::Bind { addr: at, source })?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                tries -= 1;
                if tries == 0 {
                    return Err(TurnError::Bind { addr, source });
                }
            }
        }
    }
}

/// UDP and TCP on `at`. On a wildcard, TCP stays one wildcard listener (an
/// accepted stream knows its local address) and UDP is one socket per
/// interface address of the family (both families for `[::]`, which takes
/// IPv4 too), all on one port.
async fn bind_listeners(at: SocketAddr) -> Result<(Vec<UdpSocket>, TcpListener), TurnError> {
    if !at.ip().is_unspecified() {
        let (udp, tcp) = bind_pair(at).await?;
        return Ok((vec![udp], tcp));
    }
    let mut ips = crate::netif::local_ips(at.ip());
    if at.is_ipv6() {
        ips.extend(crate::netif::local_ips(std::net::Ipv4Addr::UNSPECIFIED.into()));
    }
    if ips.is_empty() {
        tracing::warn!(%at, "TURN: no interface address found; one wildcard UDP socket (relayed addresses then need turn.relay_ip)");
        let (udp, tcp) = bind_pair(at).await?;
        return Ok((vec![udp], tcp));
    }
    let mut tries = if at.port() == 0 { 50 } else { 1 };
    loop {
        let (first, tcp) = bind_pair(SocketAddr::new(ips[0], at.port())).await?;
        let port = first.local_addr().map_err(|source| TurnError::Bind { addr: at, source })?.port();
        // The first pair only fixed the port: TCP listens on the wildcard.
        drop(tcp);
        let bound = async {
            let tcp = TcpListener::bind(SocketAddr::new(at.ip(), port)).await.map_err(|e| (at, e))?;
            let mut udp = vec![first];
            for ip in &ips[1..] {
                let a = SocketAddr::new(*ip, port);
                udp.push(UdpSocket::bind(a).await.map_err(|e| (a, e))?);
            }
            Ok::<_, (SocketAddr, std::io::Error)>((udp, tcp))
        };
        match bound.await {
            Ok(pair) => return Ok(pair),
            Err((addr, source)) => {
                tries -= 1;
                if tries == 0 {
                    return Err(TurnError::Bind { addr, source });
                }
            }
        }
    }
}

async fn udp_loop(udp: Arc<UdpSocket>, inner: Arc<Inner>) {
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(1500);
    let local = udp.local_addr().map(|a| a.ip()).unwrap_or(inner.listen_ip);
    loop {
        let Ok((n, from)) = udp.recv_from(&mut buf).await else { continue };
        let key = ClientKey { tcp: false, addr: from, local };
        inner.handle(key, &Sink::Udp(udp.clone(), from), &buf[..n], &mut out).await;
        // Drain what else is queued before yielding to the scheduler.
        while let Ok((n, from)) = udp.try_recv_from(&mut buf) {
            let key = ClientKey { tcp: false, addr: from, local };
            inner.handle(key, &Sink::Udp(udp.clone(), from), &buf[..n], &mut out).await;
        }
    }
}

async fn tcp_loop(tcp: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((stream, from)) = tcp.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let local = local_ip(&stream, &inner);
        tokio::spawn(stream_conn(stream, from, local, inner.clone()));
    }
}

async fn tls_loop(tcp: TcpListener, acceptor: tokio_rustls::TlsAcceptor, inner: Arc<Inner>) {
    loop {
        let Ok((stream, from)) = tcp.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let local = local_ip(&stream, &inner);
        let (acceptor, inner) = (acceptor.clone(), inner.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => stream_conn(tls, from, local, inner).await,
                _ => tracing::debug!(%from, "TURN TLS handshake failed"),
            }
        });
    }
}

/// The server address an accepted connection arrived on (an IPv4 client of
/// a `[::]` listener shows as `::ffff:a.b.c.d`: given as IPv4).
fn local_ip(stream: &tokio::net::TcpStream, inner: &Inner) -> IpAddr {
    stream.local_addr().map(|a| a.ip().to_canonical()).unwrap_or(inner.listen_ip)
}

/// One TCP or TLS client: STUN messages and ChannelData (padded to 4 bytes) framed
/// back to back (RFC 8656 12.5).
async fn stream_conn<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    from: SocketAddr,
    local: IpAddr,
    inner: Arc<Inner>,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let key = ClientKey { tcp: true, addr: from, local };
    let sink = Sink::Tcp(tx);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(1500);
    'conn: while let Ok(n) = rd.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            if buf.len() < 4 {
                break;
            }
            let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            let frame = match buf[0] {
                0x00..=0x3F => stun::HEADER + len,
                0x40..=0x7F => 4 + len + (4 - len % 4) % 4,
                _ => break 'conn, // not TURN: drop the connection
            };
            if frame > MAX_TCP_FRAME {
                break 'conn;
            }
            if buf.len() < frame {
                break;
            }
            let msg_len = if buf[0] >= 0x40 { 4 + len } else { frame };
            inner.handle(key, &sink, &buf[..msg_len], &mut out).await;
            buf.drain(..frame);
        }
    }
    let removed = inner.allocs.lock().remove(&key);
    if let Some(a) = removed {
        inner.drop_alloc(&a);
    }
    writer.abort();
}

/// Relay socket → client: Data indications, or ChannelData where bound.
async fn relay_loop(alloc: Arc<Alloc>, inner: Arc<Inner>) {
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(1600);
    loop {
        let Ok((n, peer)) = alloc.relay.recv_from(&mut buf).await else { continue };
        let now = Instant::now();
        // One look at the allocation's state per packet: permission and channel.
        let channel = {
            let st = alloc.state.lock();
            if st.perms.get(&peer.ip()).is_none_or(|t| *t <= now) {
                continue;
            }
            st.by_peer.get(&peer).copied()
        };
        if !alloc.bucket.lock().take(n, now) {
            continue;
        }
        match channel {
            Some(ch) => {
                out.clear();
                out.extend_from_slice(&ch.to_be_bytes());
                out.extend_from_slice(&(n as u16).to_be_bytes());
                out.extend_from_slice(&buf[..n]);
                if alloc.sink.is_tcp() {
                    out.resize(out.len() + (4 - n % 4) % 4, 0);
                }
            }
            None => {
                let tid: [u8; 12] = rand::random();
                Builder::new(&mut out, stun::DATA, Class::Indication, tid)
                    .xor_addr(stun::XOR_PEER_ADDRESS, peer)
                    .attr(stun::DATA_ATTR, &buf[..n]);
            }
        }
        alloc.sink.send(&out).await;
        inner.metrics.bytes.inc_by(n as u64);
    }
}

async fn sweep(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let expired: Vec<_> = {
            let mut allocs = inner.allocs.lock();
            let dead: Vec<ClientKey> =
                allocs.iter().filter(|(_, a)| *a.expires.lock() <= now).map(|(k, _)| *k).collect();
            dead.into_iter().filter_map(|k| allocs.remove(&k)).collect()
        };
        for a in expired {
            inner.drop_alloc(&a);
        }
        for a in inner.allocs.lock().values() {
            let mut st = a.state.lock();
            st.perms.retain(|_, t| *t > now);
            let stale: Vec<u16> = st.channels.iter().filter(|(_, (_, t))| *t <= now).map(|(c, _)| *c).collect();
            for c in stale {
                if let Some((peer, _)) = st.channels.remove(&c) {
                    st.by_peer.remove(&peer);
                }
            }
        }
    }
}

mod handle;
