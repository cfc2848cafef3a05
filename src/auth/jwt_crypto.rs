//! The HMAC signatures of access tokens for jsonwebtoken, computed with ring
//! (already built for rustls).
//!
//! jsonwebtoken 10+ leaves its cryptography to a provider. Its own two were
//! weighed (jsonwebtoken 12.0.0) and not taken: `rust_crypto` brings some
//! 35 crates for RSA, P-256/P-384 and Ed25519 (rsa, p256, p384,
//! ed25519-dalek, crypto-bigint, ...) and a second generation of hmac, sha2
//! and digest beside the ones confer uses, and `aws_lc_rs` compiles AWS-LC,
//! a second C crypto library beside ring. confer signs and accepts HS256
//! only, which takes a few dozen lines over ring here.
//!
//! Only the HMAC family is provided (HS384 and HS512 are there so a wrongly
//! made token is refused by the validator, not by a missing algorithm);
//! every other algorithm is `InvalidAlgorithm`, and JWK helpers are not
//! provided (confer reads no JWKs). Verification is ring's constant-time
//! comparison.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{new_error, ErrorKind, Result};
use jsonwebtoken::signature::{Error as SignatureError, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use ring::hmac;

static PROVIDER: CryptoProvider =
    CryptoProvider { signer_factory: signer, verifier_factory: verifier, key_utils: KeyUtils::new_unimplemented() };

/// Make this the process's provider (once; later calls change nothing).
pub fn install() {
    if CryptoProvider::try_get_default().is_none() {
        // Racing another thread that installs it is fine: one of us wins.
        let _ = PROVIDER.install_default();
    }
}

struct Hmac {
    alg: Algorithm,
    key: hmac::Key,
}

impl Hmac {
    fn new(alg: Algorithm, family: AlgorithmFamily, secret: &[u8]) -> Result<Self> {
        let ring_alg = match alg {
            Algorithm::HS256 => hmac::HMAC_SHA256,
            Algorithm::HS384 => hmac::HMAC_SHA384,
            Algorithm::HS512 => hmac::HMAC_SHA512,
            _ => return Err(new_error(ErrorKind::InvalidAlgorithm)),
        };
        if family != AlgorithmFamily::Hmac {
            return Err(new_error(ErrorKind::InvalidKeyFormat));
        }
        Ok(Self { alg, key: hmac::Key::new(ring_alg, secret) })
    }
}

impl Signer<Vec<u8>> for Hmac {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, SignatureError> {
        Ok(hmac::sign(&self.key, msg).as_ref().to_vec())
    }
}

impl JwtSigner for Hmac {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

impl Verifier<Vec<u8>> for Hmac {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), SignatureError> {
        hmac::verify(&self.key, msg, signature).map_err(|_| SignatureError::new())
    }
}

impl JwtVerifier for Hmac {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Ok(Box::new(Hmac::new(*alg, key.family(), key.as_bytes())?))
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    Ok(Box::new(Hmac::new(*alg, key.family(), key.try_get_as_bytes()?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 ("Jefe"): the provider computes HMAC-SHA256 as
    /// everyone else does, so tokens signed before the upgrade still verify.
    #[test]
    fn hs256_matches_rfc_4231() {
        let h = Hmac::new(Algorithm::HS256, AlgorithmFamily::Hmac, b"Jefe").unwrap();
        let tag = h.try_sign(b"what do ya want for nothing?").unwrap();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(h.verify(b"what do ya want for nothing?", &tag).is_ok());
        assert!(h.verify(b"what do ya want for nothing!", &tag).is_err());
        assert!(Hmac::new(Algorithm::RS256, AlgorithmFamily::Rsa, b"k").is_err());
    }
}
