//! Join tokens (PROTOCOL.md section 2): HS256 JWTs naming a room, checked
//! with the current secret and, during a rotation, the previous one. Pure
//! logic: single-use (`jti`) is enforced by [`crate::replay`].

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::{is_valid_room_id, new_jti, MAX_JTI_LEN};

/// The claims a join token must carry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub room: String,
    pub exp: u64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Why a token was refused. Every variant closes the session with 4401;
/// the variant only goes to debug logs (never the token itself).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("signature does not verify")]
    BadSignature,
    #[error("algorithm not accepted")]
    WrongAlgorithm,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token lifetime longer than JOIN_TOKEN_MAX_TTL_SECS")]
    LifetimeTooLong,
    #[error("required claim missing or malformed")]
    BadClaims,
    #[error("token is not a well-formed JWT")]
    Malformed,
}

/// Mints and verifies join tokens.
pub struct JoinTokens {
    encoding: EncodingKey,
    current: DecodingKey,
    previous: Option<DecodingKey>,
    validation: Validation,
    max_ttl_secs: u64,
    leeway_secs: u64,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JoinTokens {
    pub fn new(
        secret: &[u8],
        previous: Option<&[u8]>,
        max_ttl_secs: u64,
        leeway_secs: u64,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        JoinTokens {
            encoding: EncodingKey::from_secret(secret),
            current: DecodingKey::from_secret(secret),
            previous: previous.map(DecodingKey::from_secret),
            validation,
            max_ttl_secs,
            leeway_secs,
        }
    }

    /// Mints a single-use token for `room`, valid `ttl_secs` (capped at the
    /// maximum lifetime). Returns the token and its expiry.
    pub fn mint(&self, room: &str, ttl_secs: u64) -> (String, u64) {
        let now = now_secs();
        let exp = now + ttl_secs.min(self.max_ttl_secs);
        let claims = Claims {
            room: room.to_owned(),
            exp,
            jti: new_jti(),
            iat: Some(now),
            nbf: None,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail");
        (token, exp)
    }

    /// Checks signature, algorithm and claims; on success the caller still
    /// has to burn the `jti`.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let claims = match jsonwebtoken::decode::<Claims>(token, &self.current, &self.validation) {
            Ok(data) => data.claims,
            Err(e) if *e.kind() == ErrorKind::InvalidSignature => match &self.previous {
                Some(prev) => {
                    jsonwebtoken::decode::<Claims>(token, prev, &self.validation)
                        .map_err(map_error)?
                        .claims
                }
                None => return Err(TokenError::BadSignature),
            },
            Err(e) => return Err(map_error(e)),
        };
        let now = now_secs();
        if claims.exp > now + self.max_ttl_secs + self.leeway_secs {
            return Err(TokenError::LifetimeTooLong);
        }
        if claims.iat.is_some_and(|iat| iat > now + self.leeway_secs) {
            return Err(TokenError::NotYetValid);
        }
        if !is_valid_room_id(&claims.room)
            || claims.jti.is_empty()
            || claims.jti.len() > MAX_JTI_LEN
        {
            return Err(TokenError::BadClaims);
        }
        Ok(claims)
    }
}

fn map_error(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::WrongAlgorithm,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => TokenError::BadClaims,
        _ => TokenError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    fn tokens() -> JoinTokens {
        JoinTokens::new(SECRET, None, 3600, 5)
    }

    fn sign(claims: &serde_json::Value, secret: &[u8], alg: Algorithm) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn good_claims() -> serde_json::Value {
        serde_json::json!({"room": "room1", "exp": now_secs() + 60, "jti": "j1"})
    }

    #[test]
    fn a_minted_token_verifies_and_names_its_room() {
        let t = tokens();
        let (tok, exp) = t.mint("abc", 600);
        let c = t.verify(&tok).unwrap();
        assert_eq!(c.room, "abc");
        assert_eq!(c.exp, exp);
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let tok = sign(
            &good_claims(),
            b"another-secret-another-secret-000",
            Algorithm::HS256,
        );
        assert_eq!(tokens().verify(&tok), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_token_signed_with_the_previous_secret_is_accepted_during_rotation() {
        let prev = b"previous-secret-previous-secret-0";
        let t = JoinTokens::new(SECRET, Some(prev), 3600, 5);
        let tok = sign(&good_claims(), prev, Algorithm::HS256);
        assert!(t.verify(&tok).is_ok());
    }

    #[test]
    fn other_hmac_algorithms_are_refused() {
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let tok = sign(&good_claims(), SECRET, alg);
            assert_eq!(tokens().verify(&tok), Err(TokenError::WrongAlgorithm));
        }
    }

    #[test]
    fn an_unsigned_alg_none_token_is_refused() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let p = URL_SAFE_NO_PAD.encode(good_claims().to_string());
        assert!(tokens().verify(&format!("{h}.{p}.")).is_err());
    }

    #[test]
    fn expiry_not_before_and_lifetime_are_enforced() {
        let now = now_secs();
        let t = tokens();
        let expired = serde_json::json!({"room":"r","exp": now - 60,"jti":"j"});
        assert_eq!(
            t.verify(&sign(&expired, SECRET, Algorithm::HS256)),
            Err(TokenError::Expired)
        );
        let future = serde_json::json!({"room":"r","exp": now + 600,"nbf": now + 300,"jti":"j"});
        assert_eq!(
            t.verify(&sign(&future, SECRET, Algorithm::HS256)),
            Err(TokenError::NotYetValid)
        );
        let iat = serde_json::json!({"room":"r","exp": now + 600,"iat": now + 300,"jti":"j"});
        assert_eq!(
            t.verify(&sign(&iat, SECRET, Algorithm::HS256)),
            Err(TokenError::NotYetValid)
        );
        let long = serde_json::json!({"room":"r","exp": now + 7200,"jti":"j"});
        assert_eq!(
            t.verify(&sign(&long, SECRET, Algorithm::HS256)),
            Err(TokenError::LifetimeTooLong)
        );
        let within_leeway = serde_json::json!({"room":"r","exp": now - 2,"jti":"j"});
        assert!(t
            .verify(&sign(&within_leeway, SECRET, Algorithm::HS256))
            .is_ok());
    }

    #[test]
    fn missing_or_malformed_claims_are_refused() {
        let now = now_secs();
        let t = tokens();
        for claims in [
            serde_json::json!({"exp": now + 60, "jti": "j"}),
            serde_json::json!({"room": "r", "jti": "j"}),
            serde_json::json!({"room": "r", "exp": now + 60}),
            serde_json::json!({"room": "bad room", "exp": now + 60, "jti": "j"}),
            serde_json::json!({"room": "r", "exp": now + 60, "jti": "j".repeat(129)}),
            serde_json::json!({"room": "r", "exp": now + 60, "jti": ""}),
        ] {
            assert!(
                t.verify(&sign(&claims, SECRET, Algorithm::HS256)).is_err(),
                "{claims}"
            );
        }
        assert_eq!(t.verify("not-a-jwt"), Err(TokenError::Malformed));
    }

    #[test]
    fn a_string_typed_exp_is_not_taken_as_a_number() {
        let claims =
            serde_json::json!({"room": "r", "exp": (now_secs() + 60).to_string(), "jti": "j"});
        assert!(tokens()
            .verify(&sign(&claims, SECRET, Algorithm::HS256))
            .is_err());
    }
}
