//! Shared by the wire tests: one connection that sends typed requests and decodes the answers.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

pub struct Conn(pub TcpStream, pub i32);

impl Conn {
    pub async fn call<R: Request>(&mut self, version: i16, req: &R) -> R::Response {
        self.1 += 1;
        let mut b = BytesMut::new();
        b.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.1)
            .with_client_id(Some(s("wire")))
            .encode(&mut b, R::header_version(version))
            .unwrap();
        req.encode(&mut b, version).unwrap();
        let n = (b.len() - 4) as i32;
        b[..4].copy_from_slice(&n.to_be_bytes());
        self.0.write_all(&b).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(20), self.0.read_i32())
            .await
            .expect("an answer in time")
            .unwrap_or_else(|e| panic!("api {} v{version}: connection closed: {e}", R::KEY));
        let mut buf = vec![0u8; n as usize];
        self.0.read_exact(&mut buf).await.unwrap();
        let mut buf = Bytes::from(buf);
        let h = ResponseHeader::decode(&mut buf, R::Response::header_version(version)).unwrap();
        assert_eq!(h.correlation_id, self.1);
        R::Response::decode(&mut buf, version).unwrap()
    }
}
