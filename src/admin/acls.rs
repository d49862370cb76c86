//! `sidestream acl list|create|delete`, as `kafka-acls.sh` does them: DescribeAcls, CreateAcls
//! and DeleteAcls, with its options (`--allow-principal User:x --operation Read --topic t`).
//!
//! Must not touch: topics, groups and records; an ACL command changes only ACL bindings.

use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use super::AdminError;
use super::client::{Client, Node, kafka_result};

/// Kafka's codes of "any" in a filter (resource type, pattern type, operation, permission).
const ANY: i8 = 1;
/// Pattern types.
const MATCH: i8 = 2;
const LITERAL: i8 = 3;
const PREFIXED: i8 = 4;
/// Permission types.
const DENY: i8 = 2;
const ALLOW: i8 = 3;
/// The one cluster resource's name.
const CLUSTER_NAME: &str = "kafka-cluster";

const RESOURCE_TYPES: [(i8, &str); 6] = [(1, "ANY"), (2, "TOPIC"), (3, "GROUP"), (4, "CLUSTER"), (5, "TRANSACTIONAL_ID"), (7, "USER")];
const PATTERN_TYPES: [(i8, &str); 4] = [(ANY, "ANY"), (MATCH, "MATCH"), (LITERAL, "LITERAL"), (PREFIXED, "PREFIXED")];
const OPERATIONS: [(i8, &str); 15] = [
    (1, "ANY"),
    (2, "ALL"),
    (3, "READ"),
    (4, "WRITE"),
    (5, "CREATE"),
    (6, "DELETE"),
    (7, "ALTER"),
    (8, "DESCRIBE"),
    (9, "CLUSTER_ACTION"),
    (10, "DESCRIBE_CONFIGS"),
    (11, "ALTER_CONFIGS"),
    (12, "IDEMPOTENT_WRITE"),
    (13, "CREATE_TOKENS"),
    (14, "DESCRIBE_TOKENS"),
    (15, "TWO_PHASE_COMMIT"),
];
const PERMISSIONS: [(i8, &str); 3] = [(ANY, "ANY"), (DENY, "DENY"), (ALLOW, "ALLOW")];

fn name_of(table: &[(i8, &'static str)], code: i8) -> String {
    table.iter().find(|(c, _)| *c == code).map_or_else(|| format!("UNKNOWN({code})"), |(_, n)| n.to_string())
}

/// `Read`, `read`, `IdempotentWrite`, `idempotent_write`... (kafka-acls.sh's spellings) as Kafka's code.
pub fn parse_operation(arg: &str) -> Result<i8, AdminError> {
    let squash = |s: &str| s.chars().filter(|c| *c != '_' && *c != '-').collect::<String>().to_ascii_uppercase();
    OPERATIONS
        .iter()
        .find(|(code, n)| *code > ANY && squash(n) == squash(arg))
        .map(|(c, _)| *c)
        .ok_or_else(|| AdminError::Invalid(format!("--operation '{arg}': expected one of Read, Write, Create, Delete, Alter, Describe, ClusterAction, DescribeConfigs, AlterConfigs, IdempotentWrite, All")))
}

/// `literal`, `prefixed` (and, in a filter, `any` and `match`).
pub fn parse_pattern_type(arg: &str, filter: bool) -> Result<i8, AdminError> {
    match (arg.to_ascii_lowercase().as_str(), filter) {
        ("literal", _) => Ok(LITERAL),
        ("prefixed", _) => Ok(PREFIXED),
        ("any", true) => Ok(ANY),
        ("match", true) => Ok(MATCH),
        _ => Err(AdminError::Invalid(format!(
            "--resource-pattern-type '{arg}': expected literal or prefixed{}",
            if filter { ", any or match" } else { "" }
        ))),
    }
}

/// The resources an ACL command names: (resource type, name).
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub topics: Vec<String>,
    pub groups: Vec<String>,
    pub transactional_ids: Vec<String>,
    pub cluster: bool,
}

impl Resources {
    fn list(&self) -> Vec<(i8, String)> {
        let mut out: Vec<(i8, String)> = Vec::new();
        out.extend(self.topics.iter().map(|t| (2, t.clone())));
        out.extend(self.groups.iter().map(|g| (3, g.clone())));
        out.extend(self.transactional_ids.iter().map(|t| (5, t.clone())));
        if self.cluster {
            out.push((4, CLUSTER_NAME.to_string()));
        }
        out
    }
}

/// One ACL binding, as `--json` prints it (Kafka's enum names).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Acl {
    pub resource_type: String,
    pub resource_name: String,
    pub pattern_type: String,
    pub principal: String,
    pub host: String,
    pub operation: String,
    pub permission: String,
}

impl Acl {
    /// A binding from the wire's codes: (resource type, name, pattern type), principal, host,
    /// operation, permission.
    fn new(resource: (i8, &str, i8), principal: &str, host: &str, operation: i8, permission: i8) -> Acl {
        Acl {
            resource_type: name_of(&RESOURCE_TYPES, resource.0),
            resource_name: resource.1.to_string(),
            pattern_type: name_of(&PATTERN_TYPES, resource.2),
            principal: principal.to_string(),
            host: host.to_string(),
            operation: name_of(&OPERATIONS, operation),
            permission: name_of(&PERMISSIONS, permission),
        }
    }
}

/// The ACLs matching the filter: every resource named (all when none), the principal if given.
pub async fn list(c: &mut Client, resources: &Resources, pattern_type: i8, principal: Option<&str>) -> Result<Vec<Acl>, AdminError> {
    let version = c.version::<DescribeAclsRequest>(3)?;
    let mut filters: Vec<(i8, Option<String>)> = resources.list().into_iter().map(|(t, n)| (t, Some(n))).collect();
    if filters.is_empty() {
        filters.push((ANY, None));
    }
    let mut out = Vec::new();
    for (rtype, rname) in filters {
        let req = DescribeAclsRequest::default()
            .with_resource_type_filter(rtype)
            .with_resource_name_filter(rname.map(StrBytes::from_string))
            .with_pattern_type_filter(pattern_type)
            .with_principal_filter(principal.map(|p| StrBytes::from_string(p.to_string())))
            .with_host_filter(None)
            .with_operation(ANY)
            .with_permission_type(ANY);
        let r = c.send(Node::Bootstrap, version, &req).await?;
        kafka_result("DescribeAcls", "", r.error_code, r.error_message.map(|m| m.to_string()))?;
        for res in r.resources {
            for a in res.acls {
                out.push(Acl::new(
                    (res.resource_type, &res.resource_name, res.pattern_type),
                    &a.principal,
                    &a.host,
                    a.operation,
                    a.permission_type,
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The bindings `acl create` makes: every (allowed or denied principal) x host x operation x
/// resource. Hosts default to `*`.
#[derive(Debug, Clone, Default)]
pub struct Bindings {
    pub allow_principals: Vec<String>,
    pub deny_principals: Vec<String>,
    pub allow_hosts: Vec<String>,
    pub deny_hosts: Vec<String>,
    pub operations: Vec<i8>,
    pub resources: Resources,
    pub pattern_type: i8,
}

/// (permission, principal, host, operation, resource type, resource name), any side empty
/// giving an "any" wildcard when `filter`.
type Binding = (i8, Option<String>, Option<String>, i8, i8, String);

impl Bindings {
    fn expand(&self, filter: bool) -> Vec<Binding> {
        let any_host = if filter { vec![None] } else { vec![Some("*".to_string())] };
        let hosts = |h: &[String]| if h.is_empty() { any_host.clone() } else { h.iter().cloned().map(Some).collect() };
        let mut sides: Vec<(i8, Option<String>, Vec<Option<String>>)> = Vec::new();
        sides.extend(self.allow_principals.iter().map(|p| (ALLOW, Some(p.clone()), hosts(&self.allow_hosts))));
        sides.extend(self.deny_principals.iter().map(|p| (DENY, Some(p.clone()), hosts(&self.deny_hosts))));
        if filter && sides.is_empty() {
            sides.push((ANY, None, vec![None]));
        }
        let ops = if filter && self.operations.is_empty() { vec![ANY] } else { self.operations.clone() };
        let mut out = Vec::new();
        for (perm, principal, hs) in &sides {
            for h in hs {
                for op in &ops {
                    for (rt, rn) in self.resources.list() {
                        out.push((*perm, principal.clone(), h.clone(), *op, rt, rn));
                    }
                }
            }
        }
        out
    }
}

/// Creates every binding; the first refused is the error.
pub async fn create(c: &mut Client, b: &Bindings) -> Result<usize, AdminError> {
    if b.allow_principals.is_empty() && b.deny_principals.is_empty() {
        return Err(AdminError::Invalid("give --allow-principal or --deny-principal".into()));
    }
    if b.operations.is_empty() || b.resources.list().is_empty() {
        return Err(AdminError::Invalid("give --operation and a resource (--topic, --group, --transactional-id, --cluster)".into()));
    }
    let version = c.version::<CreateAclsRequest>(3)?;
    let creations: Vec<AclCreation> = b
        .expand(false)
        .into_iter()
        .map(|(perm, principal, host, op, rt, rn)| {
            AclCreation::default()
                .with_resource_type(rt)
                .with_resource_name(StrBytes::from_string(rn))
                .with_resource_pattern_type(b.pattern_type)
                .with_principal(StrBytes::from_string(principal.unwrap_or_default()))
                .with_host(StrBytes::from_string(host.unwrap_or_else(|| "*".into())))
                .with_operation(op)
                .with_permission_type(perm)
        })
        .collect();
    let n = creations.len();
    let node = c.controller();
    let r = c.send(node, version, &CreateAclsRequest::default().with_creations(creations)).await?;
    for res in r.results {
        kafka_result("CreateAcls", "", res.error_code, res.error_message.map(|m| m.to_string()))?;
    }
    Ok(n)
}

/// Deletes the bindings matching the filters (principals, hosts and operations not given match
/// any); returns the bindings deleted.
pub async fn delete(c: &mut Client, b: &Bindings) -> Result<Vec<Acl>, AdminError> {
    if b.resources.list().is_empty() {
        return Err(AdminError::Invalid("give a resource (--topic, --group, --transactional-id, --cluster)".into()));
    }
    let version = c.version::<DeleteAclsRequest>(3)?;
    let filters: Vec<DeleteAclsFilter> = b
        .expand(true)
        .into_iter()
        .map(|(perm, principal, host, op, rt, rn)| {
            DeleteAclsFilter::default()
                .with_resource_type_filter(rt)
                .with_resource_name_filter(Some(StrBytes::from_string(rn)))
                .with_pattern_type_filter(b.pattern_type)
                .with_principal_filter(principal.map(StrBytes::from_string))
                .with_host_filter(host.map(StrBytes::from_string))
                .with_operation(op)
                .with_permission_type(perm)
        })
        .collect();
    let node = c.controller();
    let r = c.send(node, version, &DeleteAclsRequest::default().with_filters(filters)).await?;
    let mut out = Vec::new();
    for f in r.filter_results {
        kafka_result("DeleteAcls", "", f.error_code, f.error_message.map(|m| m.to_string()))?;
        for m in f.matching_acls {
            kafka_result("DeleteAcls", "", m.error_code, m.error_message.map(|m| m.to_string()))?;
            out.push(Acl::new((m.resource_type, &m.resource_name, m.pattern_type), &m.principal, &m.host, m.operation, m.permission_type));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

pub fn render(acls: &[Acl]) -> String {
    let rows: Vec<Vec<String>> = acls
        .iter()
        .map(|a| {
            vec![
                a.resource_type.clone(),
                a.resource_name.clone(),
                a.pattern_type.clone(),
                a.principal.clone(),
                a.host.clone(),
                a.operation.clone(),
                a.permission.clone(),
            ]
        })
        .collect();
    super::table(&["RESOURCE-TYPE", "RESOURCE-NAME", "PATTERN-TYPE", "PRINCIPAL", "HOST", "OPERATION", "PERMISSION"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_acls_spellings() {
        assert_eq!(parse_operation("Read").unwrap(), 3);
        assert_eq!(parse_operation("IdempotentWrite").unwrap(), 12);
        assert_eq!(parse_operation("describe_configs").unwrap(), 10);
        assert_eq!(parse_operation("All").unwrap(), 2);
        assert!(parse_operation("Any").is_err());
        assert!(parse_operation("Fly").is_err());
        assert_eq!(parse_pattern_type("Prefixed", false).unwrap(), PREFIXED);
        assert!(parse_pattern_type("match", false).is_err());
        assert_eq!(parse_pattern_type("match", true).unwrap(), MATCH);
    }

    #[test]
    fn bindings_expand_to_every_combination() {
        let b = Bindings {
            allow_principals: vec!["User:a".into(), "User:b".into()],
            operations: vec![3, 4],
            resources: Resources { topics: vec!["t".into()], cluster: true, ..Default::default() },
            pattern_type: LITERAL,
            ..Default::default()
        };
        let e = b.expand(false);
        assert_eq!(e.len(), 2 * 2 * 2);
        assert!(e.iter().all(|x| x.0 == ALLOW && x.2.as_deref() == Some("*")));
        assert!(e.iter().any(|x| x.4 == 4 && x.5 == CLUSTER_NAME));
        let f = Bindings {
            resources: Resources { groups: vec!["g".into()], ..Default::default() },
            pattern_type: LITERAL,
            ..Default::default()
        };
        assert_eq!(f.expand(true), vec![(ANY, None, None, ANY, 3, "g".to_string())]);
    }
}
