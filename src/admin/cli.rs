//! The admin subcommands' arguments (clap) and their runner: connect, run one command, print
//! a table or JSON to stdout, errors as one line on stderr, and the exit status (0 done, 1 a
//! failure: an unreachable broker, a Kafka error, a group that does not exist, a failed record).
//!
//! Must not touch: `serve` and the other server commands (main.rs owns them).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::client::{Client, ClientSettings};
use super::security::Security;
use super::{AdminError, acls, groups, parse_config, records, topics};

/// Options every admin command takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The cluster to ask: host:port[,host:port...].
    #[arg(long, global = true, default_value = "localhost:9092")]
    pub bootstrap_server: String,
    /// Print JSON for scripts instead of tables (field names in README, "Admin CLI").
    #[arg(long, global = true)]
    pub json: bool,
    /// Bound on connecting and on each request (and on retrying a retriable error).
    #[arg(long, global = true, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Client properties for a secured listener, the file Kafka's tools take with the same
    /// option: security.protocol, ssl.ca.location (or a PEM ssl.truststore.location),
    /// ssl.certificate.location/ssl.key.location, sasl.mechanism, sasl.username/sasl.password
    /// (or sasl.jaas.config).
    #[arg(long, global = true)]
    pub command_config: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// The topics' names.
    List {
        /// Leave out internal topics (__consumer_offsets, __transaction_state).
        #[arg(long)]
        exclude_internal: bool,
    },
    /// Partitions, leaders, replicas, in-sync replicas, and the configs set on the topic.
    Describe {
        /// Topics to describe (all when none).
        topics: Vec<String>,
    },
    /// Creates a topic (CreateTopics).
    Create {
        topic: String,
        /// Default: the broker's num.partitions.
        #[arg(long)]
        partitions: Option<i32>,
        /// Default: the broker's default.replication.factor.
        #[arg(long)]
        replication_factor: Option<i16>,
        /// A topic config, key=value (repeatable).
        #[arg(long = "config")]
        configs: Vec<String>,
    },
    /// Deletes topics and their records (DeleteTopics).
    Delete {
        #[arg(required = true)]
        topics: Vec<String>,
    },
    /// Raises the partition count, sets or deletes configs.
    Alter {
        topic: String,
        #[arg(long)]
        partitions: Option<i32>,
        /// key=value to set (repeatable).
        #[arg(long = "config")]
        configs: Vec<String>,
        /// A key to return to its default (repeatable).
        #[arg(long = "delete-config")]
        delete_configs: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Every group, its state and type.
    List,
    /// State, members, committed offsets and lag per partition.
    Describe { group: String },
    /// Moves the group's committed offsets; a dry run unless --execute. The group must have no
    /// active members.
    ResetOffsets {
        group: String,
        /// TOPIC or TOPIC:PARTITION,PARTITION... (repeatable).
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// Every topic the group has committed offsets for.
        #[arg(long)]
        all_topics: bool,
        #[arg(long, group = "strategy")]
        to_earliest: bool,
        #[arg(long, group = "strategy")]
        to_latest: bool,
        #[arg(long, group = "strategy")]
        to_offset: Option<i64>,
        /// YYYY-MM-DDTHH:MM:SS[.sss][Z|+HH:MM] (UTC when no zone is given).
        #[arg(long, group = "strategy")]
        to_datetime: Option<String>,
        #[arg(long, group = "strategy", allow_hyphen_values = true)]
        shift_by: Option<i64>,
        /// Commit the new offsets (without it, only show them).
        #[arg(long)]
        execute: bool,
    },
    /// Deletes groups with no active members, and their committed offsets (DeleteGroups).
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

/// kafka-acls.sh's resource and principal options.
#[derive(Debug, Args)]
pub struct AclArgs {
    #[arg(long = "topic")]
    topics: Vec<String>,
    #[arg(long = "group")]
    groups: Vec<String>,
    #[arg(long = "transactional-id")]
    transactional_ids: Vec<String>,
    /// The cluster resource (kafka-cluster).
    #[arg(long)]
    cluster: bool,
    /// literal or prefixed (list and delete: also any, match; default literal, list: any).
    #[arg(long)]
    resource_pattern_type: Option<String>,
    /// User:NAME (repeatable).
    #[arg(long = "allow-principal")]
    allow_principals: Vec<String>,
    #[arg(long = "deny-principal")]
    deny_principals: Vec<String>,
    /// Default * (every host).
    #[arg(long = "allow-host")]
    allow_hosts: Vec<String>,
    #[arg(long = "deny-host")]
    deny_hosts: Vec<String>,
    /// Read, Write, Create, Delete, Alter, Describe, ClusterAction, DescribeConfigs,
    /// AlterConfigs, IdempotentWrite, All (repeatable).
    #[arg(long = "operation")]
    operations: Vec<String>,
    /// list: only this principal's bindings.
    #[arg(long)]
    principal: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// The bindings on the resources named (all when none).
    List(AclArgs),
    /// Adds bindings: each principal x host x operation x resource.
    Create(AclArgs),
    /// Removes the bindings that match (principals, hosts, operations not given match any).
    Delete(AclArgs),
}

impl AclArgs {
    fn resources(&self) -> acls::Resources {
        acls::Resources {
            topics: self.topics.clone(),
            groups: self.groups.clone(),
            transactional_ids: self.transactional_ids.clone(),
            cluster: self.cluster,
        }
    }

    /// The bindings to create, or (`filter`) to match: a filter also takes the pattern types
    /// any and match.
    fn bindings(&self, filter: bool) -> Result<acls::Bindings, AdminError> {
        let pattern_type = acls::parse_pattern_type(self.resource_pattern_type.as_deref().unwrap_or("literal"), filter)?;
        let operations = self.operations.iter().map(|o| acls::parse_operation(o)).collect::<Result<_, _>>()?;
        Ok(acls::Bindings {
            allow_principals: self.allow_principals.clone(),
            deny_principals: self.deny_principals.clone(),
            allow_hosts: self.allow_hosts.clone(),
            deny_hosts: self.deny_hosts.clone(),
            operations,
            resources: self.resources(),
            pattern_type,
        })
    }
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    topic: String,
    /// Every record to this partition (default: by key with Kafka's murmur2, keyless batches
    /// spread over the partitions).
    #[arg(long)]
    partition: Option<i32>,
    /// Each line is KEY SEP VALUE, split at the first SEP.
    #[arg(long)]
    key_separator: Option<String>,
    /// -1 (or all): every in-sync replica; 1: the leader; 0: no answer.
    #[arg(long, default_value = "-1", allow_hyphen_values = true)]
    acks: String,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    topic: String,
    #[arg(long)]
    partition: Option<i32>,
    /// beginning, end, or an offset.
    #[arg(long, default_value = "beginning")]
    offset: String,
    /// Stop after this many records.
    #[arg(long)]
    count: Option<u64>,
    /// Stop at the end of every partition.
    #[arg(long)]
    exit_at_end: bool,
    /// Start at this group's committed offsets and commit the positions reached at the end.
    #[arg(long)]
    group: Option<String>,
}

/// Which admin command to run.
pub enum Admin {
    Topic(TopicCommand),
    Group(GroupCommand),
    Produce(ProduceArgs),
    Consume(ConsumeArgs),
    Acl(AclCommand),
}

/// Runs `command`, prints its result, and says how the process should exit.
pub fn run(name: &str, command: Admin, common: &Common) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sidestream {name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(command, common)) {
        Ok(ok) => {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("sidestream {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print(common: &Common, value: &impl Serialize, text: impl FnOnce() -> String) -> Result<(), AdminError> {
    if common.json {
        println!("{}", serde_json::to_string(value).map_err(|e| AdminError::Encode(e.to_string()))?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

fn configs(args: &[String]) -> Result<Vec<(String, String)>, AdminError> {
    args.iter().map(|a| parse_config(a)).collect()
}

/// Ok(false): the command ran but something in it failed (printed already).
async fn execute(command: Admin, common: &Common) -> Result<bool, AdminError> {
    let security = match &common.command_config {
        Some(path) => Security::from_file(path)?,
        None => Security::default(),
    };
    let settings = ClientSettings {
        bootstrap: common.bootstrap_server.clone(),
        request_timeout: Duration::from_millis(common.timeout_ms.max(1)),
        security,
    };
    // Arguments are checked before the cluster is reached.
    let reset_spec = match &command {
        Admin::Group(GroupCommand::ResetOffsets { to_earliest, to_latest, to_offset, to_datetime, shift_by, .. }) => {
            Some(match (to_earliest, to_latest, to_offset, to_datetime, shift_by) {
                (true, ..) => groups::ResetSpec::Earliest,
                (_, true, ..) => groups::ResetSpec::Latest,
                (_, _, Some(n), ..) => groups::ResetSpec::Offset(*n),
                (_, _, _, Some(t), _) => groups::ResetSpec::Datetime(groups::parse_datetime(t)?),
                (_, _, _, _, Some(n)) => groups::ResetSpec::ShiftBy(*n),
                _ => {
                    return Err(AdminError::Invalid(
                        "give one of --to-earliest, --to-latest, --to-offset, --to-datetime, --shift-by".into(),
                    ));
                }
            })
        }
        _ => None,
    };
    let mut c = Client::connect(settings).await?;
    match command {
        Admin::Topic(TopicCommand::List { exclude_internal }) => {
            let r = topics::list(&mut c, exclude_internal).await?;
            print(common, &serde_json::json!({ "topics": r }), || topics::render_list(&r))?;
        }
        Admin::Topic(TopicCommand::Describe { topics: names }) => {
            let r = topics::describe(&mut c, &names).await?;
            print(common, &serde_json::json!({ "topics": r }), || topics::render_describe(&r))?;
        }
        Admin::Topic(TopicCommand::Create { topic, partitions, replication_factor, configs: args }) => {
            let r = topics::create(&mut c, &topic, partitions, replication_factor, &configs(&args)?).await?;
            print(common, &r, || format!("Created topic {}.\n", r.name))?;
        }
        Admin::Topic(TopicCommand::Delete { topics: names }) => {
            let r = topics::delete(&mut c, &names).await?;
            print(common, &serde_json::json!({ "deleted": r }), || r.iter().map(|t| format!("Deleted topic {t}.\n")).collect())?;
        }
        Admin::Topic(TopicCommand::Alter { topic, partitions, configs: args, delete_configs }) => {
            let r = topics::alter(&mut c, &topic, partitions, &configs(&args)?, &delete_configs).await?;
            print(common, &r, || format!("Altered topic {}.\n", r.name))?;
        }
        Admin::Group(GroupCommand::List) => {
            let r = groups::list(&mut c).await?;
            print(common, &serde_json::json!({ "groups": r }), || groups::render_list(&r))?;
        }
        Admin::Group(GroupCommand::Describe { group }) => {
            let r = groups::describe_group(&mut c, &group).await?;
            print(common, &r, || groups::render(&r))?;
        }
        Admin::Group(GroupCommand::ResetOffsets { group, topics, all_topics, execute, .. }) => {
            let spec = reset_spec.ok_or_else(|| AdminError::Invalid("no reset strategy".into()))?;
            let r = groups::reset_offsets(&mut c, &group, &topics, all_topics, spec, execute).await?;
            print(common, &r, || groups::render_reset(&r))?;
        }
        Admin::Group(GroupCommand::Delete { groups: names }) => {
            let r = groups::delete(&mut c, &names).await?;
            print(common, &serde_json::json!({ "groups": r }), || groups::render_delete(&r))?;
            return Ok(r.iter().all(|d| d.error.is_none()));
        }
        Admin::Produce(a) => {
            let s = records::ProduceSettings {
                topic: a.topic,
                partition: a.partition,
                key_separator: a.key_separator,
                acks: match a.acks.as_str() {
                    "-1" | "all" => -1,
                    "0" => 0,
                    "1" => 1,
                    other => return Err(AdminError::Invalid(format!("--acks '{other}': expected -1, all, 0 or 1"))),
                },
                compression: records::compression_code(&a.compression)?,
            };
            let stdin = std::io::BufReader::new(std::io::stdin());
            let r = records::produce(&mut c, &s, stdin, |line| eprintln!("{line}")).await?;
            if common.json {
                print(common, &r, String::new)?;
            } else {
                eprintln!("{}", r.summary());
            }
            if let Some(e) = &r.error {
                eprintln!("sidestream produce: {e}");
                return Ok(false);
            }
        }
        Admin::Acl(AclCommand::List(a)) => {
            let pattern = acls::parse_pattern_type(a.resource_pattern_type.as_deref().unwrap_or("any"), true)?;
            let r = acls::list(&mut c, &a.resources(), pattern, a.principal.as_deref()).await?;
            print(common, &serde_json::json!({ "acls": r }), || acls::render(&r))?;
        }
        Admin::Acl(AclCommand::Create(a)) => {
            let n = acls::create(&mut c, &a.bindings(false)?).await?;
            print(common, &serde_json::json!({ "created": n }), || format!("Created {n} ACL binding(s).\n"))?;
        }
        Admin::Acl(AclCommand::Delete(a)) => {
            let r = acls::delete(&mut c, &a.bindings(true)?).await?;
            print(common, &serde_json::json!({ "deleted": r }), || acls::render(&r))?;
        }
        Admin::Consume(a) => {
            let s = records::ConsumeSettings {
                topic: a.topic,
                partition: a.partition,
                offset: records::parse_start_offset(&a.offset)?,
                count: a.count,
                exit_at_end: a.exit_at_end,
                group: a.group,
                json: common.json,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match records::consume(&mut c, &s, &mut out).await {
                Ok(_) => {}
                Err(AdminError::Local(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(true)
}
