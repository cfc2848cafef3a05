//! A transport (mediasoup's name): one of a participant's two PeerConnections
//! with the server, its addresses, and where it is in negotiation. The
//! subscriber side's offer/answer lifecycle is one [`Negotiation`] state
//! rather than flags (str0m's chat example does the same).

use super::allocate::Allocator;
use super::bwe::{self, Estimator};
use super::egress::LegOut;
use super::ids::{LegId, Ssrc};
use super::observe::Observed;
use super::Role;
use crate::ids::{PeerId, TrackId};
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::RTCRtpSenderId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// One PeerConnection ("leg").
pub struct Transport {
    pub id: LegId,
    pub pc: RTCPeerConnection,
    pub peer: PeerId,
    pub ufrag: String,
    /// Every remote address this leg was seen from (the demux's keys).
    pub addrs: Vec<SocketAddr>,
    /// DTLS is up: SRTP can be written (writes before that are lost).
    pub connected: bool,
    /// TWCC round trips and NACKs sent, seen by the leg's interceptor.
    pub observed: Arc<Observed>,
    /// Subscriber legs: where and how the worker writes to it directly.
    pub out: LegOut,
    pub side: Side,
}

/// What differs between the two legs.
pub enum Side {
    /// The client offers and sends its tracks.
    Publisher {
        /// The remote track id webrtc-rs reports → our track.
        remote: HashMap<String, TrackId>,
    },
    /// The server offers everyone else's tracks.
    Subscriber {
        /// Our senders, by the producer they carry, with their SSRC.
        senders: HashMap<TrackId, (RTCRtpSenderId, Ssrc)>,
        negotiation: Negotiation,
        /// What the subscriber's downstream carries (SPEC 5.1), and how its
        /// tracks share it.
        bwe: Box<Estimator>,
        allocator: Allocator,
        /// What retransmissions may still cost (SPEC 5.1).
        budget: bwe::Budget,
        /// While a probe cluster runs: when its padding started and the
        /// leg's `sent_bytes` then.
        padding_since: Option<(std::time::Instant, u64)>,
    },
}

/// Where the subscriber leg's offer/answer stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Negotiation {
    /// No offer has gone out yet (the first one also trickles a candidate).
    #[default]
    New,
    /// An offer is out; only the tracks it carries become consumers when it
    /// is answered (a track added meanwhile waits for the next offer, or it
    /// would be forwarded with parameters not yet agreed). `again`: the set
    /// of tracks changed meanwhile, offer again once answered.
    Offered { carries: Vec<TrackId>, again: bool },
    /// The last offer was answered.
    Stable,
}

/// Where a subscriber's estimate starts and the bounds it stays in. It
/// starts high: a subscriber gets everything it asks for until its feedback
/// shows congestion (delay growth or loss), rather than starting starved and
/// climbing for tens of seconds on a link that was fine.
pub const BWE: bwe::Config = bwe::Config { initial_bps: 10_000_000, min_bps: 100_000, max_bps: 30_000_000 };

pub fn subscriber_side(now: std::time::Instant) -> Side {
    Side::Subscriber {
        senders: HashMap::new(),
        negotiation: Negotiation::New,
        bwe: Box::new(Estimator::new(BWE, now)),
        allocator: Allocator::new(),
        budget: bwe::Budget::default(),
        padding_since: None,
    }
}

impl Transport {
    pub fn role(&self) -> Role {
        match self.side {
            Side::Publisher { .. } => Role::Publisher,
            Side::Subscriber { .. } => Role::Subscriber,
        }
    }
}

impl Negotiation {
    /// The tracks changed: `true` means make an offer now; otherwise one is
    /// outstanding and another follows its answer.
    pub fn want_offer(&mut self) -> bool {
        match self {
            Negotiation::Offered { again, .. } => {
                *again = true;
                false
            }
            _ => true,
        }
    }

    /// An offer carrying `carries` went out; `true` if it is the first.
    pub fn offered(&mut self, carries: Vec<TrackId>) -> bool {
        let first = *self == Negotiation::New;
        *self = Negotiation::Offered { carries, again: false };
        first
    }

    /// The answer came: the tracks it agreed and whether to offer again, or
    /// `None` when no offer was waiting.
    pub fn answered(&mut self) -> Option<(Vec<TrackId>, bool)> {
        match std::mem::replace(self, Negotiation::Stable) {
            Negotiation::Offered { carries, again } => Some((carries, again)),
            other => {
                *self = other;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_waits_for_its_answer_before_the_next() {
        let mut n = Negotiation::default();
        assert_eq!(n.answered(), None, "nothing offered");
        assert!(n.want_offer());
        assert!(n.offered(vec!["tr_a".into()]), "the first offer");
        assert!(!n.want_offer(), "one is outstanding");
        assert_eq!(n.answered(), Some((vec!["tr_a".into()], true)), "agreed tr_a, offer again");
        assert_eq!(n, Negotiation::Stable);
        assert_eq!(n.answered(), None, "a second answer is refused");
        assert!(n.want_offer());
        assert!(!n.offered(vec![]), "not the first any more");
        assert_eq!(n.answered(), Some((vec![], false)));
    }
}
