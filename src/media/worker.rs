//! A media worker: one thread, one UDP socket, the rooms placed on it. It is
//! the socket loop and the only place in the media plane that reads the
//! clock: it reads datagrams in batches, hands each to the [`Router`] of the
//! room whose leg it belongs to, runs timers, carries out commands, and sends
//! what the routers queued with `sendmmsg`. Nothing here takes a lock; a
//! room's packets never leave its worker.

use super::demux;
use super::egress;
use super::ids::{LegId, RouterId};
use super::router::Router;
use super::stats::REPORT_EVERY;
use super::udp::{RecvBatch, SendBatch};
use super::{Command, MediaError, MediaEvent, MediaHandle};
use crate::ids::{PeerId, RoomId};
use crate::metrics::MediaMetrics;
use rtc::peer_connection::message::TaggedRTCMessage;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// How often leg timers and deferred keyframe requests are checked.
const TICK: Duration = Duration::from_millis(10);
/// SPEC 5: active speakers every 500 ms, on change.
const SPEAKERS_EVERY: Duration = Duration::from_millis(500);
/// `recvmmsg` batches read per wake-up before timers and commands get a turn.
const READ_BATCHES: usize = 4;
/// RTCP sender reports on subscriber legs, per forwarded stream.
const SENDER_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Start one worker per socket, each on its own thread. Each socket is
/// already bound; every connection gets one ICE host candidate per address
/// of `advertised` (the composition root's choice: the public address, the
/// bound one or every interface's, never a wildcard), on its worker's port.
/// Rooms are spread over the workers by [`MediaHandle`].
pub fn spawn(
    sockets: Vec<std::net::UdpSocket>,
    advertised: Vec<std::net::IpAddr>,
    bandwidth_estimation: bool,
    metrics: MediaMetrics,
) -> std::io::Result<(MediaHandle, mpsc::UnboundedReceiver<MediaEvent>, Vec<std::thread::JoinHandle<()>>)> {
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    let mut threads = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let local = socket.local_addr()?;
        let advertised: Vec<SocketAddr> = advertised.iter().map(|ip| SocketAddr::new(*ip, local.port())).collect();
        if advertised.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to advertise"));
        }
        socket.set_nonblocking(true)?;
        grow_buffers(&socket);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ev_tx, metrics) = (ev_tx.clone(), metrics.clone());
        let thread = std::thread::Builder::new().name(format!("confer-media-{i}")).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(error = %e, "media worker: cannot start its runtime"),
            };
            rt.block_on(async move {
                let socket = match UdpSocket::from_std(socket) {
                    Ok(s) => s,
                    Err(e) => return tracing::error!(error = %e, "media worker: cannot register the UDP socket"),
                };
                let mut io = Io::new(advertised, ev_tx, metrics, Arc::new(socket));
                io.bandwidth_estimation = bandwidth_estimation;
                Worker::new(io).run(rx).await;
            });
        })?;
        workers.push((tx, local));
        threads.push(thread);
    }
    Ok((MediaHandle::new(workers), ev_rx, threads))
}

/// Bursts (a keyframe to many subscribers, many publishers at once) must not
/// overflow the kernel's default socket buffers; best effort.
fn grow_buffers(socket: &std::net::UdpSocket) {
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        if !super::udp::set_socket_option(socket, opt, 4 << 20) {
            tracing::debug!(opt, "media: could not grow a socket buffer");
        }
    }
}

/// Which router and leg a datagram belongs to: by remote address once one
/// was seen, else by the ICE username of a STUN binding request.
#[derive(Default)]
pub struct Demux {
    by_addr: HashMap<SocketAddr, (RouterId, LegId)>,
    by_ufrag: HashMap<String, (RouterId, LegId)>,
}

impl Demux {
    pub fn register(&mut self, ufrag: String, router: RouterId, leg: LegId) {
        self.by_ufrag.insert(ufrag, (router, leg));
    }

    pub fn forget(&mut self, ufrag: &str, addrs: &[SocketAddr]) {
        self.by_ufrag.remove(ufrag);
        for a in addrs {
            self.by_addr.remove(a);
        }
    }
}

/// What every router of a worker writes through: the socket and its send
/// batch, the reused write buffers, the event channel to signaling, the
/// metrics and the demux tables.
pub struct Io {
    /// The host candidates every connection of this worker offers.
    pub advertised: Vec<SocketAddr>,
    /// The local address every datagram is said to arrive on, for the ICE
    /// agent (it drops what matches none of its candidates): the first
    /// candidate. One socket serves every candidate, and with ICE-lite the
    /// client's checks decide the pair, so which of them this names changes
    /// nothing that is sent. (A wildcard socket does not learn a datagram's
    /// destination address without IP_PKTINFO; replies leave from the
    /// address the kernel's route picks, which is the one the client used
    /// unless the host reaches that client through another interface.)
    pub ice_local: SocketAddr,
    events: mpsc::UnboundedSender<MediaEvent>,
    pub metrics: MediaMetrics,
    pub socket: Arc<UdpSocket>,
    pub out: SendBatch,
    /// Reused buffers for forwarded copies.
    pub writer: egress::Writer,
    pub demux: Demux,
    /// Reused by the routers' reads of their legs.
    pub reads: Vec<TaggedRTCMessage>,
    /// Datagrams the kernel refused since the last flush.
    pub failed: usize,
    /// `media.bandwidth_estimation`: allocate by the estimate, or as if
    /// every subscriber's link were unlimited.
    pub bandwidth_estimation: bool,
    next_leg: u32,
    /// Monotonic origin of the arrival times fed to the statistics.
    epoch: Instant,
}

impl Io {
    fn new(
        advertised: Vec<SocketAddr>,
        events: mpsc::UnboundedSender<MediaEvent>,
        metrics: MediaMetrics,
        socket: Arc<UdpSocket>,
    ) -> Self {
        Self {
            ice_local: advertised[0],
            advertised,
            events,
            metrics,
            socket,
            out: SendBatch::default(),
            writer: egress::Writer::default(),
            demux: Demux::default(),
            reads: Vec::new(),
            failed: 0,
            bandwidth_estimation: true,
            next_leg: 0,
            epoch: Instant::now(),
        }
    }

    /// Queue a datagram (sent with the batch).
    pub fn send(&mut self, data: &[u8], to: SocketAddr) {
        self.failed += self.out.push(&self.socket, data, to);
    }

    pub fn event(&self, ev: MediaEvent) {
        let _ = self.events.send(ev);
    }

    pub fn error(&self, peer: &PeerId, error: MediaError) {
        self.event(MediaEvent::Error { peer: peer.clone(), error });
    }

    pub fn next_leg(&mut self) -> LegId {
        let id = LegId(self.next_leg);
        self.next_leg = self.next_leg.wrapping_add(1);
        id
    }

    /// Seconds since the worker started, for the statistics' arrival times.
    pub fn arrival(&self, now: Instant) -> f64 {
        now.duration_since(self.epoch).as_secs_f64()
    }
}

struct Worker {
    io: Io,
    routers: HashMap<RouterId, Router>,
    by_room: HashMap<RoomId, RouterId>,
    peers: HashMap<PeerId, RouterId>,
    next_router: u32,
    /// Routers with legs to drain.
    dirty: Vec<RouterId>,
    next_sender_reports: Instant,
}

impl Worker {
    fn new(io: Io) -> Self {
        Self {
            io,
            routers: HashMap::new(),
            by_room: HashMap::new(),
            peers: HashMap::new(),
            next_router: 0,
            dirty: Vec::new(),
            next_sender_reports: Instant::now() + SENDER_REPORT_EVERY,
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let socket = self.io.socket.clone();
        let mut rx = RecvBatch::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_speakers = Instant::now() + SPEAKERS_EVERY;
        let mut last_report = Instant::now();
        loop {
            // When the current batch of datagrams was read.
            let mut read_at: Option<Instant> = None;
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(cmd) => self.command(cmd, Instant::now()),
                },
                r = socket.readable() => {
                    if r.is_ok() {
                        for _ in 0..READ_BATCHES {
                            if rx.recv(&socket).is_err() {
                                break;
                            }
                            let now = Instant::now();
                            read_at.get_or_insert(now);
                            for (data, from) in rx.iter() {
                                self.datagram(data, from, now);
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.timers(now, SystemTime::now());
                    if now >= next_speakers {
                        next_speakers = now + SPEAKERS_EVERY;
                        self.active_speakers();
                    }
                    if now.duration_since(last_report) >= REPORT_EVERY {
                        let secs = now.duration_since(last_report).as_secs_f64();
                        last_report = now;
                        self.report(secs);
                    }
                }
            }
            self.flush(Instant::now(), SystemTime::now());
            if let Some(t) = read_at {
                self.io.metrics.forward_delay.observe(t.elapsed().as_secs_f64());
            }
        }
        let now = Instant::now();
        let peers: Vec<PeerId> = self.peers.keys().cloned().collect();
        for p in peers {
            self.leave(&p, now);
        }
        self.flush(now, SystemTime::now());
        tracing::debug!("media worker stopped");
    }

    fn datagram(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        let (router, leg) = match self.io.demux.by_addr.get(&from) {
            Some(&found) => found,
            None => {
                let Some(&(router, leg)) = demux::binding_ufrag(data).and_then(|u| self.io.demux.by_ufrag.get(u))
                else {
                    tracing::trace!(%from, len = data.len(), "media: datagram from an unknown address dropped");
                    self.io.metrics.datagrams_dropped.inc();
                    return;
                };
                tracing::debug!(%from, %leg, "media: new remote address");
                self.io.demux.by_addr.insert(from, (router, leg));
                if let Some(r) = self.routers.get_mut(&router) {
                    r.add_address(leg, from);
                }
                (router, leg)
            }
        };
        let Some(r) = self.routers.get_mut(&router) else { return };
        r.datagram(leg, data, from, now, &mut self.io);
        self.dirty.push(router);
    }

    fn command(&mut self, cmd: Command, now: Instant) {
        let io = &mut self.io;
        let peer = match &cmd {
            Command::Join { room, peer, subscribe } => {
                let id = match self.by_room.get(room) {
                    Some(&id) => id,
                    None => {
                        let id = RouterId(self.next_router);
                        self.next_router = self.next_router.wrapping_add(1);
                        self.by_room.insert(room.clone(), id);
                        self.routers.insert(id, Router::new(id, room.clone(), &io.metrics));
                        id
                    }
                };
                self.peers.insert(peer.clone(), id);
                if let Some(r) = self.routers.get_mut(&id) {
                    r.join(peer, *subscribe, io, now);
                }
                self.dirty.push(id);
                return;
            }
            Command::Leave { peer } => return self.leave(&peer.clone(), now),
            other => match other.peer() {
                Some(p) => p.clone(),
                None => return,
            },
        };
        let Some(&id) = self.peers.get(&peer) else {
            if matches!(cmd, Command::Publish { .. }) {
                io.error(&peer, MediaError::NotJoined);
            }
            return;
        };
        let Some(r) = self.routers.get_mut(&id) else { return };
        match cmd {
            Command::Publish { peer, sdp, tracks } => r.publish(&peer, sdp, tracks, io, now),
            Command::SubscribeAnswer { peer, sdp } => r.subscribe_answer(&peer, sdp, io, now),
            Command::Candidate { peer, role, candidate } => r.candidate(&peer, role, candidate),
            Command::Mute { peer, track, muted } => r.mute(&peer, &track, muted, now),
            Command::MuteKind { peer, kind, muted } => r.mute_kind(&peer, kind, muted, now),
            Command::Subscribe { peer, track, subscribe, ceiling } => {
                r.subscribe(&peer, &track, subscribe, ceiling, io, now)
            }
            Command::Unpublish { peer, tracks } => r.unpublish(&peer, tracks, io, now),
            Command::Join { .. } | Command::Leave { .. } | Command::Shutdown => {}
        }
        self.dirty.push(id);
    }

    fn leave(&mut self, peer: &PeerId, now: Instant) {
        let Some(id) = self.peers.remove(peer) else { return };
        let Some(r) = self.routers.get_mut(&id) else { return };
        r.leave(peer, &mut self.io, now);
        self.dirty.push(id);
        if r.is_empty() {
            let room = r.room().clone();
            // What the closed legs said goodbye with is already queued.
            self.routers.remove(&id);
            self.by_room.remove(&room);
        }
    }

    fn timers(&mut self, now: Instant, wall: SystemTime) {
        let sender_reports = now >= self.next_sender_reports;
        if sender_reports {
            self.next_sender_reports = now + SENDER_REPORT_EVERY;
        }
        for (id, r) in self.routers.iter_mut() {
            r.timers(now, wall, sender_reports, &mut self.io);
            self.dirty.push(*id);
        }
    }

    fn active_speakers(&mut self) {
        for r in self.routers.values_mut() {
            if let Some(speakers) = r.active_speakers() {
                self.io.event(MediaEvent::ActiveSpeakers { room: r.room().clone(), speakers });
            }
        }
    }

    /// Close an analytics interval: one [`MediaEvent::Stats`] per room.
    fn report(&mut self, secs: f64) {
        for r in self.routers.values_mut() {
            let peers = r.report(secs);
            self.io.event(MediaEvent::Stats { room: r.room().clone(), peers });
        }
    }

    /// Drain every router with something to say and send what is queued.
    fn flush(&mut self, now: Instant, wall: SystemTime) {
        self.dirty.sort_unstable();
        self.dirty.dedup();
        for id in self.dirty.drain(..) {
            if let Some(r) = self.routers.get_mut(&id) {
                r.flush(&mut self.io, now, wall);
            }
        }
        let failed = self.io.failed + self.io.out.flush(&self.io.socket);
        self.io.failed = 0;
        if failed > 0 {
            self.io.metrics.send_errors.inc_by(failed as u64);
        }
    }
}
