//! Access tokens (HS256 JWTs, checked to the second: no clock-skew leeway,
//! since the server only ever checks tokens it issued itself) and refresh
//! tokens (random, opaque, kept server-side as SHA-256 hashes).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Role;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    /// User id.
    pub sub: Uuid,
    /// Session id.
    pub sid: Uuid,
    pub name: String,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
}

pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Tokens whose signature was checked, with their claims: a client
    /// sends the same token on every request, and checking it (base64,
    /// HMAC, two JSON documents) was a fifth of a status read's CPU.
    /// Only valid tokens enter; expiry is still checked on every use.
    verified: moka::sync::Cache<String, AccessClaims>,
}

/// Verified tokens a server remembers.
const VERIFIED_TOKENS: u64 = 10_000;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Keys {
    pub fn new(secret: &[u8]) -> Keys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            verified: moka::sync::Cache::new(VERIFIED_TOKENS),
        }
    }

    pub fn issue(
        &self,
        sub: Uuid,
        sid: Uuid,
        name: &str,
        role: Role,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        let iat = now();
        let claims = AccessClaims {
            sub,
            sid,
            name: name.to_string(),
            role,
            iat,
            exp: iat + ttl.as_secs(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// The claims of a valid, unexpired token this server signed.
    pub fn verify(&self, token: &str) -> Option<AccessClaims> {
        let claims = match self.verified.get(token) {
            Some(c) => c,
            None => {
                let c =
                    jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
                        .ok()?
                        .claims;
                self.verified.insert(token.to_string(), c.clone());
                c
            }
        };
        // jsonwebtoken accepts exp == now; a token is valid strictly before its expiry.
        (claims.exp > now()).then_some(claims)
    }
}

/// A new refresh token and the hash under which it is stored.
pub fn new_refresh_token() -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_expiry_and_not_after() {
        let keys = Keys::new(b"0123456789abcdef0123456789abcdef");
        let (u, s) = (Uuid::new_v4(), Uuid::new_v4());
        let t = keys
            .issue(u, s, "ada", Role::Admin, Duration::from_secs(60))
            .unwrap();
        let c = keys.verify(&t).unwrap();
        assert_eq!((c.sub, c.sid, c.role), (u, s, Role::Admin));
        let expired = keys
            .issue(u, s, "ada", Role::Admin, Duration::ZERO)
            .unwrap();
        assert!(keys.verify(&expired).is_none());
        let other = Keys::new(b"another secret of at least 32 bytes!");
        assert!(
            other.verify(&t).is_none(),
            "a token signed with another key"
        );
        assert!(keys.verify("not.a.token").is_none());
        // Remembered tokens are still checked: another signature is
        // another token, and a remembered one expires.
        let mut forged = t.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(keys.verify(&forged).is_none(), "a changed signature");
        let mut stale = c.clone();
        stale.exp = now() - 1;
        keys.verified.insert(t.clone(), stale);
        assert!(
            keys.verify(&t).is_none(),
            "a remembered token past its expiry"
        );
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let (a, ha) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(hash_refresh_token(&a), ha);
        assert_eq!(ha.len(), 32);
    }
}
