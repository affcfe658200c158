//! `tee-risk admin …`: a custodian's commands (`protocol::custody`, docs/OPERATIONS.md
//! "Custodians"). Each attests the service under the custodian's own policy before it
//! sends anything, and accepts only answers signed by the attested identity.

use std::path::Path;

use anyhow::Context;

use super::CliError;
use super::args::{AdminCommand, CustodianArgs};
use crate::client::{Client, ClientError};
use crate::crypto::keyfile::{load_sm2_key_pair, write_private_file};
use crate::protocol::custody::ShareFile;

/// Runs one `admin` command.
pub fn run(command: AdminCommand) -> Result<(), CliError> {
    match command {
        AdminCommand::Status { url } => {
            super::print_json(&crate::client::custody_status(&url).map_err(client_error)?)?;
            Ok(())
        }
        AdminCommand::Init { custodian, out } => init(&custodian, &out),
        AdminCommand::Rekey { custodian, out } => rekey(&custodian, &out),
        AdminCommand::Unseal { custodian, share } => unseal(&custodian, &share),
    }
}

/// The service attested under the custodian's policy (exit 3 when it fails).
fn attested(args: &CustodianArgs) -> Result<Client, CliError> {
    let policy = super::release::policy(&args.policy, &args.release)?;
    let (client, verified) = Client::attest(&args.url, &policy).map_err(client_error)?;
    eprintln!(
        "attested: {} measurement {}, identity {}",
        verified.tee,
        verified.measurement,
        verified.identity.kid()
    );
    Ok(client)
}

/// `--name`, which init and rekey need.
fn name(args: &CustodianArgs) -> Result<&str, CliError> {
    Ok(args.name.as_deref().ok_or_else(|| {
        anyhow::anyhow!("this command needs --name (yours in the custodians file)")
    })?)
}

fn init(args: &CustodianArgs, out: &Path) -> Result<(), CliError> {
    let name = name(args)?;
    let (signing, _) = load_sm2_key_pair(&args.key).map_err(anyhow::Error::from)?;
    let client = attested(args)?;
    let reply = client.custody_init(name, &signing).map_err(client_error)?;
    let written = write_shares(out, &reply.shares, &reply)?;
    super::print_json(&serde_json::json!({
        "key_id": reply.key_id,
        "threshold": reply.threshold,
        "shares": written,
    }))?;
    eprintln!(
        "initialised: master key {} split {} of {}; give each custodian their file only",
        reply.key_id,
        reply.threshold,
        reply.shares.len()
    );
    Ok(())
}

fn rekey(args: &CustodianArgs, out: &Path) -> Result<(), CliError> {
    let name = name(args)?;
    let (signing, _) = load_sm2_key_pair(&args.key).map_err(anyhow::Error::from)?;
    let client = attested(args)?;
    let reply = client.custody_rekey(name, &signing).map_err(client_error)?;
    let written = write_shares(out, &reply.shares, &reply)?;
    super::print_json(&serde_json::json!({
        "state": reply.state,
        "approvals": reply.approvals,
        "threshold": reply.threshold,
        "key_id": reply.key_id,
        "previous_key_id": reply.previous_key_id,
        "shares": written,
    }))?;
    match &reply.key_id {
        Some(key_id) => eprintln!(
            "rekeyed: master key {key_id} replaces {}; the sweep runs; keep the old shares until \
             GET /v1/custody shows no previous key; give each custodian their new file only",
            reply.previous_key_id.as_deref().unwrap_or_default()
        ),
        None => eprintln!(
            "approval of {name} held: {} of {}",
            reply.approvals.len(),
            reply.threshold
        ),
    }
    Ok(())
}

/// Writes each share file to `out` as `<custodian>.share.json` (mode 0600), never over an
/// existing file (then the whole answer is printed, so that no share is lost).
fn write_shares(
    out: &Path,
    shares: &[ShareFile],
    answer: &impl serde::Serialize,
) -> Result<Vec<String>, CliError> {
    if shares.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut written = Vec::new();
    for share in shares {
        let path = out.join(format!("{}.share.json", share.custodian));
        if path.exists() {
            return Err(anyhow::anyhow!(
                "{} exists: not overwritten (move the old file away and copy this share from \
                 the answer below)\n{}",
                path.display(),
                serde_json::to_string_pretty(answer)?
            )
            .into());
        }
        let text = serde_json::to_string_pretty(share)?;
        write_private_file(&path, text.as_bytes()).map_err(anyhow::Error::from)?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

fn unseal(args: &CustodianArgs, share_path: &Path) -> Result<(), CliError> {
    let text = std::fs::read_to_string(share_path)
        .with_context(|| format!("cannot read {}", share_path.display()))?;
    let share: ShareFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a share file", share_path.display()))?;
    if let Some(name) = &args.name
        && *name != share.custodian
    {
        return Err(anyhow::anyhow!(
            "{} is {}'s share, not {name}'s",
            share_path.display(),
            share.custodian
        )
        .into());
    }
    let (signing, decrypting) = load_sm2_key_pair(&args.key).map_err(anyhow::Error::from)?;
    let client = attested(args)?;
    let reply = client
        .custody_unseal(&share, &signing, &decrypting)
        .map_err(client_error)?;
    super::print_json(&reply)?;
    eprintln!(
        "share of {} accepted: {} of {} received; the service is {}",
        reply.custodian,
        reply.received.len(),
        reply.threshold,
        reply.state
    );
    Ok(())
}

/// A refusal by the service exits 4, an untrusted service 3.
fn client_error(error: ClientError) -> CliError {
    match error {
        ClientError::Refused { .. } => CliError::Refused(error.to_string()),
        ClientError::Untrusted { .. } => CliError::CheckFailed(error.to_string()),
        other => CliError::Failed(other.into()),
    }
}
