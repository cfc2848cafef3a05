//! The `/rtc` wire protocol: one JSON object per text frame, `{"type": ...}`.
//! [`ClientMessage`] is what clients may send, [`ServerEvent`] what the server
//! sends. Parsing keeps the client's `reqId` even when the rest is invalid, so
//! an `error` can echo it, and names a bad field by its path
//! (`publish-offer: tracks[1].mid: ...`) as the REST errors do ([`crate::json`]).

use crate::ids::{CallId, PeerId, RoomId, TrackId, UserId};
use crate::model::{
    CallMode, CallParticipant, CallSession, CallStatus, CallType, ChatMessage, Room, RoomParticipant, TrackInfo,
    TrackSource,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which of a participant's two PeerConnections a message is about (SPEC 4's
/// `pc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PcRole {
    Publisher,
    Subscriber,
}

impl From<PcRole> for crate::media::Role {
    fn from(r: PcRole) -> Self {
        match r {
            PcRole::Publisher => Self::Publisher,
            PcRole::Subscriber => Self::Subscriber,
        }
    }
}

impl From<crate::media::Role> for PcRole {
    fn from(r: crate::media::Role) -> Self {
        match r {
            crate::media::Role::Publisher => Self::Publisher,
            crate::media::Role::Subscriber => Self::Subscriber,
        }
    }
}

/// A parsed client frame: the message and the `reqId` it carried.
#[derive(Debug)]
pub struct Envelope {
    pub req_id: Option<Value>,
    pub msg: Result<ClientMessage, ParseError>,
}

#[derive(Debug, PartialEq)]
pub struct ParseError {
    pub code: &'static str,
    pub message: String,
}

/// Read as an externally tagged enum (`{"call-accept": {...}}`, which
/// [`parse`] builds from `type`): serde reads an internally tagged one from a
/// buffer that keeps no path, so errors could not name the field.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", rename_all_fields = "camelCase")]
pub enum ClientMessage {
    Ping {},
    Refresh {
        token: String,
    },
    CallInitiate {
        callee_id: UserId,
        call_type: CallType,
        #[serde(default)]
        room_name: Option<String>,
        #[serde(default)]
        mode: Option<CallMode>,
        #[serde(default)]
        sdp: Option<String>,
    },
    CallAccept {
        call_id: CallId,
    },
    CallAnswer {
        call_id: CallId,
        sdp: String,
    },
    IceCandidate {
        call_id: CallId,
        /// Checked as SPEC 4 wants it; what is relayed is `as_sent`.
        candidate: IceCandidate,
        /// The `candidate` object exactly as the client wrote it (set by
        /// [`parse`]): the other party gets it unchanged, with no member
        /// added (a `usernameFragment: null` it never sent) or dropped.
        #[serde(skip)]
        as_sent: Value,
    },
    CallSdpUpdate {
        call_id: CallId,
        sdp: String,
        sdp_type: SdpType,
    },
    CallReject {
        call_id: CallId,
        #[serde(default)]
        reason: Option<String>,
    },
    CallHangup {
        call_id: CallId,
    },
    CallStats {
        call_id: CallId,
        stats: Vec<Value>,
    },
    RoomJoin {
        room_id: RoomId,
        #[serde(default)]
        peer_id: Option<PeerId>,
    },
    PublishOffer {
        room_id: RoomId,
        sdp: String,
        tracks: Vec<TrackAnnouncement>,
    },
    SubscribeAnswer {
        room_id: RoomId,
        sdp: String,
    },
    RoomIceCandidate {
        room_id: RoomId,
        pc: PcRole,
        candidate: IceCandidate,
    },
    TrackMute {
        room_id: RoomId,
        track_id: TrackId,
        muted: bool,
    },
    TrackSubscribe {
        room_id: RoomId,
        track_id: TrackId,
        subscribe: bool,
        #[serde(default)]
        quality: Option<Quality>,
    },
    RoomLeave {
        room_id: RoomId,
    },
    RoomMessage {
        room_id: RoomId,
        text: String,
        #[serde(default)]
        to: Option<PeerId>,
    },
    ParticipantState {
        room_id: RoomId,
        #[serde(default)]
        hand_raised: Option<bool>,
    },
}

impl ClientMessage {
    /// The call a call message is about (what a cluster relays to the node
    /// holding the call, SPEC 13); `None` for the others.
    pub fn call_id(&self) -> Option<&CallId> {
        use ClientMessage::*;
        match self {
            CallAccept { call_id }
            | CallAnswer { call_id, .. }
            | IceCandidate { call_id, .. }
            | CallSdpUpdate { call_id, .. }
            | CallReject { call_id, .. }
            | CallHangup { call_id }
            | CallStats { call_id, .. } => Some(call_id),
            _ => None,
        }
    }

    /// The room a room message is about (what a cluster relays to the room's
    /// node, SPEC 13); `None` for the others.
    pub fn room_id(&self) -> Option<&RoomId> {
        use ClientMessage::*;
        match self {
            RoomJoin { room_id, .. }
            | PublishOffer { room_id, .. }
            | SubscribeAnswer { room_id, .. }
            | RoomIceCandidate { room_id, .. }
            | TrackMute { room_id, .. }
            | TrackSubscribe { room_id, .. }
            | RoomLeave { room_id }
            | RoomMessage { room_id, .. }
            | ParticipantState { room_id, .. } => Some(room_id),
            _ => None,
        }
    }
}

/// One entry of `publish-offer.tracks`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrackAnnouncement {
    pub mid: String,
    pub source: TrackSource,
    #[serde(default)]
    pub simulcast: Option<bool>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Low,
    Medium,
    High,
}

impl Quality {
    /// The highest simulcast layer this quality allows (SPEC 5.1).
    pub fn ceiling(self) -> crate::media::allocate::Layer {
        use crate::media::allocate::Layer;
        match self {
            Quality::Low => Layer::Q,
            Quality::Medium => Layer::H,
            Quality::High => Layer::F,
        }
    }
}

/// One entry of `connection-quality`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QualityUpdate {
    pub peer_id: PeerId,
    pub score: f64,
    pub rating: crate::analytics::score::Rating,
}

/// One entry of `active-speakers`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Speaker {
    pub peer_id: PeerId,
    /// 0..1, louder is higher.
    pub level: f64,
}

/// A trickled ICE candidate as the browser's `RTCIceCandidateInit` has it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default)]
    pub sdp_mid: Option<String>,
    #[serde(default, rename = "sdpMLineIndex")]
    pub sdp_m_line_index: Option<u32>,
    #[serde(default)]
    pub username_fragment: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SdpType {
    Offer,
    Answer,
}

fn bad_request(message: String) -> ParseError {
    ParseError { code: "bad-request", message }
}

/// Parse one text frame.
pub fn parse(text: &str) -> Envelope {
    let value = match crate::json::whole_value(text.as_bytes()) {
        Ok(v) => v,
        Err(e) => return Envelope { req_id: None, msg: Err(bad_request(format!("invalid JSON: {e}"))) },
    };
    let req_id = value.get("reqId").cloned();
    let missing_type = || bad_request("missing field `type` (a string)".into());
    let Value::Object(mut fields) = value else { return Envelope { req_id, msg: Err(missing_type()) } };
    let Some(Value::String(ty)) = fields.remove("type") else {
        return Envelope { req_id, msg: Err(missing_type()) };
    };
    fields.remove("reqId");
    let mut tagged = Value::Object(serde_json::Map::from_iter([(ty.clone(), Value::Object(fields))]));
    let msg = match crate::json::from_value::<ClientMessage>(&tagged) {
        Ok(mut m) => {
            if let ClientMessage::IceCandidate { as_sent, .. } = &mut m {
                *as_sent = tagged[&ty]["candidate"].take();
            }
            Ok(m)
        }
        Err(e) => {
            // The path starts with the message type itself.
            let field = crate::json::FieldError { path: e.path.into_iter().skip(1).collect(), message: e.message };
            Err(match field.path_text().as_str() {
                "" => bad_request(format!("{ty}: {}", field.message)),
                path => bad_request(format!("{ty}: {path}: {}", field.message)),
            })
        }
    };
    Envelope { req_id, msg }
}

/// Everything the server sends on `/rtc`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case", rename_all_fields = "camelCase")]
pub enum ServerEvent {
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Value>,
    },
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Value>,
        exp: u64,
    },
    Error {
        code: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Value>,
    },
    CallCreated {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Value>,
        call_session: CallSession,
        room_id: RoomId,
    },
    CallInitiate {
        call_id: CallId,
        from: UserId,
        call_type: CallType,
        #[serde(skip_serializing_if = "Option::is_none")]
        sdp: Option<String>,
        call_session: CallSession,
    },
    CallAccept {
        call_id: CallId,
        from: UserId,
        call_session: CallSession,
    },
    CallAnswer {
        call_id: CallId,
        from: UserId,
        sdp: String,
    },
    IceCandidate {
        call_id: CallId,
        from: UserId,
        /// As the sender wrote it.
        candidate: Value,
    },
    CallSdpUpdate {
        call_id: CallId,
        from: UserId,
        sdp: String,
        sdp_type: SdpType,
    },
    CallReject {
        call_id: CallId,
        from: UserId,
        reason: Option<String>,
    },
    CallHangup {
        call_id: CallId,
        from: UserId,
        reason: String,
    },
    CallParticipantUpdated {
        call_id: CallId,
        participant: CallParticipant,
    },
    CallEnded {
        call_id: CallId,
        status: CallStatus,
        end_reason: Option<String>,
    },
    CallAnsweredElsewhere {
        call_id: CallId,
    },
    RoomDeleted {
        room_id: RoomId,
    },
    RoomJoined {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Value>,
        room_id: RoomId,
        peer_id: PeerId,
        room: Room,
        ice_servers: Value,
    },
    PublishAnswer {
        room_id: RoomId,
        sdp: String,
    },
    SubscribeOffer {
        room_id: RoomId,
        sdp: String,
    },
    RoomIceCandidate {
        room_id: RoomId,
        pc: PcRole,
        candidate: IceCandidate,
    },
    ParticipantJoined {
        room_id: RoomId,
        participant: RoomParticipant,
    },
    ParticipantLeft {
        room_id: RoomId,
        peer_id: PeerId,
    },
    ParticipantUpdated {
        room_id: RoomId,
        participant: RoomParticipant,
    },
    TrackPublished {
        room_id: RoomId,
        peer_id: PeerId,
        track: TrackInfo,
    },
    TrackUnpublished {
        room_id: RoomId,
        peer_id: PeerId,
        track_id: TrackId,
    },
    ActiveSpeakers {
        room_id: RoomId,
        speakers: Vec<Speaker>,
    },
    /// SPEC 5.1 (dynacast): the publisher's layers some subscriber receives
    /// or may be moved to (every layer up to a ceiling).
    PublishLayers {
        room_id: RoomId,
        track_id: TrackId,
        layers: Vec<&'static str>,
    },
    /// SPEC 5.1: the simulcast layer forwarded to this subscriber changed.
    SubscriptionUpdate {
        room_id: RoomId,
        track_id: TrackId,
        /// `"q"`, `"h"`, `"f"`, or `null` when nothing is forwarded.
        layer: Option<&'static str>,
        reason: &'static str,
    },
    ConnectionQuality {
        room_id: RoomId,
        updates: Vec<QualityUpdate>,
    },
    /// SPEC 4 chat: `{roomId, id, from, text, to?, at}`.
    RoomMessage(ChatMessage),
    /// `reconnect: true` in a cluster (SPEC 13): other nodes serve the same
    /// service, so the client should connect again at once.
    ServerShutdown {
        #[serde(skip_serializing_if = "Option::is_none")]
        reconnect: Option<bool>,
    },
}

impl ServerEvent {
    pub fn error(code: &'static str, message: impl Into<String>, req_id: Option<Value>) -> Self {
        Self::Error { code, message: message.into(), req_id }
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server events always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_call_initiate_and_keeps_req_id() {
        let e = parse(r#"{"type":"call-initiate","reqId":7,"calleeId":"bob","callType":"video"}"#);
        assert_eq!(e.req_id, Some(Value::from(7)));
        assert!(matches!(e.msg, Ok(ClientMessage::CallInitiate { ref callee_id, .. }) if callee_id.as_str() == "bob"));
    }

    #[test]
    fn bad_field_is_named() {
        let e = parse(r#"{"type":"call-accept","reqId":"a"}"#);
        assert_eq!(e.req_id, Some(Value::from("a")));
        let err = e.msg.unwrap_err();
        assert_eq!(err.code, "bad-request");
        assert!(err.message.contains("callId"), "{}", err.message);

        let err = parse(r#"{"type":"call-initiate","calleeId":"b","callType":"hologram"}"#).msg.unwrap_err();
        assert!(err.message.contains("hologram"), "{}", err.message);
        let err = parse(r#"{"type":"teleport"}"#).msg.unwrap_err();
        assert!(err.message.contains("teleport"), "{}", err.message);
        assert_eq!(parse("not json").msg.unwrap_err().code, "bad-request");
        assert_eq!(parse("[1,2]").msg.unwrap_err().code, "bad-request");
        assert!(matches!(parse(r#"{"type":"room-join","roomId":"x"}"#).msg, Ok(ClientMessage::RoomJoin { .. })));
        let err = parse(r#"{"type":"publish-offer","roomId":"x","sdp":"v=0","tracks":[{"mid":"0","source":"hat"}]}"#)
            .msg
            .unwrap_err();
        assert!(err.message.contains("hat"), "{}", err.message);
        let err = parse(r#"{"type":"room-ice-candidate","roomId":"x","pc":"both","candidate":{"candidate":""}}"#)
            .msg
            .unwrap_err();
        assert!(err.message.contains("both"), "{}", err.message);
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named_with_its_path() {
        let cases = [
            (r#"{"type":"call-initiate","calleeId":"b","callType":5}"#, "call-initiate: callType: "),
            (r#"{"type":"call-accept","callId":7}"#, "call-accept: callId: "),
            (r#"{"type":"track-mute","roomId":"r","trackId":"t","muted":"yes"}"#, "track-mute: muted: "),
            (
                r#"{"type":"publish-offer","roomId":"r","sdp":"v=0","tracks":[{"mid":"0","source":"camera"},{"mid":1,"source":"camera"}]}"#,
                "publish-offer: tracks[1].mid: ",
            ),
            (
                r#"{"type":"room-ice-candidate","roomId":"r","pc":"publisher","candidate":{"candidate":"c","sdpMLineIndex":"0"}}"#,
                "room-ice-candidate: candidate.sdpMLineIndex: ",
            ),
        ];
        for (frame, prefix) in cases {
            let err = parse(frame).msg.unwrap_err();
            assert_eq!(err.code, "bad-request");
            assert!(err.message.starts_with(prefix), "{frame} -> {}", err.message);
        }
        // The expectation is said in words a client can act on.
        let err = parse(cases[0].0).msg.unwrap_err();
        assert!(err.message.contains("audio") && err.message.contains("video"), "{}", err.message);
    }

    #[test]
    fn server_events_are_camel_case_with_type() {
        let t = ServerEvent::CallAnsweredElsewhere { call_id: "c1".into() }.to_text();
        assert_eq!(t, r#"{"type":"call-answered-elsewhere","callId":"c1"}"#);
        let t = ServerEvent::error("bad-request", "x", Some(Value::from(3))).to_text();
        assert_eq!(t, r#"{"type":"error","code":"bad-request","message":"x","reqId":3}"#);
    }
}

#[cfg(test)]
mod fuzz_smoke {
    //! A cheap stand-in for the cargo-fuzz target (`fuzz/`): mutated frames
    //! never panic the parser and always yield a message or an error.
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn mutated_frames_never_panic() {
        let seeds = [
            r#"{"type":"call-initiate","calleeId":"bob","callType":"video","sdp":"v=0","reqId":1}"#,
            r#"{"type":"ice-candidate","callId":"c","candidate":{"candidate":"a","sdpMid":"0","sdpMLineIndex":0}}"#,
            r#"{"type":"call-stats","callId":"c","stats":[{"type":"inbound-rtp"}]}"#,
            r#"{"type":"refresh","token":"x"}"#,
            r#"{"type":"publish-offer","roomId":"r","sdp":"v=0","tracks":[{"mid":"0","source":"camera"}]}"#,
            r#"{"type":"room-ice-candidate","roomId":"r","pc":"publisher","candidate":{"candidate":"c","sdpMid":"0"}}"#,
            r#"{"type":"room-message","roomId":"r","text":"hi <b>","to":"peer_x"}"#,
            r#"{"type":"participant-state","roomId":"r","handRaised":true}"#,
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let mut b = seeds[rng.gen_range(0..seeds.len())].as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..b.len());
                match rng.gen_range(0..3) {
                    0 => b[i] = rng.gen(),
                    1 => {
                        b.remove(i);
                    }
                    _ => b.insert(i, b"{}[]\":,0"[rng.gen_range(0..8)]),
                }
            }
            let text = String::from_utf8_lossy(&b);
            let env = parse(&text);
            if let Err(e) = env.msg {
                assert!(!e.message.is_empty());
            }
        }
    }
}
