//! TURN (RFC 8656): the credential scheme `/ice-config` hands out (TURN REST
//! API, as coturn's `use-auth-secret` accepts it), the STUN codec, the peer
//! filter, and the server itself on UDP and TCP.
//!
//! Depends on `config` and `metrics` only.

pub mod credentials;
pub mod filter;
pub mod server;
pub mod stun;

pub use server::{TurnError, TurnServer};
