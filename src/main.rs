//! The `sidestream` command line: `serve` runs an agent with its embedded controller;
//! `topic`, `group`, `produce` and `consume` are the admin client of any Kafka cluster
//! (`sidestream::admin`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sidestream::admin::cli as admin;
use sidestream::config::{Config, LogFormat, Role};

#[derive(Parser)]
#[command(name = "sidestream", version, about = "Kafka-compatible agent that keeps its data in object storage")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent with the embedded controller (defaults: proxy.toml's values).
    Serve {
        /// A proxy.toml; without it the built-in defaults apply. SIDESTREAM_* variables override both.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the controller service alone (gRPC on `[controller] listen`) for remote agents.
    Controller {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Commit latency and throughput of the controller service (gRPC on loopback), with
    /// simulated agents: for each store and agent count, p50/p99 and commits/s.
    ControllerBench {
        /// Stores to measure: sqlite:///path or postgres://... (repeatable).
        #[arg(long, required = true)]
        store: Vec<String>,
        /// Agent counts to measure (repeatable).
        #[arg(long, default_values_t = [1usize, 3, 10])]
        agents: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Partitions per committed object.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Topics of any Kafka cluster (kafka-topics.sh's list, describe, create, delete, alter).
    Topic {
        #[command(flatten)]
        common: admin::Common,
        #[command(subcommand)]
        command: admin::TopicCommand,
    },
    /// Consumer groups of any Kafka cluster (kafka-consumer-groups.sh's list, describe,
    /// reset-offsets, delete).
    Group {
        #[command(flatten)]
        common: admin::Common,
        #[command(subcommand)]
        command: admin::GroupCommand,
    },
    /// Lines of stdin as records of a topic (one record per line).
    Produce {
        #[command(flatten)]
        common: admin::Common,
        #[command(flatten)]
        args: admin::ProduceArgs,
    },
    /// Records of a topic to stdout, one value per line (or one JSON object with --json).
    Consume {
        #[command(flatten)]
        common: admin::Common,
        #[command(flatten)]
        args: admin::ConsumeArgs,
    },
    /// ACL bindings of any Kafka cluster (kafka-acls.sh's list, add, remove).
    Acl {
        #[command(flatten)]
        common: admin::Common,
        #[command(subcommand)]
        command: admin::AclCommand,
    },
    /// SASL users (SCRAM credentials), written straight to the controller's store that
    /// `--config` names: how the first user is made before any client can log in.
    User {
        #[command(subcommand)]
        command: UserCommand,
        /// The proxy.toml of the agent or controller (its `[controller] store`).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Adds or replaces a user's credentials; the password is read from stdin (one line).
    Add {
        name: String,
        /// SCRAM-SHA-256 and/or SCRAM-SHA-512 (repeatable; default both).
        #[arg(long)]
        mechanism: Vec<String>,
        #[arg(long, default_value_t = sidestream::api::scram::ITERATIONS_DEFAULT)]
        iterations: u32,
    },
    /// Deletes a user's credentials (all mechanisms).
    Delete { name: String },
    /// Lists the users and their mechanisms.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Topic { common, command } => admin::run("topic", admin::Admin::Topic(command), &common),
        Command::Group { common, command } => admin::run("group", admin::Admin::Group(command), &common),
        Command::Produce { common, args } => admin::run("produce", admin::Admin::Produce(args), &common),
        Command::Consume { common, args } => admin::run("consume", admin::Admin::Consume(args), &common),
        Command::Acl { common, command } => admin::run("acl", admin::Admin::Acl(command), &common),
        Command::Controller { config } => controller(config),
        Command::User { command, config } => user(command, config),
        Command::ControllerBench { store, agents, seconds, partitions } => controller_bench(store, agents, seconds, partitions),
    }
}

fn user(command: UserCommand, config_path: Option<PathBuf>) -> ExitCode {
    use sidestream::users_cli as users;
    let config = match Config::load(config_path.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sidestream user: bad configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        UserCommand::Add { name, mechanism, iterations } => {
            let mut password = String::new();
            match std::io::stdin().read_line(&mut password) {
                Ok(_) => users::add(&config, &name, password.trim_end_matches(['\n', '\r']), &mechanism, iterations),
                Err(e) => Err(format!("cannot read the password from stdin: {e}")),
            }
        }
        UserCommand::Delete { name } => users::delete(&config, &name),
        UserCommand::List => users::list(&config).map(|lines| {
            for l in lines {
                println!("{l}");
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidestream user: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config_path: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(config_path.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sidestream: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    banner(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sidestream: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let server = match sidestream::server::start(&config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        // The listener is open and the WAL replayed: systemd (Type=notify) may start dependents.
        let ready = format!("READY=1\nSTATUS=serving Kafka on {}", server.local_addr);
        let log = LogReload::new(Role::Agent, config_path, &config);
        signals.wait(&ready, || server.reload(log.changed().as_deref())).await;
        sidestream::sdnotify::notify("STOPPING=1\nSTATUS=committing accepted data, then exiting");
        tracing::info!("shutting down");
        if server.shutdown().await { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    })
}

fn controller_bench(stores: Vec<String>, agents: Vec<usize>, seconds: u64, partitions: i32) -> ExitCode {
    use sidestream::controller_bench::{BenchSettings, run};
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sidestream controller-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("store\tagents\tcommits\tcommits/s\tp50 ms\tp99 ms\tmax ms");
    for url in &stores {
        let mut config = Config::default();
        config.controller.store = Some(url.clone());
        let store = match config.store_url() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sidestream controller-bench: --store {url}: {e}");
                return ExitCode::from(2);
            }
        };
        let kind = url.split(':').next().unwrap_or("?");
        for &n in &agents {
            let settings = BenchSettings { store: store.clone(), agents: n, duration: std::time::Duration::from_secs(seconds), partitions };
            match runtime.block_on(run(&settings)) {
                Ok(r) => {
                    println!("{kind}\t{n}\t{}\t{:.0}\t{:.2}\t{:.2}\t{:.2}", r.commits, r.commits_per_sec, r.p50_ms, r.p99_ms, r.max_ms)
                }
                Err(e) => {
                    eprintln!("sidestream controller-bench: {kind} with {n} agents: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn controller(config_path: Option<PathBuf>) -> ExitCode {
    let config = match Config::load_for(Role::Controller, config_path.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sidestream controller: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sidestream controller: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let service = match sidestream::server::start_controller(&config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the controller");
                return ExitCode::FAILURE;
            }
        };
        let ready = format!("READY=1\nSTATUS=serving controller gRPC on {}", service.local_addr);
        let log = LogReload::new(Role::Controller, config_path, &config);
        signals
            .wait(&ready, || {
                if let Some(level) = log.changed() {
                    match sidestream::log_level::set_initial(&level).and_then(|()| sidestream::log_level::set(&level)) {
                        Ok(()) => tracing::info!(level, "SIGHUP: [log] level applied; other settings are read at start"),
                        Err(e) => tracing::warn!(level, error = %e, "SIGHUP: [log] level refused; the log filter is unchanged"),
                    }
                }
            })
            .await;
        sidestream::sdnotify::notify("STOPPING=1");
        tracing::info!("controller shutting down");
        service.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// SIGHUP's part for the log: reads the configuration again (file and `SIDESTREAM_*`
/// variables) and says whether `[log] level` changed since the last read. `RUST_LOG`
/// overrides the file, as at start. Every other setting is read at start only.
struct LogReload {
    role: Role,
    path: Option<PathBuf>,
    /// `[log] level` as last read.
    level: std::sync::Mutex<String>,
}

impl LogReload {
    fn new(role: Role, path: Option<PathBuf>, config: &Config) -> LogReload {
        LogReload { role, path, level: std::sync::Mutex::new(config.log.level.clone()) }
    }

    /// The new `[log] level`, if it changed and `RUST_LOG` does not override it.
    fn changed(&self) -> Option<String> {
        let config = match Config::load_for(self.role, self.path.as_deref(), std::env::vars()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP: the configuration does not load; the log level is unchanged");
                return None;
            }
        };
        let mut level = self.level.lock().unwrap_or_else(|p| p.into_inner());
        if config.log.level == *level {
            tracing::info!(level = %level, "SIGHUP: [log] level unchanged; other settings are read at start");
            return None;
        }
        *level = config.log.level.clone();
        if std::env::var_os("RUST_LOG").is_some() {
            tracing::warn!(level = %config.log.level, "SIGHUP: RUST_LOG is set and overrides [log] level; the log filter is unchanged");
            return None;
        }
        Some(config.log.level)
    }
}

/// SIGTERM, SIGINT and SIGHUP handlers, installed before start-up so that a signal arriving
/// while the agent starts (or right after READY) is handled, not met by the default action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Tells systemd `ready` (sd_notify), then waits for SIGTERM or SIGINT. SIGHUP (systemd's
    /// ExecReload) runs `reload`.
    async fn wait(&mut self, ready: &str, reload: impl Fn()) {
        sidestream::sdnotify::notify(ready);
        sidestream::sdnotify::spawn_watchdog();
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    sidestream::sdnotify::notify("RELOADING=1");
                    reload();
                    sidestream::sdnotify::notify("READY=1");
                }
            }
        }
    }
}

/// One line saying what this agent is about to be (version, listeners, data dir made absolute,
/// object store, controller), then a warning per setting that is probably a mistake.
fn banner(config: &Config) {
    let data_dir = std::path::absolute(&config.agent.data_dir).unwrap_or_else(|_| config.agent.data_dir.clone());
    let (host, port) = config.advertised();
    let object_store = config.log_dir();
    let controller = match config.controller.mode {
        sidestream::config::ControllerMode::Embedded => {
            let store = config.controller.store.clone().unwrap_or_else(|| format!("sqlite://{}", data_dir.join("controller.db").display()));
            format!("embedded on {}", redact(&store))
        }
        sidestream::config::ControllerMode::Remote => {
            let c = &config.controller;
            let link = match (&c.tls_ca_file, &c.tls_cert_file) {
                (None, _) => "plaintext",
                (Some(_), None) => "TLS",
                (Some(_), Some(_)) => "mTLS",
            };
            format!("remote at {} ({link})", c.addresses.join(","))
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %config.agent.listen.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        listeners = %config.listeners.iter().map(|l| format!("{}={}:{}", l.name, l.protocol.name(), l.address)).collect::<Vec<_>>().join(","),
        advertised = %format!("{host}:{port}"),
        metrics = %config.metrics.listen,
        data_dir = %data_dir.display(),
        object_store = %object_store,
        controller = %controller,
        cluster_mode = config.agent.cluster_mode,
        "sidestream agent starting"
    );
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
}

/// A store URL without its password (`postgres://user:secret@host/db` -> `user:***@host/db`).
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            match user.split_once(':') {
                Some((name, _)) => format!("{}{name}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn init_logging(config: &Config) {
    sidestream::log_level::init(&config.log.level, config.log.format == LogFormat::Json);
}
