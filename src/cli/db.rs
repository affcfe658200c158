//! `tee-risk db …`: operator commands on the database of a stopped service.

use std::path::Path;
use std::sync::Arc;

use crate::app::Config;
use crate::app::config::{StorageBackend, StorageConfig};
use crate::app::secrets::{self, MasterKeyEnv, open_vault, open_vault_copy, store_path};
use crate::store::{
    DEFAULT_BATCH, KeyId, OpenMode, SledStore, Store, Vault, VaultError, audit, mark,
};
use anyhow::Context;

use super::CliError;
use super::args::{DbArgs, DbCommand};
use super::print_json;

/// The storage section of the config with `--data-dir` applied, and whether dev mode is on.
fn db_storage(args: &DbArgs) -> Result<(StorageConfig, bool), CliError> {
    let config = Config::load(args.config.as_deref())?;
    let mut storage = config.storage.clone();
    if let Some(dir) = &args.data_dir {
        storage.data_dir = dir.clone();
    }
    Ok((storage, args.dev.unwrap_or(config.server.dev)))
}

fn open_db(args: &DbArgs, mode: OpenMode) -> Result<Vault, CliError> {
    let (storage, dev) = db_storage(args)?;
    Ok(open_vault(
        MasterKeyEnv::from_process(),
        dev,
        &storage,
        mode,
        false,
    )?)
}

/// Refuses the commands that need the master key when custodians hold it: it is never in
/// the environment then, and only a running, unsealed service has it (`/admin/db/status`
/// answers there). The audit log needs no key (`verify-log`), nor the schema (`migrate`).
fn refuse_in_custodian_mode(command: &DbCommand) -> Result<(), CliError> {
    let args = match command {
        DbCommand::VerifyLog(_) | DbCommand::Migrate(_) => return Ok(()),
        DbCommand::Status(args) | DbCommand::Verify(args) => args,
        DbCommand::Rotate { db, .. }
        | DbCommand::RetireKey { db, .. }
        | DbCommand::Backup { db, .. }
        | DbCommand::Salvage { db, .. }
        | DbCommand::Copy { db, .. } => db,
    };
    let config = Config::load(args.config.as_deref())?;
    if config.keys.source == crate::app::config::MasterKeySourceConfig::Custodians {
        return Err(CliError::Refused(
            "keys.source = \"custodians\": the master key is never in this environment, so \
             `tee-risk db` cannot open the database. Use the running service (GET \
             /admin/db/status on its operator listener); `db verify-log` and `db migrate` \
             need no key and still run (docs/OPERATIONS.md, \"Custodians\")."
                .into(),
        ));
    }
    Ok(())
}

/// Runs one `db` command.
pub fn run(command: DbCommand) -> Result<(), CliError> {
    refuse_in_custodian_mode(&command)?;
    match command {
        DbCommand::Status(args) => status(&args),
        DbCommand::Rotate { db, dry_run: true } => {
            let vault = open_inspected(&db)?;
            print_json(&serde_json::json!({
                "current_key": vault.key_id().to_string(),
                "would_move": vault.pending_moves()?,
            }))?;
            Ok(())
        }
        DbCommand::Rotate { db, dry_run: false } => rotate(&db),
        DbCommand::Verify(args) => verify(&args),
        DbCommand::RetireKey { db, id } => {
            let id: KeyId = id.parse().map_err(anyhow::Error::from)?;
            let vault = open_db(&db, OpenMode::Inspect)?;
            match vault.retire_key(id) {
                Ok(()) => {
                    println!("key {id} is retired");
                    Ok(())
                }
                Err(VaultError::Refused(why)) => Err(CliError::Refused(why)),
                Err(e) => Err(e.into()),
            }
        }
        DbCommand::VerifyLog(args) => verify_log(&args),
        DbCommand::Backup { db, dir, force } => backup(&db, &dir, force),
        DbCommand::Salvage { db, out } => salvage(&db, &out),
        DbCommand::Migrate(args) => migrate(&args),
        DbCommand::Copy { db, from } => copy_to_postgres(&db, &from),
    }
}

/// `db rotate`: sweeps every record to the current key, then says what to do next.
fn rotate(db: &DbArgs) -> Result<(), CliError> {
    let vault = open_db(db, OpenMode::Write)?;
    let started = std::time::Instant::now();
    let mut moved = 0u64;
    vault.rotate_until_done(DEFAULT_BATCH, &|| false, &mut |n| moved += n)?;
    let seconds = started.elapsed().as_secs_f64();
    print_json(&serde_json::json!({
        "current_key": vault.key_id().to_string(),
        "moved": moved,
        "seconds": seconds,
        "records_per_second": moved as f64 / seconds.max(1e-9),
        "next": "tee-risk db verify, then tee-risk db retire-key <old key id>",
    }))?;
    Ok(())
}

/// `db verify`: on a copy (nothing is written to a damaged store, not even the failed
/// check); a pass is then recorded on the store itself (the audit log and the rotation's
/// verification, which retire-key requires).
fn verify(args: &DbArgs) -> Result<(), CliError> {
    let (storage, _) = db_storage(args)?;
    let copy = open_inspected(args)?;
    let report = if storage.backend == StorageBackend::Sled {
        let (report, mark) = copy.verify_with_mark(&storage.data_dir)?;
        let mut json = serde_json::to_value(&report)?;
        json["high_water_mark"] = serde_json::to_value(&mark)?;
        print_json(&json)?;
        report
    } else {
        let report = copy.verify()?;
        print_json(&report)?;
        report
    };
    drop(copy);
    if report.passed() && storage.backend == StorageBackend::Sled {
        open_db(args, OpenMode::Inspect)?.record_verification(&report)?;
    }
    if !report.passed() {
        return Err(CliError::CheckFailed(report.problems.join("; ")));
    }
    Ok(())
}

/// `db verify-log`: the audit chain, and (sled) its length against the mark.
fn verify_log(args: &DbArgs) -> Result<(), CliError> {
    let (storage, _) = db_storage(args)?;
    let env = MasterKeyEnv::from_process();
    let store: Arc<dyn Store> = match storage.backend {
        StorageBackend::Sled => Arc::new(SledStore::open_copy(&store_path(&storage.data_dir))?),
        StorageBackend::Postgres => secrets::open_store(&storage, env.database_url.as_ref())?,
    };
    let entries = match audit::verify(store.as_ref()) {
        Ok(entries) => entries,
        Err(e) => return Err(CliError::CheckFailed(format!("audit log broken: {e}"))),
    };
    // The mark's clear copy (no key here): a log that lost its latest entries chains
    // perfectly, so only the count and head recorded outside the store show it.
    if storage.backend == StorageBackend::Sled
        && let Some(mark) = mark::read_clear(&storage.data_dir)?
        && let Some(behind) = mark::audit_behind(store.as_ref(), &mark)
    {
        return Err(CliError::CheckFailed(format!(
            "audit log behind its high-water mark: {behind}"
        )));
    }
    let head = entries.last().map_or(audit::GENESIS, |e| e.hash.as_str());
    println!("audit log intact: {} entries, head {head}", entries.len());
    Ok(())
}

/// `db migrate`: creates or checks PostgreSQL's schema (opening the store does it).
fn migrate(args: &DbArgs) -> Result<(), CliError> {
    let (storage, _) = db_storage(args)?;
    if storage.backend != StorageBackend::Postgres {
        return Err(anyhow::anyhow!(
            "db migrate is for [storage] backend = \"postgres\"; sled needs none"
        )
        .into());
    }
    let env = MasterKeyEnv::from_process();
    secrets::open_store(&storage, env.database_url.as_ref())?;
    #[cfg(feature = "postgres")]
    print_json(&serde_json::json!({
        "schema_version": crate::store::postgres::SCHEMA_VERSION,
    }))?;
    Ok(())
}

/// Opens the database to inspect it: a sled store as a copy, so that nothing here (sled's
/// recovery of a damaged log included) writes to it. One that does not open because it is
/// damaged fails the check (exit 3), as one that opens and then fails it does; a wrong key
/// is an error (1).
fn open_inspected(args: &DbArgs) -> Result<Vault, CliError> {
    let opened = db_storage(args).and_then(|(storage, dev)| {
        Ok(open_vault_copy(
            MasterKeyEnv::from_process(),
            dev,
            &storage,
        )?)
    });
    match opened {
        Err(CliError::Failed(error))
            if error
                .downcast_ref::<crate::app::AppError>()
                .is_some_and(|e| matches!(e, crate::app::AppError::Vault(v) if v.is_damage())) =>
        {
            Err(CliError::CheckFailed(format!("{error:#}")))
        }
        other => other,
    }
}

/// Why the store is damaged, if it is: a sled store behind its high-water mark (or whose mark
/// is gone). PostgreSQL keeps no mark: its own checks (`amcheck`) are the operator's.
fn damage(args: &DbArgs, vault: &Vault) -> Result<Option<(mark::MarkCheck, String)>, CliError> {
    let (storage, _) = db_storage(args)?;
    if storage.backend != StorageBackend::Sled {
        return Ok(None);
    }
    let check = vault.check_high_water_mark(&storage.data_dir)?;
    Ok(check.behind.clone().map(|why| (check, why)))
}

/// `db status`: keys, rotation, records per key, and (sled) the high-water mark with a
/// verdict; exit 3 when the store is damaged.
fn status(args: &DbArgs) -> Result<(), CliError> {
    let vault = open_inspected(args)?;
    let mut json = serde_json::to_value(vault.status()?)?;
    let (storage, _) = db_storage(args)?;
    if storage.backend == StorageBackend::Sled {
        let check = vault.check_high_water_mark(&storage.data_dir)?;
        json["damaged"] = check.behind.is_some().into();
        json["high_water_mark"] = serde_json::to_value(&check)?;
        print_json(&json)?;
        if let Some(why) = check.behind {
            return Err(CliError::CheckFailed(format!(
                "the store is damaged: {why}"
            )));
        }
        return Ok(());
    }
    Ok(print_json(&json)?)
}

/// Copies the flushed database while holding its lock, then proves the copy opens with the
/// same keys and that every record of it decrypts. A damaged store is refused (exit 3): its
/// copy would be a copy of the damage taken for a backup; with `force` its files are copied
/// byte for byte into a folder marked as a damaged copy, and the exit is still 3.
fn backup(args: &DbArgs, dir: &Path, force: bool) -> Result<(), CliError> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(anyhow::anyhow!("{} is not empty: choose a new folder", dir.display()).into());
    }
    let vault = open_inspected(args)?;
    if let Some((_, why)) = damage(args, &vault)? {
        if !force {
            return Err(CliError::CheckFailed(format!(
                "the store is damaged ({why}): no backup was made, as it would be a copy of \
                 the damage. Restore an earlier backup; `db backup --force DIR` keeps a copy \
                 marked as damaged, as evidence"
            )));
        }
        drop(vault);
        let (storage, _) = db_storage(args)?;
        crate::store::copy_tree(&storage.data_dir, dir)?;
        std::fs::write(
            dir.join("DAMAGED-COPY.txt"),
            format!(
                "A byte-for-byte copy of the damaged data folder {}, made by `tee-risk db \
                 backup --force` at unix time {}. It is evidence, not a backup: {why}\n",
                storage.data_dir.display(),
                crate::obs::unix_now()
            ),
        )?;
        return Err(CliError::CheckFailed(format!(
            "the store is damaged ({why}): copied as is into {}, marked DAMAGED-COPY",
            dir.display()
        )));
    }
    // Record by record into a new sled store, from either back-end: the records stay
    // sealed, so the copy needs no key. (With sled the service's lock is held meanwhile;
    // with PostgreSQL stop the replicas first, or use PostgreSQL's own backups.)
    let copy = SledStore::open(&store_path(dir))?;
    vault.copy_records_to(&copy)?;
    drop(copy);
    drop(vault);
    let (storage, dev) = db_storage(args)?;
    let env = MasterKeyEnv::from_process();
    let previous = secrets::previous_keys(env.previous.as_ref())?;
    let (master, _) = secrets::resolve_master_key(env.current, dev, &storage.data_dir)?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&store_path(dir))?);
    let copy = Vault::open_keyring(store, &master, &previous, OpenMode::Inspect)
        .context("the copy does not open")?;
    let counts = copy.verify_all()?;
    Ok(print_json(&serde_json::json!({
        "backup": store_path(dir),
        "user_data": counts.user_data,
        "feature_history": counts.feature_history,
        "risk_logs": counts.risk_logs,
    }))?)
}

/// `db salvage`: every record of the (damaged) database that proves itself, into a new sled
/// data folder at `out`, which then starts as a whole store with its own mark.
fn salvage(args: &DbArgs, out: &Path) -> Result<(), CliError> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        return Err(anyhow::anyhow!("{} is not empty: choose a new folder", out.display()).into());
    }
    let (storage, dev) = db_storage(args)?;
    let env = MasterKeyEnv::from_process();
    let previous = secrets::previous_keys(env.previous.as_ref())?;
    let (master, source_of_key) = secrets::resolve_master_key(env.current, dev, &storage.data_dir)?;
    eprintln!(
        "salvage: reading the database of {} without writing to it; writing what still \
         proves itself into the new data folder {}",
        storage.data_dir.display(),
        out.display()
    );
    let source_store: Arc<dyn Store> = match storage.backend {
        // sled's recovery runs on a copy: the damaged store stays as found.
        StorageBackend::Sled => Arc::new(
            SledStore::open_copy(&store_path(&storage.data_dir)).map_err(|e| {
                CliError::CheckFailed(format!(
                    "nothing can be salvaged: sled cannot open even a copy of the store: {e}"
                ))
            })?,
        ),
        StorageBackend::Postgres => secrets::open_store(&storage, env.database_url.as_ref())?,
    };
    let source =
        Vault::open_keyring(source_store, &master, &previous, OpenMode::Salvage).map_err(|e| {
            CliError::CheckFailed(format!(
                "nothing can be salvaged without the database's keys: {e}"
            ))
        })?;
    // What the source owed (its mark), for the report; a mark that cannot be read is said.
    let mark = match storage.backend {
        StorageBackend::Sled => Some(
            source
                .check_high_water_mark(&storage.data_dir)
                .map_err(|e| e.to_string()),
        ),
        StorageBackend::Postgres => None,
    };
    std::fs::create_dir_all(out)?;
    if matches!(source_of_key, secrets::MasterKeySource::DevFile) {
        // A development store keeps its key beside it: so must the salvaged one.
        let key = secrets::DEV_KEY_FILE;
        std::fs::copy(storage.data_dir.join(key), out.join(key))?;
    }
    let target: Arc<dyn Store> = Arc::new(SledStore::open(&store_path(out))?);
    let report = source.salvage_into(target.as_ref())?;
    drop(source);
    let mut salvaged = Vault::open_keyring(target, &master, &previous, OpenMode::Write)
        .context("the salvaged store does not open")?;
    let mut counts = report.audit_counts();
    if let Some(Ok(check)) = &mark {
        counts.insert("mark_commits".into(), check.mark.commits);
        counts.insert("store_commits".into(), check.store_commits);
    }
    let acknowledged = match &mark {
        Some(Ok(check)) => serde_json::to_value(check)?,
        Some(Err(unreadable)) => serde_json::json!({ "unreadable": unreadable }),
        None => serde_json::Value::Null,
    };
    salvaged.record_salvage(counts)?;
    salvaged.start_high_water_mark(out)?;
    let (verify, _) = salvaged.verify_with_mark(out)?;
    print_json(&serde_json::json!({
        "salvaged_into": out,
        "source_mark": acknowledged,
        "kept": report.kept,
        "dropped": report.dropped,
        "problems": report.problems,
        "verify": verify,
        "next": "move the damaged data folder aside (keep it as evidence), put this folder in \
                 its place (its db/ and high-water-mark together), and start the service",
    }))?;
    if !verify.passed() {
        return Err(CliError::CheckFailed(format!(
            "the salvaged store fails its verification: {}",
            verify.problems.join("; ")
        )));
    }
    Ok(())
}

/// `db copy`: sled at `from` → the configured PostgreSQL database (see the command's help).
fn copy_to_postgres(args: &DbArgs, from: &Path) -> Result<(), CliError> {
    let (target_storage, dev) = db_storage(args)?;
    if target_storage.backend != StorageBackend::Postgres {
        return Err(anyhow::anyhow!(
            "db copy needs a config with [storage] backend = \"postgres\" (--config) and \
             TEE_RISK_DATABASE_URL"
        )
        .into());
    }
    let mut source_storage = target_storage.clone();
    source_storage.backend = StorageBackend::Sled;
    source_storage.data_dir = from.to_owned();
    let source = open_vault(
        MasterKeyEnv::from_process(),
        dev,
        &source_storage,
        OpenMode::Inspect,
        false,
    )?;
    let env = MasterKeyEnv::from_process();
    let target_store = secrets::open_store(&target_storage, env.database_url.as_ref())?;
    if !source.is_copy_target(target_store.as_ref())? {
        return Err(CliError::Refused(
            "the target holds another database (its salt differs): copy into an empty one".into(),
        ));
    }
    let started = std::time::Instant::now();
    let copied = source.copy_records_to(target_store.as_ref())?;
    let seconds = started.elapsed().as_secs_f64();
    drop(target_store);
    // The proof: the target opens with the same keys, holds the same records per table
    // and key id, and every record of it decrypts.
    let target = open_vault(env, dev, &target_storage, OpenMode::Inspect, false)?;
    let (ours, theirs) = (source.counts_by_key()?, target.counts_by_key()?);
    if ours != theirs {
        return Err(CliError::CheckFailed(format!(
            "records per table and key differ after the copy: source {ours:?}, target {theirs:?}"
        )));
    }
    let counts = target.verify_all()?;
    print_json(&serde_json::json!({
        "copied_records": copied,
        "seconds": seconds,
        "records_per_second": copied as f64 / seconds.max(1e-9),
        "user_data": counts.user_data,
        "feature_history": counts.feature_history,
        "risk_logs": counts.risk_logs,
        "next": "start the replicas with [storage] backend = \"postgres\"",
    }))?;
    Ok(())
}
