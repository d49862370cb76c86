//! SCRAM credentials (RFC 5802, RFC 7677) as Kafka keeps them: per user and mechanism, the
//! salt, the iteration count and the two keys derived from the salted password. The password
//! itself is never stored, and never crosses the controller's link: AlterUserScramCredentials
//! carries the salted password, and the controller keeps only `StoredKey` and `ServerKey`.
//!
//! Shared by the controller (storing), the agent (checking SCRAM proofs and PLAIN passwords)
//! and `sidestream user` (deriving a credential from a password typed in).

use ring::{digest, hmac, pbkdf2};
use serde::{Deserialize, Serialize};

/// Kafka's bounds on a credential's iteration count (`ScramMechanism.minIterations` and the
/// broker's maximum).
pub const ITERATIONS_MIN: u32 = 4096;
pub const ITERATIONS_MAX: u32 = 16384;
/// What `sidestream user add` uses (Kafka's tools default to 4096; more costs each PLAIN login).
pub const ITERATIONS_DEFAULT: u32 = 8192;
/// Length of a salt made here.
pub const SALT_BYTES: usize = 32;

/// A SCRAM mechanism, with the number Kafka's user-credential APIs give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The `mechanism` number of AlterUserScramCredentials and DescribeUserScramCredentials.
    pub fn kafka_type(self) -> i8 {
        match self {
            Self::Sha256 => 1,
            Self::Sha512 => 2,
        }
    }

    pub fn from_kafka_type(t: i8) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.kafka_type() == t)
    }

    fn hmac_algorithm(self) -> hmac::Algorithm {
        match self {
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest_algorithm(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha512 => &digest::SHA512,
        }
    }

    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac_algorithm(), key), data).as_ref().to_vec()
    }

    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest_algorithm(), data).as_ref().to_vec()
    }

    /// `Hi(password, salt, i)`: PBKDF2 with this mechanism's HMAC.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let algorithm = match self {
            Self::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Self::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        };
        let mut out = vec![0u8; self.digest_algorithm().output_len()];
        let iterations = std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        pbkdf2::derive(algorithm, iterations, salt, password, &mut out);
        out
    }
}

/// What the controller stores for one user and mechanism.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    pub mechanism: ScramMechanism,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    pub iterations: u32,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// The credential of a salted password (what AlterUserScramCredentials sends).
    pub fn from_salted_password(mechanism: ScramMechanism, salt: Vec<u8>, salted_password: &[u8], iterations: u32) -> Self {
        let client_key = mechanism.hmac(salted_password, b"Client Key");
        let stored_key = mechanism.hash(&client_key);
        let server_key = mechanism.hmac(salted_password, b"Server Key");
        Self { mechanism, salt, stored_key, server_key, iterations }
    }

    pub fn from_password(mechanism: ScramMechanism, password: &str, salt: Vec<u8>, iterations: u32) -> Self {
        let salted = mechanism.salted_password(password.as_bytes(), &salt, iterations);
        Self::from_salted_password(mechanism, salt, &salted, iterations)
    }

    /// Whether `password` is the one this credential was made from (PLAIN logins), in constant
    /// time.
    pub fn matches_password(&self, password: &str) -> bool {
        let other = Self::from_password(self.mechanism, password, self.salt.clone(), self.iterations);
        constant_time_eq(&other.stored_key, &self.stored_key)
    }
}

/// Whether `a == b`, in time that depends on their lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// A user's credentials: upserted (with the salted password) or deleted, one mechanism each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScramAlteration {
    Upsert { user: String, credential: ScramCredential },
    Delete { user: String, mechanism: ScramMechanism },
}

impl ScramAlteration {
    pub fn user(&self) -> &str {
        match self {
            Self::Upsert { user, .. } | Self::Delete { user, .. } => user,
        }
    }
}

/// A user and the mechanisms (with iterations) it has credentials for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramUser {
    pub user: String,
    pub credentials: Vec<(ScramMechanism, u32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 example: user "user", password "pencil".
    #[test]
    fn rfc7677_keys() {
        let salt = base64_decode("W22ZaJ0SNY7soEsUEjb6gQ==");
        let c = ScramCredential::from_password(ScramMechanism::Sha256, "pencil", salt, 4096);
        let server_key = c.server_key.clone();
        // ServerSignature of the RFC's exchange.
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = ScramMechanism::Sha256.hmac(&server_key, auth_message.as_bytes());
        assert_eq!(signature, base64_decode("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="));
        assert!(c.matches_password("pencil"));
        assert!(!c.matches_password("pencil2"));
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }
}
