//! The agent's authorizer: Kafka's `StandardAuthorizer` rules over the ACLs the controller holds.
//!
//! The ACLs come from the controller client's cached view (`ControllerClient::acls`: the
//! embedded controller's own set, or a remote agent's copy kept fresh by the `Watch` stream);
//! [`Authorizer`] indexes each version once, by resource type and name, and decides from the
//! index with no I/O. The rules ([`Index::decide`], Kafka's `StandardAuthorizerData`):
//!
//! - an ACL applies to a resource when its pattern does: a literal name equal to the resource's,
//!   the literal `*`, or a prefix of the resource's name (PREFIXED);
//! - of those, an entry applies to the request when its principal is the requester's or
//!   `User:*`, its host the client's address or `*`, and its operation the one asked, or `ALL`;
//!   an ALLOW of READ, WRITE, DELETE or ALTER also allows DESCRIBE, an ALLOW of ALTER_CONFIGS
//!   also allows DESCRIBE_CONFIGS (a DENY implies nothing);
//! - any applying DENY denies; else any applying ALLOW allows; else, when no ACL at all exists
//!   for the resource, `allow_if_no_acl` decides (Kafka's `allow.everyone.if.no.acl.found`);
//!   else denied;
//! - super users (Kafka's `super.users`) are allowed everything, and with the authorizer off
//!   (`enabled = false`) everything is allowed.
//!
//! [`Authorizer::check`] also records a denial: counted by API on `/metrics`
//! (`sidestream_authorization_denied_total{api}`) and logged at most once a minute per principal
//! and reason. Quiet checks ([`Authorizer::allows`]) are for filtering (Metadata of all topics,
//! ListGroups) and authorized-operations fields, as Kafka's `logIfDenied = false`.
//!
//! Must not touch: Kafka wire types (the handlers translate), the store (the controller's).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use crate::api::acl::{AclBinding, AclOperation, AclPermission, AclSet, PatternType, ResourceType, WILDCARD, WILDCARD_PRINCIPAL};
use crate::failures::{LOG_INTERVAL, RateLimitedLog};
use crate::metrics;

/// What the authorizer needs to know, as data (`[acl]`).
#[derive(Debug, Clone, Default)]
pub struct AclSettings {
    /// Off: every request is allowed and the ACL APIs answer SECURITY_DISABLED.
    pub enabled: bool,
    /// Principals allowed everything (`User:admin`), Kafka's `super.users`.
    pub super_users: Vec<String>,
    /// Allow when no ACL exists for the resource, Kafka's `allow.everyone.if.no.acl.found`.
    pub allow_if_no_acl: bool,
}

/// Who asks: the connection's principal in Kafka's form (`User:alice`) and the client address.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub principal: &'a str,
    pub host: IpAddr,
}

/// An entry's host: `*`, an address (compared as an address, so `::1` and
/// `0:0:0:0:0:0:0:1` are one host), or anything else (compared as text).
#[derive(Debug)]
enum Host {
    Any,
    Ip(IpAddr),
    Text(String),
}

impl Host {
    fn parse(host: &str) -> Host {
        if host == WILDCARD {
            return Host::Any;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip.to_canonical()),
            Err(_) => Host::Text(host.to_string()),
        }
    }

    fn matches(&self, ip: IpAddr) -> bool {
        match self {
            Host::Any => true,
            Host::Ip(a) => *a == ip.to_canonical(),
            Host::Text(t) => *t == ip.to_string(),
        }
    }
}

/// The access control entry of one binding.
#[derive(Debug)]
struct Entry {
    principal: String,
    host: Host,
    operation: AclOperation,
    permission: AclPermission,
}

impl Entry {
    fn new(b: &AclBinding) -> Entry {
        Entry { principal: b.principal.clone(), host: Host::parse(&b.host), operation: b.operation, permission: b.permission }
    }

    /// Kafka's `StandardAuthorizerData.findResult`: this entry's permission if it applies to
    /// `who` doing `op`, else `None`.
    fn applies(&self, who: Requester<'_>, op: AclOperation) -> Option<AclPermission> {
        if self.principal != who.principal && self.principal != WILDCARD_PRINCIPAL {
            return None;
        }
        if !self.host.matches(who.host) {
            return None;
        }
        if self.operation != AclOperation::All {
            let matches = match (self.permission, op) {
                (AclPermission::Allow, AclOperation::Describe) => implies_describe(self.operation),
                (AclPermission::Allow, AclOperation::DescribeConfigs) => {
                    matches!(self.operation, AclOperation::DescribeConfigs | AclOperation::AlterConfigs)
                }
                _ => self.operation == op,
            };
            if !matches {
                return None;
            }
        }
        Some(self.permission)
    }
}

/// The operations whose ALLOW also allows DESCRIBE.
fn implies_describe(op: AclOperation) -> bool {
    matches!(op, AclOperation::Describe | AclOperation::Read | AclOperation::Write | AclOperation::Delete | AclOperation::Alter)
}

/// One resource type's ACLs, by pattern.
#[derive(Debug, Default)]
struct TypeIndex {
    literal: HashMap<String, Vec<Entry>>,
    /// Literal `*`.
    wildcard: Vec<Entry>,
    prefixed: BTreeMap<String, Vec<Entry>>,
}

/// What the ACLs say about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    /// No entry applies to the request; `resource_has_acls`: some ACL exists for the resource.
    NoMatch {
        resource_has_acls: bool,
    },
}

/// One version of the ACLs, indexed by resource type and name.
#[derive(Debug, Default)]
pub struct Index {
    version: u64,
    by_type: HashMap<ResourceType, TypeIndex>,
    /// Every binding, for [`Index::allows_any_of_type`].
    bindings: Vec<AclBinding>,
}

impl Index {
    pub fn build(set: &AclSet) -> Index {
        let mut by_type: HashMap<ResourceType, TypeIndex> = HashMap::new();
        for b in &set.bindings {
            let t = by_type.entry(b.resource_type).or_default();
            let entry = Entry::new(b);
            match b.pattern_type {
                PatternType::Literal if b.resource_name == WILDCARD => t.wildcard.push(entry),
                PatternType::Literal => t.literal.entry(b.resource_name.clone()).or_default().push(entry),
                PatternType::Prefixed => t.prefixed.entry(b.resource_name.clone()).or_default().push(entry),
                // Never stored (the controller validates every binding).
                PatternType::Any | PatternType::Match => {}
            }
        }
        Index { version: set.version, by_type, bindings: set.bindings.clone() }
    }

    /// Kafka's `findAclRule` for the literal resource `rt:name`: a DENY that applies wins, then
    /// an ALLOW that applies.
    pub fn decide(&self, who: Requester<'_>, op: AclOperation, rt: ResourceType, name: &str) -> Verdict {
        let Some(t) = self.by_type.get(&rt) else {
            return Verdict::NoMatch { resource_has_acls: false };
        };
        let mut sections: Vec<&[Entry]> = Vec::new();
        if let Some(e) = t.literal.get(name) {
            sections.push(e);
        }
        if !t.wildcard.is_empty() {
            sections.push(&t.wildcard);
        }
        if !t.prefixed.is_empty() {
            // Every prefix of the name, at character boundaries (names are short: <= 249 bytes).
            for (i, _) in name.char_indices().skip(1).chain(std::iter::once((name.len(), ' '))) {
                if let Some(e) = t.prefixed.get(&name[..i]) {
                    sections.push(e);
                }
            }
        }
        let mut allowed = false;
        for entry in sections.iter().flat_map(|s| s.iter()) {
            match entry.applies(who, op) {
                Some(AclPermission::Deny) => return Verdict::Deny,
                Some(AclPermission::Allow) => allowed = true,
                _ => {}
            }
        }
        if allowed { Verdict::Allow } else { Verdict::NoMatch { resource_has_acls: !sections.is_empty() } }
    }

    /// Kafka's `Authorizer.authorizeByResourceType` after its first check (`op` on some
    /// resource named "hardcode"): whether an ALLOW of `op` (or ALL) for `who` on some resource
    /// of type `rt` is not cancelled by a DENY that covers it. A DENY on the literal `*` denies.
    pub fn allows_any_of_type(&self, who: Requester<'_>, op: AclOperation, rt: ResourceType) -> bool {
        let mut deny_literal = HashSet::new();
        let mut deny_prefixed = HashSet::new();
        let mut allow_literal = HashSet::new();
        let mut allow_prefixed = HashSet::new();
        let mut wildcard_allow = false;
        for b in self.bindings.iter().filter(|b| b.resource_type == rt) {
            if !Host::parse(&b.host).matches(who.host) {
                continue;
            }
            if b.principal != who.principal && b.principal != WILDCARD_PRINCIPAL {
                continue;
            }
            if b.operation != op && b.operation != AclOperation::All {
                continue;
            }
            let name = b.resource_name.as_str();
            match (b.permission, b.pattern_type) {
                (AclPermission::Deny, PatternType::Literal) if name == WILDCARD => return false,
                (AclPermission::Deny, PatternType::Literal) => {
                    deny_literal.insert(name);
                }
                (AclPermission::Deny, PatternType::Prefixed) => {
                    deny_prefixed.insert(name);
                }
                (AclPermission::Allow, PatternType::Literal) if name == WILDCARD => wildcard_allow = true,
                (AclPermission::Allow, PatternType::Literal) => {
                    allow_literal.insert(name);
                }
                (AclPermission::Allow, PatternType::Prefixed) => {
                    allow_prefixed.insert(name);
                }
                _ => {}
            }
        }
        if wildcard_allow {
            return true;
        }
        let dominated = |allowed: &str| {
            allowed
                .char_indices()
                .skip(1)
                .map(|(i, _)| &allowed[..i])
                .chain(std::iter::once(allowed))
                .any(|p| deny_prefixed.contains(p))
        };
        allow_literal.iter().any(|a| !deny_literal.contains(a) && !dominated(a)) || allow_prefixed.iter().any(|a| !dominated(a))
    }
}

/// Denials logged at most once a minute per principal and reason.
fn denials_log() -> &'static RateLimitedLog {
    static LOG: OnceLock<RateLimitedLog> = OnceLock::new();
    LOG.get_or_init(|| RateLimitedLog::new(LOG_INTERVAL))
}

/// Decides requests from the ACLs of `source` (the controller client's current set).
pub struct Authorizer {
    enabled: bool,
    super_users: HashSet<String>,
    allow_if_no_acl: bool,
    source: Box<dyn Fn() -> Arc<AclSet> + Send + Sync>,
    /// The index of the last version seen.
    index: RwLock<Arc<Index>>,
}

impl Authorizer {
    pub fn new(settings: &AclSettings, source: impl Fn() -> Arc<AclSet> + Send + Sync + 'static) -> Authorizer {
        let index = Index::build(&source());
        Authorizer {
            enabled: settings.enabled,
            super_users: settings.super_users.iter().cloned().collect(),
            allow_if_no_acl: settings.allow_if_no_acl,
            source: Box::new(source),
            index: RwLock::new(Arc::new(index)),
        }
    }

    /// An authorizer that allows everything (`enabled = false`).
    pub fn disabled() -> Authorizer {
        Authorizer::new(&AclSettings::default(), || Arc::new(AclSet::default()))
    }

    /// Whether ACLs are enforced (else the ACL APIs answer SECURITY_DISABLED).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The index of the source's current version (built once per version).
    fn index(&self) -> Arc<Index> {
        let set = (self.source)();
        {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            if index.version == set.version {
                return index.clone();
            }
        }
        let fresh = Arc::new(Index::build(&set));
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        fresh
    }

    /// Whether `who` may do `op` on the resource `rt:name`, without recording a denial.
    pub fn allows(&self, who: Requester<'_>, op: AclOperation, rt: ResourceType, name: &str) -> bool {
        if !self.enabled || self.super_users.contains(who.principal) {
            return true;
        }
        match self.index().decide(who, op, rt, name) {
            Verdict::Allow => true,
            Verdict::Deny => false,
            Verdict::NoMatch { resource_has_acls } => !resource_has_acls && self.allow_if_no_acl,
        }
    }

    /// [`Authorizer::allows`], recording a denial for request `api` (Kafka's API name).
    pub fn check(&self, who: Requester<'_>, api: &str, op: AclOperation, rt: ResourceType, name: &str) -> bool {
        let allowed = self.allows(who, op, rt, name);
        if !allowed {
            self.denied(who, api, op, rt, name);
        }
        allowed
    }

    /// Kafka's `authorizeByResourceType`: whether `who` may do `op` on at least one resource of
    /// type `rt` (a super user, no ACL for some name with `allow_if_no_acl`, or an ALLOW not
    /// covered by a DENY). Records no denial.
    pub fn allows_any_of_type(&self, who: Requester<'_>, op: AclOperation, rt: ResourceType) -> bool {
        self.allows(who, op, rt, "hardcode") || self.index().allows_any_of_type(who, op, rt)
    }

    /// Kafka's authorized-operations field for `rt:name`: bit `1 << code` for each operation of
    /// the type that `who` may do (all of them with the authorizer off).
    pub fn authorized_operations(&self, who: Requester<'_>, rt: ResourceType, name: &str) -> i32 {
        rt.operations().iter().filter(|op| self.allows(who, **op, rt, name)).fold(0, |bits, op| bits | (1 << op.code()))
    }

    /// Records a denial: the counter by API, a log line at most once a minute per principal
    /// and reason.
    pub fn denied(&self, who: Requester<'_>, api: &str, op: AclOperation, rt: ResourceType, name: &str) {
        metrics::counter(
            "sidestream_authorization_denied_total",
            "Requests (or parts of them) denied by the ACLs, by Kafka API.",
            &[("api", api)],
        )
        .inc();
        let reason = format!("{op} on {rt}:{name}");
        if let Some(suppressed) = denials_log().allow(&format!("{}|{reason}", who.principal), Instant::now()) {
            tracing::info!(principal = who.principal, host = %who.host, api, operation = %op, resource = %format!("{rt}:{name}"),
                suppressed_since_last_line = suppressed, "authorization denied (logged once a minute per principal and reason)");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::api::acl::CLUSTER_NAME;
    use AclOperation::*;
    use AclPermission::{Allow as A, Deny as D};
    use PatternType::{Literal, Prefixed};
    use ResourceType::{Cluster, Group, Topic, TransactionalId};

    fn acl(
        rt: ResourceType,
        name: &str,
        pt: PatternType,
        principal: &str,
        host: &str,
        op: AclOperation,
        perm: AclPermission,
    ) -> AclBinding {
        AclBinding {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pt,
            principal: principal.into(),
            host: host.into(),
            operation: op,
            permission: perm,
        }
    }

    fn allow(rt: ResourceType, name: &str, pt: PatternType, principal: &str, op: AclOperation) -> AclBinding {
        acl(rt, name, pt, principal, "*", op, A)
    }

    fn deny(rt: ResourceType, name: &str, pt: PatternType, principal: &str, op: AclOperation) -> AclBinding {
        acl(rt, name, pt, principal, "*", op, D)
    }

    fn authorizer(settings: AclSettings, bindings: Vec<AclBinding>) -> Authorizer {
        let set = Arc::new(AclSet { version: 1, bindings });
        Authorizer::new(&settings, move || set.clone())
    }

    fn on(bindings: Vec<AclBinding>) -> Authorizer {
        authorizer(AclSettings { enabled: true, ..Default::default() }, bindings)
    }

    fn alice() -> Requester<'static> {
        Requester { principal: "User:alice", host: "10.0.0.1".parse().unwrap() }
    }

    fn bob() -> Requester<'static> {
        Requester { principal: "User:bob", host: "10.0.0.2".parse().unwrap() }
    }

    #[test]
    fn deny_wins_over_allow_whatever_the_pattern() {
        let a = on(vec![allow(Topic, "orders", Literal, "User:alice", Read), deny(Topic, "ord", Prefixed, "User:alice", Read)]);
        assert!(!a.allows(alice(), Read, Topic, "orders"));
        let a = on(vec![allow(Topic, "*", Literal, "User:*", All), deny(Topic, "orders", Literal, "User:alice", Write)]);
        assert!(!a.allows(alice(), Write, Topic, "orders"));
        assert!(a.allows(alice(), Read, Topic, "orders"), "the DENY is of WRITE only");
        assert!(a.allows(bob(), Write, Topic, "orders"), "the DENY is alice's only");
        // DENY ALL denies every operation; DENY on `*` every name.
        let a = on(vec![allow(Topic, "t", Literal, "User:alice", Read), deny(Topic, "*", Literal, "User:alice", All)]);
        assert!(!a.allows(alice(), Read, Topic, "t"));
    }

    #[test]
    fn allow_of_read_write_delete_alter_implies_describe_and_alter_configs_implies_describe_configs() {
        for op in [Read, Write, Delete, Alter, Describe] {
            let a = on(vec![allow(Topic, "t", Literal, "User:alice", op)]);
            assert!(a.allows(alice(), Describe, Topic, "t"), "{op}");
        }
        for op in [Create, DescribeConfigs, AlterConfigs, ClusterAction, IdempotentWrite] {
            let a = on(vec![allow(Topic, "t", Literal, "User:alice", op)]);
            assert!(!a.allows(alice(), Describe, Topic, "t"), "{op}");
        }
        let a = on(vec![allow(Topic, "t", Literal, "User:alice", AlterConfigs)]);
        assert!(a.allows(alice(), DescribeConfigs, Topic, "t"));
        assert!(!a.allows(alice(), Read, Topic, "t"), "READ is not implied by anything but ALL");
        // A DENY implies nothing: DENY READ leaves DESCRIBE to the ALLOW of WRITE.
        let a = on(vec![allow(Topic, "t", Literal, "User:alice", Write), deny(Topic, "t", Literal, "User:alice", Read)]);
        assert!(a.allows(alice(), Describe, Topic, "t"));
        assert!(!a.allows(alice(), Read, Topic, "t"));
        // ALLOW ALL allows every operation.
        let a = on(vec![allow(Group, "g", Literal, "User:alice", All)]);
        for op in [Read, Describe, Delete, DescribeConfigs] {
            assert!(a.allows(alice(), op, Group, "g"), "{op}");
        }
    }

    #[test]
    fn prefixed_literal_and_wildcard_names() {
        let a = on(vec![
            allow(Topic, "pay.", Prefixed, "User:alice", Read),
            allow(Topic, "exact", Literal, "User:alice", Read),
            allow(Group, "*", Literal, "User:alice", Read),
        ]);
        assert!(a.allows(alice(), Read, Topic, "pay.in"));
        assert!(a.allows(alice(), Read, Topic, "pay."));
        assert!(!a.allows(alice(), Read, Topic, "pay"), "shorter than the prefix");
        assert!(!a.allows(alice(), Read, Topic, "xpay.in"));
        assert!(a.allows(alice(), Read, Topic, "exact"));
        assert!(!a.allows(alice(), Read, Topic, "exactly"), "a literal is not a prefix");
        assert!(a.allows(alice(), Read, Group, "any-group"));
        assert!(!a.allows(alice(), Read, TransactionalId, "exact"), "another resource type");
        // Multi-byte names: prefixes at character boundaries.
        let a = on(vec![allow(Topic, "é", Prefixed, "User:alice", Read)]);
        assert!(a.allows(alice(), Read, Topic, "éa"));
    }

    #[test]
    fn wildcard_principal_and_hosts() {
        let a = on(vec![allow(Topic, "t", Literal, "User:*", Read)]);
        assert!(a.allows(alice(), Read, Topic, "t"));
        assert!(a.allows(bob(), Read, Topic, "t"));
        // Kafka matches `User:*` for every principal, whatever its type.
        assert!(a.allows(Requester { principal: "Group:x", ..alice() }, Read, Topic, "t"));
        let a = on(vec![acl(Topic, "t", Literal, "User:alice", "10.0.0.1", Read, A)]);
        assert!(a.allows(alice(), Read, Topic, "t"));
        assert!(!a.allows(Requester { host: "10.0.0.9".parse().unwrap(), ..alice() }, Read, Topic, "t"));
        // An address in any spelling, IPv4-mapped IPv6 included, is one host.
        let a = on(vec![acl(Topic, "t", Literal, "User:alice", "0:0:0:0:0:0:0:1", Read, A)]);
        assert!(a.allows(Requester { host: "::1".parse().unwrap(), ..alice() }, Read, Topic, "t"));
        let a = on(vec![acl(Topic, "t", Literal, "User:alice", "127.0.0.1", Read, A)]);
        assert!(a.allows(Requester { host: "::ffff:127.0.0.1".parse().unwrap(), ..alice() }, Read, Topic, "t"));
    }

    #[test]
    fn super_users_off_and_allow_if_no_acl() {
        let bindings = vec![deny(Topic, "*", Literal, "User:*", All), allow(Topic, "mine", Literal, "User:bob", Read)];
        let settings = AclSettings { enabled: true, super_users: vec!["User:alice".into()], allow_if_no_acl: false };
        let a = authorizer(settings.clone(), bindings.clone());
        assert!(a.allows(alice(), Delete, Topic, "anything"), "a super user despite DENY");
        assert!(!a.allows(bob(), Read, Topic, "mine"), "the wildcard DENY wins for others");
        let off = authorizer(AclSettings { enabled: false, ..settings }, bindings);
        assert!(off.allows(bob(), Delete, Topic, "mine"));
        assert!(Authorizer::disabled().allows(bob(), Alter, Cluster, CLUSTER_NAME));

        // No ACL for the resource at all: allow_if_no_acl decides.
        let rules = vec![allow(Topic, "mine", Literal, "User:bob", Read)];
        let strict = authorizer(AclSettings { enabled: true, ..Default::default() }, rules.clone());
        let lenient = authorizer(AclSettings { enabled: true, allow_if_no_acl: true, ..Default::default() }, rules);
        assert!(!strict.allows(alice(), Read, Topic, "other"));
        assert!(lenient.allows(alice(), Read, Topic, "other"));
        // Some ACL exists for the resource (bob's), none for alice: denied even when lenient.
        assert!(!lenient.allows(alice(), Read, Topic, "mine"));
        assert!(!lenient.allows(bob(), Write, Topic, "mine"));
        assert!(lenient.allows(alice(), Read, Group, "g"), "no group ACL at all");
    }

    #[test]
    fn authorized_operations_are_the_allowed_bits_of_the_type() {
        let a = on(vec![allow(Topic, "t", Literal, "User:alice", Read), allow(Topic, "t", Literal, "User:alice", AlterConfigs)]);
        let bits = a.authorized_operations(alice(), Topic, "t");
        let expect = [Read, Describe, DescribeConfigs, AlterConfigs].iter().fold(0, |b, op| b | (1 << op.code()));
        assert_eq!(bits, expect);
        assert_eq!(a.authorized_operations(bob(), Topic, "t"), 0);
        let all = Topic.operations().iter().fold(0, |b, op| b | (1 << op.code()));
        assert_eq!(Authorizer::disabled().authorized_operations(bob(), Topic, "t"), all);
    }

    #[test]
    fn any_of_type_is_kafkas_authorize_by_resource_type() {
        assert!(!on(vec![]).allows_any_of_type(alice(), Write, Topic));
        assert!(on(vec![allow(Topic, "t", Literal, "User:alice", Write)]).allows_any_of_type(alice(), Write, Topic));
        assert!(on(vec![allow(Topic, "t", Prefixed, "User:*", All)]).allows_any_of_type(alice(), Write, Topic));
        assert!(!on(vec![allow(Topic, "t", Literal, "User:alice", Read)]).allows_any_of_type(alice(), Write, Topic));
        // An ALLOW covered by a DENY of the same literal or of a prefix of it does not count.
        let covered = on(vec![allow(Topic, "tx", Literal, "User:alice", Write), deny(Topic, "t", Prefixed, "User:alice", Write)]);
        assert!(!covered.allows_any_of_type(alice(), Write, Topic));
        let wild_deny = on(vec![allow(Topic, "*", Literal, "User:alice", Write), deny(Topic, "*", Literal, "User:*", Write)]);
        assert!(!wild_deny.allows_any_of_type(alice(), Write, Topic));
        let elsewhere = on(vec![allow(Topic, "a", Literal, "User:alice", Write), deny(Topic, "b", Prefixed, "User:alice", Write)]);
        assert!(elsewhere.allows_any_of_type(alice(), Write, Topic));
        let lenient = authorizer(AclSettings { enabled: true, allow_if_no_acl: true, ..Default::default() }, vec![]);
        assert!(lenient.allows_any_of_type(alice(), Write, Topic));
    }

    #[test]
    fn a_new_version_of_the_set_is_indexed_again() {
        let current = Arc::new(Mutex::new(Arc::new(AclSet { version: 1, bindings: vec![] })));
        let source = current.clone();
        let a = Authorizer::new(&AclSettings { enabled: true, ..Default::default() }, move || source.lock().unwrap().clone());
        assert!(!a.allows(alice(), Read, Topic, "t"));
        *current.lock().unwrap() = Arc::new(AclSet { version: 2, bindings: vec![allow(Topic, "t", Literal, "User:alice", Read)] });
        assert!(a.allows(alice(), Read, Topic, "t"));
    }

    #[test]
    fn denials_are_counted_by_api() {
        let a = on(vec![]);
        let counter = metrics::counter("sidestream_authorization_denied_total", "", &[("api", "TestApi")]);
        let before = counter.get();
        assert!(!a.check(alice(), "TestApi", Read, Topic, "t"));
        assert!(!a.check(alice(), "TestApi", Read, Topic, "t"));
        assert_eq!(counter.get(), before + 2);
        assert!(Authorizer::disabled().check(alice(), "TestApi", Read, Topic, "t"));
        assert_eq!(counter.get(), before + 2);
    }
}
