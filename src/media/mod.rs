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
//! - [`deliver`]: lets inbound RTCP through webrtc-rs's interceptor chain.
//! - [`observe`]: TWCC round trips and sent NACKs, for analytics.
//! - [`pc`]: how a server-side PeerConnection is configured.
//! - [`sdp`]: the few edits made to outgoing SDP.
//! - [`engine`]: the socket loop that owns every PeerConnection.

pub mod deliver;
pub mod demux;
pub mod engine;
pub mod observe;
pub mod pc;
pub mod router;
pub mod sdp;

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

/// Signaling's end of the media plane.
#[derive(Clone, Debug)]
pub struct MediaHandle {
    tx: mpsc::UnboundedSender<Command>,
    addr: SocketAddr,
}

impl MediaHandle {
    /// Queue a command; a stopped engine ignores it.
    pub fn send(&self, cmd: Command) {
        let _ = self.tx.send(cmd);
    }

    /// The shared UDP port's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle whose commands go to `tx` (tests of the signaling side).
    pub fn detached(tx: mpsc::UnboundedSender<Command>, addr: SocketAddr) -> Self {
        Self { tx, addr }
    }
}
