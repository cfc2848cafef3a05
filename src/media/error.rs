//! What can go wrong in the media plane, as signaling needs to know it. The
//! text of webrtc-rs errors stays here (logged at debug level); signaling maps
//! each variant to a code and a message for the client (`signal::rooms_live`).

use super::Role;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// A command for a participant the worker does not know.
    #[error("the participant has not joined the room")]
    NotJoined,
    /// `subscribe-answer` with no subscriber offer outstanding.
    #[error("no subscribe-offer is waiting for an answer")]
    NoOfferPending,
    /// The publisher's SDP offer could not be applied or answered.
    #[error("the offer is not usable")]
    BadOffer,
    /// The subscriber's SDP answer could not be applied.
    #[error("the answer is not usable")]
    BadAnswer,
    /// webrtc-rs could not create a PeerConnection.
    #[error("cannot create a PeerConnection")]
    CannotCreate,
    /// A leg's ICE or DTLS failed after it was set up.
    #[error("the {0:?} PeerConnection failed")]
    Failed(Role),
}
