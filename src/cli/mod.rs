//! The `tee-risk` command (feature `cli`): `serve` and `db …` (feature `server`), `client …`
//! (feature `client`), `train` and `eval` (features `lab` and `server`). A client-only build
//! (`--no-default-features --features cli,client`) is the command a client's operator runs.
//! Each command group is a module; `args.rs` holds the definitions and `error.rs` the exit
//! codes. It lives in the library, so that the binary (`src/bin/tee-risk.rs`) is a call to
//! [`main`] and the layers it drives stay private to the crate.

#[cfg(feature = "client")]
mod admin;
mod args;
#[cfg(feature = "client")]
mod client;
#[cfg(feature = "server")]
mod db;
mod error;
#[cfg(all(feature = "lab", feature = "server"))]
mod lab;
#[cfg(feature = "client")]
mod release;

use std::process::ExitCode;

#[cfg(feature = "server")]
use crate::app::{self, Config, MasterKeyEnv};
use clap::Parser;

#[cfg(feature = "server")]
use args::ServeArgs;
use args::{Cli, Command};
use error::CliError;

/// Parses the command line, runs the command, and returns its exit code.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, not in log files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr on a full disk) is dropped. Otherwise
        // tracing reports the failure with `eprintln!`, which panics when stderr fails too,
        // and takes the request's worker thread with it.
        .log_internal_errors(false)
        .init();
    let outcome: Result<(), CliError> = match Cli::parse().command {
        #[cfg(feature = "server")]
        Command::Serve(args) => serve(args),
        #[cfg(feature = "client")]
        // A refusal the client commands name (a failed check) keeps its exit code.
        Command::Client(command) => client::run(command).map_err(|error| {
            error
                .downcast::<CliError>()
                .unwrap_or_else(CliError::Failed)
        }),
        #[cfg(feature = "client")]
        Command::Release(command) => release::run(command),
        #[cfg(feature = "client")]
        Command::Admin(command) => admin::run(command),
        #[cfg(feature = "server")]
        Command::Db(command) => db::run(command),
        #[cfg(all(feature = "lab", feature = "server"))]
        Command::Train {
            data,
            distractors,
            face_model,
            out,
            alpha,
            seed,
        } => lab::train_model(&lab::TrainArgs {
            data: &data,
            distractors: &distractors,
            face_model: &face_model,
            out: &out,
            alpha,
            seed,
        })
        .map_err(CliError::from),
        #[cfg(all(feature = "lab", feature = "server"))]
        Command::Eval {
            data,
            distractors,
            gallery_sizes,
            config,
            face_model,
            enrol_images,
            out,
            plots,
        } => lab::evaluate(
            &lab::EvalArgs {
                face_model: face_model.as_deref(),
                data: &data,
                distractors: &distractors,
                gallery_sizes: &gallery_sizes,
                enrol_images: &enrol_images,
                out: &out,
                plots: plots.as_deref(),
            },
            config.as_deref(),
        )
        .map_err(CliError::from),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}

/// Prints `value` as pretty JSON on stdout.
#[cfg(any(feature = "server", feature = "client"))]
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(feature = "server")]
fn serve(args: ServeArgs) -> Result<(), CliError> {
    let mut config = Config::load(args.config.as_deref())?;
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
    config.listen_addr()?;
    actix_web::rt::System::new().block_on(app::serve(
        config,
        MasterKeyEnv::from_process(),
        args.accept_data_loss,
    ))?;
    Ok(())
}
