//! The one place that names objects: `<prefix>/<2 hex chars of a hash>/<agent>/<ulid>.sso`.
//!
//! The hashed first component spreads load across S3 prefixes (S3 scales request rates per
//! prefix); the ULID sorts by creation time within an agent's folder.

use crate::clock::{Clock, Entropy};

pub const OBJECT_SUFFIX: &str = ".sso";

/// Crockford base32 ULID: 48 bits of milliseconds then 80 random bits, 26 characters.
pub fn ulid(now_ms: i64, entropy: &dyn Entropy) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let time = (now_ms.max(0) as u128) & ((1u128 << 48) - 1);
    let rand = ((entropy.next_u64() as u128) << 16 | (entropy.next_u64() as u128 & 0xffff)) & ((1u128 << 80) - 1);
    let value = time << 80 | rand;
    (0..26).map(|i| ALPHABET[((value >> (125 - 5 * i)) & 0x1f) as usize] as char).collect()
}

/// FNV-1a: stable across versions and platforms (the std hasher is neither).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A fresh key for an object written by `agent`.
pub fn new_object_key(prefix: &str, agent: &str, clock: &dyn Clock, entropy: &dyn Entropy) -> String {
    let id = ulid(clock.now_ms(), entropy);
    let spread = fnv1a(id.as_bytes()) as u8;
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{spread:02x}/{agent}/{id}{OBJECT_SUFFIX}")
    } else {
        format!("{prefix}/{spread:02x}/{agent}/{id}{OBJECT_SUFFIX}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SeededEntropy};
    use crate::object::store::check_key;

    #[test]
    fn keys_are_valid_unique_and_time_ordered_per_agent() {
        let clock = ManualClock::new(1_700_000_000_000);
        let e = SeededEntropy::new(1);
        let a = new_object_key("data", "agent-1", &clock, &e);
        clock.advance_ms(1);
        let b = new_object_key("", "agent-1", &clock, &e);
        check_key(&a).unwrap();
        check_key(&b).unwrap();
        assert!(a.starts_with("data/") && a.ends_with(".sso"), "{a}");
        let ulid_a = a.rsplit('/').next().unwrap();
        let ulid_b = b.rsplit('/').next().unwrap();
        assert_eq!(ulid_a.len(), 26 + 4);
        assert!(ulid_a < ulid_b);
    }
}
