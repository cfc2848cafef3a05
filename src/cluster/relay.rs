//! The relay's link between nodes (signal's [`RelayLink`]) on Redis pub/sub:
//! each node subscribes to its own channel, `confer:relay:{node id}`, and a
//! node sends to another by `PUBLISH` on that node's channel; what every node
//! must hear goes on `confer:relay:*all` (`*` is not in a node id).
//!
//! Pub/sub rather than streams: a relayed message is live signaling for a
//! socket that exists now, so there is nothing to replay to a node that was
//! away (its clients reconnect and rejoin), and pub/sub delivers in order
//! with one round trip and nothing to trim. What streams would add, delivery
//! to a node that comes back, is what SPEC 13 does not want here.
//! `PUBLISH` answers how many subscribers took the message; none means the
//! node is gone, which the sender is told ([`StoreError::Unavailable`]).
//! The order of one sender task's messages holds because it awaits each
//! `PUBLISH` (one multiplexed connection, in order) and the receiver reads
//! its channel in order.

use crate::ids::NodeId;
use crate::signal::relay::{RelayLink, Relayed};
use crate::store::StoreError;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;

fn channel(node: &NodeId) -> String {
    format!("confer:relay:{node}")
}

/// Every node's, for what all of them must hear (a deleted room).
const EVERY_NODE: &str = "confer:relay:*all";

pub struct RedisRelay {
    con: ConnectionManager,
    me: NodeId,
}

impl RedisRelay {
    pub fn new(con: ConnectionManager, me: NodeId) -> Self {
        Self { con, me }
    }

    /// Subscribe to this node's channel and hand every message to `on_message`,
    /// from a task that resubscribes when Redis comes back. Returns once the
    /// first subscription is in place, so nothing relayed here is lost to a
    /// node that has not subscribed yet.
    pub async fn listen(
        url: &str,
        me: &NodeId,
        on_message: Arc<dyn Fn(Relayed) + Send + Sync>,
    ) -> Result<tokio::task::JoinHandle<()>, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Unavailable(format!("Redis (relay): {e}")))?;
        let name = [channel(me), EVERY_NODE.to_owned()];
        let first = subscribe(&client, &name).await?;
        let me = me.clone();
        Ok(tokio::spawn(async move {
            let mut pubsub = Some(first);
            loop {
                let Some(mut p) = pubsub.take() else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Ok(p) = subscribe(&client, &name).await {
                        tracing::info!(node = %me, "cluster: relay channel subscribed again");
                        pubsub = Some(p);
                    }
                    continue;
                };
                let mut messages = p.on_message();
                while let Some(m) = messages.next().await {
                    let Ok(payload) = m.get_payload::<String>() else { continue };
                    match serde_json::from_str::<Relayed>(&payload) {
                        Ok(msg) => on_message(msg),
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster: unreadable relayed message (another version?); dropped")
                        }
                    }
                }
                tracing::warn!(node = %me, "cluster: relay channel lost (Redis gone?); resubscribing");
            }
        }))
    }
}

async fn subscribe(client: &redis::Client, name: &[String; 2]) -> Result<redis::aio::PubSub, StoreError> {
    let unavailable = |e: redis::RedisError| {
        crate::store::redis_store::count_error("relay");
        StoreError::Unavailable(format!("Redis (relay): {e}"))
    };
    let mut p = client.get_async_pubsub().await.map_err(unavailable)?;
    p.subscribe(name).await.map_err(unavailable)?;
    Ok(p)
}

impl RedisRelay {
    /// `PUBLISH`; how many subscribers took it.
    async fn publish(&self, channel: &str, msg: &Relayed) -> Result<i64, StoreError> {
        let text = serde_json::to_string(msg).map_err(|e| StoreError::Backend(e.to_string()))?;
        redis::cmd("PUBLISH").arg(channel).arg(text).query_async(&mut self.con.clone()).await.map_err(|e| {
            crate::store::redis_store::count_error("relay");
            StoreError::Unavailable(format!("Redis (relay): {e}"))
        })
    }
}

impl RelayLink for RedisRelay {
    fn node(&self) -> &NodeId {
        &self.me
    }

    fn send<'a>(&'a self, to: &'a NodeId, msg: &'a Relayed) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if self.publish(&channel(to), msg).await? == 0 {
                return Err(StoreError::Unavailable(format!("cluster node {to} does not listen")));
            }
            Ok(())
        })
    }

    fn broadcast<'a>(&'a self, msg: &'a Relayed) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.publish(EVERY_NODE, msg).await.map(drop) })
    }
}
