//! TURN: the credential scheme `/ice-config` hands out (TURN REST API, as
//! coturn's `use-auth-secret` accepts it). The TURN server itself lands with
//! its own issue and will verify exactly these credentials.

pub mod credentials;
