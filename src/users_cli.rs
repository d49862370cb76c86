//! `sidestream user add|delete|list`: SASL users written straight to the controller's metadata
//! store (`[controller] store` of the `--config` file: the embedded SQLite file or PostgreSQL).
//! It runs in the command's own process, beside a running agent or controller: they read
//! credentials from the store at each login, so a user added here can log in at once. This is
//! how the first user is made; afterwards Kafka's own AlterUserScramCredentials
//! (`kafka-configs.sh --entity-type users`) does the same over the wire.
//!
//! The password is read from stdin by the caller and only its derived keys are stored.

use ring::rand::{SecureRandom, SystemRandom};

use crate::api::scram::{ITERATIONS_MAX, ITERATIONS_MIN, SALT_BYTES, ScramCredential, ScramMechanism};
use crate::config::Config;
use crate::controller::store::{self, MetadataStore, StoreSettings};
use crate::controller::users::USER_NAME_BYTES_MAX;

fn open(config: &Config) -> Result<std::sync::Arc<dyn MetadataStore>, String> {
    let url = config.store_url()?;
    let (store, _) =
        store::open(&url, &StoreSettings::from(&config.controller)).map_err(|e| format!("cannot open the store: {}", e.report()))?;
    Ok(store)
}

/// Adds (or replaces) `name`'s credentials for `mechanisms` (both SCRAM mechanisms if empty).
pub fn add(config: &Config, name: &str, password: &str, mechanisms: &[String], iterations: u32) -> Result<(), String> {
    if name.is_empty() || name.len() > USER_NAME_BYTES_MAX {
        return Err(format!("a user name has 1 to {USER_NAME_BYTES_MAX} bytes"));
    }
    if password.is_empty() {
        return Err("the password (read from stdin) is empty".into());
    }
    if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
        return Err(format!("--iterations must be between {ITERATIONS_MIN} and {ITERATIONS_MAX}"));
    }
    let mechanisms: Vec<ScramMechanism> = if mechanisms.is_empty() {
        ScramMechanism::ALL.to_vec()
    } else {
        mechanisms
            .iter()
            .map(|m| ScramMechanism::from_name(m).ok_or_else(|| format!("{m:?} is not SCRAM-SHA-256 or SCRAM-SHA-512")))
            .collect::<Result<_, _>>()?
    };
    let random = SystemRandom::new();
    let mut upserts = Vec::new();
    for m in mechanisms {
        let mut salt = vec![0u8; SALT_BYTES];
        random.fill(&mut salt).map_err(|_| "the system's random generator failed".to_string())?;
        upserts.push((name.to_string(), ScramCredential::from_password(m, password, salt, iterations)));
    }
    let store = open(config)?;
    store.alter_scram_credentials(&upserts, &[]).map_err(|e| e.report())?;
    let names: Vec<&str> = upserts.iter().map(|(_, c)| c.mechanism.name()).collect();
    eprintln!("user {name}: {} credentials stored ({iterations} iterations)", names.join(" and "));
    Ok(())
}

/// Deletes every credential of `name`; an error if there is none.
pub fn delete(config: &Config, name: &str) -> Result<(), String> {
    let store = open(config)?;
    let found = store.scram_credentials(Some(name)).map_err(|e| e.report())?;
    if found.is_empty() {
        return Err(format!("no user {name:?}"));
    }
    let deletes: Vec<(String, ScramMechanism)> = found.into_iter().map(|(u, c)| (u, c.mechanism)).collect();
    store.alter_scram_credentials(&[], &deletes).map_err(|e| e.report())
}

/// One line per user: the name, then each mechanism with its iterations.
pub fn list(config: &Config) -> Result<Vec<String>, String> {
    let store = open(config)?;
    let mut lines: Vec<String> = Vec::new();
    let mut last: Option<String> = None;
    for (user, c) in store.scram_credentials(None).map_err(|e| e.report())? {
        let entry = format!("{}(iterations={})", c.mechanism.name(), c.iterations);
        match (&last, lines.last_mut()) {
            (Some(u), Some(line)) if *u == user => {
                line.push(' ');
                line.push_str(&entry);
            }
            _ => lines.push(format!("{user}\t{entry}")),
        }
        last = Some(user);
    }
    Ok(lines)
}
