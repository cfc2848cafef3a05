//! The media plane: the SFU. It terminates every participant's WebRTC
//! PeerConnections (webrtc-rs's sans-IO core, `rtc`) on one shared UDP port and
//! forwards RTP between them without decoding.
//!
//! It may depend on [`crate::model`], [`crate::ids`] and [`crate::metrics`];
//! it never imports signaling, HTTP or the store. Signaling drives it with
//! [`Command`]s through a [`MediaHandle`] and hears back through
//! [`MediaEvent`]s; the engine runs on its own thread.
//!
//! - [`demux`]: which PeerConnection a datagram belongs to.
//! - [`router`]: pure forwarding decisions (producers, consumers, rewrites,
//!   keyframe rate limits, audio levels).
//! - [`observe`]: every leg's own interceptor: lets inbound RTCP through
//!   webrtc-rs's chain, and measures TWCC round trips and sent NACKs for
//!   analytics (the load tool's peers use it too).
//! - [`pc`]: how a server-side PeerConnection is configured.
//! - [`sdp`]: the few edits made to outgoing SDP.
//! - [`udp`]: batched socket I/O (`recvmmsg`, `sendmmsg`).
//! - [`engine`]: the socket loop that owns every PeerConnection.

pub mod demux;
pub mod engine;
pub mod observe;
pub mod pc;
pub mod router;
pub mod sdp;
pub mod udp;

use crate::ids::{PeerId, RoomId, TrackId};
use crate::model::{TrackKind, TrackSource};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tokio::sync::mpsc;

/// A participant's two PeerConnections with the server (SPEC 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// Every [`engine::REPORT_EVERY`]: what each participant of a room
    /// published and received (SPEC 8 streams).
    Stats {
        room: RoomId,
        peers: Vec<PeerReport>,
    },
    Error {
        peer: PeerId,
        code: &'static str,
        message: String,
    },
}

/// One participant's streams in a [`MediaEvent::Stats`].
#[derive(Debug, Clone)]
pub struct PeerReport {
    pub peer: PeerId,
    pub publish: crate::analytics::report::Directional,
    pub subscribe: crate::analytics::report::Directional,
}

/// Signaling's end of the media plane: one command queue per worker. A room
/// lives on one worker (chosen by a hash of its id), so its packets never
/// cross threads; a participant's later commands go where its `Join` went.
#[derive(Clone, Debug)]
pub struct MediaHandle {
    workers: Vec<(mpsc::UnboundedSender<Command>, SocketAddr)>,
    placed: std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<PeerId, usize>>>,
}

impl MediaHandle {
    pub(crate) fn new(workers: Vec<(mpsc::UnboundedSender<Command>, SocketAddr)>) -> Self {
        assert!(!workers.is_empty(), "at least one media worker");
        Self { workers, placed: Default::default() }
    }

    /// Which worker carries `room`.
    pub fn worker_of(&self, room: &RoomId) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        room.as_str().hash(&mut h);
        (h.finish() % self.workers.len() as u64) as usize
    }

    /// Queue a command for the worker it concerns; a stopped engine ignores it.
    pub fn send(&self, cmd: Command) {
        let w = match &cmd {
            Command::Shutdown => {
                for (tx, _) in &self.workers {
                    let _ = tx.send(Command::Shutdown);
                }
                return;
            }
            Command::Join { room, peer } => {
                let w = self.worker_of(room);
                self.placed.lock().insert(peer.clone(), w);
                w
            }
            Command::Leave { peer } => self.placed.lock().remove(peer).unwrap_or(0),
            Command::Publish { peer, .. }
            | Command::SubscribeAnswer { peer, .. }
            | Command::Candidate { peer, .. }
            | Command::Mute { peer, .. }
            | Command::MuteKind { peer, .. }
            | Command::Subscribe { peer, .. }
            | Command::Unpublish { peer, .. } => self.placed.lock().get(peer).copied().unwrap_or(0),
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

    /// Rooms spread over the workers, and everything a participant does
    /// follows its `Join` to the worker of its room.
    #[test]
    fn rooms_spread_over_workers_and_commands_follow_the_join() {
        let (a, mut ra) = mpsc::unbounded_channel();
        let (b, mut rb) = mpsc::unbounded_channel();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let h = MediaHandle::new(vec![(a, addr), (b, addr)]);
        let on_b = (0..200).filter(|i| h.worker_of(&RoomId::from(format!("rm_{i}").as_str())) == 1).count();
        assert!((60..=140).contains(&on_b), "{on_b} of 200 rooms on worker 1");
        let room = (0..).map(|i| RoomId::from(format!("rm_{i}").as_str())).find(|r| h.worker_of(r) == 1).unwrap();
        let peer = PeerId::from("peer_x");
        h.send(Command::Join { room: room.clone(), peer: peer.clone() });
        h.send(Command::Subscribe { peer: peer.clone(), track: TrackId::from("tr_1"), subscribe: false });
        h.send(Command::Leave { peer: peer.clone() });
        let mut got = Vec::new();
        while let Ok(c) = rb.try_recv() {
            got.push(format!("{c:?}").split_whitespace().next().unwrap_or_default().to_owned());
        }
        assert_eq!(got, ["Join", "Subscribe", "Leave"]);
        assert!(ra.try_recv().is_err(), "nothing went to worker 0");
        // After the leave the participant is forgotten; shutdown reaches all.
        assert!(h.placed.lock().is_empty());
        h.send(Command::Shutdown);
        assert!(matches!(ra.try_recv(), Ok(Command::Shutdown)) && matches!(rb.try_recv(), Ok(Command::Shutdown)));
    }
}
