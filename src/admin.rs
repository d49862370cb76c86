//! The command line's admin client: `sidestream group describe GROUP` asks a running agent,
//! over the Kafka protocol like any client, for the group's state and members
//! (DescribeGroups, or ConsumerGroupDescribe for KIP-848 groups), its committed offsets
//! (OffsetFetch) and the log end offsets (ListOffsets), and shows the lag of every partition.
//!
//! Must not touch: server internals; it only speaks the wire protocol, so it works against any
//! agent (or a Kafka broker).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerProtocolAssignment, DescribeGroupsRequest, GroupId, ListOffsetsRequest, OffsetFetchRequest,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response accepted.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// ListOffsets timestamp asking for the log end offset.
const LATEST_TIMESTAMP: i64 = -1;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("bad response: {0}")]
    Protocol(String),
    #[error("{api} failed with Kafka error code {code}")]
    Kafka { api: &'static str, code: i16 },
}

/// One partition of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagRow {
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub log_end: Option<i64>,
    pub member_id: String,
    pub client_id: String,
    pub host: String,
}

impl LagRow {
    pub fn lag(&self) -> Option<i64> {
        Some((self.log_end? - self.committed?).max(0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReport {
    pub group: String,
    pub state: String,
    /// "classic" or "consumer" (KIP-848).
    pub group_type: String,
    pub members: usize,
    pub rows: Vec<LagRow>,
}

struct Conn {
    stream: TcpStream,
    correlation_id: i32,
}

impl Conn {
    async fn call<R: Request>(&mut self, version: i16, req: &R) -> Result<R::Response, AdminError> {
        self.correlation_id += 1;
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("sidestream-cli")));
        let bad = |e: anyhow::Error| AdminError::Protocol(e.to_string());
        header.encode(&mut buf, R::header_version(version)).map_err(bad)?;
        req.encode(&mut buf, version).map_err(bad)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf).await?;
        let len = self.stream.read_i32().await?;
        if len < 0 || len as usize > RESPONSE_BYTES_MAX {
            return Err(AdminError::Protocol(format!("response of {len} bytes")));
        }
        let mut body = vec![0u8; len as usize];
        self.stream.read_exact(&mut body).await?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version)).map_err(bad)?;
        if header.correlation_id != self.correlation_id {
            return Err(AdminError::Protocol("correlation id mismatch".into()));
        }
        R::Response::decode(&mut body, version).map_err(bad)
    }
}

fn kafka(api: &'static str, code: i16) -> Result<(), AdminError> {
    if code == 0 { Ok(()) } else { Err(AdminError::Kafka { api, code }) }
}

/// Describes `group` through the agent at `bootstrap` (host:port).
pub async fn describe_group(bootstrap: &str, group: &str, timeout: Duration) -> Result<GroupReport, AdminError> {
    tokio::time::timeout(timeout, describe(bootstrap, group)).await.map_err(|_| AdminError::Timeout(timeout))?
}

/// (topic, partition) -> (member id, client id, host)
type Owners = BTreeMap<(String, i32), (String, String, String)>;

async fn describe(bootstrap: &str, group: &str) -> Result<GroupReport, AdminError> {
    let stream = TcpStream::connect(bootstrap).await.map_err(|source| AdminError::Connect { addr: bootstrap.into(), source })?;
    let mut c = Conn { stream, correlation_id: 0 };
    let gid = GroupId(StrBytes::from_string(group.to_string()));
    let mut owners: Owners = BTreeMap::new();
    let described = c.call(5, &DescribeGroupsRequest::default().with_groups(vec![gid.clone()])).await?;
    let d = described.groups.into_iter().next().ok_or_else(|| AdminError::Protocol("no group described".into()))?;
    kafka("DescribeGroups", d.error_code)?;
    let (state, group_type, members) = if d.group_state.as_str() != "Dead" {
        for m in &d.members {
            let mut b = m.member_assignment.clone();
            if d.protocol_type.as_str() != "consumer" || b.remaining() < 2 {
                continue;
            }
            let version = b.get_i16();
            if let Ok(a) = ConsumerProtocolAssignment::decode(&mut b, version.clamp(0, 3)) {
                for tp in a.assigned_partitions {
                    for p in tp.partitions {
                        owners.insert(
                            (tp.topic.0.to_string(), p),
                            (m.member_id.to_string(), m.client_id.to_string(), m.client_host.to_string()),
                        );
                    }
                }
            }
        }
        (d.group_state.to_string(), "classic".to_string(), d.members.len())
    } else {
        let r = c.call(0, &ConsumerGroupDescribeRequest::default().with_group_ids(vec![gid.clone()])).await?;
        match r.groups.into_iter().next() {
            Some(g) if g.error_code == 0 => {
                for m in &g.members {
                    for tp in &m.assignment.topic_partitions {
                        for p in &tp.partitions {
                            owners.insert(
                                (tp.topic_name.0.to_string(), *p),
                                (m.member_id.to_string(), m.client_id.to_string(), m.client_host.to_string()),
                            );
                        }
                    }
                }
                (g.group_state.to_string(), "consumer".to_string(), g.members.len())
            }
            // Neither kind has it: a group known only by its committed offsets, or none.
            _ => ("Dead".to_string(), "classic".to_string(), 0),
        }
    };
    let fetched = c
        .call(8, &OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default().with_group_id(gid).with_topics(None)]))
        .await?;
    let mut committed: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for g in fetched.groups {
        kafka("OffsetFetch", g.error_code)?;
        for t in g.topics {
            for p in t.partitions {
                if p.error_code == 0 && p.committed_offset >= 0 {
                    committed.insert((t.name.0.to_string(), p.partition_index), p.committed_offset);
                }
            }
        }
    }
    let mut keys: Vec<(String, i32)> = committed.keys().chain(owners.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (t, p) in &keys {
        by_topic.entry(t.clone()).or_default().push(*p);
    }
    let mut log_end: BTreeMap<(String, i32), i64> = BTreeMap::new();
    if !by_topic.is_empty() {
        let req = ListOffsetsRequest::default().with_replica_id(kafka_protocol::messages::BrokerId(-1)).with_topics(
            by_topic
                .iter()
                .map(|(t, ps)| {
                    ListOffsetsTopic::default().with_name(TopicName(StrBytes::from_string(t.clone()))).with_partitions(
                        ps.iter()
                            .map(|p| ListOffsetsPartition::default().with_partition_index(*p).with_timestamp(LATEST_TIMESTAMP))
                            .collect(),
                    )
                })
                .collect(),
        );
        for t in c.call(7, &req).await?.topics {
            for p in t.partitions {
                if p.error_code == 0 {
                    log_end.insert((t.name.0.to_string(), p.partition_index), p.offset);
                }
            }
        }
    }
    let rows = keys
        .into_iter()
        .map(|k| {
            let (member_id, client_id, host) = owners.get(&k).cloned().unwrap_or_default();
            LagRow {
                committed: committed.get(&k).copied(),
                log_end: log_end.get(&k).copied(),
                topic: k.0,
                partition: k.1,
                member_id,
                client_id,
                host,
            }
        })
        .collect();
    Ok(GroupReport { group: group.to_string(), state, group_type, members, rows })
}

/// The report as kafka-consumer-groups.sh --describe prints it.
pub fn render(r: &GroupReport) -> String {
    let dash = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let mut lines = vec![format!("Group {} ({} protocol): {}, {} member(s)", r.group, r.group_type, r.state, r.members), String::new()];
    let mut table =
        vec![["TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "MEMBER-ID", "HOST", "CLIENT-ID"].map(String::from)];
    for row in &r.rows {
        let or_dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
        table.push([
            row.topic.clone(),
            row.partition.to_string(),
            dash(row.committed),
            dash(row.log_end),
            dash(row.lag()),
            or_dash(&row.member_id),
            or_dash(&row.host),
            or_dash(&row.client_id),
        ]);
    }
    let widths: Vec<usize> = (0..8).map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for r in &table {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        lines.push(cells.join("  ").trim_end().to_string());
    }
    if r.rows.is_empty() {
        lines.push("(no committed offsets and no assigned partitions)".into());
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_log_end_minus_committed_and_renders_dashes_when_unknown() {
        let row = |committed, log_end| LagRow {
            topic: "t".into(),
            partition: 0,
            committed,
            log_end,
            member_id: String::new(),
            client_id: String::new(),
            host: String::new(),
        };
        assert_eq!(row(Some(3), Some(10)).lag(), Some(7));
        assert_eq!(row(None, Some(10)).lag(), None);
        let text = render(&GroupReport {
            group: "g".into(),
            state: "Empty".into(),
            group_type: "classic".into(),
            members: 0,
            rows: vec![row(Some(3), Some(10)), row(None, None)],
        });
        assert!(text.contains("t      0          3               10              7    -"), "{text}");
        assert!(text.lines().last().unwrap().starts_with("t      0          -"), "{text}");
    }
}
