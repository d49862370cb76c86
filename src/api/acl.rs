//! ACLs as Kafka defines them, the types that cross between agent and controller: a binding
//! ([`AclBinding`]: resource pattern + access control entry), a filter over bindings
//! ([`AclFilter`], DescribeAcls and DeleteAcls), and the set the controller holds
//! ([`AclSet`], versioned so agents notice a change).
//!
//! Codes are Kafka's (`ResourceType`, `PatternType`, `AclOperation`, `AclPermissionType`), so
//! the Kafka handlers convert with [`ResourceType::from_code`] and friends; a code this build
//! does not know (Kafka's UNKNOWN) converts to `None`. The JSON form (controller calls) uses
//! snake_case names. Filter-only values (`any`, `match`) are refused in a binding
//! ([`AclBinding::validate`], Kafka's `AclControlManager.validateNewAcl`).
//!
//! Matching a filter (DescribeAcls, DeleteAcls) is Kafka's `AclBindingFilter.matches`; the
//! authorizer's rules (which bindings decide a request) are in `agent::acl`. Pure data and
//! functions: imports nothing of the crate.

use serde::{Deserialize, Serialize};

/// The one name a CLUSTER resource has.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// A literal resource name matching every name, and a host matching every host.
pub const WILDCARD: &str = "*";
/// The principal matching every principal.
pub const WILDCARD_PRINCIPAL: &str = "User:*";

macro_rules! codes {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $code:literal, $kafka:literal;)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// Kafka's code.
            pub fn code(self) -> i8 {
                match self {
                    $($name::$variant => $code,)*
                }
            }

            /// From Kafka's code; `None` for UNKNOWN (0) and codes this build does not know.
            pub fn from_code(code: i8) -> Option<Self> {
                match code {
                    $($code => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// Kafka's name (`TOPIC`, `DESCRIBE_CONFIGS`), as its tools print it.
            pub fn kafka_name(self) -> &'static str {
                match self {
                    $($name::$variant => $kafka,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.kafka_name())
            }
        }
    };
}

codes! {
    /// Kafka's `ResourceType`.
    ResourceType {
        /// Filters only.
        Any = 1, "ANY";
        Topic = 2, "TOPIC";
        Group = 3, "GROUP";
        Cluster = 4, "CLUSTER";
        TransactionalId = 5, "TRANSACTIONAL_ID";
        DelegationToken = 6, "DELEGATION_TOKEN";
        User = 7, "USER";
    }
}

codes! {
    /// Kafka's `PatternType`.
    PatternType {
        /// Filters only: any pattern type.
        Any = 1, "ANY";
        /// Filters only: the patterns that would match the filter's name (literal, `*`, prefixes).
        Match = 2, "MATCH";
        Literal = 3, "LITERAL";
        Prefixed = 4, "PREFIXED";
    }
}

codes! {
    /// Kafka's `AclOperation`.
    AclOperation {
        /// Filters only.
        Any = 1, "ANY";
        All = 2, "ALL";
        Read = 3, "READ";
        Write = 4, "WRITE";
        Create = 5, "CREATE";
        Delete = 6, "DELETE";
        Alter = 7, "ALTER";
        Describe = 8, "DESCRIBE";
        ClusterAction = 9, "CLUSTER_ACTION";
        DescribeConfigs = 10, "DESCRIBE_CONFIGS";
        AlterConfigs = 11, "ALTER_CONFIGS";
        IdempotentWrite = 12, "IDEMPOTENT_WRITE";
        CreateTokens = 13, "CREATE_TOKENS";
        DescribeTokens = 14, "DESCRIBE_TOKENS";
        TwoPhaseCommit = 15, "TWO_PHASE_COMMIT";
    }
}

codes! {
    /// Kafka's `AclPermissionType`.
    AclPermission {
        /// Filters only.
        Any = 1, "ANY";
        Deny = 2, "DENY";
        Allow = 3, "ALLOW";
    }
}

impl ResourceType {
    /// The operations an ACL on this resource type can grant, as Kafka lists them
    /// (`AclEntry.supportedOperations`): the bits of an authorized-operations field.
    pub fn operations(self) -> &'static [AclOperation] {
        use AclOperation::*;
        match self {
            ResourceType::Topic => &[Read, Write, Create, Describe, Delete, Alter, DescribeConfigs, AlterConfigs],
            ResourceType::Group => &[Read, Describe, Delete, DescribeConfigs, AlterConfigs],
            ResourceType::Cluster => &[Create, ClusterAction, DescribeConfigs, AlterConfigs, IdempotentWrite, Alter, Describe],
            ResourceType::TransactionalId => &[Describe, Write],
            ResourceType::DelegationToken => &[Describe],
            ResourceType::User => &[CreateTokens, DescribeTokens],
            ResourceType::Any => &[],
        }
    }
}

/// One ACL: who (principal, host) may or may not (permission) do what (operation) on which
/// resources (type, name, pattern type).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern_type: PatternType,
    /// `Type:name` (`User:alice`); `User:*` is every principal.
    pub principal: String,
    /// A client address, or `*` for every host.
    pub host: String,
    pub operation: AclOperation,
    pub permission: AclPermission,
}

impl AclBinding {
    /// Kafka's checks of a new ACL (`AclControlManager.validateNewAcl`, `AclApis`): concrete
    /// values only, a name, the cluster's one name, a `Type:name` principal, a host.
    pub fn validate(&self) -> Result<(), String> {
        if self.resource_type == ResourceType::Any {
            return Err(format!("Invalid resourceType {}", self.resource_type));
        }
        if !matches!(self.pattern_type, PatternType::Literal | PatternType::Prefixed) {
            return Err(format!("Invalid patternType {}", self.pattern_type));
        }
        if self.operation == AclOperation::Any {
            return Err(format!("Invalid operation {}", self.operation));
        }
        if self.permission == AclPermission::Any {
            return Err(format!("Invalid permissionType {}", self.permission));
        }
        if self.resource_name.is_empty() {
            return Err("Resource name should not be empty".into());
        }
        if self.resource_type == ResourceType::Cluster && self.resource_name != CLUSTER_NAME {
            return Err(format!("The only valid name for the CLUSTER resource is {CLUSTER_NAME}"));
        }
        match self.principal.split_once(':') {
            Some((kind, _)) if !kind.is_empty() => {}
            _ => return Err(format!("Invalid principal {:?}: expected a string in format principalType:principalName", self.principal)),
        }
        if self.host.is_empty() {
            return Err("Host should not be empty".into());
        }
        Ok(())
    }
}

impl std::fmt::Display for AclBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} from {} {} on {}:{}:{}",
            self.principal, self.permission, self.host, self.operation, self.resource_type, self.pattern_type, self.resource_name
        )
    }
}

/// Which bindings a DescribeAcls or DeleteAcls means. `None` strings match any value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    pub resource_type: ResourceType,
    pub resource_name: Option<String>,
    pub pattern_type: PatternType,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: AclOperation,
    pub permission: AclPermission,
}

impl AclFilter {
    /// The filter matching every binding.
    pub fn any() -> Self {
        AclFilter {
            resource_type: ResourceType::Any,
            resource_name: None,
            pattern_type: PatternType::Any,
            principal: None,
            host: None,
            operation: AclOperation::Any,
            permission: AclPermission::Any,
        }
    }

    /// Kafka's `AclBindingFilter.matches`: `any` matches every value; pattern type `match`
    /// matches the patterns that would match the filter's name (the literal name, the literal
    /// `*`, prefixes of it); otherwise names, principals and hosts compare exactly.
    pub fn matches(&self, b: &AclBinding) -> bool {
        if self.resource_type != ResourceType::Any && self.resource_type != b.resource_type {
            return false;
        }
        if !matches!(self.pattern_type, PatternType::Any | PatternType::Match) && self.pattern_type != b.pattern_type {
            return false;
        }
        if let Some(name) = &self.resource_name {
            let name_matches = if self.pattern_type == PatternType::Match {
                match b.pattern_type {
                    PatternType::Literal => *name == b.resource_name || b.resource_name == WILDCARD,
                    PatternType::Prefixed => name.starts_with(&b.resource_name),
                    PatternType::Any | PatternType::Match => false,
                }
            } else {
                *name == b.resource_name
            };
            if !name_matches {
                return false;
            }
        }
        self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.host.as_ref().is_none_or(|h| *h == b.host)
            && (self.operation == AclOperation::Any || self.operation == b.operation)
            && (self.permission == AclPermission::Any || self.permission == b.permission)
    }
}

/// Every ACL the controller holds. `version` changes with every change (from a random start,
/// so two controller instances almost never show the same one): an agent that saw another
/// version loads the set again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclSet {
    pub version: u64,
    pub bindings: Vec<AclBinding>,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn binding(rt: ResourceType, name: &str, pt: PatternType, principal: &str, op: AclOperation, perm: AclPermission) -> AclBinding {
        AclBinding {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pt,
            principal: principal.into(),
            host: WILDCARD.into(),
            operation: op,
            permission: perm,
        }
    }

    #[test]
    fn codes_are_kafkas_and_unknown_codes_convert_to_none() {
        assert_eq!(ResourceType::from_code(2), Some(ResourceType::Topic));
        assert_eq!(ResourceType::from_code(7), Some(ResourceType::User));
        assert_eq!(ResourceType::from_code(0), None);
        assert_eq!(ResourceType::from_code(8), None);
        assert_eq!(PatternType::from_code(3), Some(PatternType::Literal));
        assert_eq!(PatternType::from_code(2), Some(PatternType::Match));
        assert_eq!(AclOperation::from_code(12), Some(AclOperation::IdempotentWrite));
        assert_eq!(AclOperation::from_code(14), Some(AclOperation::DescribeTokens));
        assert_eq!(AclOperation::from_code(0), None);
        assert_eq!(AclPermission::from_code(2), Some(AclPermission::Deny));
        assert_eq!(AclPermission::from_code(-1), None);
        for op in AclOperation::ALL {
            assert_eq!(AclOperation::from_code(op.code()), Some(*op));
        }
        assert_eq!(AclOperation::DescribeConfigs.to_string(), "DESCRIBE_CONFIGS");
        assert_eq!(serde_json::to_string(&ResourceType::TransactionalId).unwrap(), "\"transactional_id\"");
    }

    #[test]
    fn new_acls_are_validated_as_kafka_does() {
        use AclOperation::*;
        use PatternType::*;
        use ResourceType::*;
        let ok = binding(Topic, "t", Literal, "User:alice", Read, AclPermission::Allow);
        assert_eq!(ok.validate(), Ok(()));
        assert!(binding(Topic, "t", Prefixed, "User:*", All, AclPermission::Deny).validate().is_ok());
        assert!(binding(Cluster, CLUSTER_NAME, Literal, "User:a", Alter, AclPermission::Allow).validate().is_ok());
        let bad = [
            AclBinding { resource_type: ResourceType::Any, ..ok.clone() },
            AclBinding { pattern_type: Match, ..ok.clone() },
            AclBinding { pattern_type: PatternType::Any, ..ok.clone() },
            AclBinding { operation: AclOperation::Any, ..ok.clone() },
            AclBinding { permission: AclPermission::Any, ..ok.clone() },
            AclBinding { resource_name: String::new(), ..ok.clone() },
            AclBinding { resource_type: Cluster, resource_name: "other".into(), ..ok.clone() },
            AclBinding { principal: "alice".into(), ..ok.clone() },
            AclBinding { principal: ":alice".into(), ..ok.clone() },
            AclBinding { host: String::new(), ..ok.clone() },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
    }

    #[test]
    fn filters_match_as_kafkas_acl_binding_filter() {
        use AclOperation::*;
        use PatternType::*;
        use ResourceType::*;
        let lit = binding(Topic, "payments.received", Literal, "User:alice", Read, AclPermission::Allow);
        let star = binding(Topic, WILDCARD, Literal, "User:bob", Write, AclPermission::Deny);
        let pre = binding(Topic, "payments.", Prefixed, "User:alice", All, AclPermission::Allow);
        let other = binding(Group, "payments.received", Literal, "User:alice", Read, AclPermission::Allow);
        let all = [&lit, &star, &pre, &other];
        let count = |f: &AclFilter| all.iter().filter(|b| f.matches(b)).count();

        assert_eq!(count(&AclFilter::any()), 4);
        let topics = AclFilter { resource_type: Topic, ..AclFilter::any() };
        assert_eq!(count(&topics), 3);
        // Exact name, any pattern type: only the literal with that very name.
        let named = AclFilter { resource_name: Some("payments.received".into()), ..topics.clone() };
        assert_eq!(count(&named), 1);
        // MATCH: everything that would apply to the topic: literal, wildcard, prefix.
        let matching = AclFilter { pattern_type: Match, ..named.clone() };
        assert_eq!(count(&matching), 3);
        assert!(!AclFilter { resource_name: Some("payments".into()), ..matching.clone() }.matches(&pre));
        // A literal `*` in a filter that is not MATCH is only the wildcard binding.
        let star_filter = AclFilter { resource_name: Some(WILDCARD.into()), pattern_type: Literal, ..topics.clone() };
        assert_eq!(count(&star_filter), 1);
        let prefixed = AclFilter { pattern_type: Prefixed, ..topics.clone() };
        assert_eq!(count(&prefixed), 1);
        // Entry fields: principals and hosts compare exactly (no wildcard magic), ANY matches all.
        assert_eq!(count(&AclFilter { principal: Some("User:alice".into()), ..AclFilter::any() }), 3);
        assert_eq!(count(&AclFilter { principal: Some("User:*".into()), ..AclFilter::any() }), 0);
        assert_eq!(count(&AclFilter { host: Some("*".into()), ..AclFilter::any() }), 4);
        assert_eq!(count(&AclFilter { host: Some("10.0.0.1".into()), ..AclFilter::any() }), 0);
        assert_eq!(count(&AclFilter { operation: Read, ..AclFilter::any() }), 2);
        assert_eq!(count(&AclFilter { permission: AclPermission::Deny, ..AclFilter::any() }), 1);
    }

    #[test]
    fn bindings_and_sets_round_trip_as_json() {
        let b = binding(ResourceType::TransactionalId, "tx", PatternType::Prefixed, "User:a", AclOperation::Write, AclPermission::Allow);
        let set = AclSet { version: 7, bindings: vec![b] };
        let json = serde_json::to_string(&set).unwrap();
        assert!(json.contains("\"pattern_type\":\"prefixed\""), "{json}");
        assert_eq!(serde_json::from_str::<AclSet>(&json).unwrap(), set);
    }
}
