//! Serde helpers for the API types' fields that have no serde form of their own (`bytes::Bytes`,
//! `uuid::Uuid`; the crates' serde features are off): bytes as hex strings, ids as UUID strings.

use bytes::Bytes;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::api::groups::Assignment;

/// Bytes as a lowercase hex string.
struct Hex(Bytes);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(self.0.len() * 2);
        for b in self.0.iter() {
            out.push(DIGITS[usize::from(b >> 4)] as char);
            out.push(DIGITS[usize::from(b & 15)] as char);
        }
        s.serialize_str(&out)
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(D::Error::custom("odd hex length"));
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|v| v as u8).ok_or_else(|| D::Error::custom("bad hex digit"));
        s.as_bytes()
            .chunks(2)
            .map(|p| -> Result<u8, D::Error> { Ok((digit(p[0])? << 4) | digit(p[1])?) })
            .collect::<Result<Vec<u8>, _>>()
            .map(|v| Hex(v.into()))
    }
}

/// A UUID as its hyphenated string.
struct Id(Uuid);

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map(Id).map_err(D::Error::custom)
    }
}

pub mod hex_bytes {
    use super::*;
    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        Hex(b.clone()).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        Ok(Hex::deserialize(d)?.0)
    }
}

pub mod uuid_str {
    use super::*;
    pub fn serialize<S: Serializer>(id: &Uuid, s: S) -> Result<S::Ok, S::Error> {
        Id(*id).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        Ok(Id::deserialize(d)?.0)
    }
}

/// `Vec<(String, Bytes)>`: JoinGroup protocols, SyncGroup assignments.
pub mod named_bytes {
    use super::*;
    pub fn serialize<S: Serializer>(v: &[(String, Bytes)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(n, b)| (n, Hex(b.clone()))))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, Bytes)>, D::Error> {
        Ok(Vec::<(String, Hex)>::deserialize(d)?.into_iter().map(|(n, h)| (n, h.0)).collect())
    }
}

/// `Option<Assignment>` (KIP-848 owned and assigned partitions).
pub mod assignment {
    use super::*;
    use std::collections::BTreeSet;
    pub fn serialize<S: Serializer>(a: &Option<Assignment>, s: S) -> Result<S::Ok, S::Error> {
        a.as_ref().map(|a| a.iter().map(|(t, ps)| (Id(*t), ps)).collect::<Vec<_>>()).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Assignment>, D::Error> {
        Ok(Option::<Vec<(Id, BTreeSet<i32>)>>::deserialize(d)?.map(|v| v.into_iter().map(|(t, ps)| (t.0, ps)).collect()))
    }
}

/// `Vec<(Uuid, i32)>`: a transaction's partitions.
pub mod uuid_parts {
    use super::*;
    pub fn serialize<S: Serializer>(v: &[(Uuid, i32)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(t, p)| (Id(*t), p)))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Uuid, i32)>, D::Error> {
        Ok(Vec::<(Id, i32)>::deserialize(d)?.into_iter().map(|(t, p)| (t.0, p)).collect())
    }
}

/// `Vec<(Uuid, String, Vec<i32>)>`: KIP-848 described assignments.
pub mod named_uuid_parts {
    use super::*;
    /// (topic id, topic name, partitions).
    type Parts = Vec<(Uuid, String, Vec<i32>)>;
    pub fn serialize<S: Serializer>(v: &Parts, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(t, n, ps)| (Id(*t), n, ps)))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Parts, D::Error> {
        Ok(Vec::<(Id, String, Vec<i32>)>::deserialize(d)?.into_iter().map(|(t, n, ps)| (t.0, n, ps)).collect())
    }
}
