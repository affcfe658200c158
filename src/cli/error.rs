//! The CLI's error: what went wrong, and the exit code it means (documented in `--help`
//! of `tee-risk db`): 1 could not run, 3 a check found a problem, 4 refused because a
//! precondition does not hold yet.

use std::process::ExitCode;

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command could not run (bad input, I/O, a refused start…).
    #[error("{}", chain(.0))]
    Failed(#[from] anyhow::Error),
    /// A check (`db verify`, `db verify-log`) ran and found a problem; the report is printed.
    #[error("{0}")]
    CheckFailed(String),
    /// Refused: a precondition does not hold yet (the message says which).
    #[error("refused: {0}")]
    Refused(String),
}

/// The error and its causes, each cause added only when the message before does not already
/// say it (the library's errors name their cause in their own message).
fn chain(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Failed(_) => 1,
            CliError::CheckFailed(_) => 3,
            CliError::Refused(_) => 4,
        })
    }
}

macro_rules! from_library_errors {
    ($($error:ty),* $(,)?) => {
        $(impl From<$error> for CliError {
            fn from(error: $error) -> Self {
                CliError::Failed(error.into())
            }
        })*
    };
}

from_library_errors!(std::io::Error, serde_json::Error);
#[cfg(feature = "server")]
from_library_errors!(
    crate::app::AppError,
    crate::app::ConfigError,
    crate::store::VaultError,
    crate::store::StoreError,
    crate::store::audit::AuditError,
);
