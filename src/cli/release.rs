//! `tee-risk release …` (sign a manifest, append it to the log) and `tee-risk client
//! verify-release`: the release engineer's and the auditor's side of
//! docs/ATTESTATION.md, "From measurement to source".

use std::path::Path;

use anyhow::Context;

use crate::attest::policy::{load_releases, read_release_key};
use crate::attest::release::{
    IncompleteReference, MANIFEST_FORMAT, Release, ReleaseError, ReleaseLog, ReleaseManifest,
    ReleaseMeasurement, SignedManifest,
};
use crate::attest::{Policy, TeeKind};
use crate::crypto::keyfile::load_sm2_key;
use crate::crypto::sm3;

use super::CliError;
use super::args::{ManifestArgs, ReleaseArgs, ReleaseCommand, VerifyReleaseArgs};

/// A refused release: exit 3, the failed check named.
fn refused(error: ReleaseError) -> anyhow::Error {
    CliError::CheckFailed(error.to_string()).into()
}

/// Runs one `release` command.
pub fn run(command: ReleaseCommand) -> Result<(), CliError> {
    let outcome = match command {
        ReleaseCommand::Manifest(args) => manifest(&args),
        ReleaseCommand::Append {
            manifest,
            release_key,
            log,
        } => append(&manifest, &release_key, &log),
    };
    outcome.map_err(|error| {
        error
            .downcast::<CliError>()
            .unwrap_or_else(CliError::Failed)
    })
}

/// `release manifest`: the facts of a build, signed.
fn manifest(args: &ManifestArgs) -> anyhow::Result<()> {
    let file_sm3 = |path: &Path| -> anyhow::Result<String> {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        Ok(hex::encode(sm3(&bytes)))
    };
    let binary_sm3 = file_sm3(&args.binary)?;
    let mut measurements = vec![ReleaseMeasurement {
        tee: TeeKind::Sim,
        measurement: binary_sm3.clone(),
        how: "SM3 of the binary (the sim platform reports it)".to_owned(),
    }];
    for path in &args.measurements {
        measurements.extend(read_json::<Vec<ReleaseMeasurement>>(path)?);
    }
    let mut incomplete = Vec::new();
    for path in &args.incomplete {
        incomplete.extend(read_json::<Vec<IncompleteReference>>(path)?);
    }
    let toolchain = std::fs::read_to_string(&args.toolchain)
        .with_context(|| format!("read {}", args.toolchain.display()))?;
    let manifest = ReleaseManifest {
        format: MANIFEST_FORMAT.to_owned(),
        version: args
            .version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
        commit: args.commit.clone(),
        source_date_epoch: args.source_date_epoch,
        toolchain: toolchain.trim_end().to_owned(),
        build: args.build.clone(),
        cargo_lock_sm3: file_sm3(&args.cargo_lock)?,
        binary_sm3,
        measurements,
        incomplete,
    };
    let key = load_sm2_key(&args.key)?;
    let signed = SignedManifest::sign(&manifest, &key)?;
    std::fs::write(&args.out, serde_json::to_string_pretty(&signed)? + "\n")
        .with_context(|| format!("write {}", args.out.display()))?;
    eprintln!(
        "signed {} (commit {}, binary SM3 {}) with release key {}",
        args.out.display(),
        manifest.commit,
        manifest.binary_sm3,
        key.public().kid()
    );
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))
}

/// `release append`: the manifest, checked, as the log's next line.
fn append(manifest: &Path, release_key: &Path, log_path: &Path) -> anyhow::Result<()> {
    let key = read_release_key(release_key).map_err(refused)?;
    let release = SignedManifest::load(manifest)
        .and_then(|signed| signed.open(&key))
        .map_err(refused)?;
    let mut log = match std::fs::exists(log_path)? {
        true => ReleaseLog::load(log_path).map_err(refused)?,
        false => ReleaseLog::default(),
    };
    let line = log.append(&release).map_err(refused)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes())?;
    file.sync_all()?;
    println!("{}", log.head().expect("an entry was appended"));
    Ok(())
}

/// `client verify-release`: signature, readable copy, inclusion (and an earlier head).
pub fn verify(args: VerifyReleaseArgs) -> anyhow::Result<()> {
    let key = read_release_key(&args.release_key).map_err(refused)?;
    let release = SignedManifest::load(&args.manifest)
        .and_then(|signed| signed.open(&key))
        .map_err(refused)?;
    let log = ReleaseLog::load(&args.log).map_err(refused)?;
    let entry = log.inclusion(&release).map_err(refused)?;
    if let Some(head) = &args.head {
        log.extends(head).map_err(refused)?;
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "version": release.manifest.version,
            "commit": release.manifest.commit,
            "digest": release.digest,
            "binary_sm3": release.manifest.binary_sm3,
            "measurements": release.manifest.measurements,
            "incomplete": release.manifest.incomplete,
            "log": { "seq": entry.seq, "entries": log.entries.len(), "head": log.head() },
        }))?
    );
    eprintln!(
        "release verified: signed by release key {}, listed at position {} of {} in the log; \
         compare the head with other clients'",
        key.kid(),
        entry.seq,
        log.entries.len()
    );
    Ok(())
}

/// The policy `client attest` uses: the file's, or with `--manifest` only the releases.
pub fn policy(path: &Path, args: &ReleaseArgs) -> anyhow::Result<Policy> {
    let policy = Policy::load(path)?;
    let Some(key) = &args.release_key else {
        return Ok(policy);
    };
    let releases = load_releases(key, &args.manifests, args.log.as_deref()).map_err(refused)?;
    Ok(policy.only_releases(releases))
}

/// What `client attest` prints of the release that vouched for the measurement.
pub fn summary(release: Option<&Release>) -> serde_json::Value {
    match release {
        Some(r) => serde_json::json!({
            "version": r.manifest.version,
            "commit": r.manifest.commit,
            "digest": r.digest,
        }),
        None => serde_json::Value::Null,
    }
}
