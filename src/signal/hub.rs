//! Who is connected: every open `/rtc` connection, by user, with the channel
//! that feeds it. Services send events here; the session task owns the socket.
//!
//! An event is serialised once and shared by every connection it goes to. A
//! connection whose queue is full (a client that stopped reading) is dropped
//! from the hub, which closes its session, rather than letting memory grow.
//!
//! [`Hub::notify`] is where the services' notifications
//! ([`super::effects::Effect::Notify`]) are delivered: to this process's
//! sessions today; delivery to a user's sessions on other nodes plugs in there.
//!
//! In a cluster a notification also goes to the user's connections on the
//! other nodes: the hub queues it for the fan-out ([`Hub::set_fanout`]),
//! whose one task publishes it, in order, to every node, and each node
//! delivers it to its own connections of that user ([`Hub::notify_from_peer`]).
//! A notification for one device (`Via::Device`) that is a connection of
//! this node is not sent further.
//!
//! In a cluster the hub also holds *remote* connections: clients of other
//! nodes in rooms placed here ([`super::relay`]). Room events
//! ([`Hub::send`]) reach them like local ones; call notifications do not
//! (they are the user's own node's business), nor do broadcasts (shutdown:
//! only the ones in a room here are told, [`Hub::send_remote`]), and a
//! remote connection does not make its user online here.

use super::messages::ServerEvent;
use crate::ids::{ConnId, UserId};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a session writes to its socket.
#[derive(Clone, Debug)]
pub enum Outbound {
    Text(Arc<str>),
    Close(u16, &'static str),
}

/// Per-connection queue depth before the client counts as too slow.
pub const QUEUE_DEPTH: usize = 512;

struct Conn {
    id: ConnId,
    tx: mpsc::Sender<Outbound>,
}

/// What the other nodes hear from this hub, in order.
#[derive(Debug)]
pub enum Fanned {
    /// A notification: the user, which connections, the text.
    Notify(UserId, super::effects::Via, Arc<str>),
    /// `user` has sockets on this node from now on (true), or none (false).
    Presence(UserId, bool),
}

pub type Fanout = mpsc::UnboundedSender<Fanned>;

#[derive(Default)]
pub struct Hub {
    users: Mutex<HashMap<UserId, Vec<Conn>>>,
    /// In a cluster: where notifications for other nodes' connections go.
    fanout: std::sync::OnceLock<Fanout>,
    /// Other nodes' clients in rooms placed here, by user.
    remote: Mutex<HashMap<UserId, Vec<Conn>>>,
    /// In a cluster: users with sockets on other nodes, and which nodes.
    elsewhere: Mutex<HashMap<UserId, std::collections::HashSet<crate::ids::NodeId>>>,
}

/// Which of a user's connections an event goes to.
#[derive(Clone, Copy, Debug)]
pub enum To<'a> {
    Nobody,
    All,
    Only(&'a ConnId),
    AllExcept(Option<&'a ConnId>),
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new connection for `user`; returns the receiving end of its queue.
    pub fn register(&self, user: &UserId, id: ConnId) -> mpsc::Receiver<Outbound> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let mut users = self.users.lock();
        let conns = users.entry(user.clone()).or_default();
        if conns.is_empty() {
            self.fan(Fanned::Presence(user.clone(), true));
        }
        conns.push(Conn { id, tx });
        rx
    }

    /// Queue `what` for the other nodes (in a cluster).
    fn fan(&self, what: Fanned) {
        if let Some(tx) = self.fanout.get() {
            let _ = tx.send(what);
        }
    }

    /// Another node says whether `user` has sockets there. Returns true
    /// when, after it, the user has a socket nowhere.
    pub fn presence_elsewhere(&self, user: &UserId, node: &crate::ids::NodeId, online: bool) -> bool {
        {
            let mut elsewhere = self.elsewhere.lock();
            if online {
                elsewhere.entry(user.clone()).or_default().insert(node.clone());
                return false;
            }
            if let Some(nodes) = elsewhere.get_mut(user) {
                nodes.remove(node);
                if nodes.is_empty() {
                    elsewhere.remove(user);
                }
            }
        }
        !self.is_online(user)
    }

    /// Forget what nodes not in `live` said (they are gone); the users who
    /// then have a socket nowhere.
    pub fn keep_presence_of(&self, live: &[crate::ids::NodeId]) -> Vec<UserId> {
        let mut gone = Vec::new();
        self.elsewhere.lock().retain(|user, nodes| {
            nodes.retain(|n| live.contains(n));
            if nodes.is_empty() {
                gone.push(user.clone());
            }
            !nodes.is_empty()
        });
        gone.retain(|u| !self.is_online_here(u));
        gone
    }

    /// The users with sockets on this node.
    pub fn local_users(&self) -> Vec<UserId> {
        self.users.lock().keys().cloned().collect()
    }

    /// A remote connection (another node's client, SPEC 13) for `user`.
    pub fn register_remote(&self, user: &UserId, id: ConnId) -> mpsc::Receiver<Outbound> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        self.remote.lock().entry(user.clone()).or_default().push(Conn { id, tx });
        rx
    }

    pub fn unregister_remote(&self, user: &UserId, id: &ConnId) {
        let mut remote = self.remote.lock();
        if let Some(conns) = remote.get_mut(user) {
            conns.retain(|c| &c.id != id);
            if conns.is_empty() {
                remote.remove(user);
            }
        }
    }

    /// Queue `out` for the remote connection `id` of `user`; false when it
    /// is not one.
    pub fn send_remote(&self, user: &UserId, id: &ConnId, out: Outbound) -> bool {
        send_to(&self.remote, user, To::Only(id), &out) > 0
    }

    /// Hand `out` to the local connection `id` of `user` (what a room's node
    /// sent a client of this one); false when it is gone.
    pub fn deliver(&self, user: &UserId, id: &ConnId, out: Outbound) -> bool {
        send_to(&self.users, user, To::Only(id), &out) > 0
    }

    /// Remove a connection. Returns true when it was the user's last one.
    pub fn unregister(&self, user: &UserId, id: &ConnId) -> bool {
        let mut users = self.users.lock();
        let last = match users.get_mut(user) {
            None => true, // dropped as too slow meanwhile
            Some(conns) => {
                conns.retain(|c| &c.id != id);
                conns.is_empty()
            }
        };
        if last {
            users.remove(user);
            self.fan(Fanned::Presence(user.clone(), false));
        }
        last
    }

    /// Whether `user` has a socket on this node or (in a cluster) another.
    pub fn is_online(&self, user: &UserId) -> bool {
        self.is_online_here(user) || self.elsewhere.lock().contains_key(user)
    }

    pub fn is_online_here(&self, user: &UserId) -> bool {
        self.users.lock().contains_key(user)
    }

    pub fn has_conn(&self, user: &UserId, id: &ConnId) -> bool {
        self.users.lock().get(user).is_some_and(|cs| cs.iter().any(|c| &c.id == id))
    }

    pub fn connection_count(&self) -> usize {
        self.users.lock().values().map(Vec::len).sum()
    }

    /// In a cluster: send notifications on to the other nodes through `tx`.
    pub fn set_fanout(&self, tx: Fanout) {
        let _ = self.fanout.set(tx);
    }

    /// Deliver a notification: `via` picked among `user`'s connections, on
    /// this node and (in a cluster) the others. Returns how many connections
    /// of this node got it.
    pub fn notify(&self, user: &UserId, via: &super::effects::Via, event: &ServerEvent) -> usize {
        use super::effects::Via;
        let text: Arc<str> = event.to_text().into();
        let to = match via {
            Via::All => To::All,
            Via::AllExcept(conn) => To::AllExcept(conn.as_ref()),
            Via::Device(Some(c)) if self.has_conn(user, c) => {
                return send_to(&self.users, user, To::Only(c), &Outbound::Text(text));
            }
            // The device is on another node (or gone): the fan-out finds it.
            Via::Device(Some(_)) if self.fanout.get().is_some() => To::Nobody,
            Via::Device(_) => To::All,
        };
        self.fan(Fanned::Notify(user.clone(), via.clone(), text.clone()));
        send_to(&self.users, user, to, &Outbound::Text(text))
    }

    /// A notification another node fanned out: to this node's connections
    /// of `user` that `via` picks (a device only if it is one of them).
    pub fn notify_from_peer(&self, user: &UserId, via: &super::effects::Via, text: Arc<str>) -> usize {
        use super::effects::Via;
        let to = match via {
            Via::All | Via::Device(None) => To::All,
            Via::AllExcept(conn) => To::AllExcept(conn.as_ref()),
            Via::Device(Some(c)) => To::Only(c),
        };
        send_to(&self.users, user, to, &Outbound::Text(text))
    }

    /// Send a room event to some of `user`'s connections, remote ones
    /// included; returns how many got it.
    pub fn send(&self, user: &UserId, to: To<'_>, event: &ServerEvent) -> usize {
        let out = Outbound::Text(event.to_text().into());
        let local = send_to(&self.users, user, to, &out);
        if local > 0 && matches!(to, To::Only(_)) {
            return local;
        }
        local + send_to(&self.remote, user, to, &out)
    }

    /// Send to every connection (shutdown notices).
    pub fn broadcast(&self, event: &ServerEvent) {
        let text: Arc<str> = event.to_text().into();
        self.broadcast_raw(Outbound::Text(text));
    }

    /// Ask every session to close with `code`.
    pub fn close_all(&self, code: u16, reason: &'static str) {
        self.broadcast_raw(Outbound::Close(code, reason));
    }

    fn broadcast_raw(&self, out: Outbound) {
        for c in self.users.lock().values().flatten() {
            let _ = c.tx.try_send(out.clone());
        }
    }
}

/// Queue `out` for `to` among `user`'s connections in `map`; a connection
/// whose queue is full or closed is dropped. Returns how many got it.
fn send_to(map: &Mutex<HashMap<UserId, Vec<Conn>>>, user: &UserId, to: To<'_>, out: &Outbound) -> usize {
    let mut users = map.lock();
    let Some(conns) = users.get_mut(user) else { return 0 };
    let mut sent = 0;
    conns.retain(|c| {
        let wanted = match to {
            To::Nobody => false,
            To::All => true,
            To::Only(id) => &c.id == id,
            To::AllExcept(ex) => Some(&c.id) != ex,
        };
        if !wanted {
            return true;
        }
        match c.tx.try_send(out.clone()) {
            Ok(()) => {
                sent += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(user = %user, conn = %c.id, "client is not reading its WebSocket; dropping it");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    });
    if conns.is_empty() {
        users.remove(user);
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_the_right_connections() {
        let hub = Hub::new();
        let alice: UserId = "alice".into();
        let (a1, a2) = (ConnId::from("a1"), ConnId::from("a2"));
        let mut r1 = hub.register(&alice, a1.clone());
        let mut r2 = hub.register(&alice, a2.clone());
        let ev = ServerEvent::CallAnsweredElsewhere { call_id: "c".into() };
        assert_eq!(hub.send(&alice, To::AllExcept(Some(&a1)), &ev), 1);
        assert!(r1.try_recv().is_err());
        assert!(r2.try_recv().is_ok());
        assert_eq!(hub.send(&alice, To::Only(&a1), &ev), 1);
        assert!(r1.try_recv().is_ok());
        assert_eq!(hub.send(&"bob".into(), To::All, &ev), 0);
        assert!(!hub.unregister(&alice, &a1));
        assert!(hub.unregister(&alice, &a2));
        assert!(!hub.is_online(&alice));
    }

    #[test]
    fn remote_connections_get_room_events_but_not_call_notifications() {
        use crate::signal::effects::Via;
        let hub = Hub::new();
        let bob: UserId = "bob".into();
        let (local, remote) = (ConnId::from("here"), ConnId::from("there"));
        let mut rl = hub.register(&bob, local.clone());
        let mut rr = hub.register_remote(&bob, remote.clone());
        let ev = ServerEvent::RoomDeleted { room_id: "r".into() };
        assert_eq!(hub.send(&bob, To::Only(&remote), &ev), 1, "a room event to the remote connection");
        assert!(rr.try_recv().is_ok() && rl.try_recv().is_err());
        assert_eq!(hub.send(&bob, To::All, &ev), 2, "room-deleted to every connection of the user");
        assert_eq!(hub.notify(&bob, &Via::All, &ev), 1, "call notifications stay on the user's own node");
        assert!(hub.deliver(&bob, &local, Outbound::Close(1001, "x")));
        assert!(!hub.deliver(&bob, &remote, Outbound::Close(1001, "x")), "deliver is for local sockets");
        hub.unregister_remote(&bob, &remote);
        assert_eq!(hub.send(&bob, To::Only(&remote), &ev), 0);
        assert!(hub.unregister(&bob, &local), "the remote one never counted as online");
    }

    #[test]
    fn a_full_queue_drops_the_connection() {
        let hub = Hub::new();
        let u: UserId = "u".into();
        let _rx = hub.register(&u, "c".into());
        let ev = ServerEvent::ServerShutdown { reconnect: None };
        for _ in 0..QUEUE_DEPTH {
            assert_eq!(hub.send(&u, To::All, &ev), 1);
        }
        assert_eq!(hub.send(&u, To::All, &ev), 0);
        assert!(!hub.is_online(&u));
    }
}
