//! The `tee-risk` command: `serve`, `client …`, `db …`, `train`, `eval`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tee_risk::access::ClientCredential;
use tee_risk::attest::verify::Policy;
use tee_risk::client::{Client, FeatureRequest, ServerKeys, read_features_file};
use tee_risk::config::Config;
use tee_risk::dataset::Dataset;
use tee_risk::risk::eval::{self, Labelled};
use tee_risk::risk::model::TrainingSummary;
use tee_risk::risk::{plots, train};
use tee_risk::server::{self, IDENTITY_PEM, MasterKeyEnv};
use tee_risk::store::audit;
use tee_risk::store::keys::KeyId;
use tee_risk::store::rotation::DEFAULT_BATCH;
use tee_risk::store::{OpenMode, SledStore, Vault};

#[derive(Parser)]
#[command(
    name = "tee-risk",
    version,
    about = "Face-verification risk scoring in a TEE, with SM2/SM3/SM4"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (DB master key from env DB_MASTER_KEY, or --dev).
    Serve(ServeArgs),
    /// Talk to a running service.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Operator commands on the database of a stopped service (keys from DB_MASTER_KEY and
    /// DB_MASTER_KEY_PREVIOUS). Exit codes: 0 done, 1 could not run, 3 a check failed,
    /// 4 refused (a precondition does not hold yet).
    #[command(subcommand)]
    Db(DbCommand),
    /// Train the risk model on a labelled embeddings file: measure the match calibration,
    /// generate labelled attempts (genuine and attacks), fit the logistic regression, write
    /// the versioned model file (docs/EVALUATION.md).
    Train {
        #[arg(long)]
        data: PathBuf,
        /// Where to write the model (the shipped one is config/risk-model.json).
        #[arg(long)]
        out: PathBuf,
        /// L2 penalty of the logistic regression.
        #[arg(long, default_value_t = train::DEFAULT_ALPHA)]
        alpha: f64,
        /// Seed of the generated contexts (training is deterministic for a given seed).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Replay the evaluation protocol (docs/EVALUATION.md) on a labelled embeddings file
    /// through the configured scoring policy; print a table and write a JSON report.
    Eval {
        #[arg(long)]
        data: PathBuf,
        /// Operator config file (for the `[risk]` policy).
        #[arg(long, env = "TEE_RISK_CONFIG")]
        config: Option<PathBuf>,
        /// Enrolment sizes to evaluate, e.g. 1,2,3.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        enrol_images: Vec<usize>,
        /// Where to write the JSON report.
        #[arg(long, default_value = "target/eval-report.json")]
        out: PathBuf,
        /// Also draw the DET curve and score histograms as PNG files into this folder.
        #[arg(long)]
        plots: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Operator config file overriding the built-in defaults (config/default.toml).
    #[arg(long, env = "TEE_RISK_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0: any free port).
    #[arg(long, env = "TEE_RISK_LISTEN")]
    listen: Option<String>,
    /// Folder for the database (and the dev master key in dev mode).
    #[arg(long, env = "TEE_RISK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address for the operator endpoints (server.operator_listen).
    #[arg(long, env = "TEE_RISK_OPERATOR_LISTEN")]
    operator_listen: Option<String>,
    /// Folder where the public keys are written as PEM.
    #[arg(long, env = "TEE_RISK_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
    /// Development mode: without DB_MASTER_KEY, generate a master key beside the data.
    #[arg(long, env = "TEE_RISK_DEV", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    dev: Option<bool>,
    /// The registered clients file (access.clients_file).
    #[arg(long, env = "TEE_RISK_CLIENTS")]
    clients: Option<PathBuf>,
}

#[derive(Args)]
struct DbArgs {
    /// Operator config file (for storage.data_dir).
    #[arg(long, env = "TEE_RISK_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "TEE_RISK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Use the development master key kept beside the data.
    #[arg(long, env = "TEE_RISK_DEV", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    dev: Option<bool>,
}

#[derive(Subcommand)]
enum DbCommand {
    /// Key ids and states, rotation progress, records per key (read-only; JSON).
    Status(DbArgs),
    /// Re-encrypt every record under DB_MASTER_KEY (offline; the service does the same
    /// online when started with a new key). Safe to re-run; resumes where it stopped.
    Rotate {
        #[command(flatten)]
        db: DbArgs,
        /// Only count, per table, the records that would move.
        #[arg(long)]
        dry_run: bool,
    },
    /// Decrypt every record, compare counts with those at rotation start, and confirm that
    /// no record is still under an old key.
    Verify(DbArgs),
    /// Retire a decrypt-only key after `verify` passes: refused from then on, even if
    /// supplied.
    RetireKey {
        #[command(flatten)]
        db: DbArgs,
        /// The key id, as `db status` prints it.
        id: String,
    },
    /// Check the SM3 chain of the audit log (needs no key).
    VerifyLog(DbArgs),
    /// Copy the database of the stopped service into DIR (which must not exist or be
    /// empty), then open the copy and decrypt every record of it.
    Backup {
        #[command(flatten)]
        db: DbArgs,
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Verify the service's attestation evidence (fresh nonce) under a policy file, then its
    /// certified encryption key; print what was verified.
    Attest {
        #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Attestation policy (TOML), e.g. config/attestation-policy.toml.
        #[arg(long, default_value = "config/attestation-policy.toml")]
        policy: PathBuf,
    },
    /// Fetch and print the service's public keys.
    Keys {
        #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
    },
    /// Enrol a face embedding for a user.
    Enroll(RequestArgs),
    /// Assess a face embedding against a user's enrolment.
    Assess(RequestArgs),
    /// Erase everything the service keeps about a user (templates, history, indexes; risk
    /// logs keep the decisions only).
    Erase {
        #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long)]
        user: String,
        #[command(flatten)]
        access: AccessArgs,
        #[arg(long)]
        pin_keys: Option<PathBuf>,
    },
}

/// Who the client is: its registered id and SM2 private key. The defaults are the
/// development client that `make run` creates.
#[derive(Args)]
struct AccessArgs {
    #[arg(long, env = "TEE_RISK_CLIENT_ID", default_value = "dev")]
    client_id: String,
    /// The client's SM2 private key: 64 hex digits or a PKCS#8 PEM.
    #[arg(
        long,
        env = "TEE_RISK_CLIENT_KEY",
        default_value = "data/dev-client-key.hex"
    )]
    client_key: PathBuf,
}

impl AccessArgs {
    fn credential(&self) -> anyhow::Result<Arc<ClientCredential>> {
        Ok(Arc::new(
            ClientCredential::load(&self.client_id, &self.client_key)
                .map_err(anyhow::Error::msg)?,
        ))
    }
}

#[derive(Args)]
struct RequestArgs {
    #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The user id the face is claimed to belong to.
    #[arg(long)]
    user: String,
    /// JSON file: an array of numbers, or an object with `features` or `embedding`.
    #[arg(long)]
    features: PathBuf,
    /// Client-side liveness (presentation-attack) score in [0, 1].
    #[arg(long)]
    liveness: Option<f32>,
    #[arg(long)]
    device: Option<String>,
    #[command(flatten)]
    access: AccessArgs,
    /// Trust only the identity key in this folder (identity.pub.pem) instead of the one the
    /// service presents; encryption keys must carry its certificate.
    #[arg(long)]
    pin_keys: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, not in log files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let outcome = match Cli::parse().command {
        Command::Serve(args) => serve(args).map(|()| ExitCode::SUCCESS),
        Command::Client(command) => client(command).map(|()| ExitCode::SUCCESS),
        Command::Db(command) => db(command),
        Command::Train {
            data,
            out,
            alpha,
            seed,
        } => train_model(&data, &out, alpha, seed).map(|()| ExitCode::SUCCESS),
        Command::Eval {
            data,
            config,
            enrol_images,
            out,
            plots,
        } => evaluate(
            &data,
            config.as_deref(),
            &enrol_images,
            &out,
            plots.as_deref(),
        )
        .map(|()| ExitCode::SUCCESS),
    };
    outcome.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::FAILURE
    })
}

/// `db` exit code: a check (verify, verify-log) found a problem.
const EXIT_CHECK_FAILED: u8 = 3;
/// `db` exit code: refused because a precondition does not hold yet.
const EXIT_REFUSED: u8 = 4;

fn db_data_dir(args: &DbArgs) -> anyhow::Result<(PathBuf, bool)> {
    let config = Config::load(args.config.as_deref()).map_err(anyhow::Error::msg)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or(config.storage.data_dir.clone());
    Ok((data_dir, args.dev.unwrap_or(config.server.dev)))
}

fn open_db(args: &DbArgs, mode: OpenMode) -> anyhow::Result<Vault> {
    let (data_dir, dev) = db_data_dir(args)?;
    server::open_vault(MasterKeyEnv::from_process(), dev, &data_dir, mode)
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn db(command: DbCommand) -> anyhow::Result<ExitCode> {
    match command {
        DbCommand::Status(args) => {
            print_json(&open_db(&args, OpenMode::Inspect)?.status()?)?;
        }
        DbCommand::Rotate { db, dry_run: true } => {
            let vault = open_db(&db, OpenMode::Inspect)?;
            print_json(&serde_json::json!({
                "current_key": vault.key_id().to_string(),
                "would_move": vault.pending_moves()?,
            }))?;
        }
        DbCommand::Rotate { db, dry_run: false } => {
            let vault = open_db(&db, OpenMode::Write)?;
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
        }
        DbCommand::Verify(args) => {
            let report = open_db(&args, OpenMode::Inspect)?.verify_rotation()?;
            print_json(&report)?;
            if !report.passed() {
                return Ok(ExitCode::from(EXIT_CHECK_FAILED));
            }
        }
        DbCommand::RetireKey { db, id } => {
            let id: KeyId = id.parse().map_err(anyhow::Error::msg)?;
            let vault = open_db(&db, OpenMode::Inspect)?;
            match vault.retire_key(id) {
                Ok(()) => println!("key {id} is retired"),
                Err(tee_risk::store::VaultError::Refused(why)) => {
                    eprintln!("refused: {why}");
                    return Ok(ExitCode::from(EXIT_REFUSED));
                }
                Err(e) => return Err(e.into()),
            }
        }
        DbCommand::VerifyLog(args) => {
            let (data_dir, _) = db_data_dir(&args)?;
            let store = SledStore::open(&data_dir.join("db"))?;
            match audit::verify(&store) {
                Ok(entries) => {
                    let head = entries.last().map_or(audit::GENESIS, |e| e.hash.as_str());
                    println!("audit log intact: {} entries, head {head}", entries.len());
                }
                Err(e) => {
                    eprintln!("audit log broken: {e}");
                    return Ok(ExitCode::from(EXIT_CHECK_FAILED));
                }
            }
        }
        DbCommand::Backup { db, dir } => backup(&db, &dir)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies the flushed database while holding its lock, then proves the copy opens with the
/// same keys and that every record of it decrypts.
fn backup(args: &DbArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!("{} is not empty: choose a new folder", dir.display());
    }
    let (data_dir, _) = db_data_dir(args)?;
    let vault = open_db(args, OpenMode::Inspect)?;
    vault.flush()?;
    copy_dir(&data_dir.join("db"), &dir.join("db"))?;
    drop(vault);
    let (data_dir, dev) = db_data_dir(args)?;
    let env = MasterKeyEnv::from_process();
    let previous = server::previous_keys(env.previous.as_ref())?;
    let (master, _) = server::resolve_master_key(env.current, dev, &data_dir)?;
    let store: std::sync::Arc<dyn tee_risk::store::Store> =
        std::sync::Arc::new(SledStore::open(&dir.join("db"))?);
    let copy = Vault::open_keyring(store, &master, &previous, OpenMode::Inspect)
        .context("the copy does not open")?;
    let counts = copy.verify_all()?;
    print_json(&serde_json::json!({
        "backup": dir.join("db"),
        "user_data": counts.user_data,
        "feature_history": counts.feature_history,
        "risk_logs": counts.risk_logs,
    }))
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref()).map_err(anyhow::Error::msg)?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.storage.data_dir = dir;
    }
    if let Some(dir) = args.keys_dir {
        config.keys.dir = dir;
    }
    if let Some(dev) = args.dev {
        config.server.dev = dev;
    }
    if let Some(operator) = args.operator_listen {
        config.server.operator_listen = operator;
    }
    if let Some(file) = args.clients {
        config.access.clients_file = file;
    }
    config.listen_addr().map_err(anyhow::Error::msg)?;
    actix_web::rt::System::new().block_on(server::serve(config, MasterKeyEnv::from_process()))
}

fn client(command: ClientCommand) -> anyhow::Result<()> {
    let (path, args) = match command {
        ClientCommand::Attest { url, policy } => {
            let policy = Policy::load(&policy).map_err(anyhow::Error::msg)?;
            let (client, verified) = Client::attest(&url, &policy)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "tee": verified.tee,
                    "measurement": verified.measurement,
                    "debug": verified.debug,
                    "issued_at": verified.issued_at,
                    "identity_kid": verified.identity.kid(),
                    "encryption_kid": client.keys().encryption.kid(),
                    "encryption_valid_until": client.keys().encryption_not_after,
                }))?
            );
            eprintln!(
                "attestation verified: report signature, nonce, report_data binding of the \
                 identity key, measurement, debug flag and age; encryption key certified by \
                 that identity"
            );
            return Ok(());
        }
        ClientCommand::Keys { url } => {
            let client = Client::fetch_keys(&url)?;
            let keys = client.keys();
            println!(
                "identity   kid={}  (signs responses and certifies encryption keys)",
                keys.identity.kid()
            );
            println!(
                "encryption kid={}  (certificate verified; valid until {})",
                keys.encryption.kid(),
                keys.encryption_not_after
            );
            return Ok(());
        }
        ClientCommand::Erase {
            url,
            user,
            access,
            pin_keys,
        } => {
            let client = connect(&url, pin_keys.as_deref())?.with_credential(access.credential()?);
            let payload = client.erase(&user)?;
            println!("{}", serde_json::to_string_pretty(&payload)?);
            eprintln!(
                "signature verified (identity kid {}), rid and req_sm3 match",
                client.keys().identity.kid()
            );
            return Ok(());
        }
        ClientCommand::Enroll(args) => ("/v1/enroll", args),
        ClientCommand::Assess(args) => ("/v1/assess", args),
    };
    let client =
        connect(&args.url, args.pin_keys.as_deref())?.with_credential(args.access.credential()?);
    let request = FeatureRequest {
        user_id: args.user.clone(),
        features: read_features_file(&args.features).map_err(anyhow::Error::msg)?,
        liveness: args.liveness,
        device_id: args.device.clone(),
    };
    let payload = client.send(path, &request)?;
    println!("{}", serde_json::to_string_pretty(&payload)?);
    eprintln!(
        "signature verified (identity kid {}), rid and req_sm3 match",
        client.keys().identity.kid()
    );
    Ok(())
}

/// A client trusting the identity key pinned in `pin_keys` (identity.pub.pem), or else the
/// one the service presents.
fn connect(url: &str, pin_keys: Option<&std::path::Path>) -> anyhow::Result<Client> {
    Ok(match pin_keys {
        Some(dir) => {
            let path = dir.join(IDENTITY_PEM);
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Client::fetch_keys_pinned(url, &ServerKeys::identity_from_pem(&pem)?)?
        }
        None => Client::fetch_keys(url)?,
    })
}

fn labelled(dataset: &Dataset) -> Vec<Labelled<'_>> {
    dataset
        .samples
        .iter()
        .zip(dataset.identity_indices())
        .map(|(sample, identity)| Labelled {
            identity,
            embedding: &sample.embedding,
        })
        .collect()
}

fn evaluate(
    data: &std::path::Path,
    config: Option<&std::path::Path>,
    enrol_images: &[usize],
    out: &std::path::Path,
    plot_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let policy = Config::load(config)
        .and_then(|c| c.risk_policy())
        .map_err(anyhow::Error::msg)?;
    let dataset = Dataset::load(data).map_err(anyhow::Error::msg)?;
    let samples = labelled(&dataset);
    let reports = enrol_images
        .iter()
        .map(|&k| eval::evaluate(&policy, &samples, k).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "{} ({} images), model {}\n\n\
         k  genuine  impostor  FMR@op    FNMR@op  FNMR@FMR1%  FNMR@FMR0.1%  EER     FMR(enrolled)  FNMR(context)",
        data.display(),
        dataset.samples.len(),
        policy.model_version()
    );
    for r in &reports {
        println!(
            "{}  {:>7}  {:>8}  {:>7.4}%  {:>6.2}%  {:>9.2}%  {:>11.2}%  {:>5.2}%  {:>12.4}%  {:>12.2}%",
            r.enrol_images,
            r.genuine_attempts,
            r.impostor_attempts,
            r.fmr_at_operating_point * 100.0,
            r.fnmr_at_operating_point * 100.0,
            r.fnmr_at_fmr_1pct * 100.0,
            r.fnmr_at_fmr_0_1pct * 100.0,
            r.eer * 100.0,
            r.fmr_enrolled_impostors * 100.0,
            r.fnmr_with_genuine_context * 100.0,
        );
    }
    println!(
        "\nk  replay  inject  conflict  new-enrol-flagged  presentation  burst-FMR   genuine-flagged-as-copy"
    );
    for r in &reports {
        println!(
            "{}  {:>5.1}%  {:>5.1}%  {:>7.1}%  {:>16.2}%  {:>11.1}%  {:>8.4}%  {:>10.2}%",
            r.enrol_images,
            r.replays_flagged * 100.0,
            r.injections_flagged * 100.0,
            r.conflicting_enrolments_flagged * 100.0,
            r.new_enrolments_flagged * 100.0,
            r.presentation_attacks_flagged * 100.0,
            r.fmr_in_bursts * 100.0,
            r.genuine_flagged_as_replay * 100.0,
        );
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let report = serde_json::json!({
        "data": data.display().to_string(),
        "images": dataset.samples.len(),
        "model": policy.model_version(),
        "reports": reports,
    });
    std::fs::write(out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("report written to {}", out.display());
    if let Some(dir) = plot_dir {
        for file in plots::write_all(dir, &reports).map_err(anyhow::Error::msg)? {
            eprintln!("plot written to {}", file.display());
        }
    }
    Ok(())
}

fn train_model(
    data: &std::path::Path,
    out: &std::path::Path,
    alpha: f64,
    seed: u64,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(data).with_context(|| format!("cannot read {}", data.display()))?;
    let dataset = Dataset::load(data).map_err(anyhow::Error::msg)?;
    let samples = labelled(&dataset);
    let summary = TrainingSummary {
        data: data
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        data_sm3: tee_risk::crypto::sm3_hex(&bytes),
        identities: dataset.identity_indices().iter().max().map_or(0, |m| m + 1),
        images: dataset.samples.len(),
        samples: Default::default(),
        alpha,
    };
    let model = train::train(&samples, summary, alpha, seed).map_err(anyhow::Error::msg)?;
    let mut json = serde_json::to_string_pretty(&model)?;
    json.push('\n');
    std::fs::write(out, json).with_context(|| format!("cannot write {}", out.display()))?;
    println!("model {} written to {}", model.version, out.display());
    for (feature, weight) in model.features.iter().zip(&model.weights) {
        println!("  {feature:<18} {weight:>9.4}");
    }
    println!("  {:<18} {:>9.4}", "intercept", model.intercept);
    Ok(())
}
