//! confer: video and audio calls for a social platform, in one binary.
//!
//! # Layout
//! Dependencies point downwards; nothing below imports what is above it.
//!
//! - [`app`]: the composition root. Parses the CLI, loads [`config`], binds the
//!   sockets, wires every part together and runs until shutdown.
//! - [`http`]: the axum edge (REST, WebSocket upgrade, `/metrics`, OpenAPI). The
//!   only module that knows HTTP status codes.
//! - [`signal`]: calls, rooms and WebSocket sessions as state machines and
//!   services. Never touches a socket or a status code; talks to clients through
//!   per-connection channels.
//! - [`media`]: the SFU. One UDP socket loop on its own thread owns every
//!   WebRTC PeerConnection (webrtc-rs's sans-IO `rtc`); signaling drives it
//!   through commands and hears back through events. Never imports signaling,
//!   HTTP or the store.
//! - [`turn`]: the TURN server and TURN REST credentials.
//! - [`loadtest`]: `confer loadtest`, webrtc-rs clients that load a running
//!   server over its public interfaces (a client of the server, not part of it).
//! - [`cluster`]: with `cluster.redis_url`, this node's heartbeats and where
//!   rooms live (SPEC 13), on Redis; implements signaling's placement.
//! - [`store`]: persistence behind the [`store::Store`] trait (sled on disk; Redis for a cluster).
//! - [`metrics`]: the Prometheus registry and every metric confer exports.
//! - [`analytics`]: pure call-quality calculators (RFC 3550 statistics, RTT,
//!   E-model MOS); no I/O.
//! - [`auth`]: access tokens (JWT, HS256) and their claims.
//! - [`json`]: client JSON read so that errors name the field (REST and `/rtc`).
//! - [`model`], [`config`], [`ids`], [`clock`], [`netif`] (the host's interface
//!   addresses): plain data shared by everything above.

pub mod analytics;
pub mod app;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod http;
pub mod ids;
pub mod json;
pub mod loadtest;
pub mod media;
pub mod metrics;
pub mod model;
pub mod netif;
pub mod signal;
pub mod store;
pub mod turn;
