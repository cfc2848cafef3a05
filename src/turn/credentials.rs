//! TURN REST API credentials: `username = "<unix expiry>:<userId>"`,
//! `credential = base64(HMAC-SHA1(secret, username))`.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// A username/credential pair valid until `expires` (unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnCredential {
    pub username: String,
    pub credential: String,
    pub expires: u64,
}

/// Mint a credential for `user_id` that expires at `expires` (unix seconds).
pub fn mint(secret: &[u8], user_id: &str, expires: u64) -> TurnCredential {
    let username = format!("{expires}:{user_id}");
    let credential = password_for(secret, &username);
    TurnCredential { username, credential, expires }
}

/// The password the server expects for `username`.
pub fn password_for(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The expiry encoded in a REST API username (`"<expiry>:<user>"` or just
/// `"<expiry>"`), or `None` when it is not of that form.
pub fn expiry_of(username: &str) -> Option<u64> {
    username.split(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_coturn_scheme() {
        // Reference computed with: printf '1700000000:alice' | openssl dgst -sha1 -hmac secret -binary | base64
        let c = mint(b"secret", "alice", 1_700_000_000);
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.credential, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
        assert_eq!(expiry_of(&c.username), Some(1_700_000_000));
        assert_eq!(expiry_of("alice"), None);
    }
}
