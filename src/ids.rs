//! Identifier newtypes. Ids are opaque strings on the wire; in code each kind
//! has its own type so a `CallId` can never be passed where a `UserId` belongs.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh random id (prefix plus 16 base-62 characters).
            pub fn random() -> Self {
                Self(format!(concat!($prefix, "{}"), random_token(16)))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                String::schema()
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

id_type!(
    /// A user, as named by the `sub` claim of their access token.
    UserId, ""
);
id_type!(
    /// A 1:1 call.
    CallId, "call_"
);
id_type!(
    /// A room (group call); every call also has one.
    RoomId, "room_"
);
id_type!(
    /// One participant's seat in a room.
    PeerId, "peer_"
);
id_type!(
    /// A published track.
    TrackId, "tr_"
);
id_type!(
    /// One chat message in a room.
    MessageId, "msg_"
);
id_type!(
    /// One WebSocket connection.
    ConnId, "conn_"
);
id_type!(
    /// One `confer serve` process of a cluster (`cluster.node_id`).
    NodeId, "node_"
);

/// `len` random characters from `[0-9A-Za-z]`.
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}
