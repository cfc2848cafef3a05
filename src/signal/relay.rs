//! Room signaling relayed between the nodes of a cluster (SPEC 13: "any
//! node, same protocol").
//!
//! A client connected to node A joins a room whose media is on node B. A's
//! session sends every message the client writes about that room to B
//! ([`Relayed::Up`], the text as the client wrote it, with the token's
//! claims A verified). On B a *remote connection* stands in for the client:
//! it applies each message as a local session would, and everything B sends
//! that connection (replies and room events) goes back to A
//! ([`Relayed::Down`]) and from there to the client's socket. Replies and
//! events leave B in the order a local session would write them (one task per
//! remote connection writes both), and the link keeps the order of what one
//! task sends, so the client sees exactly the single-node protocol. Media
//! never passes A: B's answers carry B's media address.
//!
//! The link is a [`RelayLink`]; the cluster's is Redis pub/sub (`app` wires
//! it), so nothing here knows Redis. Nodes trust what comes over it (the
//! claims of an `Up` or an `Ask` are not verified again): whoever can publish
//! on the cluster's Redis can act as any user, as whoever can write to it can
//! rewrite any call. Keep it on a private network, with a password. A remote connection ends when A says the
//! client's socket closed ([`Relayed::Closed`]), as a local one does on
//! close: the seat is kept for the reconnect grace.

use super::hub::Outbound;
use super::session::{Limits, State};
use super::{Actor, Signaling};
use crate::auth::Claims;
use crate::ids::{ConnId, NodeId, UserId};
use crate::store::StoreError;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// One message between nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Relayed {
    /// A client of node `from` wrote `text` about a room on the receiving node.
    Up {
        from: NodeId,
        conn: ConnId,
        claims: Claims,
        text: String,
        /// When `from` sent it (unix µs), for `confer_cluster_relay_seconds`.
        sent_at_us: u64,
    },
    /// What the receiving node's client `conn` is to be sent.
    Down {
        conn: ConnId,
        user: UserId,
        out: DownFrame,
    },
    /// The client `conn` of node `from` closed its socket.
    Closed {
        from: NodeId,
        conn: ConnId,
    },
    /// A REST action for the receiving node ([`super::ask`]); answered by
    /// [`Relayed::Answer`] with the same `id`.
    Ask {
        from: NodeId,
        id: u64,
        claims: Claims,
        ask: super::ask::Ask,
        sent_at_us: u64,
    },
    Answer {
        id: u64,
        result: Result<serde_json::Value, super::ask::Refusal>,
    },
    /// To every node: a call notification for `user`'s connections there
    /// ([`super::hub::Hub::notify_from_peer`]).
    Notify {
        from: NodeId,
        user: UserId,
        via: super::effects::Via,
        text: String,
    },
    /// To every node: `user` has sockets on `from` from now on, or none.
    Presence {
        from: NodeId,
        user: UserId,
        online: bool,
    },
    /// To every node: `from` has just started; each tells it which users
    /// have sockets there ([`Relayed::Presence`]).
    PresenceQuery {
        from: NodeId,
    },
    /// To every node: node `from` deleted `room` (`DELETE /rooms/:id`), so
    /// whoever holds it ends it for its participants and forgets it.
    RoomDeleted {
        from: NodeId,
        room: crate::ids::RoomId,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownFrame {
    Text(String),
    /// Close the client's socket with this code (the room's node is stopping).
    Close(u16),
}

/// How relayed messages reach another node.
pub trait RelayLink: Send + Sync {
    /// This node.
    fn node(&self) -> &NodeId;

    /// Send `msg` to node `to`, in order with what this task sent before;
    /// `Err(Unavailable)` when `to` does not listen (it is gone).
    fn send<'a>(&'a self, to: &'a NodeId, msg: &'a Relayed) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Send `msg` to every node, this one included.
    fn broadcast<'a>(&'a self, msg: &'a Relayed) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// The remote connections of this node: other nodes' clients in rooms placed
/// here, each served by its own task.
#[derive(Default)]
pub struct RemoteConns {
    conns: Mutex<HashMap<ConnId, mpsc::Sender<Up>>>,
    /// Asks of other nodes waiting for their answer, by id.
    asks: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Answer>>>,
    next_ask: std::sync::atomic::AtomicU64,
    /// Nodes the last message to could not be sent (Redis gone, the node
    /// dead): logged when a node becomes unreachable and when it answers
    /// again, not per message.
    unreachable: Mutex<std::collections::HashSet<NodeId>>,
}

type Answer = Result<serde_json::Value, super::ask::Refusal>;

impl RemoteConns {
    /// A new ask's id and where its answer will come.
    pub(super) fn expect_answer(&self) -> (u64, tokio::sync::oneshot::Receiver<Answer>) {
        let id = self.next_ask.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.asks.lock().insert(id, tx);
        (id, rx)
    }

    pub(super) fn forget_answer(&self, id: u64) {
        self.asks.lock().remove(&id);
    }

    /// Whether a message to `node` could be sent; true when that changed
    /// (to be logged).
    pub(super) fn reached(&self, node: &NodeId, sent: bool) -> bool {
        let mut unreachable = self.unreachable.lock();
        if sent {
            !unreachable.is_empty() && unreachable.remove(node)
        } else {
            unreachable.insert(node.clone())
        }
    }
}

/// What a remote connection's task takes: the claims, the text, when sent.
type Up = (Claims, String, u64);

pub fn unix_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Signaling {
    /// `DELETE /rooms/:id`, ended for its participants on every node.
    pub async fn delete_room(&self, actor: &Actor, id: &crate::ids::RoomId) -> Result<(), super::SignalError> {
        self.rooms.delete(actor, id).await?;
        if let Some(link) = &self.relay {
            let msg = Relayed::RoomDeleted { from: link.node().clone(), room: id.clone() };
            if let Err(e) = link.broadcast(&msg).await {
                tracing::warn!(room = %id, error = %e, "cluster: could not tell the other nodes a room was deleted");
            }
        }
        Ok(())
    }

    /// A message from another node.
    pub fn on_relayed(self: &Arc<Self>, msg: Relayed) {
        let Some(link) = self.relay.clone() else { return };
        match msg {
            Relayed::Up { from, conn, claims, text, sent_at_us } => {
                let mut conns = self.remote.conns.lock();
                let tx = conns.entry(conn.clone()).or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(super::hub::QUEUE_DEPTH);
                    let user = claims.sub.clone();
                    tokio::spawn(serve_remote(self.clone(), link, from, conn.clone(), user, claims.clone(), rx));
                    tx
                });
                if tx.try_send((claims, text, sent_at_us)).is_err() {
                    tracing::warn!(%conn, "cluster: a relayed client's messages are not being taken; dropping it");
                    conns.remove(&conn);
                }
            }
            Relayed::Closed { conn, .. } => {
                self.remote.conns.lock().remove(&conn);
            }
            Relayed::Ask { from, id, claims, ask, sent_at_us } => self.on_ask(from, id, claims, ask, sent_at_us),
            Relayed::Answer { id, result } => {
                if let Some(tx) = self.remote.asks.lock().remove(&id) {
                    let _ = tx.send(result);
                }
            }
            Relayed::Notify { from, user, via, text } => {
                if &from != link.node() {
                    self.hub.notify_from_peer(&user, &via, text.into());
                }
            }
            Relayed::Presence { from, user, online } => {
                if &from == link.node() {
                    return;
                }
                if online {
                    self.hub.presence_elsewhere(&user, &from, true);
                    self.calls.user_online(&user);
                } else if self.hub.presence_elsewhere(&user, &from, false) {
                    self.calls.user_offline(&user);
                }
            }
            Relayed::PresenceQuery { from } => {
                if &from == link.node() {
                    return;
                }
                let users = self.hub.local_users();
                tokio::spawn(async move {
                    for user in users {
                        let msg = Relayed::Presence { from: link.node().clone(), user, online: true };
                        if link.send(&from, &msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Relayed::RoomDeleted { from, room } => {
                if &from != link.node() {
                    let signal = self.clone();
                    tokio::spawn(async move { signal.rooms.deleted(&room).await });
                }
            }
            Relayed::Down { conn, user, out } => {
                let out = match out {
                    DownFrame::Text(t) => Outbound::Text(t.into()),
                    DownFrame::Close(code) => Outbound::Close(code, "the room's cluster node is stopping"),
                };
                self.hub.deliver(&user, &conn, out);
            }
        }
    }
}

/// Serve one remote connection until its node says it closed.
async fn serve_remote(
    signal: Arc<Signaling>,
    link: Arc<dyn RelayLink>,
    from: NodeId,
    conn: ConnId,
    user: UserId,
    claims: Claims,
    mut inbox: mpsc::Receiver<Up>,
) {
    tracing::debug!(%user, %conn, node = %from, "cluster: relayed client connected");
    let mut events = signal.hub.register_remote(&user, conn.clone());
    let mut state = State::remote(Actor { claims, conn: Some(conn.clone()) });
    let limits = Limits::default();
    let down = |out: DownFrame| Relayed::Down { conn: conn.clone(), user: user.clone(), out };
    'serve: loop {
        tokio::select! {
            msg = inbox.recv() => {
                let Some((claims, text, sent_at_us)) = msg else { break };
                let waited = unix_micros().saturating_sub(sent_at_us);
                signal.metrics.cluster_relay_seconds.observe(waited as f64 / 1e6);
                state.actor.claims = claims;
                let step = state.on_text(&text, &signal, &limits).await;
                for ev in step.replies {
                    if let Err(e) = link.send(&from, &down(DownFrame::Text(ev.to_text()))).await {
                        tracing::warn!(%conn, node = %from, error = %e, "cluster: cannot reach a relayed client's node");
                        break 'serve;
                    }
                }
            }
            out = events.recv() => {
                let frame = match out {
                    Some(Outbound::Text(t)) => DownFrame::Text(t.to_string()),
                    Some(Outbound::Close(code, _)) => DownFrame::Close(code),
                    None => break,
                };
                if let Err(e) = link.send(&from, &down(frame)).await {
                    tracing::warn!(%conn, node = %from, error = %e, "cluster: cannot reach a relayed client's node");
                    break;
                }
            }
        }
    }
    signal.remote.conns.lock().remove(&conn);
    signal.hub.unregister_remote(&user, &conn);
    signal.rooms.conn_closed(&conn);
    tracing::debug!(%user, %conn, node = %from, "cluster: relayed client gone");
}

/// What a session relays: the rooms of its connection on other nodes.
#[derive(Default)]
pub(super) struct Relaying {
    /// Room → the node it is relayed to.
    rooms: HashMap<crate::ids::RoomId, NodeId>,
    /// Every node this connection relayed to (each is told when it closes).
    nodes: Vec<NodeId>,
}

impl Relaying {
    pub(super) fn node_of(&self, room: &crate::ids::RoomId) -> Option<&NodeId> {
        self.rooms.get(room)
    }

    pub(super) fn start(&mut self, room: crate::ids::RoomId, node: NodeId) {
        if !self.nodes.contains(&node) {
            self.nodes.push(node.clone());
        }
        self.rooms.insert(room, node);
    }

    pub(super) fn stop(&mut self, room: &crate::ids::RoomId) {
        self.rooms.remove(room);
    }

    /// A call message went to `node` (it is told when the socket closes).
    pub(super) fn used(&mut self, node: NodeId) {
        if !self.nodes.contains(&node) {
            self.nodes.push(node);
        }
    }

    /// The socket closed: tell every node it relayed to.
    pub(super) async fn closed(self, link: &dyn RelayLink, conn: &ConnId) {
        for node in &self.nodes {
            let msg = Relayed::Closed { from: link.node().clone(), conn: conn.clone() };
            if let Err(e) = link.send(node, &msg).await {
                tracing::debug!(%node, error = %e, "cluster: could not tell a room's node that a client left");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_messages_read_back_as_written() {
        let claims = Claims {
            sub: "bob".into(),
            exp: 1,
            iat: None,
            name: None,
            admin: false,
            rooms: vec![],
            can_publish: false,
            can_subscribe: true,
        };
        for msg in [
            Relayed::Up {
                from: "node-a".into(),
                conn: "conn_1".into(),
                claims: claims.clone(),
                text: r#"{"type":"room-join","roomId":"r"}"#.into(),
                sent_at_us: 7,
            },
            Relayed::Down { conn: "conn_1".into(), user: "bob".into(), out: DownFrame::Close(1001) },
            Relayed::Closed { from: "node-a".into(), conn: "conn_1".into() },
            Relayed::RoomDeleted { from: "node-a".into(), room: "room_1".into() },
            Relayed::Presence { from: "node-a".into(), user: "bob".into(), online: false },
            Relayed::PresenceQuery { from: "node-b".into() },
            Relayed::Ask {
                from: "node-a".into(),
                id: 3,
                claims: claims.clone(),
                ask: crate::signal::ask::Ask::CallReject { call: "call_1".into(), reason: Some("busy".into()) },
                sent_at_us: 9,
            },
            Relayed::Answer {
                id: 3,
                result: Err(crate::signal::ask::Refusal { code: "conflict".into(), message: "call is ended".into() }),
            },
            Relayed::Answer { id: 4, result: Ok(serde_json::json!({"peerId": "peer_1"})) },
            Relayed::Notify {
                from: "node-a".into(),
                user: "bob".into(),
                via: crate::signal::effects::Via::AllExcept(Some("conn_2".into())),
                text: "{}".into(),
            },
        ] {
            let text = serde_json::to_string(&msg).unwrap();
            assert_eq!(serde_json::from_str::<Relayed>(&text).unwrap(), msg, "{text}");
        }
    }

    #[test]
    fn an_unreachable_node_is_reported_on_change_only() {
        let r = RemoteConns::default();
        let (b, c) = (NodeId::from("node-b".to_owned()), NodeId::from("node-c".to_owned()));
        assert!(!r.reached(&b, true), "working from the start: nothing to say");
        assert!(r.reached(&b, false), "the first failure");
        assert!(!r.reached(&b, false), "the next ones are quiet");
        assert!(r.reached(&c, false), "another node is news");
        assert!(r.reached(&b, true), "b works again");
        assert!(!r.reached(&b, true));
        assert!(!r.reached(&c, false), "c still quiet");
    }
}
