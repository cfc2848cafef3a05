//! The composition root: builds every part from the [`Config`], binds the
//! sockets, runs until a shutdown signal, then shuts down in SPEC 1's order.
//! Also the `token` command, which shares the config and data dir.

pub mod addrs;
pub mod cli;
pub mod tls;

use crate::auth::{self, Claims, TokenKeys};
use crate::config::{Config, PublicIp};
use crate::http::{self, AppState, IceSettings, TurnHost};
use crate::metrics::Metrics;
use crate::signal::calls::CallService;
use crate::signal::hub::Hub;
use crate::signal::rooms::{RoomOptions, RoomService};
use crate::signal::session::Limits;
use crate::signal::timers::Timers;
use crate::signal::Signaling;
use crate::store::{RedisStore, SledStore, Store};
use crate::turn::TurnServer;
use anyhow::Context;
use redis::aio::ConnectionManager;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long shutdown may take before the process gives up waiting (SPEC 1).
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

pub const AUTH_SECRET_FILE: &str = "auth.secret";
pub const TURN_SECRET_FILE: &str = "turn.secret";
/// The generated `cluster.node_id`, in the data dir.
pub const NODE_ID_FILE: &str = "node.id";

/// A bound, not yet running server.
pub struct Server {
    http: TcpListener,
    http_addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    turn: Option<TurnServer>,
    state: AppState,
    signal: Arc<Signaling>,
    store: Arc<dyn Store>,
    /// This node's membership, with `cluster.redis_url`.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    media_addr: SocketAddr,
    /// What a person can open: the HTTP address, or on a wildcard one per
    /// usable interface address.
    http_ips: Vec<std::net::IpAddr>,
    media_threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Open the store, build the services and bind every socket.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let data = &config.store.path;
        std::fs::create_dir_all(data).with_context(|| format!("cannot create data dir {}", data.display()))?;
        let auth_secret = auth::load_or_create_secret(config.auth.secret.as_deref(), data, AUTH_SECRET_FILE)
            .with_context(|| format!("cannot read or create {}/{AUTH_SECRET_FILE}", data.display()))?;
        let turn_secret = auth::load_or_create_secret(config.turn.secret.as_deref(), data, TURN_SECRET_FILE)
            .with_context(|| format!("cannot read or create {}/{TURN_SECRET_FILE}", data.display()))?;
        let (store, redis) = open_store(&config).await?;
        let metrics = Metrics::new();

        // Sockets first, so a busy port fails before anything starts.
        // One certificate serves HTTPS and TURN over TLS: the configured PEM
        // files, else a self-signed one when either needs it.
        let turn_tls_on = config.turn.enabled && config.turn.tls_listen.is_some();
        let cert = match (&config.http.tls_cert, &config.http.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ if config.http.tls_self_signed || turn_tls_on => {
                // Every address a browser may come in on is in the certificate.
                let mut ips = crate::netif::advertised(config.http.listen.ip(), None);
                if config.http.listen.ip().is_unspecified() {
                    ips.extend(crate::netif::local_ips(config.http.listen.ip()));
                }
                if let Some(PublicIp::Addr(ip)) = config.media.public_ip {
                    ips.push(ip);
                }
                let (cert, key) = tls::self_signed(Path::new(tls::SELF_SIGNED_DIR), &ips)?;
                Some(tls::server_config(&cert, &key)?)
            }
            _ => None,
        };
        let http_tls_on = config.http.tls_cert.is_some() || config.http.tls_self_signed;
        let tls = cert.clone().filter(|_| http_tls_on);
        let http = TcpListener::bind(config.http.listen).await.with_context(|| {
            format!("cannot listen on http.listen = {} (is another server running?)", config.http.listen)
        })?;
        let http_addr = http.local_addr()?;
        let turn = if config.turn.enabled {
            let t = TurnServer::bind(&config.turn, turn_secret.clone().into_bytes(), metrics.registry(), cert).await?;
            if let Some(at) = t.tls_addr() {
                tracing::info!(%at, "TURN over TLS");
            }
            Some(t)
        } else {
            None
        };
        // SPEC 12: public_host, else the listen IP, and never a wildcard:
        // relay_ip, else the host each HTTP request came in on.
        let listen_ip = config.turn.listen.ip();
        let turn_host = turn.as_ref().map(|t| {
            if let Some(h) = &config.turn.public_host {
                return TurnHost::Fixed(h.clone());
            }
            if !listen_ip.is_unspecified() {
                return TurnHost::Fixed(url_host(listen_ip));
            }
            if let Some(ip) = config.turn.relay_ip {
                return TurnHost::Fixed(url_host(ip));
            }
            let first = t.udp_addrs().first().map(|a| a.ip()).filter(|ip| !ip.is_loopback());
            let fallback = first.unwrap_or_else(|| crate::netif::advertised(listen_ip, None)[0]);
            TurnHost::FromRequest { fallback: url_host(fallback) }
        });
        if let Some(t) = &turn {
            tracing::info!(udp = ?t.udp_addrs(), relay_ip = ?config.turn.relay_ip, "TURN addresses");
        }
        let ice = Arc::new(IceSettings {
            turn_host,
            turn_port: turn.as_ref().map_or(0, |t| t.local_addr().port()),
            turns_port: turn.as_ref().and_then(TurnServer::tls_addr).map(|a| a.port()),
            secret: turn_secret.into_bytes(),
            ttl: config.turn.credential_ttl.0,
        });
        // The SFU: one worker thread per core, each with one UDP port for
        // the PeerConnections of its rooms (media.listen, then the next ports).
        let workers = match config.media.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut media_sockets = Vec::with_capacity(workers);
        for i in 0..workers {
            let mut at = config.media.listen;
            if at.port() != 0 {
                at.set_port(at.port().checked_add(i as u16).context("media.listen: no room for a port per worker")?);
            }
            let socket = std::net::UdpSocket::bind(at).with_context(|| {
                format!("cannot bind the media port {at} (media.listen + worker {i}; is another server running?)")
            })?;
            media_sockets.push(socket);
        }
        let public_ip = match config.media.public_ip {
            None => None,
            Some(PublicIp::Addr(ip)) => Some(ip),
            Some(PublicIp::Auto) => {
                let servers = &config.media.stun_servers;
                match addrs::discover_public_ip(&media_sockets[0], servers, addrs::STUN_TIMEOUT) {
                    Some((ip, from)) => {
                        tracing::info!(%ip, server = %from, "media.public_ip = \"auto\": learned the public address");
                        Some(ip)
                    }
                    None => {
                        tracing::warn!(
                            servers = ?servers,
                            "media.public_ip = \"auto\": no STUN server answered within {:?}; advertising the interface addresses only (set media.public_ip to the address, or check media.stun_servers and outbound UDP)",
                            addrs::STUN_TIMEOUT
                        );
                        None
                    }
                }
            }
        };
        let advertised = crate::netif::advertised(config.media.listen.ip(), public_ip);
        tracing::info!(addresses = ?advertised, "media: ICE host candidates");
        let (media, mut media_events, media_threads) = crate::media::worker::spawn(
            media_sockets,
            advertised,
            config.media.bandwidth_estimation,
            metrics.media.clone(),
        )
        .context("cannot start the media engine")?;
        let media_addr = media.local_addr();
        tracing::info!(workers, ports = ?media.local_addrs(), "SFU workers");

        let http_ips = crate::netif::advertised(http_addr.ip(), None);
        // Relayed room messages (SPEC 13) arrive from the moment this node is
        // subscribed, before signaling exists: they wait here, in order.
        let (relayed_tx, mut relayed_rx) = tokio::sync::mpsc::unbounded_channel();
        let cluster = match (&config.cluster.redis_url, redis) {
            (Some(url), Some(redis)) => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let id = node_id(&config)?;
                crate::cluster::relay::RedisRelay::listen(
                    url,
                    &id,
                    Arc::new(move |m| {
                        let _ = relayed_tx.send(m);
                    }),
                )
                .await
                .with_context(|| format!("cannot subscribe to the cluster's relay at {}", without_password(url)))?;
                let me = crate::cluster::Identity {
                    id,
                    region: config.cluster.region.clone(),
                    http_url: format!("{scheme}://{}:{}/", url_host(http_ips[0]), http_addr.port()),
                    media_addr: media_addr.to_string(),
                };
                let c = crate::cluster::Cluster::join_over(redis, me, metrics.cluster_nodes.clone())
                    .await
                    .with_context(|| format!("cannot join the cluster at {}", without_password(url)))?;
                tracing::info!(node = %c.id(), live_nodes = metrics.cluster_nodes.get(), "cluster: joined");
                Some(c)
            }
            _ => None,
        };

        let hub = Arc::new(Hub::new());
        let (timers, mut fired_timers) = Timers::spawn();
        let dyn_store = store.clone();
        let calls = CallService::new(
            dyn_store.clone(),
            hub.clone(),
            metrics.clone(),
            config.calls.ring_timeout.0,
            config.calls.reconnect_grace.0,
            timers.clone(),
            cluster.clone().map(|c| c as Arc<dyn crate::signal::placement::Placement>),
        );
        let settled = calls.recover().await?;
        if settled > 0 {
            tracing::info!(calls = settled, "ended calls left live by the previous run (endReason server-restart)");
        }
        let ice_for_rooms = ice.clone();
        let rooms = RoomService::open(
            dyn_store.clone(),
            hub.clone(),
            metrics.clone(),
            RoomOptions {
                max_participants: config.rooms.max_participants,
                reservation_ttl: config.rooms.reservation_ttl.0,
                chat_rate: (config.rooms.chat_rate, config.rooms.chat_burst),
                media: Some(media),
                ice_servers: Arc::new(move |user| {
                    serde_json::to_value(ice_for_rooms.servers(user, None)).unwrap_or_default()
                }),
                grace: config.calls.reconnect_grace.0,
                timers,
                placement: cluster.clone().map(|c| c as Arc<dyn crate::signal::placement::Placement>),
            },
        )
        .await?;
        if let Some(c) = &cluster {
            let (adopter, presence) = (calls.clone(), hub.clone());
            let news: crate::cluster::BeatFn = Arc::new(move |live, taken| {
                // Sockets on nodes that are gone are gone: their users' reconnect grace starts.
                for user in presence.keep_presence_of(&live) {
                    adopter.user_offline(&user);
                }
                if !taken.is_empty() {
                    let calls = adopter.clone();
                    tokio::spawn(async move { calls.adopt(taken).await });
                }
            });
            c.start_heartbeats(load_reader(&rooms, &metrics), news);
        }
        let pump_rooms = rooms.clone();
        tokio::spawn(async move {
            while let Some(ev) = media_events.recv().await {
                pump_rooms.on_media(ev);
            }
        });
        let signal = Arc::new(Signaling {
            calls,
            rooms,
            hub,
            keys: TokenKeys::new(auth_secret.as_bytes()),
            metrics: metrics.clone(),
            relay: cluster.as_ref().map(|c| Arc::new(c.relay_link()) as Arc<dyn crate::signal::relay::RelayLink>),
            remote: Default::default(),
        });
        if let Some(link) = signal.relay.clone() {
            // Call notifications for users' connections on the other nodes,
            // in order, from one task (SPEC 13).
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            signal.hub.set_fanout(tx);
            tokio::spawn(async move {
                let mut failing = false;
                use crate::signal::hub::Fanned;
                use crate::signal::relay::Relayed;
                let presence = Relayed::PresenceQuery { from: link.node().clone() };
                if let Err(e) = link.broadcast(&presence).await {
                    tracing::warn!(error = %e, "cluster: cannot ask the other nodes who is online there");
                }
                while let Some(what) = rx.recv().await {
                    let from = link.node().clone();
                    let msg = match what {
                        Fanned::Notify(user, via, text) => {
                            Relayed::Notify { from, user, via, text: text.as_ref().to_owned() }
                        }
                        Fanned::Presence(user, online) => Relayed::Presence { from, user, online },
                    };
                    match link.broadcast(&msg).await {
                        Ok(()) => failing = false,
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "cluster: cannot send call events to the other nodes");
                        }
                        Err(_) => {}
                    }
                }
            });
        }
        let relay_signal = Arc::downgrade(&signal);
        tokio::spawn(async move {
            while let Some(m) = relayed_rx.recv().await {
                let Some(signal) = relay_signal.upgrade() else { break };
                signal.on_relayed(m);
            }
        });
        // Weak: the services hold the scheduler, which must not hold them back.
        let timer_signal = Arc::downgrade(&signal);
        tokio::spawn(async move {
            while let Some(key) = fired_timers.recv().await {
                let Some(signal) = timer_signal.upgrade() else { break };
                // Each in its own task: one timer's store write does not
                // hold back the others (a call's own gate orders its steps).
                tokio::spawn(async move { signal.on_timer(key).await });
            }
        });
        let state = AppState {
            signal: signal.clone(),
            store: dyn_store,
            metrics,
            ice,
            allow_guests: config.auth.allow_guests,
            metrics_token: config.metrics.token.clone(),
            ws_limits: Arc::new(Limits {
                ping_interval: config.ws.ping_interval.0,
                idle_timeout: config.ws.idle_timeout.0,
                token_grace: config.ws.token_grace.0,
                ..Limits::default()
            }),
            sockets_ready: Arc::new(AtomicBool::new(false)),
            cors_origins: config.http.cors_origins.clone().into(),
        };
        Ok(Server { http, http_addr, tls, turn, state, signal, store, cluster, media_addr, http_ips, media_threads })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The URL a person opens: `https://` when TLS is on; on a wildcard
    /// listen, at the first usable interface address.
    pub fn url(&self) -> String {
        self.urls().swap_remove(0)
    }

    /// One URL per address a person can open (SPEC 1, `--lan`).
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let port = self.http_addr.port();
        self.http_ips.iter().map(|ip| format!("{scheme}://{}:{port}/", url_host(*ip))).collect()
    }

    /// The `listening ...` line of SPEC 1.
    pub fn listening_line(&self) -> String {
        let turn = self.turn.as_ref().map(|t| t.local_addr().to_string()).unwrap_or_else(|| "off".into());
        format!("listening http={} media={} turn={turn}", self.http_addr, self.media_addr)
    }

    /// Serve until `shutdown` resolves, then shut down gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Server { http, tls, turn, state, signal, store, cluster, media_threads, .. } = self;
        let (turn_stop, turn_stopped) = tokio::sync::oneshot::channel::<()>();
        let turn_task = turn.map(|t| {
            tokio::spawn(t.run(async move {
                let _ = turn_stopped.await;
            }))
        });
        state.sockets_ready.store(true, Ordering::Release);
        let app = http::app(state.clone());

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let signal_for_stop = signal.clone();
        let cluster_for_stop = cluster.clone();
        let stopper = tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: telling clients, ending calls, flushing the store");
            state.sockets_ready.store(false, Ordering::Release);
            if let Some(c) = &cluster_for_stop {
                c.drain().await;
            }
            // In a cluster the clients have other nodes to go to.
            signal_for_stop.shutdown(cluster_for_stop.is_some()).await;
            let _ = stop_tx.send(());
        });
        let served = match tls {
            None => {
                // Signaling is many small writes: without TCP_NODELAY, Nagle and
                // delayed ACKs add ~40 ms to a relayed event.
                let http = axum::serve::ListenerExt::tap_io(http, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                let serve = axum::serve(http, app).with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                });
                tokio::spawn(async move { serve.await })
            }
            Some(cfg) => {
                let handle = axum_server::Handle::new();
                let h = handle.clone();
                tokio::spawn(async move {
                    let _ = stop_rx.await;
                    h.graceful_shutdown(Some(SHUTDOWN_DEADLINE));
                });
                let listener = http.into_std()?;
                let tls = axum_server::tls_rustls::RustlsConfig::from_config(cfg);
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
                    .acceptor(axum_server::accept::NoDelayAcceptor::new());
                let serve =
                    axum_server::from_tcp(listener)?.acceptor(acceptor).handle(handle).serve(app.into_make_service());
                tokio::spawn(serve)
            }
        };
        // Wait for the shutdown request, then give the server the deadline.
        let _ = stopper.await;
        match tokio::time::timeout(SHUTDOWN_DEADLINE, served).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
            Err(_) => tracing::warn!("connections still open after {SHUTDOWN_DEADLINE:?}; exiting anyway"),
        }
        let _ = turn_stop.send(());
        if let Some(t) = turn_task {
            let _ = t.await;
        }
        // The engines stop on the shutdown command signaling sent; give them
        // a moment to say goodbye to every PeerConnection.
        for t in media_threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        store.flush().await.context("flushing the store")?;
        if let Some(c) = &cluster {
            c.leave().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// What this node's heartbeats say of its load: occupied rooms and seats
/// from the rooms, forwarded packets and CPU as rates since the last beat.
fn load_reader(rooms: &Arc<RoomService>, metrics: &Metrics) -> crate::cluster::LoadFn {
    let rooms = Arc::downgrade(rooms);
    let media = metrics.media.clone();
    let last = parking_lot::Mutex::new((
        std::time::Instant::now(),
        media.forwarded_packets(),
        crate::metrics::process_cpu_seconds(),
    ));
    Arc::new(move || {
        let (rooms, participants) = rooms.upgrade().map_or((0, 0), |r| r.occupancy());
        let now = (std::time::Instant::now(), media.forwarded_packets(), crate::metrics::process_cpu_seconds());
        let before = std::mem::replace(&mut *last.lock(), now);
        let secs = now.0.duration_since(before.0).as_secs_f64().max(0.001);
        crate::cluster::nodes::Load {
            rooms,
            participants,
            packets_per_second: (now.1.saturating_sub(before.1) as f64 / secs) as u64,
            cpu: ((now.2 - before.2).max(0.0) / secs * 100.0).round() / 100.0,
        }
    })
}

/// The store: sled in the data dir, or with `cluster.redis_url` the
/// cluster's Redis (SPEC 13). A Redis that does not answer at start stops
/// the node, as LiveKit does (it pings Redis once at start and exits): a node
/// that came up on the wrong or a missing Redis would serve a history of its
/// own. Outages after the start are ridden out (`/readyz` 503 meanwhile).
///
/// With Redis, its connection comes back too: the cluster's heartbeats share
/// it, so the store's ping keeps it current for both.
async fn open_store(config: &Config) -> anyhow::Result<(Arc<dyn Store>, Option<ConnectionManager>)> {
    let data = &config.store.path;
    let Some(url) = &config.cluster.redis_url else {
        return Ok((Arc::new(SledStore::open(data)?), None));
    };
    let node = node_id(config)?;
    let shown = without_password(url);
    let con = crate::store::redis_store::connect(url).await.with_context(|| {
        format!("cannot use the Redis of cluster.redis_url = {shown}; a cluster node does not start without it")
    })?;
    let store = RedisStore::with_connection(con.clone(), node.clone());
    tracing::info!(%node, region = ?config.cluster.region, redis = %shown, "cluster: calls, history, rooms and analytics in Redis");
    Ok((Arc::new(store), Some(con)))
}

/// `cluster.node_id`, else the one generated into the data dir on the first start.
fn node_id(config: &Config) -> anyhow::Result<crate::ids::NodeId> {
    if let Some(id) = &config.cluster.node_id {
        return Ok(id.as_str().into());
    }
    let path = config.store.path.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if crate::config::is_label(s.trim()) => return Ok(s.trim().into()),
        Ok(s) if !s.trim().is_empty() => {
            anyhow::bail!("{}: {:?} is not a node id (remove the file to get a new one)", path.display(), s.trim())
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let id = crate::ids::NodeId::random();
    auth::write_private(&path, id.as_str().as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// A Redis URL fit for a log line: its password, if any, replaced by `***`.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// An IP as the host part of a URL (`[v6]`).
fn url_host(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }
}

/// A future that resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Mint an access token with the same secret `serve` uses.
pub fn mint_token(config: &Config, claims: &Claims) -> anyhow::Result<String> {
    Ok(token_keys(config)?.sign(claims))
}

/// The keys tokens are signed with: `auth.secret`, or the data dir's file.
pub fn token_keys(config: &Config) -> anyhow::Result<TokenKeys> {
    let data = &config.store.path;
    let secret = auth::load_or_create_secret(config.auth.secret.as_deref(), data, AUTH_SECRET_FILE)
        .with_context(|| format!("cannot read or create {}/{AUTH_SECRET_FILE}", data.display()))?;
    Ok(TokenKeys::new(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_logged_redis_url_has_no_password() {
        assert_eq!(super::without_password("redis://u:s3cret@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(super::without_password("redis://:s3cret@h"), "redis://***@h");
        assert_eq!(super::without_password("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
    }
}
