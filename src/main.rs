//! The `tee-risk` command: `serve`, `client …`, `calibrate`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tee_risk::client::{Client, FeatureRequest, ServerKeys, read_features_file};
use tee_risk::config::Config;
use tee_risk::dataset::Dataset;
use tee_risk::risk::Calibration;
use tee_risk::server::{self, ENCRYPTION_PEM, IDENTITY_PEM, MASTER_KEY_ENV};
use zeroize::Zeroizing;

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
    /// Measure the similarity → false-match-rate curve on a labelled embeddings file and
    /// print it as the `[risk] calibration` TOML line.
    Calibrate {
        #[arg(long)]
        data: PathBuf,
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
    /// Folder where the public keys are written as PEM.
    #[arg(long, env = "TEE_RISK_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
    /// Development mode: without DB_MASTER_KEY, generate a master key beside the data.
    #[arg(long, env = "TEE_RISK_DEV", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    dev: Option<bool>,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Fetch and print the service's public keys.
    Keys {
        #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
    },
    /// Enrol a face embedding for a user.
    Enroll(RequestArgs),
    /// Assess a face embedding against a user's enrolment.
    Assess(RequestArgs),
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
    /// Trust only the keys in this folder (identity.pub.pem, encryption.pub.pem) instead of
    /// fetching them from the service.
    #[arg(long)]
    pin_keys: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Client(command) => client(command),
        Command::Calibrate { data } => calibrate(&data),
    }
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
    config.listen_addr().map_err(anyhow::Error::msg)?;
    let master_key = std::env::var(MASTER_KEY_ENV).ok().map(Zeroizing::new);
    actix_web::rt::System::new().block_on(server::serve(config, master_key))
}

fn client(command: ClientCommand) -> anyhow::Result<()> {
    let (path, args) = match command {
        ClientCommand::Keys { url } => {
            let client = Client::fetch_keys(&url)?;
            let keys = client.keys();
            println!("identity   kid={}  (signs responses)", keys.identity.kid());
            println!(
                "encryption kid={}  (unwraps session keys)",
                keys.encryption.kid()
            );
            return Ok(());
        }
        ClientCommand::Enroll(args) => ("/v1/enroll", args),
        ClientCommand::Assess(args) => ("/v1/assess", args),
    };
    let client = match &args.pin_keys {
        Some(dir) => {
            let read = |name: &str| {
                std::fs::read_to_string(dir.join(name))
                    .with_context(|| format!("cannot read {}", dir.join(name).display()))
            };
            Client::with_keys(
                &args.url,
                ServerKeys::from_pem(&read(IDENTITY_PEM)?, &read(ENCRYPTION_PEM)?)?,
            )
        }
        None => Client::fetch_keys(&args.url)?,
    };
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

fn calibrate(data: &std::path::Path) -> anyhow::Result<()> {
    let dataset = Dataset::load(data).map_err(anyhow::Error::msg)?;
    let curve = Calibration::measure(&dataset.identity_indices(), &dataset.embeddings())
        .map_err(anyhow::Error::msg)?;
    let points: Vec<String> = curve
        .points()
        .iter()
        .map(|(s, f)| format!("[{s:.6}, {f:.8}]"))
        .collect();
    println!(
        "# measured on {} ({} images)",
        data.display(),
        dataset.samples.len()
    );
    println!("calibration = [{}]", points.join(", "));
    Ok(())
}
