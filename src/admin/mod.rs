//! The command line's admin client: `sidestream topic|group|produce|consume|acl` speak the Kafka
//! protocol to any cluster, a Sidestream agent or Apache Kafka, as `kafka-topics.sh`,
//! `kafka-consumer-groups.sh`, `kafka-acls.sh` and `kcat` do.
//!
//! - [`cli`]: the subcommands' arguments and their runner (tables, `--json`, exit status).
//! - [`client`]: the connection (bootstrap, version choice, framing, Metadata, coordinators).
//! - [`topics`]: list, describe, create, delete, alter (CreatePartitions, IncrementalAlterConfigs).
//! - [`groups`]: list, describe (classic and KIP-848, lag per partition), reset-offsets, delete.
//! - [`records`]: produce lines from stdin, consume records to stdout.
//! - [`acls`]: list, create, delete ACL bindings (DescribeAcls, CreateAcls, DeleteAcls).
//! - [`security`]: `--command-config` (Kafka's client properties), TLS and SASL PLAIN/SCRAM.
//!
//! Every command returns a value that prints as a table for people or as JSON for scripts
//! (field names documented in README's "Admin CLI"); every failure is one [`AdminError`].
//!
//! Must not touch: server internals; it only speaks the wire protocol. It shares with the
//! server only the record batch format ([`crate::format::records`]) and Kafka's error names.

pub mod acls;
pub mod cli;
pub mod client;
pub mod groups;
pub mod records;
pub mod security;
pub mod topics;

use std::time::Duration;

pub use groups::{GroupReport, LagRow, describe_group, render};

/// Everything that can go wrong, sorted by what the user must do: reach the cluster, fix the
/// request, or read the cluster's answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Nothing answers at the address (or the TLS handshake fails).
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The broker did not accept the SASL login.
    #[error("authentication of {user} with {addr} failed: {reason}")]
    Auth { addr: String, user: String, reason: String },
    /// The connection broke during a request.
    #[error("connection to {addr} failed: {reason}")]
    Io { addr: String, reason: String },
    #[error("no answer from {addr} within {after:?}")]
    Timeout { addr: String, after: Duration },
    /// The cluster answered with an error code.
    #[error("{}{name}{}", prefix(.context), suffix(.message))]
    Kafka { api: &'static str, context: String, code: i16, name: String, message: Option<String> },
    /// What was asked for does not exist ("Consumer group 'g' does not exist.").
    #[error("{0}")]
    NotFound(String),
    /// A request refused before it is sent (bad arguments, a group with active members).
    #[error("{0}")]
    Invalid(String),
    #[error("the broker does not support {api} at a version this client speaks")]
    Unsupported { api: String },
    /// A response that does not decode, or says something impossible.
    #[error("bad response from {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("cannot encode the request: {0}")]
    Encode(String),
    /// Reading stdin or writing stdout.
    #[error("{0}")]
    Local(#[from] std::io::Error),
}

fn prefix(context: &str) -> String {
    if context.is_empty() { String::new() } else { format!("{context}: ") }
}

fn suffix(message: &Option<String>) -> String {
    message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
}

/// A left-aligned table with a header row, columns two spaces apart, trailing blanks trimmed.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r.get(i).map_or(0, |c| c.len())).max().unwrap_or(0).max(header[i].len()))
        .collect();
    let mut out = String::new();
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&head).chain(rows) {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `k=v` (a `--config` argument) as a pair; the value may contain '='.
pub fn parse_config(arg: &str) -> Result<(String, String), AdminError> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(AdminError::Invalid(format!("--config '{arg}': expected key=value"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_arguments_split_at_the_first_equals_sign() {
        assert_eq!(parse_config("retention.ms=1000").unwrap(), ("retention.ms".into(), "1000".into()));
        assert_eq!(parse_config("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_config("empty=").unwrap(), ("empty".into(), String::new()));
        assert!(parse_config("novalue").is_err());
        assert!(parse_config("=v").is_err());
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxxx  1\n");
    }
}
