//! One `/rtc` connection: reads client frames, applies them to the services,
//! writes replies and queued events, keeps the heartbeat, the rate and size
//! limits and the token's lifetime (SPEC 2, 4, 12).
//!
//! Generic over any `Stream + Sink` of [`Frame`]s, so tests can drive it with
//! channels and `http` adapts axum's WebSocket to it.

use super::calls::NewCall;
use super::hub::Outbound;
use super::messages::{self, ClientMessage, ServerEvent};
use super::ratelimit::TokenBucket;
use super::relay::Relayed;
use super::{Actor, SignalError, Signaling};
use crate::auth::{self, AuthError, Claims};
use crate::ids::{ConnId, NodeId};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};

/// A WebSocket frame as the session sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// The limits of SPEC 4 and 12, adjustable for tests.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_message: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub token_grace: Duration,
    pub rate_per_sec: f64,
    pub burst: f64,
    /// Oversized frames tolerated before close 1008.
    pub max_oversized: u32,
    /// Rate-limited messages in a row tolerated before close 1008.
    pub max_rate_limited: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message: 64 * 1024,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            token_grace: Duration::from_secs(30),
            rate_per_sec: 50.0,
            burst: 100.0,
            max_oversized: 20,
            max_rate_limited: 50,
        }
    }
}

pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// How long a closing session waits for the client's close frame.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// Instant at which `exp` (unix seconds) plus the JWT leeway passes.
fn expiry_instant(exp: u64) -> Instant {
    let left = (exp + auth::LEEWAY_SECS).saturating_sub(auth::unix_now());
    Instant::now() + Duration::from_secs(left)
}

/// Serve one connection until it closes.
pub async fn run<S, E>(socket: S, claims: Claims, signal: &Signaling, limits: &Limits)
where
    S: Stream<Item = Result<Frame, E>> + Sink<Frame> + Unpin,
{
    let conn = ConnId::random();
    let user = claims.sub.clone();
    let mut rx = signal.hub.register(&user, conn.clone());
    signal.metrics.ws_connections.inc();
    signal.calls.user_online(&user);
    tracing::debug!(%user, %conn, "websocket open");

    let (mut sink, mut stream) = socket.split();
    let mut state = State::new(Actor { claims, conn: Some(conn.clone()) }, limits, signal.relay.is_some());
    let mut ping = interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let mut token_deadline = expiry_instant(state.actor.claims.exp);
    let mut token_warned = false;

    let close: Option<(u16, &str)> = loop {
        tokio::select! {
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else { break None };
                last_seen = Instant::now();
                match frame {
                    Frame::Text(text) => {
                        let step = state.on_text(&text, signal, limits).await;
                        for ev in step.replies {
                            if sink.send(Frame::Text(ev.to_text())).await.is_err() {
                                break;
                            }
                        }
                        if let Some(exp) = step.refreshed {
                            token_deadline = expiry_instant(exp);
                            token_warned = false;
                        }
                        if let Some(c) = step.close {
                            break Some(c);
                        }
                    }
                    Frame::Binary(_) => {
                        let ev = ServerEvent::error("bad-request", "binary frames are not supported; send JSON text", None);
                        let _ = sink.send(Frame::Text(ev.to_text())).await;
                    }
                    Frame::Ping(_) | Frame::Pong(_) => {}
                    Frame::Close(_) => break None,
                }
            }
            out = rx.recv() => match out {
                Some(Outbound::Text(t)) => {
                    if sink.send(Frame::Text(t.to_string())).await.is_err() {
                        break None;
                    }
                }
                Some(Outbound::Close(code, why)) => break Some((code, why)),
                None => break Some((CLOSE_POLICY, "too slow: the client is not reading its messages")),
            },
            _ = ping.tick() => {
                if last_seen.elapsed() >= limits.idle_timeout {
                    break Some((CLOSE_GOING_AWAY, "idle: nothing received for too long"));
                }
                if sink.send(Frame::Ping(Vec::new())).await.is_err() {
                    break None;
                }
            }
            _ = sleep_until(token_deadline) => {
                if token_warned {
                    break Some((CLOSE_TOKEN_EXPIRED, "token expired"));
                }
                token_warned = true;
                token_deadline = Instant::now() + limits.token_grace;
                let ev = ServerEvent::error(
                    "token-expired",
                    format!("access token expired: send {{\"type\":\"refresh\",\"token\":...}} within {}s", limits.token_grace.as_secs()),
                    None,
                );
                let _ = sink.send(Frame::Text(ev.to_text())).await;
            }
        }
    };
    signal.metrics.ws_connections.dec();
    if signal.hub.unregister(&user, &conn) && !signal.hub.is_online(&user) {
        signal.calls.user_offline(&user);
    }
    signal.rooms.conn_closed(&conn);
    if let Some(link) = &signal.relay {
        std::mem::take(&mut state.relaying).closed(link.as_ref(), &conn).await;
    }
    tracing::debug!(%user, %conn, ?close, "websocket closed");

    if let Some((code, why)) = close {
        let _ = sink.send(Frame::Close(Some((code, why.to_owned())))).await;
        // Wait for the client's close (RFC 6455 5.5.1) before dropping the
        // socket: closing with unread input makes the kernel send a reset,
        // which destroys our close frame and the replies before it.
        let _ = tokio::time::timeout(CLOSE_DRAIN, async {
            while let Some(Ok(f)) = stream.next().await {
                if matches!(f, Frame::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    let _ = sink.close().await;
}

/// One connection's state between frames: a local session's, or a remote
/// connection's on a room's node ([`super::relay`]).
pub(super) struct State {
    pub(super) actor: Actor,
    bucket: TokenBucket,
    oversized: u32,
    rate_limited: u32,
    /// Whether room messages may be relayed to another node (a local session
    /// in a cluster; never a remote connection, so nothing is relayed twice).
    may_relay: bool,
    pub(super) relaying: super::relay::Relaying,
}

/// What one client frame led to.
#[derive(Default)]
pub(super) struct Step {
    pub(super) replies: Vec<ServerEvent>,
    close: Option<(u16, &'static str)>,
    /// New token expiry after a successful `refresh`.
    refreshed: Option<u64>,
}

impl State {
    fn new(actor: Actor, limits: &Limits, may_relay: bool) -> Self {
        State {
            actor,
            bucket: TokenBucket::new(limits.rate_per_sec, limits.burst, std::time::Instant::now()),
            oversized: 0,
            rate_limited: 0,
            may_relay,
            relaying: Default::default(),
        }
    }

    /// A remote connection's state (its node already limited its rate).
    pub(super) fn remote(actor: Actor) -> Self {
        Self::new(actor, &Limits::default(), false)
    }

    pub(super) async fn on_text(&mut self, text: &str, signal: &Signaling, limits: &Limits) -> Step {
        let mut step = Step::default();
        if text.len() > limits.max_message {
            self.oversized += 1;
            step.replies.push(ServerEvent::error(
                "too-large",
                format!("message of {} bytes is over the {} byte limit", text.len(), limits.max_message),
                None,
            ));
            if self.oversized >= limits.max_oversized {
                step.close = Some((CLOSE_POLICY, "too many oversized messages"));
            }
            return step;
        }
        let env = messages::parse(text);
        if !self.bucket.take(std::time::Instant::now()) {
            self.rate_limited += 1;
            step.replies.push(ServerEvent::error(
                "rate-limited",
                "more than 50 messages per second; slow down",
                env.req_id,
            ));
            if self.rate_limited >= limits.max_rate_limited {
                step.close = Some((CLOSE_POLICY, "rate limit exceeded repeatedly"));
            }
            return step;
        }
        self.rate_limited = 0;
        let req_id = env.req_id;
        let msg = match env.msg {
            Ok(m) => m,
            Err(e) => {
                step.replies.push(ServerEvent::error(e.code, e.message, req_id));
                return step;
            }
        };
        let started = std::time::Instant::now();
        match self.dispatch(msg, text, req_id.clone(), signal, &mut step).await {
            Ok(Some(reply)) => step.replies.push(reply),
            Ok(None) => {}
            Err(e) => {
                if let SignalError::Store(inner) = &e {
                    tracing::error!(error = %inner, user = %self.actor.user(), "store failure on /rtc");
                }
                step.replies.push(ServerEvent::error(e.code(), e.public_message(), req_id));
            }
        }
        signal.metrics.signal_relay_seconds.observe(started.elapsed().as_secs_f64());
        step
    }

    /// Send the client's `text` about `room` to the room's `node`.
    async fn relay(&self, signal: &Signaling, node: &NodeId, text: &str) -> Result<(), SignalError> {
        let Some(link) = &signal.relay else { return Err(SignalError::Unavailable("no cluster".into())) };
        let msg = Relayed::Up {
            from: link.node().clone(),
            conn: self.actor.conn.clone().unwrap_or_else(ConnId::random),
            claims: self.actor.claims.clone(),
            text: text.to_owned(),
            sent_at_us: super::relay::unix_micros(),
        };
        let sent = link.send(node, &msg).await;
        if signal.remote.reached(node, sent.is_ok()) {
            match &sent {
                Err(e) => {
                    tracing::warn!(%node, error = %e, "cluster: cannot relay to a room's node (logged again when it answers)")
                }
                Ok(()) => tracing::info!(%node, "cluster: another node is reachable again"),
            }
        }
        sent.map_err(|_| {
            SignalError::Unavailable(format!(
                "the cluster node serving this room ({node}) does not answer; send room-join again to be placed anew"
            ))
        })
    }

    async fn dispatch(
        &mut self,
        msg: ClientMessage,
        text: &str,
        req_id: Option<Value>,
        signal: &Signaling,
        step: &mut Step,
    ) -> Result<Option<ServerEvent>, SignalError> {
        // A room on another node (SPEC 13): its node answers, through us.
        if let Some(room) = msg.room_id().filter(|_| !matches!(msg, ClientMessage::RoomJoin { .. })) {
            if let Some(node) = self.relaying.node_of(room).cloned() {
                self.relay(signal, &node, text).await?;
                if matches!(msg, ClientMessage::RoomLeave { .. }) {
                    self.relaying.stop(room);
                }
                return Ok(None);
            }
        }
        // A call held by another node: its node decides, through us.
        if let Some(call) = msg.call_id().filter(|_| self.may_relay) {
            // Asked every time, not remembered: a call moves when its node
            // goes away and another takes it over.
            let node = signal.calls.held_elsewhere(call).await?;
            if let Some(node) = node.filter(|n| signal.relay.as_ref().is_some_and(|l| l.node() != n)) {
                self.relay(signal, &node, text).await?;
                self.relaying.used(node);
                return Ok(None);
            }
        }
        let calls = &signal.calls;
        let a = &self.actor;
        Ok(match msg {
            ClientMessage::Ping {} => Some(ServerEvent::Pong { req_id }),
            ClientMessage::Refresh { token } => match signal.keys.verify(&token) {
                Ok(c) if c.sub != self.actor.claims.sub => {
                    return Err(SignalError::Forbidden("refresh token is for a different user".into()))
                }
                Ok(c) => {
                    let exp = c.exp;
                    self.actor.claims = c;
                    step.refreshed = Some(exp);
                    Some(ServerEvent::Refreshed { req_id, exp })
                }
                Err(AuthError::Expired) => {
                    return Ok(Some(ServerEvent::error("token-expired", "refresh token is expired", req_id)))
                }
                Err(e) => return Ok(Some(ServerEvent::error("unauthorized", e.to_string(), req_id))),
            },
            ClientMessage::CallInitiate { callee_id, call_type, room_name, mode, sdp } => {
                let req = NewCall {
                    caller_id: a.user().clone(),
                    callee_id,
                    call_type,
                    room_name,
                    mode: mode.unwrap_or_default(),
                    sdp,
                };
                let s = calls.create(a, req).await?;
                Some(ServerEvent::CallCreated { req_id, room_id: s.room_id.clone(), call_session: s })
            }
            ClientMessage::CallAccept { call_id } => calls.accept(a, &call_id).await.map(|_| None)?,
            ClientMessage::CallAnswer { call_id, sdp } => calls.answer(a, &call_id, sdp).await.map(|_| None)?,
            ClientMessage::IceCandidate { call_id, as_sent, .. } => {
                calls.ice_candidate(a, &call_id, as_sent).await.map(|_| None)?
            }
            ClientMessage::CallSdpUpdate { call_id, sdp, sdp_type } => {
                calls.sdp_update(a, &call_id, sdp, sdp_type).await.map(|_| None)?
            }
            ClientMessage::CallReject { call_id, reason } => calls.reject(a, &call_id, reason).await.map(|_| None)?,
            ClientMessage::CallHangup { call_id } => calls.hangup(a, &call_id).await.map(|_| None)?,
            ClientMessage::CallStats { call_id, stats } => {
                calls.record_stats(a, &call_id, stats).await.map(|_| None)?
            }
            ClientMessage::RoomJoin { room_id, peer_id } => {
                match signal.rooms.claim(&room_id).await {
                    Err(SignalError::OnOtherNode { node, .. }) if self.may_relay => {
                        self.relay(signal, &node, text).await?;
                        self.relaying.start(room_id, node);
                        return Ok(None);
                    }
                    placed => placed?,
                }
                self.relaying.stop(&room_id);
                let a = &self.actor;
                if let Some((call, name, parties)) = calls.sfu_room(a, &room_id) {
                    signal.rooms.ensure_call_room(&room_id, &call, name.as_deref(), parties);
                }
                match signal.rooms.join_ws(a, &room_id, peer_id).await? {
                    ServerEvent::RoomJoined { room_id, peer_id, room, ice_servers, .. } => {
                        Some(ServerEvent::RoomJoined { req_id, room_id, peer_id, room, ice_servers })
                    }
                    other => Some(other),
                }
            }
            ClientMessage::PublishOffer { room_id, sdp, tracks } => {
                signal.rooms.publish(a, &room_id, sdp, tracks).map(|_| None)?
            }
            ClientMessage::SubscribeAnswer { room_id, sdp } => {
                signal.rooms.subscribe_answer(a, &room_id, sdp).map(|_| None)?
            }
            ClientMessage::RoomIceCandidate { room_id, pc, candidate } => {
                signal.rooms.ice_candidate(a, &room_id, pc, candidate).map(|_| None)?
            }
            ClientMessage::TrackMute { room_id, track_id, muted } => {
                signal.rooms.track_mute(a, &room_id, &track_id, muted).map(|_| None)?
            }
            ClientMessage::TrackSubscribe { room_id, track_id, subscribe, quality } => {
                let ceiling = quality.map(super::messages::Quality::ceiling);
                signal.rooms.track_subscribe(a, &room_id, track_id, subscribe, ceiling).map(|_| None)?
            }
            ClientMessage::RoomLeave { room_id } => signal.rooms.leave_ws(a, &room_id).await.map(|_| None)?,
            ClientMessage::RoomMessage { room_id, text, to } => {
                signal.rooms.send_message(a, &room_id, text, to).map(|_| None)?
            }
            ClientMessage::ParticipantState { room_id, hand_raised } => {
                signal.rooms.participant_state(a, &room_id, hand_raised).map(|_| None)?
            }
        })
    }
}

/// The session driven over channels (no socket, no HTTP): a client is a pair
/// of queues of [`Frame`]s, and the services are the real ones on a sled
/// store in a temp dir.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Claims;
    use serde_json::{json, Value};
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use tokio::sync::mpsc;

    /// The session's side of a client: frames in, frames out.
    struct Pipe {
        from_client: mpsc::UnboundedReceiver<Frame>,
        to_client: mpsc::UnboundedSender<Frame>,
    }

    impl Stream for Pipe {
        type Item = Result<Frame, ()>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.from_client.poll_recv(cx).map(|f| f.map(Ok))
        }
    }

    impl Sink<Frame> for Pipe {
        type Error = ();
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, f: Frame) -> Result<(), ()> {
            self.to_client.send(f).map_err(drop)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A client: what it sends, what it receives, and its session's task.
    struct Client {
        tx: mpsc::UnboundedSender<Frame>,
        rx: mpsc::UnboundedReceiver<Frame>,
        session: tokio::task::JoinHandle<()>,
    }

    impl Client {
        fn send(&self, v: Value) {
            self.tx.send(Frame::Text(v.to_string())).unwrap();
        }

        /// The next text frame, as JSON.
        async fn recv(&mut self) -> Value {
            loop {
                let f = tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await.unwrap().unwrap();
                if let Frame::Text(t) = f {
                    return serde_json::from_str(&t).unwrap();
                }
            }
        }
    }

    fn connect(signal: &Arc<Signaling>, user: &str) -> Client {
        let (tx, from_client) = mpsc::unbounded_channel();
        let (to_client, rx) = mpsc::unbounded_channel();
        let signal = signal.clone();
        let claims = Claims::new(user.into(), Duration::from_secs(3600));
        let session = tokio::spawn(async move {
            run(Pipe { from_client, to_client }, claims, &signal, &Limits::default()).await;
        });
        Client { tx, rx, session }
    }

    #[tokio::test]
    async fn replies_carry_the_req_id_and_bad_frames_get_errors_naming_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let signal = crate::signal::testing::signaling(dir.path()).await;
        let mut c = connect(&signal, "alice");
        c.send(json!({"type": "ping", "reqId": 7}));
        assert_eq!(c.recv().await, json!({"type": "pong", "reqId": 7}));
        c.tx.send(Frame::Text("{not json".into())).unwrap();
        let e = c.recv().await;
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("bad-request")), "{e}");
        c.send(json!({"type": "call-accept", "reqId": "m"}));
        let e = c.recv().await;
        assert!(e["reqId"] == "m" && e["message"].as_str().unwrap().contains("callId"), "{e}");
        c.tx.send(Frame::Binary(vec![1, 2, 3])).unwrap();
        assert!(c.recv().await["message"].as_str().unwrap().contains("binary"));
        c.tx.send(Frame::Text("x".repeat(Limits::default().max_message + 1))).unwrap();
        assert_eq!(c.recv().await["code"], "too-large");
        // The client's close ends the session and its connection.
        c.tx.send(Frame::Close(None)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), c.session).await.unwrap().unwrap();
        assert!(!signal.hub.is_online(&"alice".into()));
    }

    #[tokio::test]
    async fn a_call_between_two_sessions_reaches_the_callee_through_the_hub() {
        let dir = tempfile::tempdir().unwrap();
        let signal = crate::signal::testing::signaling(dir.path()).await;
        let (mut alice, mut bob) = (connect(&signal, "alice"), connect(&signal, "bob"));
        // Both registered (a ping answered means the session is running).
        for c in [&mut alice, &mut bob] {
            c.send(json!({"type": "ping"}));
            c.recv().await;
        }
        alice.send(json!({"type": "call-initiate", "calleeId": "bob", "callType": "audio", "reqId": 1}));
        let created = alice.recv().await;
        assert_eq!((created["type"].as_str(), created["reqId"].as_i64()), (Some("call-created"), Some(1)), "{created}");
        let id = created["callSession"]["id"].as_str().unwrap().to_owned();
        let ring = bob.recv().await;
        assert_eq!(
            (ring["type"].as_str(), ring["callId"].as_str()),
            (Some("call-initiate"), Some(id.as_str())),
            "{ring}"
        );
        bob.send(json!({"type": "call-accept", "callId": id}));
        let m = alice.recv().await;
        assert_eq!(
            (m["type"].as_str(), m["callSession"]["status"].as_str()),
            (Some("call-accept"), Some("active")),
            "{m}"
        );
        // The hub closing every socket ends both sessions with a close frame.
        signal.hub.close_all(CLOSE_GOING_AWAY, "server shutdown");
        for c in [&mut alice, &mut bob] {
            let f = loop {
                match tokio::time::timeout(Duration::from_secs(5), c.rx.recv()).await.unwrap() {
                    Some(Frame::Close(f)) => break f,
                    Some(_) => continue,
                    None => panic!("no close frame"),
                }
            };
            assert_eq!(f.map(|(code, _)| code), Some(CLOSE_GOING_AWAY));
            c.tx.send(Frame::Close(None)).unwrap();
        }
    }
}
