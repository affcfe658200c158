//! The command line: every command, argument and environment variable of `tee-risk`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// `tee-risk`.
#[derive(Parser)]
#[command(
    name = "tee-risk",
    version,
    about = "Face-verification risk scoring in a TEE, with SM2/SM3/SM4"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the service (DB master key from env DB_MASTER_KEY, or --dev).
    #[cfg(feature = "server")]
    Serve(ServeArgs),
    /// Talk to a running service.
    #[cfg(feature = "client")]
    #[command(subcommand)]
    Client(ClientCommand),
    /// Release engineering (`make release`, docs/ATTESTATION.md "From measurement to
    /// source"): sign a release manifest, append it to the release log.
    #[cfg(feature = "client")]
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Key custody (`[keys] source = "custodians"`): initialise a sealed service's master key
    /// among its custodians, send a custodian's share to unseal it, read its state. Each
    /// attests the service under the custodian's policy first. Exit codes: 0 done, 1 could
    /// not run, 3 a check failed (the service is not trusted), 4 refused by the service.
    #[cfg(feature = "client")]
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Operator commands on the database of a stopped service (keys from DB_MASTER_KEY and
    /// DB_MASTER_KEY_PREVIOUS). Exit codes: 0 done, 1 could not run, 3 a check failed,
    /// 4 refused (a precondition does not hold yet).
    #[cfg(feature = "server")]
    #[command(subcommand)]
    Db(DbCommand),
    #[cfg(all(feature = "lab", feature = "server"))]
    /// Train the risk model on a labelled embeddings file: measure the match calibration,
    /// generate labelled attempts (genuine and attacks), fit the logistic regression, write
    /// the versioned model file (docs/EVALUATION.md).
    Train {
        #[arg(long)]
        data: PathBuf,
        /// Impostor-only embeddings (same format; identities in no other file) that the
        /// calibration's tail is also fitted on; repeatable.
        #[arg(long)]
        distractors: Vec<PathBuf>,
        /// The id of the face model that made the embeddings (recorded in the model file
        /// with the dimension; `[features] models` entries are checked against it), e.g.
        /// dlib-resnet128 or mobilefacenet192.
        #[arg(long)]
        face_model: String,
        /// Where to write the model (the shipped ones are config/models/<id>.json).
        #[arg(long)]
        out: PathBuf,
        /// L2 penalty of the logistic regression.
        #[arg(long, default_value_t = crate::lab::train::DEFAULT_ALPHA)]
        alpha: f64,
        /// Seed of the generated contexts (training is deterministic for a given seed).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    #[cfg(all(feature = "lab", feature = "server"))]
    /// Replay the evaluation protocol (docs/EVALUATION.md) on a labelled embeddings file
    /// through the configured scoring policy; print a table and write a JSON report.
    Eval {
        #[arg(long)]
        data: PathBuf,
        /// Impostor-only embeddings (one-photo identities in no other file): they join the
        /// impostor pairs, the strangers of 1:N and the larger galleries; repeatable.
        #[arg(long)]
        distractors: Vec<PathBuf>,
        /// 1:N gallery sizes (0: the largest the data supports).
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000,0")]
        gallery_sizes: Vec<usize>,
        /// Operator config file (for `[features] models` and the `[risk]` policy).
        #[arg(long, env = "TEE_RISK_CONFIG")]
        config: Option<PathBuf>,
        /// The face model whose policy decides (its id in `[features] models`; the data's
        /// dimension must be its own). Default: the configuration's default model.
        #[arg(long)]
        face_model: Option<String>,
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

/// `tee-risk client identify --mode`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    Decide,
    Investigate,
}

#[cfg(feature = "server")]
#[derive(Args)]
pub struct ServeArgs {
    /// Operator config file overriding the built-in defaults (config/default.toml).
    #[arg(long, env = "TEE_RISK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0: any free port).
    #[arg(long, env = "TEE_RISK_LISTEN")]
    pub listen: Option<String>,
    /// Folder for the database (and the dev master key in dev mode).
    #[arg(long, env = "TEE_RISK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address for the operator endpoints (server.operator_listen).
    #[arg(long, env = "TEE_RISK_OPERATOR_LISTEN")]
    pub operator_listen: Option<String>,
    /// Folder where the public keys are written as PEM.
    #[arg(long, env = "TEE_RISK_KEYS_DIR")]
    pub keys_dir: Option<PathBuf>,
    /// Development mode: without DB_MASTER_KEY, generate a master key beside the data.
    #[arg(long, env = "TEE_RISK_DEV", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub dev: Option<bool>,
    /// The registered clients file (access.clients_file).
    #[arg(long, env = "TEE_RISK_CLIENTS")]
    pub clients: Option<PathBuf>,
    /// Serve a database that is behind its high-water mark (acknowledged data was lost to a
    /// damaged log): records the loss in the audit log and moves the mark down. Use it only
    /// after deciding not to restore a backup.
    #[arg(long)]
    pub accept_data_loss: bool,
}

#[cfg(feature = "server")]
#[derive(Args)]
pub struct DbArgs {
    /// Operator config file (for storage.data_dir).
    #[arg(long, env = "TEE_RISK_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "TEE_RISK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Use the development master key kept beside the data.
    #[arg(long, env = "TEE_RISK_DEV", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub dev: Option<bool>,
}

#[cfg(feature = "server")]
#[derive(Subcommand)]
pub enum DbCommand {
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
        /// Copy a damaged store anyway, byte for byte, into a folder marked as a damaged
        /// copy (DAMAGED-COPY.txt says what was found); the command still exits 3.
        #[arg(long)]
        force: bool,
    },
    /// Read a damaged database without writing to it and build a new, whole sled data folder
    /// at OUT (which must not exist or be empty) from every record that still proves itself:
    /// data records whose seal opens, the audit log up to its first broken entry, the keys'
    /// records. OUT gets a new high-water mark and an audit entry `salvaged` with the counts;
    /// a report by table is printed. Exit 0 when OUT was built and passes `db verify`.
    Salvage {
        #[command(flatten)]
        db: DbArgs,
        out: PathBuf,
    },
    /// PostgreSQL: create the schema, or check it is the version this build knows (the
    /// service does the same at start).
    Migrate(DbArgs),
    /// Move a sled deployment to PostgreSQL: copies every record, sealed as it is, from the
    /// sled data folder FROM into the database at TEE_RISK_DATABASE_URL (not on the command
    /// line: a password there shows in `ps`), then proves it: records per table and key id
    /// equal on both sides, and every record of the target decrypts. Interrupted, run it
    /// again: it copies again over what is there.
    Copy {
        #[command(flatten)]
        db: DbArgs,
        /// The sled data folder (holding `db/`) of the stopped service.
        #[arg(long)]
        from: PathBuf,
    },
}

#[cfg(feature = "client")]
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Verify the service's attestation evidence (fresh nonce) under a policy file, then its
    /// certified encryption key; print what was verified.
    Attest(AttestArgs),
    /// Check a signed release manifest (`release.json`) with the release key, and its place
    /// in the release log; print the release. Exit 0 passed, 3 refused (the failed check is
    /// named).
    VerifyRelease(VerifyReleaseArgs),
    /// Check an evidence document offline (a report and its collateral) under a policy:
    /// every check but the binding of a nonce of ours, which a document made for someone
    /// else cannot pass. For operators: does this platform and build pass our policy?
    /// Exit 0 passed, 3 refused (the failed check is named).
    VerifyEvidence(VerifyEvidenceArgs),
    /// Fetch and print the service's public keys.
    Keys(KeysArgs),
    /// Enrol a face embedding for a user.
    Enroll(RequestArgs),
    /// Assess a face embedding against a user's enrolment.
    Assess(RequestArgs),
    /// Identify a face among every enrolled user (1:N); the answer is encrypted to this
    /// client, decrypted and verified here.
    Identify(IdentifyArgs),
    /// Seal an enrol or assess payload into an envelope file without sending it, for another
    /// program to post (the answer is asked in the clear: only the sealer could open an
    /// encrypted one). Prints the request id.
    Seal(SealArgs),
    /// Post an envelope file built by any program, signed as this client, and verify the
    /// answer (signature, rid, req_sm3) before printing it.
    Post(PostArgs),
    /// Verify offline a signed answer (file) to an envelope (file) under an identity key:
    /// signature, rid and req_sm3. Exit 0 and the payload, or 3 with the failed check.
    VerifyAnswer(VerifyAnswerArgs),
    /// Erase everything the service keeps about a user (templates, history, indexes; risk
    /// logs keep the decisions only).
    Erase(EraseArgs),
}

/// Who the client is: its registered id and SM2 private key. The defaults are the
/// development client that `make run` creates.
#[cfg(feature = "client")]
#[derive(Args)]
pub struct AccessArgs {
    #[arg(long, env = "TEE_RISK_CLIENT_ID", default_value = "dev")]
    pub client_id: String,
    /// The client's SM2 private key: 64 hex digits or a PKCS#8 PEM.
    #[arg(
        long,
        env = "TEE_RISK_CLIENT_KEY",
        default_value = "data/dev-client-key.hex"
    )]
    pub client_key: PathBuf,
}

#[cfg(feature = "client")]
#[derive(Args)]
pub struct RequestArgs {
    #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The user id the face is claimed to belong to.
    #[arg(long)]
    pub user: String,
    /// JSON file: an array of numbers, or an object with `features` or `embedding`.
    #[arg(long)]
    pub features: PathBuf,
    /// The face model that made the features (e.g. mobilefacenet192; PROTOCOL v1.3).
    /// Absent: the service's default model.
    #[arg(long)]
    pub face_model: Option<String>,
    /// Client-side liveness (presentation-attack) score in [0, 1].
    #[arg(long)]
    pub liveness: Option<f32>,
    #[arg(long)]
    pub device: Option<String>,
    #[command(flatten)]
    pub access: AccessArgs,
    /// Trust only the identity key in this folder (identity.pub.pem) instead of the one the
    /// service presents; encryption keys must carry its certificate.
    #[arg(long)]
    pub pin_keys: Option<PathBuf>,
    /// Ask for the answer encrypted to this client (docs/PROTOCOL.md §3a).
    #[arg(long)]
    pub encrypted_answer: bool,
}

#[cfg(feature = "client")]
#[derive(Args)]
pub struct AttestArgs {
    #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Attestation policy (TOML), e.g. config/attestation-policy.toml.
    #[arg(long, default_value = "config/attestation-policy.toml")]
    pub policy: PathBuf,
    #[command(flatten)]
    pub release: ReleaseArgs,
}

/// Which releases to accept: with `--manifest`, a measurement passes only if a manifest
/// signed by the release key lists it (the policy's own measurements are set aside).
#[cfg(feature = "client")]
#[derive(Args)]
pub struct ReleaseArgs {
    /// A signed release manifest (`release.json` from `make release`); repeatable.
    #[arg(long = "manifest", requires = "release_key")]
    pub manifests: Vec<PathBuf>,
    /// The release key's public PEM (keys/release-test.pub.pem for test releases).
    #[arg(long, requires = "manifests")]
    pub release_key: Option<PathBuf>,
    /// The release log (`releases.log`): each manifest must be in it.
    #[arg(long, requires = "manifests")]
    pub log: Option<PathBuf>,
}

#[cfg(feature = "client")]
#[derive(Args)]
pub struct VerifyReleaseArgs {
    /// The signed manifest.
    #[arg(long)]
    pub manifest: PathBuf,
    /// The release key's public PEM.
    #[arg(long)]
    pub release_key: PathBuf,
    /// The release log (`releases.log`) that must list the manifest.
    #[arg(long)]
    pub log: PathBuf,
    /// A head of the log seen before (hex): the log must extend it (nothing seen was
    /// removed or rewritten).
    #[arg(long)]
    pub head: Option<String>,
}

#[cfg(feature = "client")]
#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// Write a signed release manifest for a built binary (`make release` runs it).
    Manifest(ManifestArgs),
    /// Append a signed manifest to the release log (checked first; the log is created if
    /// missing). Prints the new head.
    Append {
        /// The signed manifest.
        #[arg(long)]
        manifest: PathBuf,
        /// The release key's public PEM.
        #[arg(long)]
        release_key: PathBuf,
        /// The release log.
        #[arg(long, default_value = "releases.log")]
        log: PathBuf,
    },
}

#[cfg(feature = "client")]
#[derive(Args)]
pub struct ManifestArgs {
    /// The binary released.
    #[arg(long)]
    pub binary: PathBuf,
    /// The `Cargo.lock` it was built with.
    #[arg(long, default_value = "Cargo.lock")]
    pub cargo_lock: PathBuf,
    /// The commit built (40 hex digits).
    #[arg(long)]
    pub commit: String,
    /// The build's SOURCE_DATE_EPOCH.
    #[arg(long)]
    pub source_date_epoch: i64,
    /// A file holding `rustc -vV` of the toolchain that built it.
    #[arg(long)]
    pub toolchain: PathBuf,
    /// The build, as run (profile, features, flags).
    #[arg(long)]
    pub build: String,
    /// The crate version released (default: this command's).
    #[arg(long)]
    pub version: Option<String>,
    /// Measurements of hardware TEEs computed offline: a JSON array of
    /// `{"tee", "measurement", "how"}`; repeatable.
    #[arg(long)]
    pub measurements: Vec<PathBuf>,
    /// Reference values that could not be completed: a JSON array of
    /// `{"tee", "partial", "inputs", "missing"}`; repeatable.
    #[arg(long)]
    pub incomplete: Vec<PathBuf>,
    /// The release key (SM2 private key: 64 hex digits or PKCS#8 PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// Where to write the signed manifest.
    #[arg(long)]
    pub out: PathBuf,
}

#[cfg(feature = "client")]
#[derive(Args)]
pub struct VerifyEvidenceArgs {
    /// The evidence (JSON, as `GET /v1/attestation` answers it).
    #[arg(long)]
    pub evidence: PathBuf,
    /// Attestation policy (TOML).
    #[arg(long, default_value = "config/attestation-policy.toml")]
    pub policy: PathBuf,
    /// Verify as of this time (unix seconds) instead of now: collateral is valid for a
    /// while only, so an old document needs the time it was made.
    #[arg(long)]
    pub at: Option<i64>,
}

#[cfg(feature = "client")]
#[derive(Args)]
pub struct KeysArgs {
    #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

#[cfg(feature = "client")]
#[derive(Args)]
pub struct IdentifyArgs {
    #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// JSON file: an array of numbers, or an object with `features` or `embedding`.
    #[arg(long)]
    pub features: PathBuf,
    /// Candidates wanted: 1 to 10 to decide (default 1), 1 to 50 to investigate
    /// (default 10).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// `decide` (a match decision; permission `identify`) or `investigate` (ranked
    /// candidates with their FMRs, no decision; permission `investigate`).
    #[arg(long, value_enum, default_value = "decide")]
    pub mode: ModeArg,
    /// The face model that made the features (e.g. mobilefacenet192; PROTOCOL v1.3).
    /// Absent: the service's default model.
    #[arg(long)]
    pub face_model: Option<String>,
    #[arg(long)]
    pub liveness: Option<f32>,
    #[arg(long)]
    pub device: Option<String>,
    #[command(flatten)]
    pub access: AccessArgs,
    #[arg(long)]
    pub pin_keys: Option<PathBuf>,
}

#[cfg(feature = "client")]
#[derive(Args)]
pub struct SealArgs {
    #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long)]
    pub user: String,
    /// JSON file: an array of numbers, or an object with `features` or `embedding`.
    #[arg(long)]
    pub features: PathBuf,
    /// The face model that made the features (e.g. mobilefacenet192; PROTOCOL v1.3).
    /// Absent: the service's default model.
    #[arg(long)]
    pub face_model: Option<String>,
    #[arg(long)]
    pub liveness: Option<f32>,
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub pin_keys: Option<PathBuf>,
    /// Where to write the envelope (docs/PROTOCOL.md §2).
    #[arg(long)]
    pub out: PathBuf,
}

#[cfg(feature = "client")]
#[derive(Args)]
pub struct PostArgs {
    #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The route: /v1/enroll, /v1/assess, /v1/identify or /v1/users (sent as DELETE).
    #[arg(long)]
    pub path: String,
    /// The envelope file.
    #[arg(long)]
    pub request: PathBuf,
    #[command(flatten)]
    pub access: AccessArgs,
    #[arg(long)]
    pub pin_keys: Option<PathBuf>,
    /// Also write the answer's body, as received, to this file.
    #[arg(long)]
    pub save_answer: Option<PathBuf>,
}

#[cfg(feature = "client")]
#[derive(Args)]
pub struct VerifyAnswerArgs {
    #[arg(long)]
    pub request: PathBuf,
    #[arg(long)]
    pub answer: PathBuf,
    /// The service's identity key (PEM), e.g. keys/identity.pub.pem.
    #[arg(long)]
    pub identity: PathBuf,
}

#[cfg(feature = "client")]
#[derive(Args)]
pub struct EraseArgs {
    #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long)]
    pub user: String,
    #[command(flatten)]
    pub access: AccessArgs,
    #[arg(long)]
    pub pin_keys: Option<PathBuf>,
}

/// `tee-risk admin …`.
#[cfg(feature = "client")]
#[derive(Subcommand)]
pub enum AdminCommand {
    /// Print the service's custody state: sealed or not, k, the custodians, who has sent.
    Status {
        #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
    },
    /// Once, on an empty database: the service makes the master key in the TEE, splits it k
    /// of n and seals each share to its custodian; one file per custodian is written to
    /// --out (`<name>.share.json`; each opens only with its custodian's key).
    Init {
        #[command(flatten)]
        custodian: CustodianArgs,
        /// Folder for the share files (created; files mode 0600; existing files are not
        /// overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Approve a new master key (k custodians, each once): the k-th approval makes the key
    /// in the TEE, writes the new share files to --out, and starts the online sweep; the old
    /// key is kept until the sweep is verified (a restart before that needs the old and the
    /// new shares).
    Rekey {
        #[command(flatten)]
        custodian: CustodianArgs,
        /// Folder for the new share files (as for init), written by the k-th approval.
        #[arg(long)]
        out: PathBuf,
    },
    /// Open this custodian's share file with their key and send it to the attested service
    /// for its current unseal attempt.
    Unseal {
        #[command(flatten)]
        custodian: CustodianArgs,
        /// The custodian's share file (from `admin init`).
        #[arg(long)]
        share: PathBuf,
    },
}

/// A custodian talking to the service.
#[cfg(feature = "client")]
#[derive(Args)]
pub struct CustodianArgs {
    #[arg(long, env = "TEE_RISK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The custodian's own attestation policy (TOML): the service must pass it.
    #[arg(long)]
    pub policy: PathBuf,
    #[command(flatten)]
    pub release: ReleaseArgs,
    /// The custodian's name in the service's custodians file (init; unseal reads it from
    /// the share file).
    #[arg(long)]
    pub name: Option<String>,
    /// The custodian's SM2 private key: 64 hex digits or a PKCS#8 PEM.
    #[arg(long)]
    pub key: PathBuf,
}
