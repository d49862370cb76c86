//! ACLs: CreateAcls, DescribeAcls and DeleteAcls (Kafka's `AclApis`), and [`Access`], how
//! every handler asks the agent's authorizer about the request it runs.
//!
//! The ACL APIs need ALTER (create, delete) or DESCRIBE (describe) on the cluster, else
//! CLUSTER_AUTHORIZATION_FAILED; with the authorizer off (`[acl] enabled = false`) they answer
//! SECURITY_DISABLED, as Kafka does with no `authorizer.class.name`. Changes go to the
//! controller, which validates each binding (INVALID_REQUEST for that one); a code Kafka calls
//! UNKNOWN (or one this build does not know) in a binding or a filter is INVALID_REQUEST.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::delete_acls_response::{DeleteAclsFilterResult, DeleteAclsMatchingAcl};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    ApiKey, CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse, DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::str_bytes;
use crate::agent::Agent;
use crate::agent::acl::{Authorizer, Requester};
use crate::api::ControllerError;
use crate::api::acl::{AclBinding, AclFilter, AclOperation, AclPermission, CLUSTER_NAME, PatternType, ResourceType};
use crate::protocol::error::controller_code;

/// Kafka's messages, as its tools print them.
const NO_AUTHORIZER: &str = "No Authorizer is configured.";
const NO_AUTHORIZER_ON_BROKER: &str = "No Authorizer is configured on the broker";

/// One request's questions to the authorizer: who asks (principal, address), for which API.
#[derive(Clone, Copy)]
pub struct Access<'a> {
    authorizer: &'a Authorizer,
    pub who: Requester<'a>,
    api: ApiKey,
}

impl<'a> Access<'a> {
    pub fn new(authorizer: &'a Authorizer, who: Requester<'a>, api: ApiKey) -> Self {
        Access { authorizer, who, api }
    }

    /// Whether ACLs are enforced at all.
    pub fn enabled(&self) -> bool {
        self.authorizer.enabled()
    }

    /// Whether the request may do `op` on `rt:name`; a denial is counted and logged (Kafka's
    /// explicit checks, `logIfDenied = true`).
    pub fn check(&self, op: AclOperation, rt: ResourceType, name: &str) -> bool {
        self.authorizer.check(self.who, &format!("{:?}", self.api), op, rt, name)
    }

    /// The same without recording a denial: filters (a listing leaves out what may not be seen)
    /// and the first of alternative checks.
    pub fn allows(&self, op: AclOperation, rt: ResourceType, name: &str) -> bool {
        self.authorizer.allows(self.who, op, rt, name)
    }

    /// Records a denial decided from quiet checks (alternatives that all failed).
    pub fn denied(&self, op: AclOperation, rt: ResourceType, name: &str) {
        self.authorizer.denied(self.who, &format!("{:?}", self.api), op, rt, name)
    }

    /// The names of `names` on which `op` is refused (each a checked, recorded denial): Kafka's
    /// per-topic checks of a request's topics.
    pub fn refused<'n>(&self, op: AclOperation, rt: ResourceType, names: impl IntoIterator<Item = &'n str>) -> HashSet<&'n str> {
        names.into_iter().filter(|n| !self.check(op, rt, n)).collect()
    }

    /// `op` on the cluster resource.
    pub fn check_cluster(&self, op: AclOperation) -> bool {
        self.check(op, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// Kafka's `authorizeByResourceType`: `op` on at least one resource of type `rt`.
    pub fn allows_any_of_type(&self, op: AclOperation, rt: ResourceType) -> bool {
        self.authorizer.allows_any_of_type(self.who, op, rt)
    }

    /// Kafka's authorized-operations bit field of `rt:name`.
    pub fn authorized_operations(&self, rt: ResourceType, name: &str) -> i32 {
        self.authorizer.authorized_operations(self.who, rt, name)
    }
}

fn kafka_text(s: &StrBytes) -> String {
    s.to_string()
}

/// A creation's binding, or why its codes make none.
fn binding(c: &AclCreation) -> Result<AclBinding, String> {
    Ok(AclBinding {
        resource_type: ResourceType::from_code(c.resource_type).ok_or_else(|| format!("unknown resource type {}", c.resource_type))?,
        resource_name: kafka_text(&c.resource_name),
        pattern_type: PatternType::from_code(c.resource_pattern_type)
            .ok_or_else(|| format!("unknown pattern type {}", c.resource_pattern_type))?,
        principal: kafka_text(&c.principal),
        host: kafka_text(&c.host),
        operation: AclOperation::from_code(c.operation).ok_or_else(|| format!("unknown operation {}", c.operation))?,
        permission: AclPermission::from_code(c.permission_type).ok_or_else(|| format!("unknown permission type {}", c.permission_type))?,
    })
}

/// A filter from its request fields, or why its codes make none.
#[allow(clippy::too_many_arguments)]
fn filter(
    resource_type: i8,
    resource_name: &Option<StrBytes>,
    pattern_type: i8,
    principal: &Option<StrBytes>,
    host: &Option<StrBytes>,
    operation: i8,
    permission: i8,
) -> Result<AclFilter, String> {
    Ok(AclFilter {
        resource_type: ResourceType::from_code(resource_type).ok_or_else(|| format!("unknown resource type filter {resource_type}"))?,
        resource_name: resource_name.as_ref().map(kafka_text),
        pattern_type: PatternType::from_code(pattern_type).ok_or_else(|| format!("unknown pattern type filter {pattern_type}"))?,
        principal: principal.as_ref().map(kafka_text),
        host: host.as_ref().map(kafka_text),
        operation: AclOperation::from_code(operation).ok_or_else(|| format!("unknown operation filter {operation}"))?,
        permission: AclPermission::from_code(permission).ok_or_else(|| format!("unknown permission type filter {permission}"))?,
    })
}

fn delete_filter(f: &DeleteAclsFilter) -> Result<AclFilter, String> {
    filter(
        f.resource_type_filter,
        &f.resource_name_filter,
        f.pattern_type_filter,
        &f.principal_filter,
        &f.host_filter,
        f.operation,
        f.permission_type,
    )
}

/// The answer to every part of a request refused as a whole: the code and Kafka's message.
fn refusal(access: &Access<'_>, op: AclOperation) -> Option<(i16, String)> {
    if !access.check_cluster(op) {
        return Some((ResponseError::ClusterAuthorizationFailed.code(), format!("{op} on the cluster is not allowed")));
    }
    if !access.enabled() {
        return Some((ResponseError::SecurityDisabled.code(), NO_AUTHORIZER.to_string()));
    }
    None
}

/// Each part's answer, in request order: INVALID_REQUEST for a part whose codes made nothing,
/// else the controller's answer to it (it answered the others, in order), or its error for all.
fn per_part<T, R>(
    parsed: &[Result<T, String>],
    answered: Result<Vec<Result<R, ControllerError>>, ControllerError>,
) -> Vec<Result<R, (i16, String)>> {
    let error = |e: &ControllerError| (controller_code(e), e.to_string());
    let whole = answered.as_ref().err().map(error);
    let mut answers = answered.unwrap_or_default().into_iter();
    parsed
        .iter()
        .map(|p| match (p, &whole) {
            (Err(why), _) => Err((ResponseError::InvalidRequest.code(), why.clone())),
            (Ok(_), Some(e)) => Err(e.clone()),
            (Ok(_), None) => match answers.next() {
                Some(r) => r.map_err(|e| error(&e)),
                None => Err((ResponseError::UnknownServerError.code(), "the controller answered fewer parts than asked".into())),
            },
        })
        .collect()
}

pub async fn create_acls(agent: &Agent, access: &Access<'_>, req: CreateAclsRequest) -> CreateAclsResponse {
    let failed =
        |code: i16, message: String| AclCreationResult::default().with_error_code(code).with_error_message(Some(str_bytes(message)));
    if let Some((code, message)) = refusal(access, AclOperation::Alter) {
        let results = req.creations.iter().map(|_| failed(code, message.clone())).collect();
        return CreateAclsResponse::default().with_results(results);
    }
    let parsed: Vec<Result<AclBinding, String>> = req.creations.iter().map(binding).collect();
    let valid: Vec<AclBinding> = parsed.iter().filter_map(|b| b.as_ref().ok().cloned()).collect();
    let answered = agent.controller.create_acls(valid).await;
    let results = per_part(&parsed, answered)
        .into_iter()
        .map(|r| match r {
            Ok(()) => AclCreationResult::default(),
            Err((code, message)) => failed(code, message),
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

pub async fn delete_acls(agent: &Agent, access: &Access<'_>, req: DeleteAclsRequest) -> DeleteAclsResponse {
    let failed =
        |code: i16, message: String| DeleteAclsFilterResult::default().with_error_code(code).with_error_message(Some(str_bytes(message)));
    if let Some((code, message)) = refusal(access, AclOperation::Alter) {
        let results = req.filters.iter().map(|_| failed(code, message.clone())).collect();
        return DeleteAclsResponse::default().with_filter_results(results);
    }
    let parsed: Vec<Result<AclFilter, String>> = req.filters.iter().map(delete_filter).collect();
    let valid: Vec<AclFilter> = parsed.iter().filter_map(|f| f.as_ref().ok().cloned()).collect();
    let answered = agent.controller.delete_acls(valid).await;
    let results = per_part(&parsed, answered)
        .into_iter()
        .map(|r| match r {
            Ok(deleted) => DeleteAclsFilterResult::default().with_matching_acls(deleted.iter().map(matching_acl).collect()),
            Err((code, message)) => failed(code, message),
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}

fn matching_acl(b: &AclBinding) -> DeleteAclsMatchingAcl {
    DeleteAclsMatchingAcl::default()
        .with_error_message(None)
        .with_resource_type(b.resource_type.code())
        .with_resource_name(str_bytes(b.resource_name.clone()))
        .with_pattern_type(b.pattern_type.code())
        .with_principal(str_bytes(b.principal.clone()))
        .with_host(str_bytes(b.host.clone()))
        .with_operation(b.operation.code())
        .with_permission_type(b.permission.code())
}

pub async fn describe_acls(agent: &Agent, access: &Access<'_>, req: DescribeAclsRequest) -> DescribeAclsResponse {
    let error =
        |code: i16, message: String| DescribeAclsResponse::default().with_error_code(code).with_error_message(Some(str_bytes(message)));
    if !access.check_cluster(AclOperation::Describe) {
        return error(ResponseError::ClusterAuthorizationFailed.code(), "DESCRIBE on the cluster is not allowed".into());
    }
    if !access.enabled() {
        return error(ResponseError::SecurityDisabled.code(), NO_AUTHORIZER_ON_BROKER.into());
    }
    let f = match filter(
        req.resource_type_filter,
        &req.resource_name_filter,
        req.pattern_type_filter,
        &req.principal_filter,
        &req.host_filter,
        req.operation,
        req.permission_type,
    ) {
        Ok(f) => f,
        Err(why) => return error(ResponseError::InvalidRequest.code(), why),
    };
    let bindings = match agent.controller.describe_acls(f).await {
        Ok(b) => b,
        Err(e) => return error(controller_code(&e), e.to_string()),
    };
    DescribeAclsResponse::default().with_error_message(None).with_resources(resources(&bindings))
}

/// Bindings grouped by resource pattern, as DescribeAcls answers them.
fn resources(bindings: &[AclBinding]) -> Vec<DescribeAclsResource> {
    let mut by_pattern: BTreeMap<(ResourceType, &str, PatternType), Vec<AclDescription>> = BTreeMap::new();
    for b in bindings {
        by_pattern.entry((b.resource_type, b.resource_name.as_str(), b.pattern_type)).or_default().push(
            AclDescription::default()
                .with_principal(str_bytes(b.principal.clone()))
                .with_host(str_bytes(b.host.clone()))
                .with_operation(b.operation.code())
                .with_permission_type(b.permission.code()),
        );
    }
    by_pattern
        .into_iter()
        .map(|((rt, name, pt), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(rt.code())
                .with_resource_name(str_bytes(name))
                .with_pattern_type(pt.code())
                .with_acls(acls)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_make_no_binding_or_filter() {
        let c = AclCreation::default()
            .with_resource_type(2)
            .with_resource_name(str_bytes("t"))
            .with_resource_pattern_type(3)
            .with_principal(str_bytes("User:a"))
            .with_host(str_bytes("*"))
            .with_operation(3)
            .with_permission_type(3);
        assert!(binding(&c).is_ok());
        assert!(binding(&c.clone().with_resource_type(0)).is_err());
        assert!(binding(&c.clone().with_operation(99)).is_err());
        assert!(binding(&c.clone().with_permission_type(0)).is_err());
        assert!(filter(1, &None, 1, &None, &None, 1, 1).is_ok());
        assert!(filter(1, &None, 0, &None, &None, 1, 1).is_err());
        assert!(filter(1, &None, 1, &None, &None, 1, 9).is_err());
    }

    #[test]
    fn describe_groups_bindings_by_resource_pattern() {
        let b = |name: &str, principal: &str| AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern_type: PatternType::Literal,
            principal: principal.into(),
            host: "*".into(),
            operation: AclOperation::Read,
            permission: AclPermission::Allow,
        };
        let r = resources(&[b("a", "User:x"), b("b", "User:x"), b("a", "User:y")]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].resource_name.as_str(), "a");
        assert_eq!(r[0].acls.len(), 2);
        assert_eq!(r[1].acls.len(), 1);
    }
}
