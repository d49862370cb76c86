//! DescribeUserScramCredentials (API 50) and AlterUserScramCredentials (API 51): the users SASL
//! logs in, managed as `kafka-configs.sh --entity-type users` and AdminClient's
//! `alterUserScramCredentials` do it. The client sends the salt and the salted password; the
//! controller keeps only the keys derived from them. Describing needs DESCRIBE on the cluster,
//! altering ALTER on it (CLUSTER_AUTHORIZATION_FAILED), as in Kafka.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{CredentialInfo, DescribeUserScramCredentialsResult};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::acls::Access;
use super::str_bytes;
use crate::agent::Agent;
use crate::api::ControllerError;
use crate::api::acl::AclOperation;
use crate::api::scram::{ScramAlteration, ScramCredential, ScramMechanism};
use crate::protocol::error::controller_code;

/// Users named in one request at most (more: INVALID_REQUEST for the rest).
pub const USERS_PER_REQUEST_MAX: usize = 1000;

fn failure(e: &ControllerError) -> (i16, Option<StrBytes>) {
    (controller_code(e), Some(str_bytes(e.to_string())))
}

pub async fn describe(
    agent: &Agent,
    access: &Access<'_>,
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let names: Option<Vec<String>> = req.users.map(|u| u.into_iter().map(|n| n.name.to_string()).collect());
    let resp = DescribeUserScramCredentialsResponse::default();
    if !access.check_cluster(AclOperation::Describe) {
        return resp
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(str_bytes("DESCRIBE on the cluster is not allowed")));
    }
    if names.as_ref().is_some_and(|n| n.len() > USERS_PER_REQUEST_MAX) {
        let e = ControllerError::InvalidRequest(format!("more than {USERS_PER_REQUEST_MAX} users"));
        let (code, message) = failure(&e);
        return resp.with_error_code(code).with_error_message(message);
    }
    // A name asked for twice is answered DUPLICATE_RESOURCE, once.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for n in names.iter().flatten() {
        *seen.entry(n.clone()).or_default() += 1;
    }
    let unique: Option<Vec<String>> = names.as_ref().map(|n| {
        let mut u: Vec<String> = seen.keys().cloned().collect();
        u.sort_by_key(|name| n.iter().position(|x| x == name));
        u
    });
    match agent.controller.describe_scram_credentials(unique.clone()).await {
        Err(e) => {
            let (code, message) = failure(&e);
            resp.with_error_code(code).with_error_message(message)
        }
        Ok(users) => resp.with_results(
            users
                .into_iter()
                .map(|u| {
                    let r = DescribeUserScramCredentialsResult::default().with_user(str_bytes(u.user.clone()));
                    if seen.get(&u.user).is_some_and(|n| *n > 1) {
                        let (code, message) = failure(&ControllerError::DuplicateResource(format!(
                            "Cannot describe SCRAM credentials for the same user twice in a single request: {}",
                            u.user
                        )));
                        return r.with_error_code(code).with_error_message(message);
                    }
                    if u.credentials.is_empty() {
                        let (code, message) = failure(&ControllerError::ResourceNotFound(format!(
                            "Attempt to describe a user credential that does not exist: {}",
                            u.user
                        )));
                        return r.with_error_code(code).with_error_message(message);
                    }
                    r.with_credential_infos(
                        u.credentials
                            .into_iter()
                            .map(|(m, i)| CredentialInfo::default().with_mechanism(m.kafka_type()).with_iterations(i as i32))
                            .collect(),
                    )
                })
                .collect(),
        ),
    }
}

pub async fn alter(agent: &Agent, access: &Access<'_>, req: AlterUserScramCredentialsRequest) -> AlterUserScramCredentialsResponse {
    if !access.check_cluster(AclOperation::Alter) {
        let mut users: Vec<String> = Vec::new();
        for u in req.deletions.iter().map(|d| &d.name).chain(req.upsertions.iter().map(|u| &u.name)) {
            if !users.iter().any(|x| **x == **u) {
                users.push(u.to_string());
            }
        }
        return AlterUserScramCredentialsResponse::default().with_results(
            users
                .into_iter()
                .map(|u| {
                    AlterUserScramCredentialsResult::default()
                        .with_user(str_bytes(u))
                        .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
                        .with_error_message(Some(str_bytes("ALTER on the cluster is not allowed")))
                })
                .collect(),
        );
    }
    // One result per user, in the order users first appear; its error is the user's first.
    let mut order: Vec<String> = Vec::new();
    let mut errors: BTreeMap<String, ControllerError> = BTreeMap::new();
    let mut alterations: Vec<ScramAlteration> = Vec::new();
    let mut note = |user: &str, e: Option<ControllerError>, order: &mut Vec<String>| {
        if !order.iter().any(|u| u == user) {
            order.push(user.to_string());
        }
        if let Some(e) = e {
            errors.entry(user.to_string()).or_insert(e);
        }
    };
    let unsupported = |m: i8| ControllerError::UnsupportedSaslMechanism(format!("Unknown SCRAM mechanism: {m}"));
    for d in req.deletions.iter().take(USERS_PER_REQUEST_MAX) {
        let user = d.name.to_string();
        match ScramMechanism::from_kafka_type(d.mechanism) {
            Some(mechanism) => {
                note(&user, None, &mut order);
                alterations.push(ScramAlteration::Delete { user, mechanism });
            }
            None => note(&user, Some(unsupported(d.mechanism)), &mut order),
        }
    }
    for u in req.upsertions.iter().take(USERS_PER_REQUEST_MAX) {
        let user = u.name.to_string();
        let Some(mechanism) = ScramMechanism::from_kafka_type(u.mechanism) else {
            note(&user, Some(unsupported(u.mechanism)), &mut order);
            continue;
        };
        if u.salted_password.len() != mechanism.hash(b"").len() || u.iterations <= 0 {
            let e = ControllerError::UnacceptableCredential(format!("bad salted password or iterations for {}", mechanism.name()));
            note(&user, Some(e), &mut order);
            continue;
        }
        let credential = ScramCredential::from_salted_password(mechanism, u.salt.to_vec(), &u.salted_password, u.iterations as u32);
        note(&user, None, &mut order);
        alterations.push(ScramAlteration::Upsert { user, credential });
    }
    // A user with an error in its request is not altered at all.
    alterations.retain(|a| !errors.contains_key(a.user()));
    let outcome = if alterations.is_empty() { Ok(Vec::new()) } else { agent.controller.alter_scram_credentials(alterations.clone()).await };
    match outcome {
        Ok(results) => {
            for (a, r) in alterations.iter().zip(results) {
                if let Err(e) = r {
                    errors.entry(a.user().to_string()).or_insert(e);
                }
            }
        }
        Err(e) => {
            for a in &alterations {
                errors.entry(a.user().to_string()).or_insert_with(|| e.clone());
            }
        }
    }
    AlterUserScramCredentialsResponse::default().with_results(
        order
            .into_iter()
            .map(|user| {
                let r = AlterUserScramCredentialsResult::default().with_user(str_bytes(user.clone()));
                match errors.get(&user) {
                    Some(e) => {
                        let (code, message) = failure(e);
                        r.with_error_code(code).with_error_message(message)
                    }
                    None => r,
                }
            })
            .collect(),
    )
}
