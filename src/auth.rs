//! Access tokens: JWT HS256 (jsonwebtoken crate, its HMAC computed with ring
//! through [`jwt_crypto`]), their claims, and the generated secrets kept in
//! the data dir.
//!
//! Only HS256 is accepted; `alg: none` and every other algorithm are refused by
//! the validator, as is a `crit` header naming an extension (RFC 7515 4.1.11).
//! Clock leeway is 5 s (SPEC 12).

mod jwt_crypto;

use crate::ids::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The claims confer reads from an access token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    pub sub: UserId,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// Private rooms (ids or names) this token may join.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    #[serde(default = "yes")]
    pub can_publish: bool,
    #[serde(default = "yes")]
    pub can_subscribe: bool,
}

fn yes() -> bool {
    true
}

impl Claims {
    pub fn new(sub: UserId, ttl: Duration) -> Self {
        let now = unix_now();
        Self {
            sub,
            exp: now + ttl.as_secs(),
            iat: Some(now),
            name: None,
            admin: false,
            rooms: Vec::new(),
            can_publish: true,
            can_subscribe: true,
        }
    }

    /// The display name, falling back to the user id.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.sub.to_string())
    }

    /// Whether this token lists `room` (by id or name) for private access.
    pub fn lists_room(&self, id: &str, name: &str) -> bool {
        self.rooms.iter().any(|r| r == id || r == name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("missing access token (send Authorization: Bearer <token>)")]
    Missing,
    #[error("access token expired")]
    Expired,
    #[error("invalid access token: {0}")]
    Invalid(String),
}

/// Signs and verifies access tokens with one HS256 secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

pub const LEEWAY_SECS: u64 = 5;

impl TokenKeys {
    /// Keys for `secret`, which must not be empty (config asks for at least
    /// 16 characters, a generated one has 48).
    ///
    /// # Panics
    /// On an empty secret.
    pub fn new(secret: &[u8]) -> Self {
        jwt_crypto::install();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let (Ok(encoding), Ok(decoding)) = (EncodingKey::from_secret(secret), DecodingKey::from_secret(secret)) else {
            panic!("the access-token secret is empty");
        };
        Self { encoding, decoding, validation }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of serialisable claims cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<Claims>(token.trim(), &self.decoding, &self.validation) {
            Ok(data) if data.claims.sub.as_str().is_empty() => Err(AuthError::Invalid("empty sub".into())),
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm must be HS256".into()),
                ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing claim {c}")),
                _ => AuthError::Invalid("malformed token".into()),
            }),
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The configured secret, or the one stored in `dir/file` (mode 0600),
/// generated there on first use.
pub fn load_or_create_secret(configured: Option<&str>, dir: &Path, file: &str) -> std::io::Result<String> {
    if let Some(s) = configured {
        return Ok(s.to_owned());
    }
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let secret = crate::ids::random_token(48);
    write_private(&path, secret.as_bytes())?;
    Ok(secret)
}

/// Write a file readable only by its owner (created with mode 0600, atomically
/// renamed into place so a crash never leaves half a secret).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn keys() -> TokenKeys {
        TokenKeys::new(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn round_trip_and_defaults() {
        let k = keys();
        let mut c = Claims::new("alice".into(), Duration::from_secs(60));
        c.name = Some("Alice".into());
        let back = k.verify(&k.sign(&c)).unwrap();
        assert_eq!(back, c);
        assert!(back.can_publish && back.can_subscribe && !back.admin);
    }

    #[test]
    fn expired_wrong_key_and_alg_none_are_refused() {
        let k = keys();
        let mut c = Claims::new("alice".into(), Duration::from_secs(60));
        c.exp = unix_now() - 60;
        assert_eq!(k.verify(&k.sign(&c)), Err(AuthError::Expired));

        let other = TokenKeys::new(b"another-secret-another-secret!!");
        let t = other.sign(&Claims::new("alice".into(), Duration::from_secs(60)));
        assert!(matches!(k.verify(&t), Err(AuthError::Invalid(_))));

        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"sub":"alice","exp":{}}}"#, unix_now() + 60))
        );
        assert!(matches!(k.verify(&none), Err(AuthError::Invalid(_))));
        assert!(matches!(k.verify("garbage"), Err(AuthError::Invalid(_))));
    }

    /// RFC 7515 4.1.11: a `crit` header naming an extension the verifier
    /// does not understand makes a token invalid, however well it is signed
    /// (jsonwebtoken 9 ignored it; 12 refuses it).
    #[test]
    fn a_token_with_an_unknown_critical_header_is_refused() {
        let k = keys();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = format!(r#"{{"sub":"alice","exp":{}}}"#, unix_now() + 60);
        let token = |header: &str| {
            let msg = format!("{}.{}", b64.encode(header), b64.encode(&claims));
            let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &k.encoding, Algorithm::HS256).unwrap();
            format!("{msg}.{sig}")
        };
        assert!(k.verify(&token(r#"{"alg":"HS256","typ":"JWT"}"#)).is_ok(), "a hand-made token verifies");
        let crit = token(r#"{"alg":"HS256","typ":"JWT","crit":["x-confer"],"x-confer":1}"#);
        assert!(matches!(k.verify(&crit), Err(AuthError::Invalid(_))), "{:?}", k.verify(&crit));
    }

    /// A token signed by confer with jsonwebtoken 9 (before the move to 12)
    /// still verifies, with every claim.
    #[test]
    fn tokens_from_before_the_upgrade_still_verify() {
        let t = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwiaWF0IjoxNzY0NjUwMDAwLCJuYW1lIjoiQWxpY2UiLCJyb29tcyI6WyJzdGFuZHVwIl0sImNhblB1Ymxpc2giOnRydWUsImNhblN1YnNjcmliZSI6ZmFsc2V9.MR9nkiWLb6cE2gYCh0LV_9zY8p2rUAO5fpuRXNsn158";
        let c = keys().verify(t).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.exp, c.iat, c.name.as_deref()),
            ("alice", 4102444800, Some(1764650000), Some("Alice"))
        );
        assert_eq!(
            (c.rooms, c.can_publish, c.can_subscribe, c.admin),
            (vec!["standup".to_owned()], true, false, false)
        );
    }

    #[test]
    fn leeway_is_five_seconds() {
        let k = keys();
        let mut c = Claims::new("alice".into(), Duration::from_secs(60));
        c.exp = unix_now() - 3;
        assert!(k.verify(&k.sign(&c)).is_ok());
        c.exp = unix_now() - 8;
        assert_eq!(k.verify(&k.sign(&c)), Err(AuthError::Expired));
    }

    #[test]
    fn generated_secret_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_secret(None, dir.path(), "auth.secret").unwrap();
        let b = load_or_create_secret(None, dir.path(), "auth.secret").unwrap();
        assert_eq!(a, b);
        assert!(a.len() >= 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("auth.secret")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_or_create_secret(Some("given"), dir.path(), "auth.secret").unwrap(), "given");
    }
}
