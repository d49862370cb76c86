//! Request dispatch: check the API key and version against what is implemented, decode the
//! header and body, run the handler of the API's family, encode the response.
//!
//! Kafka's rules for what cannot be answered: an unknown API key, an unsupported version of any
//! API but ApiVersions, or a header or body that does not decode closes the connection;
//! ApiVersions with a too-new version gets a v0 answer with UNSUPPORTED_VERSION and the table.

mod admin;
mod api_versions;
mod fetch;
mod list_offsets;
mod metadata;
mod produce;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, DeleteTopicsRequest, FetchRequest, ListOffsetsRequest,
    MetadataRequest, ProduceRequest, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::agent::Agent;

/// Every API this agent answers, with the versions it implements. ApiVersions advertises
/// exactly this table.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
];

pub fn supported_versions(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS.iter().find(|(k, _, _)| *k == key).map(|(_, lo, hi)| (*lo, *hi))
}

/// What the connection does with a request.
#[derive(Debug)]
pub enum Outcome {
    /// A whole response frame, length prefix included.
    Respond(Bytes),
    /// Produce with acks=0: Kafka sends nothing back.
    NoResponse,
    /// The request cannot be answered; close the connection (after earlier answers).
    Close(String),
}

/// Handles one request frame (without its length prefix).
pub async fn handle(agent: Arc<Agent>, frame: Bytes) -> Outcome {
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(key) = ApiKey::try_from(api_key) else {
        return Outcome::Close(format!("unknown api key {api_key}"));
    };
    let Some((lo, hi)) = supported_versions(key) else {
        return Outcome::Close(format!("api {key:?} is not implemented"));
    };
    if version < lo || version > hi {
        if key == ApiKey::ApiVersions {
            return api_versions::unsupported_version(correlation_id);
        }
        return Outcome::Close(format!("unsupported version {version} of {key:?}"));
    }
    let mut buf = frame;
    let header = match RequestHeader::decode(&mut buf, key.request_header_version(version)) {
        Ok(h) => h,
        Err(e) => return Outcome::Close(format!("bad request header: {e}")),
    };
    macro_rules! decode {
        ($ty:ty) => {
            match <$ty>::decode(&mut buf, version) {
                Ok(r) => r,
                Err(e) => return Outcome::Close(format!("cannot decode {key:?} v{version}: {e}")),
            }
        };
    }
    let ctx = Ctx { key, version, correlation_id: header.correlation_id };
    match key {
        ApiKey::ApiVersions => {
            let _ = decode!(ApiVersionsRequest);
            ctx.respond(&api_versions::handle(version))
        }
        ApiKey::Metadata => ctx.respond(&metadata::handle(&agent, version, decode!(MetadataRequest)).await),
        ApiKey::CreateTopics => ctx.respond(&admin::create_topics(&agent, version, decode!(CreateTopicsRequest)).await),
        ApiKey::DeleteTopics => ctx.respond(&admin::delete_topics(&agent, version, decode!(DeleteTopicsRequest)).await),
        ApiKey::Produce => match produce::handle(&agent, version, decode!(ProduceRequest)).await {
            Some(resp) => ctx.respond(&resp),
            None => Outcome::NoResponse,
        },
        ApiKey::Fetch => ctx.respond(&fetch::handle(&agent, version, decode!(FetchRequest)).await),
        ApiKey::ListOffsets => ctx.respond(&list_offsets::handle(&agent, version, decode!(ListOffsetsRequest)).await),
        _ => Outcome::Close(format!("api {key:?} is not implemented")),
    }
}

struct Ctx {
    key: ApiKey,
    version: i16,
    correlation_id: i32,
}

impl Ctx {
    fn respond<R: Encodable>(&self, body: &R) -> Outcome {
        encode_response(self.key.response_header_version(self.version), self.correlation_id, self.version, body)
            .unwrap_or_else(|e| {
                tracing::error!(api = ?self.key, version = self.version, error = %e, "cannot encode response");
                Outcome::Close(format!("cannot encode {:?} v{} response: {e}", self.key, self.version))
            })
    }
}

fn encode_response<R: Encodable>(header_version: i16, correlation_id: i32, version: i16, body: &R) -> Result<Outcome, String> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    body.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(Outcome::Respond(buf.freeze()))
}

/// Converts a String into the crate's string type.
fn str_bytes(s: impl Into<String>) -> kafka_protocol::protocol::StrBytes {
    kafka_protocol::protocol::StrBytes::from_string(s.into())
}
