//! The one place that names objects: `<prefix>/<2 hex chars of a hash>/<agent>/<ulid>.sso`
//! (uploads), `.../<ulid>.p.sso` (per-partition objects written by object compaction) or
//! `.../<ulid>.s.sso` (partition-sorted objects written by object compaction).
//!
//! The hashed first component spreads load across S3 prefixes (S3 scales request rates per
//! prefix); the ULID sorts by creation time within an agent's folder.

use crate::clock::{Clock, Entropy};
pub use crate::format::object::{PARTITION_OBJECT_SUFFIX, SORTED_OBJECT_SUFFIX};

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
    object_key(prefix, agent, clock, entropy, OBJECT_SUFFIX)
}

/// Like [`new_object_key`], for a per-partition object (compaction's output): the file name
/// ends with [`PARTITION_OBJECT_SUFFIX`].
pub fn new_partition_object_key(prefix: &str, agent: &str, clock: &dyn Clock, entropy: &dyn Entropy) -> String {
    object_key(prefix, agent, clock, entropy, PARTITION_OBJECT_SUFFIX)
}

/// Like [`new_object_key`], for a partition-sorted object (compaction's output for partitions
/// with small shares): the file name ends with [`SORTED_OBJECT_SUFFIX`].
pub fn new_sorted_object_key(prefix: &str, agent: &str, clock: &dyn Clock, entropy: &dyn Entropy) -> String {
    object_key(prefix, agent, clock, entropy, SORTED_OBJECT_SUFFIX)
}

fn object_key(prefix: &str, agent: &str, clock: &dyn Clock, entropy: &dyn Entropy, suffix: &str) -> String {
    let id = ulid(clock.now_ms(), entropy);
    let spread = fnv1a(id.as_bytes()) as u8;
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() { format!("{spread:02x}/{agent}/{id}{suffix}") } else { format!("{prefix}/{spread:02x}/{agent}/{id}{suffix}") }
}

/// What an object key says about its object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKeyParts<'a> {
    pub agent: &'a str,
    /// When the key was made (the ULID's time): an upper bound on the object's upload start.
    pub created_ms: i64,
}

/// Parses a key made by [`new_object_key`]; None for anything else (foreign objects in the
/// bucket, temporary files), which background jobs must leave alone.
pub fn parse_object_key(key: &str) -> Option<ObjectKeyParts<'_>> {
    let mut parts = key.rsplit('/');
    let file = parts.next()?;
    let agent = parts.next()?;
    let spread = parts.next()?;
    let id = file
        .strip_suffix(PARTITION_OBJECT_SUFFIX)
        .or_else(|| file.strip_suffix(SORTED_OBJECT_SUFFIX))
        .or_else(|| file.strip_suffix(OBJECT_SUFFIX))?;
    if id.len() != 26 || agent.is_empty() || spread.len() != 2 || !spread.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if fnv1a(id.as_bytes()) as u8 != u8::from_str_radix(spread, 16).ok()? {
        return None;
    }
    let mut value = 0u128;
    for c in id.bytes() {
        let digit = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".iter().position(|a| *a == c)?;
        value = value << 5 | digit as u128;
    }
    Some(ObjectKeyParts { agent, created_ms: (value >> 80) as i64 })
}

/// The 256 hashed prefixes under `prefix` (`<prefix>/00/` .. `<prefix>/ff/`): listing them one by
/// one walks every object without one huge listing.
pub fn spread_prefixes(prefix: &str) -> impl Iterator<Item = String> + '_ {
    let prefix = prefix.trim_matches('/');
    (0..=255u8).map(move |b| if prefix.is_empty() { format!("{b:02x}/") } else { format!("{prefix}/{b:02x}/") })
}

/// The full key of `key` in a store rooted at `root` (an `s3://bucket/root` URL's path).
pub fn rooted(root: &str, key: &str) -> String {
    let root = root.trim_matches('/');
    if root.is_empty() { key.to_string() } else { format!("{root}/{key}") }
}

/// The inverse of [`rooted`]: None if `full` is not under `root`.
pub fn unrooted<'a>(root: &str, full: &'a str) -> Option<&'a str> {
    let root = root.trim_matches('/');
    if root.is_empty() { Some(full) } else { full.strip_prefix(root)?.strip_prefix('/') }
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

    #[test]
    fn keys_parse_back_and_foreign_keys_do_not() {
        let clock = ManualClock::new(1_700_000_000_123);
        let e = SeededEntropy::new(2);
        let key = new_object_key("p/q", "agent-7", &clock, &e);
        assert_eq!(parse_object_key(&key), Some(ObjectKeyParts { agent: "agent-7", created_ms: 1_700_000_000_123 }));
        let bare = new_object_key("", "a", &clock, &e);
        assert_eq!(parse_object_key(&bare).map(|p| p.created_ms), Some(1_700_000_000_123));
        let compacted = new_partition_object_key("p", "agent-7", &clock, &e);
        assert!(compacted.ends_with(".p.sso") && crate::format::object::is_partition_object(&compacted), "{compacted}");
        assert_eq!(parse_object_key(&compacted), Some(ObjectKeyParts { agent: "agent-7", created_ms: 1_700_000_000_123 }));
        assert!(!crate::format::object::is_partition_object(&key));
        let sorted = new_sorted_object_key("p", "agent-7", &clock, &e);
        assert!(sorted.ends_with(".s.sso") && crate::format::object::is_sorted_object(&sorted), "{sorted}");
        assert!(!crate::format::object::is_partition_object(&sorted) && !crate::format::object::is_sorted_object(&compacted));
        assert_eq!(parse_object_key(&sorted), Some(ObjectKeyParts { agent: "agent-7", created_ms: 1_700_000_000_123 }));
        // A wrong spread prefix, a temp file, a foreign object: not ours.
        let wrong = format!("zz{}", &bare[2..]);
        assert_eq!(parse_object_key(&wrong), None);
        assert_eq!(parse_object_key(&format!("{bare}.tmp1")), None);
        assert_eq!(parse_object_key("backups/2024/file.sso"), None);
        assert_eq!(spread_prefixes("/p/").nth(255).as_deref(), Some("p/ff/"));
        assert_eq!(spread_prefixes("").next().as_deref(), Some("00/"));
        assert_eq!(rooted("/root/", "00/a/b.sso"), "root/00/a/b.sso");
        assert_eq!(unrooted("root", "root/00/a/b.sso"), Some("00/a/b.sso"));
        assert_eq!(unrooted("root", "rootx/00"), None);
        assert_eq!(unrooted("", "00/a"), Some("00/a"));
    }
}
