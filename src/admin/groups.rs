//! `sidestream group list|describe|reset-offsets|delete`, as `kafka-consumer-groups.sh` does
//! them: ListGroups on every broker; at the group's coordinator ConsumerGroupDescribe (KIP-848
//! groups) or DescribeGroups (classic), OffsetFetch, OffsetCommit and DeleteGroups; ListOffsets
//! at the partitions' leaders for the log start and end.
//!
//! Must not touch: records; a group command reads no data.

use std::collections::BTreeMap;

use bytes::Buf;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest, GroupId, ListGroupsRequest,
    OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use serde::Serialize;

use super::AdminError;
use super::client::{Client, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, Node, kafka_result};

/// GROUP_ID_NOT_FOUND: no such group (or not of the kind asked about).
const GROUP_ID_NOT_FOUND: i16 = 69;

fn gid(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_string()))
}

/// One group of `group list`.
#[derive(Debug, Clone, Serialize)]
pub struct GroupListing {
    pub group: String,
    /// Empty when the broker's ListGroups predates v4.
    pub state: String,
    /// "classic" or "consumer"; empty before ListGroups v5.
    #[serde(rename = "type")]
    pub group_type: String,
    pub protocol_type: String,
}

/// Every group of every broker.
pub async fn list(c: &mut Client) -> Result<Vec<GroupListing>, AdminError> {
    let version = c.version::<ListGroupsRequest>(5)?;
    let mut out: BTreeMap<String, GroupListing> = BTreeMap::new();
    let nodes: Vec<Node> = match c.brokers() {
        b if b.is_empty() => vec![Node::Bootstrap],
        b => b.into_iter().map(Node::Broker).collect(),
    };
    for node in nodes {
        let r = c.send(node, version, &ListGroupsRequest::default()).await?;
        kafka_result("ListGroups", "", r.error_code, None)?;
        for g in r.groups {
            let group = g.group_id.0.to_string();
            out.insert(
                group.clone(),
                GroupListing {
                    group,
                    state: g.group_state.to_string(),
                    group_type: g.group_type.to_string(),
                    protocol_type: g.protocol_type.to_string(),
                },
            );
        }
    }
    Ok(out.into_values().collect())
}

pub fn render_list(groups: &[GroupListing]) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| vec![g.group.clone(), g.state.clone(), g.group_type.clone(), g.protocol_type.clone()])
        .collect();
    super::table(&["GROUP", "STATE", "TYPE", "PROTOCOL-TYPE"], &rows)
}

/// One partition of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LagRow {
    pub topic: String,
    pub partition: i32,
    #[serde(rename = "committed_offset")]
    pub committed: Option<i64>,
    #[serde(rename = "log_end_offset")]
    pub log_end: Option<i64>,
    pub lag: Option<i64>,
    /// The committed offset is beyond the log end (the log was truncated or recreated): the
    /// lag is negative, not 0.
    pub past_log_end: bool,
    pub member_id: String,
    pub client_id: String,
    pub host: String,
}

impl LagRow {
    fn new(topic: String, partition: i32, committed: Option<i64>, log_end: Option<i64>, owner: (String, String, String)) -> LagRow {
        let lag = match (committed, log_end) {
            (Some(c), Some(e)) => Some(e - c),
            _ => None,
        };
        LagRow {
            topic,
            partition,
            committed,
            log_end,
            lag,
            past_log_end: lag.is_some_and(|l| l < 0),
            member_id: owner.0,
            client_id: owner.1,
            host: owner.2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupReport {
    pub group: String,
    pub state: String,
    /// "classic" or "consumer" (KIP-848).
    #[serde(rename = "type")]
    pub group_type: String,
    pub members: usize,
    #[serde(rename = "partitions")]
    pub rows: Vec<LagRow>,
}

/// (topic, partition) -> (member id, client id, host)
type Owners = BTreeMap<(String, i32), (String, String, String)>;

/// What the coordinator says of a group's membership; None when neither kind of group exists.
struct Membership {
    state: String,
    group_type: String,
    members: usize,
    owners: Owners,
}

async fn membership(c: &mut Client, node: Node, group: &str) -> Result<Option<Membership>, AdminError> {
    let mut owners = Owners::new();
    if c.supports::<ConsumerGroupDescribeRequest>() {
        let version = c.version::<ConsumerGroupDescribeRequest>(1)?;
        let r = c.send(node, version, &ConsumerGroupDescribeRequest::default().with_group_ids(vec![gid(group)])).await?;
        // Any error (GROUP_ID_NOT_FOUND, "not a consumer group"): ask as a classic group.
        if let Some(g) = r.groups.into_iter().next().filter(|g| g.error_code == 0) {
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
            return Ok(Some(Membership {
                state: g.group_state.to_string(),
                group_type: "consumer".into(),
                members: g.members.len(),
                owners,
            }));
        }
    }
    let version = c.version::<DescribeGroupsRequest>(5)?;
    let r = c.send(node, version, &DescribeGroupsRequest::default().with_groups(vec![gid(group)])).await?;
    let d = r
        .groups
        .into_iter()
        .next()
        .ok_or_else(|| AdminError::NotFound(format!("Consumer group '{group}' does not exist.")))?;
    if d.error_code == GROUP_ID_NOT_FOUND || (d.error_code == 0 && d.group_state.as_str() == "Dead") {
        return Ok(None);
    }
    kafka_result("DescribeGroups", &format!("group '{group}'"), d.error_code, d.error_message.map(|m| m.to_string()))?;
    for m in &d.members {
        let mut b = m.member_assignment.clone();
        if d.protocol_type.as_str() != "consumer" || b.remaining() < 2 {
            continue;
        }
        let version = b.get_i16();
        if let Ok(a) = ConsumerProtocolAssignment::decode(&mut b, version.clamp(0, 3)) {
            for tp in a.assigned_partitions {
                for p in tp.partitions {
                    owners
                        .insert((tp.topic.0.to_string(), p), (m.member_id.to_string(), m.client_id.to_string(), m.client_host.to_string()));
                }
            }
        }
    }
    Ok(Some(Membership { state: d.group_state.to_string(), group_type: "classic".into(), members: d.members.len(), owners }))
}

/// The group's committed offsets, asked of its coordinator.
pub async fn committed_offsets(c: &mut Client, node: Node, group: &str) -> Result<BTreeMap<(String, i32), i64>, AdminError> {
    let version = c.version::<OffsetFetchRequest>(8)?;
    let req = if version >= 8 {
        OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default().with_group_id(gid(group)).with_topics(None)])
    } else {
        OffsetFetchRequest::default().with_group_id(gid(group)).with_topics(None)
    };
    let r = c.send(node, version.max(2), &req).await?;
    let context = format!("group '{group}'");
    let mut out = BTreeMap::new();
    let mut take = |topic: &TopicName, partition: i32, offset: i64, code: i16| {
        if code == 0 && offset >= 0 {
            out.insert((topic.0.to_string(), partition), offset);
        }
    };
    if version >= 8 {
        for g in r.groups {
            kafka_result("OffsetFetch", &context, g.error_code, None)?;
            for t in g.topics {
                for p in t.partitions {
                    take(&t.name, p.partition_index, p.committed_offset, p.error_code);
                }
            }
        }
    } else {
        kafka_result("OffsetFetch", &context, r.error_code, None)?;
        for t in r.topics {
            for p in t.partitions {
                take(&t.name, p.partition_index, p.committed_offset, p.error_code);
            }
        }
    }
    Ok(out)
}

/// Commits `offsets` for `group` as an admin does (no generation, no member): accepted only
/// while the group has no members.
pub async fn commit_offsets(c: &mut Client, node: Node, group: &str, offsets: &BTreeMap<(String, i32), i64>) -> Result<(), AdminError> {
    let version = c.version::<OffsetCommitRequest>(8)?;
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for ((t, p), o) in offsets {
        by_topic.entry(t).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*o)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(StrBytes::from_static_str(""))),
        );
    }
    let mut req = OffsetCommitRequest::default()
        .with_group_id(gid(group))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_topics(
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    OffsetCommitRequestTopic::default().with_name(TopicName(StrBytes::from_string(t.to_string()))).with_partitions(ps)
                })
                .collect(),
        );
    if (2..=4).contains(&version) {
        req.retention_time_ms = -1;
    }
    let r = c.send(node, version, &req).await?;
    for t in r.topics {
        for p in t.partitions {
            kafka_result("OffsetCommit", &format!("group '{group}', {}-{}", t.name.0, p.partition_index), p.error_code, None)?;
        }
    }
    Ok(())
}

/// Describes `group`: state, members, committed offsets and lag per partition. A group that
/// neither kind of describe knows and that has no committed offsets does not exist (an error,
/// as in kafka-consumer-groups.sh).
pub async fn describe_group(c: &mut Client, group: &str) -> Result<GroupReport, AdminError> {
    let node = c.coordinator(group).await?;
    let membership = membership(c, node, group).await?;
    let committed = committed_offsets(c, node, group).await?;
    let m = match membership {
        Some(m) => m,
        None if committed.is_empty() => return Err(AdminError::NotFound(format!("Consumer group '{group}' does not exist."))),
        // Known only by its committed offsets.
        None => Membership { state: "Empty".into(), group_type: "classic".into(), members: 0, owners: Owners::new() },
    };
    let mut keys: Vec<(String, i32)> = committed.keys().chain(m.owners.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (t, p) in &keys {
        by_topic.entry(t.clone()).or_default().push(*p);
    }
    let log_end = c.list_offsets(&by_topic, LATEST_TIMESTAMP).await?;
    let rows = keys
        .into_iter()
        .map(|k| {
            let owner = m.owners.get(&k).cloned().unwrap_or_default();
            let end = log_end.get(&k).and_then(|r| r.ok());
            LagRow::new(k.0.clone(), k.1, committed.get(&k).copied(), end, owner)
        })
        .collect();
    Ok(GroupReport { group: group.to_string(), state: m.state, group_type: m.group_type, members: m.members, rows })
}

/// The report as kafka-consumer-groups.sh --describe prints it; a committed offset past the
/// log end shows its negative lag and a note.
pub fn render(r: &GroupReport) -> String {
    let dash = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let or_dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    let mut out = format!("Group {} ({} protocol): {}, {} member(s)\n\n", r.group, r.group_type, r.state, r.members);
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| {
            vec![
                row.topic.clone(),
                row.partition.to_string(),
                dash(row.committed),
                dash(row.log_end),
                dash(row.lag),
                or_dash(&row.member_id),
                or_dash(&row.host),
                or_dash(&row.client_id),
            ]
        })
        .collect();
    out.push_str(&super::table(
        &["TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "MEMBER-ID", "HOST", "CLIENT-ID"],
        &rows,
    ));
    if r.rows.is_empty() {
        out.push_str("(no committed offsets and no assigned partitions)\n");
    }
    for row in r.rows.iter().filter(|r| r.past_log_end) {
        out.push_str(&format!(
            "Note: {}-{}: committed offset {} is past the log end offset {}\n",
            row.topic,
            row.partition,
            dash(row.committed),
            dash(row.log_end)
        ));
    }
    out
}

/// Where `group reset-offsets` moves each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetSpec {
    Earliest,
    Latest,
    /// An offset, kept within the log's range.
    Offset(i64),
    /// The first offset at or after a time (ms since the epoch); the log end if none.
    Datetime(i64),
    /// The committed offset moved by this much, kept within the log's range.
    ShiftBy(i64),
}

/// `--topic T` (every partition) or `--topic T:0,2` (those partitions).
pub fn parse_topic_spec(arg: &str) -> Result<(String, Option<Vec<i32>>), AdminError> {
    let bad = || AdminError::Invalid(format!("--topic '{arg}': expected TOPIC or TOPIC:PARTITION[,PARTITION...]"));
    match arg.split_once(':') {
        None if !arg.is_empty() => Ok((arg.to_string(), None)),
        Some((t, ps)) if !t.is_empty() => {
            let parts: Result<Vec<i32>, _> = ps.split(',').map(|p| p.trim().parse::<i32>()).collect();
            match parts {
                Ok(p) if !p.is_empty() && p.iter().all(|&x| x >= 0) => Ok((t.to_string(), Some(p))),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff][Z|+HH:MM|-HH:MM]` (Kafka's `--to-datetime` format) as ms since
/// the epoch; without a zone, UTC.
pub fn parse_datetime(arg: &str) -> Result<i64, AdminError> {
    let bad = || AdminError::Invalid(format!("--to-datetime '{arg}': expected YYYY-MM-DDTHH:MM:SS[.sss][Z|+HH:MM]"));
    let (date, rest) = arg.split_once('T').ok_or_else(bad)?;
    let num = |s: &str| -> Result<i64, AdminError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<i64>().map_err(|_| bad())
    };
    let d: Vec<&str> = date.split('-').collect();
    let [y, mo, da] = d[..] else { return Err(bad()) };
    let (y, mo, da) = (num(y)?, num(mo)?, num(da)?);
    // The zone: Z, or a sign after the time.
    let (time, offset_min) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (t, z) = rest.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (zh, zm) = z[1..].split_once(':').unwrap_or((&z[1..], "0"));
        (t, sign * (num(zh)? * 60 + num(zm)?))
    } else {
        (rest, 0)
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let t: Vec<&str> = hms.split(':').collect();
    let [h, mi, s] = t[..] else { return Err(bad()) };
    let (h, mi, s) = (num(h)?, num(mi)?, num(s)?);
    let ms = if frac.is_empty() { 0 } else { num(&format!("{frac:0<3}")[..3])? };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 86_400 + h * 3600 + mi * 60 + s - offset_min * 60) * 1000) + ms)
}

/// One partition of a reset plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResetRow {
    pub topic: String,
    pub partition: i32,
    /// The committed offset before the reset, if any.
    pub previous_offset: Option<i64>,
    pub new_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResetReport {
    pub group: String,
    /// False for a dry run (without --execute): nothing was committed.
    pub executed: bool,
    pub partitions: Vec<ResetRow>,
}

/// Plans (and with `execute`, commits) new offsets for `group` on `topics` (specs as
/// [`parse_topic_spec`] reads them; none with `all_topics`: the topics it has offsets for).
/// Refused while the group has members, as Kafka's tool does.
pub async fn reset_offsets(
    c: &mut Client,
    group: &str,
    topics: &[String],
    all_topics: bool,
    spec: ResetSpec,
    execute: bool,
) -> Result<ResetReport, AdminError> {
    let node = c.coordinator(group).await?;
    if let Some(m) = membership(c, node, group).await?
        && (m.members > 0 || !matches!(m.state.as_str(), "Empty" | "Dead"))
    {
        return Err(AdminError::Invalid(format!(
            "Assignments can only be reset if the group '{group}' is inactive, but the current state is {}.",
            m.state
        )));
    }
    let committed = committed_offsets(c, node, group).await?;
    let mut wanted: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    if all_topics {
        for (t, p) in committed.keys() {
            wanted.entry(t.clone()).or_default().push(*p);
        }
    }
    for arg in topics {
        let (topic, partitions) = parse_topic_spec(arg)?;
        let ps = match partitions {
            Some(ps) => ps,
            None => c.partitions(&topic).await?.into_iter().map(|p| p.partition).collect(),
        };
        wanted.entry(topic).or_default().extend(ps);
    }
    for ps in wanted.values_mut() {
        ps.sort_unstable();
        ps.dedup();
    }
    if wanted.is_empty() {
        return Err(AdminError::Invalid("no partitions to reset: give --topic or --all-topics".into()));
    }
    let earliest = c.list_offsets(&wanted, EARLIEST_TIMESTAMP).await?;
    let latest = c.list_offsets(&wanted, LATEST_TIMESTAMP).await?;
    let at_time = match spec {
        ResetSpec::Datetime(ts) => Some(c.list_offsets(&wanted, ts).await?),
        _ => None,
    };
    let mut rows = Vec::new();
    for (topic, ps) in &wanted {
        for &p in ps {
            let key = (topic.clone(), p);
            let context = format!("{topic}-{p}");
            let get = |m: &super::client::Offsets| -> Result<i64, AdminError> {
                match m.get(&key) {
                    Some(Ok(o)) => Ok(*o),
                    Some(Err(code)) => kafka_result("ListOffsets", &context, *code, None).map(|()| -1),
                    None => kafka_result("ListOffsets", &context, super::client::UNKNOWN_TOPIC_OR_PARTITION, None).map(|()| -1),
                }
            };
            let (lo, hi) = (get(&earliest)?, get(&latest)?);
            let previous = committed.get(&key).copied();
            let new_offset = match spec {
                ResetSpec::Earliest => lo,
                ResetSpec::Latest => hi,
                ResetSpec::Offset(n) => n.clamp(lo, hi),
                ResetSpec::ShiftBy(n) => {
                    let cur = previous.ok_or_else(|| {
                        AdminError::Invalid(format!("cannot shift the offset of {context}: group '{group}' has no committed offset there"))
                    })?;
                    cur.saturating_add(n).clamp(lo, hi)
                }
                ResetSpec::Datetime(_) => match at_time.as_ref().map(get).transpose()? {
                    Some(o) if o >= 0 => o,
                    _ => hi,
                },
            };
            rows.push(ResetRow { topic: topic.clone(), partition: p, previous_offset: previous, new_offset });
        }
    }
    if execute {
        let offsets = rows.iter().map(|r| ((r.topic.clone(), r.partition), r.new_offset)).collect();
        commit_offsets(c, node, group, &offsets).await?;
    }
    Ok(ResetReport { group: group.to_string(), executed: execute, partitions: rows })
}

pub fn render_reset(r: &ResetReport) -> String {
    let rows: Vec<Vec<String>> = r
        .partitions
        .iter()
        .map(|p| {
            vec![
                r.group.clone(),
                p.topic.clone(),
                p.partition.to_string(),
                p.previous_offset.map_or("-".into(), |o| o.to_string()),
                p.new_offset.to_string(),
            ]
        })
        .collect();
    let mut out = super::table(&["GROUP", "TOPIC", "PARTITION", "PREVIOUS-OFFSET", "NEW-OFFSET"], &rows);
    if !r.executed {
        out.push_str("(dry run: nothing committed; add --execute to commit these offsets)\n");
    }
    out
}

/// The result of deleting one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupDeletion {
    pub group: String,
    /// The Kafka error name, None when deleted.
    pub error: Option<String>,
}

/// Deletes each group at its coordinator; a group that cannot be deleted (GROUP_ID_NOT_FOUND,
/// NON_EMPTY_GROUP) is reported with its error, the others still deleted.
pub async fn delete(c: &mut Client, groups: &[String]) -> Result<Vec<GroupDeletion>, AdminError> {
    let version = c.version::<DeleteGroupsRequest>(2)?;
    let mut out = Vec::new();
    for group in groups {
        let node = c.coordinator(group).await?;
        let r = c.send(node, version, &DeleteGroupsRequest::default().with_groups_names(vec![gid(group)])).await?;
        let code = r.results.iter().find(|g| g.group_id.0.as_str() == group).map_or(GROUP_ID_NOT_FOUND, |g| g.error_code);
        out.push(GroupDeletion { group: group.clone(), error: (code != 0).then(|| crate::failures::error_name(code)) });
    }
    Ok(out)
}

pub fn render_delete(r: &[GroupDeletion]) -> String {
    let mut out = String::new();
    for d in r {
        match &d.error {
            None => out.push_str(&format!("Group '{}' deleted.\n", d.group)),
            Some(e) => out.push_str(&format!("Group '{}' could not be deleted: {e}\n", d.group)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_log_end_minus_committed_and_past_the_end_is_not_zero() {
        let row = |c, e| LagRow::new("t".into(), 0, c, e, Default::default());
        assert_eq!(row(Some(3), Some(10)).lag, Some(7));
        assert_eq!(row(None, Some(10)).lag, None);
        let past = row(Some(20), Some(15));
        assert_eq!((past.lag, past.past_log_end), (Some(-5), true));
        let text = render(&GroupReport {
            group: "g".into(),
            state: "Empty".into(),
            group_type: "classic".into(),
            members: 0,
            rows: vec![row(Some(3), Some(10)), row(None, None), past],
        });
        assert!(text.contains("t      0          3               10              7    -"), "{text}");
        assert!(text.contains("Note: t-0: committed offset 20 is past the log end offset 15"), "{text}");
    }

    #[test]
    fn topic_specs() {
        assert_eq!(parse_topic_spec("t").unwrap(), ("t".into(), None));
        assert_eq!(parse_topic_spec("t:0,2").unwrap(), ("t".into(), Some(vec![0, 2])));
        for bad in ["", ":1", "t:", "t:x", "t:-1", "t:1,,2"] {
            assert!(parse_topic_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn datetimes_as_kafka_writes_them() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00").unwrap(), 0);
        assert_eq!(parse_datetime("1970-01-01T00:00:01.5").unwrap(), 1500);
        assert_eq!(parse_datetime("2024-02-29T12:30:00.123Z").unwrap(), 1_709_209_800_123);
        assert_eq!(parse_datetime("2024-02-29T13:30:00.123+01:00").unwrap(), 1_709_209_800_123);
        assert_eq!(parse_datetime("2024-02-29T11:30:00.123-01:00").unwrap(), 1_709_209_800_123);
        for bad in ["2024-02-29", "2024-13-01T00:00:00", "2024-01-01T25:00:00", "x-01-01T00:00:00", "2024-01-01T00:00"] {
            assert!(parse_datetime(bad).is_err(), "{bad}");
        }
    }
}
