//! Test support: the real signaling services on a sled store in `dir`, with
//! no media plane and no cluster, for unit tests that drive a session or the
//! HTTP app without starting a server.

use super::Signaling;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The secret the tokens of [`services`] are signed with.
pub(crate) const SECRET: &[u8] = b"session-test-secret-0123456789abcdef";

pub(crate) async fn signaling(dir: &std::path::Path) -> Arc<Signaling> {
    services(dir).await.0
}

/// The services and their store.
pub(crate) async fn services(dir: &std::path::Path) -> (Arc<Signaling>, Arc<dyn crate::store::Store>) {
    use super::{calls::CallService, hub::Hub, rooms::RoomOptions, rooms::RoomService, timers::Timers};
    let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::SledStore::open(dir).unwrap());
    let (hub, metrics) = (Arc::new(Hub::new()), crate::metrics::Metrics::new());
    let (timers, _fired) = Timers::spawn();
    let secs = Duration::from_secs;
    let calls = CallService::new(store.clone(), hub.clone(), metrics.clone(), secs(30), secs(10), timers.clone(), None);
    let opts = RoomOptions {
        max_participants: 16,
        reservation_ttl: secs(60),
        chat_rate: (5.0, 10.0),
        media: None,
        ice_servers: Arc::new(|_| json!([])),
        grace: secs(10),
        timers,
        placement: None,
    };
    let rooms = RoomService::open(store.clone(), hub.clone(), metrics.clone(), opts).await.unwrap();
    let signal = Arc::new(Signaling {
        calls,
        rooms,
        hub,
        keys: crate::auth::TokenKeys::new(SECRET),
        metrics,
        relay: None,
        remote: Default::default(),
    });
    (signal, store)
}
