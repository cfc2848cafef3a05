//! The media plane: the SFU. It terminates every participant's WebRTC
//! PeerConnections (webrtc-rs's sans-IO core, `rtc`) on one shared UDP port and
//! forwards RTP between them without decoding.
//!
//! It may depend on [`crate::model`], [`crate::ids`], [`crate::metrics`] and
//! the pure calculators of [`crate::analytics`]; it never imports signaling,
//! HTTP or the store, and speaks none of their formats: signaling drives it
//! with [`Command`]s through a [`MediaHandle`] and hears back through
//! [`MediaEvent`]s (typed [`MediaError`]s, plain [`PeerStats`]); each worker
//! runs on its own thread.
//!
//! - [`worker`]: one thread's socket loop (the only clock reader), its
//!   rooms' [`router::Router`]s and the demux of datagrams to them.
//! - [`router`]: one room: participants, [`transport`]s, [`producer`]s and
//!   their [`consumer`]s; negotiation, forwarding, RTCP, reports.
//! - [`forwarder`]: the pure per-consumer decision (drop, or send with this
//!   SSRC, sequence number, timestamp and payload type).
//! - [`rewrite`]: how a subscriber leg wants headers written.
//! - [`egress`]: the write path for forwarded RTP (rewrite, SRTP protect in
//!   place, sender reports).
//! - [`codec`]: VP8/H.264 keyframes and VP8 descriptor rewriting across
//!   simulcast layer switches; [`allocate`]: the pure per-subscriber layer
//!   allocation and dynacast demand; [`bwe`]: the pure send-side bandwidth
//!   estimator (GCC) per subscriber transport.
//! - [`observe`]: every leg's own interceptor: lets inbound RTCP through
//!   webrtc-rs's chain, and measures TWCC round trips and sent NACKs for
//!   analytics (the load tool's peers use it too).
//! - [`pc`]: how a server-side PeerConnection is configured.
//! - [`demux`], [`sdp`], [`udp`]: STUN usernames, outgoing SDP edits, batched
//!   socket I/O (`recvmmsg`, `sendmmsg`).
//! - [`stats`], [`error`], [`ids`]: what the plane reports, how it fails,
//!   and its own identifiers.

pub mod allocate;
pub mod bwe;
pub mod codec;
pub mod consumer;
pub mod demux;
pub mod egress;
pub mod error;
pub mod forwarder;
pub mod ids;
pub mod observe;
pub mod pc;
pub mod producer;
pub mod rewrite;
pub mod router;
pub mod sdp;
pub mod stats;
pub mod transport;
pub mod udp;
pub mod worker;

pub use error::MediaError;
pub use stats::{PeerStats, StreamSample, Streams};

use crate::ids::{PeerId, RoomId, TrackId};
use crate::model::{TrackKind, TrackSource};
use std::net::SocketAddr;
use tokio::sync::mpsc;

/// A participant's two PeerConnections with the server (SPEC 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The client offers and sends its tracks.
    Publisher,
    /// The server offers everyone else's tracks.
    Subscriber,
}

/// One track a publisher announces in `publish-offer`, with the id signaling
/// gave it.
#[derive(Clone, Debug)]
pub struct PublishTrack {
    pub mid: String,
    pub id: TrackId,
    pub source: TrackSource,
}

/// A trickled remote candidate (the browser's `RTCIceCandidateInit`).
#[derive(Clone, Debug)]
pub struct Candidate {
    pub candidate: String,
    pub sdp_mid: Option<String>,
    pub sdp_m_line_index: Option<u16>,
    pub username_fragment: Option<String>,
}

/// What signaling asks of the media plane.
#[derive(Debug)]
pub enum Command {
    Join {
        room: RoomId,
        peer: PeerId,
        /// The token's `canSubscribe`: without it the participant is never
        /// given a subscriber PeerConnection, so nothing is forwarded to it.
        subscribe: bool,
    },
    Publish {
        peer: PeerId,
        sdp: String,
        tracks: Vec<PublishTrack>,
    },
    SubscribeAnswer {
        peer: PeerId,
        sdp: String,
    },
    Candidate {
        peer: PeerId,
        role: Role,
        candidate: Candidate,
    },
    Mute {
        peer: PeerId,
        track: TrackId,
        muted: bool,
    },
    /// Mute every track of one kind (the call mute routes of `mode: "sfu"`).
    MuteKind {
        peer: PeerId,
        kind: TrackKind,
        muted: bool,
    },
    Subscribe {
        peer: PeerId,
        track: TrackId,
        subscribe: bool,
        /// The highest simulcast layer wanted (`quality`), if given.
        ceiling: Option<allocate::Layer>,
    },
    Unpublish {
        peer: PeerId,
        tracks: Vec<TrackId>,
    },
    Leave {
        peer: PeerId,
    },
    Shutdown,
}

impl Command {
    /// The participant a command is about (`None` for `Shutdown`).
    pub fn peer(&self) -> Option<&PeerId> {
        match self {
            Command::Join { peer, .. }
            | Command::Leave { peer }
            | Command::Publish { peer, .. }
            | Command::SubscribeAnswer { peer, .. }
            | Command::Candidate { peer, .. }
            | Command::Mute { peer, .. }
            | Command::MuteKind { peer, .. }
            | Command::Subscribe { peer, .. }
            | Command::Unpublish { peer, .. } => Some(peer),
            Command::Shutdown => None,
        }
    }
}

/// What the media plane tells signaling.
#[derive(Debug, Clone)]
pub enum MediaEvent {
    PublishAnswer {
        peer: PeerId,
        sdp: String,
    },
    SubscribeOffer {
        peer: PeerId,
        sdp: String,
    },
    /// The server's candidate for a leg, also trickled (it is in the SDP too).
    LocalCandidate {
        peer: PeerId,
        role: Role,
        candidate: String,
        mid: Option<String>,
    },
    /// The first RTP of an announced track arrived: it can be forwarded now.
    TrackPublished {
        peer: PeerId,
        track: TrackId,
        kind: TrackKind,
    },
    ActiveSpeakers {
        room: RoomId,
        speakers: Vec<(PeerId, f64)>,
    },
    /// Every [`stats::REPORT_EVERY`]: what each participant of a room
    /// published and received.
    Stats {
        room: RoomId,
        peers: Vec<PeerStats>,
    },
    /// The layer forwarded to `peer` of a simulcast `track` changed (`None`:
    /// nothing is forwarded now).
    LayerChanged {
        peer: PeerId,
        track: TrackId,
        layer: Option<allocate::Layer>,
        reason: allocate::Reason,
    },
    /// Dynacast: the layers of `peer`'s simulcast `track` some subscriber
    /// receives or may be moved to ([`allocate::dynacast_layers`]), lowest
    /// first (on change).
    PublishLayers {
        peer: PeerId,
        track: TrackId,
        layers: Vec<allocate::Layer>,
    },
    /// A command for `peer` failed; signaling tells the client.
    Error {
        peer: PeerId,
        error: MediaError,
    },
}

/// Signaling's end of the media plane: one command queue per worker. A room
/// lives on one worker, so its packets never cross threads: a new room goes
/// to the worker with the fewest live rooms, and a participant's later
/// commands go where its `Join` went. A room is forgotten when its last
/// participant leaves.
#[derive(Clone, Debug)]
pub struct MediaHandle {
    workers: Vec<(mpsc::UnboundedSender<Command>, SocketAddr)>,
    placement: std::sync::Arc<parking_lot::Mutex<Placement>>,
}

/// Which worker each live room and participant is on.
#[derive(Debug, Default)]
struct Placement {
    /// Room → (worker, participants joined).
    rooms: std::collections::HashMap<RoomId, (usize, usize)>,
    peers: std::collections::HashMap<PeerId, RoomId>,
}

impl Placement {
    fn join(&mut self, room: &RoomId, peer: &PeerId, workers: usize) -> usize {
        // A rejoin (after a reconnect) stays where the room's state is.
        if self.peers.get(peer) == Some(room) {
            return self.rooms[room].0;
        }
        self.leave(peer);
        let w = match self.rooms.get(room) {
            Some(&(w, _)) => w,
            None => {
                let mut load = vec![0usize; workers];
                for &(w, _) in self.rooms.values() {
                    load[w] += 1;
                }
                (0..workers).min_by_key(|&w| load[w]).unwrap_or(0)
            }
        };
        self.rooms.entry(room.clone()).or_insert((w, 0)).1 += 1;
        self.peers.insert(peer.clone(), room.clone());
        w
    }

    fn leave(&mut self, peer: &PeerId) -> Option<usize> {
        let room = self.peers.remove(peer)?;
        let (w, n) = self.rooms.get_mut(&room)?;
        let w = *w;
        *n -= 1;
        if *n == 0 {
            self.rooms.remove(&room);
        }
        Some(w)
    }

    fn worker_of(&self, peer: &PeerId) -> Option<usize> {
        self.rooms.get(self.peers.get(peer)?).map(|&(w, _)| w)
    }
}

impl MediaHandle {
    pub(crate) fn new(workers: Vec<(mpsc::UnboundedSender<Command>, SocketAddr)>) -> Self {
        assert!(!workers.is_empty(), "at least one media worker");
        Self { workers, placement: Default::default() }
    }

    /// Queue a command for the worker it concerns; a stopped engine ignores it.
    pub fn send(&self, cmd: Command) {
        let n = self.workers.len();
        let w = match &cmd {
            Command::Shutdown => {
                for (tx, _) in &self.workers {
                    let _ = tx.send(Command::Shutdown);
                }
                return;
            }
            Command::Join { room, peer, .. } => self.placement.lock().join(room, peer, n),
            Command::Leave { peer } => self.placement.lock().leave(peer).unwrap_or(0),
            other => other.peer().and_then(|p| self.placement.lock().worker_of(p)).unwrap_or(0),
        };
        let _ = self.workers[w].0.send(cmd);
    }

    /// The first worker's UDP address (the `listening` line's `media=`).
    pub fn local_addr(&self) -> SocketAddr {
        self.workers[0].1
    }

    /// Every worker's UDP address.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|(_, a)| *a).collect()
    }

    /// A handle whose commands go to `tx` (tests of the signaling side).
    pub fn detached(tx: mpsc::UnboundedSender<Command>, addr: SocketAddr) -> Self {
        Self::new(vec![(tx, addr)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// New rooms go to the least loaded worker, everything a participant
    /// does follows its `Join`, and an emptied room frees its worker.
    #[test]
    fn rooms_spread_over_workers_and_commands_follow_the_join() {
        let (a, mut ra) = mpsc::unbounded_channel();
        let (b, mut rb) = mpsc::unbounded_channel();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let h = MediaHandle::new(vec![(a, addr), (b, addr)]);
        let kinds = |r: &mut mpsc::UnboundedReceiver<Command>| {
            let mut got = Vec::new();
            while let Ok(c) = r.try_recv() {
                got.push(format!("{c:?}").split_whitespace().next().unwrap_or_default().to_owned());
            }
            got
        };
        let join =
            |room: &str, peer: &str| h.send(Command::Join { room: room.into(), peer: peer.into(), subscribe: true });
        join("rm_a", "p1");
        join("rm_b", "p2");
        join("rm_a", "p3");
        join("rm_c", "p4");
        join("rm_c", "p4");
        assert_eq!(
            kinds(&mut ra),
            ["Join", "Join", "Join", "Join"],
            "rm_a twice, rm_c (and p4's rejoin) on the less loaded worker 0"
        );
        assert_eq!(kinds(&mut rb), ["Join"], "rm_b on the empty worker 1");
        h.send(Command::Subscribe { peer: "p2".into(), track: TrackId::from("tr_1"), subscribe: false, ceiling: None });
        h.send(Command::Leave { peer: "p2".into() });
        assert_eq!(kinds(&mut rb), ["Subscribe", "Leave"]);
        // rm_b is gone: worker 1 is empty again and takes the next room.
        join("rm_d", "p5");
        assert_eq!(kinds(&mut rb), ["Join"]);
        for p in ["p1", "p3", "p4", "p5"] {
            h.send(Command::Leave { peer: p.into() });
        }
        let placement = h.placement.lock();
        assert!(placement.rooms.is_empty() && placement.peers.is_empty(), "{placement:?}");
        drop(placement);
        h.send(Command::Shutdown);
        assert!(
            kinds(&mut ra).ends_with(&["Shutdown".to_owned()]) && kinds(&mut rb).ends_with(&["Shutdown".to_owned()])
        );
    }
}
