//! `tee-risk client …`: talk to a running service through the client library.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tee_risk::attest::Policy;
use tee_risk::client::{
    Client, FeatureRequest, IdentifyMode, IdentifyRequest, RawResponse, ServerKeys,
    read_features_file, verify_answer_to,
};
use tee_risk::crypto::keyfile::load_sm2_key;
use tee_risk::protocol::IDENTITY_PEM;
use tee_risk::protocol::client_auth::ClientCredential;

use crate::CliError;
use crate::cli::{AccessArgs, ClientCommand, ModeArg};

/// The client's credential from its id and key file.
fn credential(access: &AccessArgs) -> anyhow::Result<Arc<ClientCredential>> {
    Ok(Arc::new(ClientCredential::new(
        &access.client_id,
        load_sm2_key(&access.client_key)?,
    )))
}

/// Runs one `client` command.
pub fn run(command: ClientCommand) -> anyhow::Result<()> {
    let (path, args) = match command {
        ClientCommand::Attest { url, policy } => {
            let policy = Policy::load(&policy)?;
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
        ClientCommand::VerifyEvidence {
            evidence,
            policy,
            at,
        } => {
            let policy = Policy::load(&policy)?;
            let text = std::fs::read(&evidence)
                .with_context(|| format!("cannot read {}", evidence.display()))?;
            let evidence: tee_risk::attest::Evidence = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not an evidence document", evidence.display()))?;
            let now = at.unwrap_or_else(tee_risk::obs::unix_now);
            let verified = policy
                .verify_platform(&evidence, now)
                .map_err(|e| CliError::CheckFailed(e.to_string()))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "tee": verified.tee,
                    "measurement": verified.measurement,
                    "debug": verified.debug,
                    "issued_at": verified.issued_at,
                    "report_data": hex::encode(verified.report_data),
                    "identity_kid": verified.identity.kid(),
                }))?
            );
            eprintln!(
                "platform verified at {now}: signature chain, TCB, measurement, debug flag; \
                 report_data NOT checked (no nonce of ours): this trusts no key"
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
            let client = connect(&url, pin_keys.as_deref())?.with_credential(credential(&access)?);
            let payload = client.erase(&user)?;
            print_verified(&payload, &client.keys().identity)?;
            return Ok(());
        }
        ClientCommand::Identify {
            url,
            features,
            top_k,
            mode,
            face_model,
            liveness,
            device,
            access,
            pin_keys,
        } => {
            let client = connect(&url, pin_keys.as_deref())?.with_credential(credential(&access)?);
            let payload = client.identify(&IdentifyRequest {
                features: read_features_file(&features)?,
                liveness,
                device_id: device,
                top_k,
                // A decision is the default: sent without `mode`, as v1.1 clients send it.
                mode: matches!(mode, ModeArg::Investigate).then_some(IdentifyMode::Investigate),
                face_model,
            })?;
            println!("{}", serde_json::to_string_pretty(&payload)?);
            eprintln!(
                "answer decrypted with this request's key; signature verified (identity kid \
                 {}), rid and req_sm3 match",
                client.keys().identity.kid()
            );
            return Ok(());
        }
        ClientCommand::Seal {
            url,
            user,
            features,
            face_model,
            liveness,
            device,
            pin_keys,
            out,
        } => {
            let client = connect(&url, pin_keys.as_deref())?;
            let sealed = client.seal_request(
                &FeatureRequest {
                    user_id: user,
                    features: read_features_file(&features)?,
                    liveness,
                    device_id: device,
                    face_model,
                },
                false,
            )?;
            std::fs::write(&out, &sealed.body)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("{}", sealed.header.rid);
            return Ok(());
        }
        ClientCommand::Post {
            url,
            path,
            request,
            access,
            pin_keys,
            save_answer,
        } => {
            let client = connect(&url, pin_keys.as_deref())?.with_credential(credential(&access)?);
            let body = std::fs::read(&request)
                .with_context(|| format!("cannot read {}", request.display()))?;
            let method = if path == "/v1/users" {
                "DELETE"
            } else {
                "POST"
            };
            let raw = client.request_raw(method, &path, &body)?;
            if let Some(file) = save_answer {
                std::fs::write(&file, &raw.body)
                    .with_context(|| format!("cannot write {}", file.display()))?;
            }
            let payload = verify_answer_to(&client.keys().identity, &body, &raw)?;
            print_verified(&payload, &client.keys().identity)?;
            return Ok(());
        }
        ClientCommand::VerifyAnswer {
            request,
            answer,
            identity,
        } => {
            let read = |path: &Path| {
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
            };
            let pem = String::from_utf8(read(&identity)?)
                .with_context(|| format!("{} is not a PEM file", identity.display()))?;
            let identity = ServerKeys::identity_from_pem(&pem)?;
            let raw = RawResponse {
                status: 200,
                body: read(&answer)?,
            };
            let payload = verify_answer_to(&identity, &read(&request)?, &raw)
                .map_err(|e| CliError::CheckFailed(e.to_string()))?;
            print_verified(&payload, &identity)?;
            return Ok(());
        }
        ClientCommand::Enroll(args) => ("/v1/enroll", args),
        ClientCommand::Assess(args) => ("/v1/assess", args),
    };
    let mut client =
        connect(&args.url, args.pin_keys.as_deref())?.with_credential(credential(&args.access)?);
    if args.encrypted_answer {
        client = client.with_encrypted_answers();
    }
    let request = FeatureRequest {
        user_id: args.user.clone(),
        features: read_features_file(&args.features)?,
        liveness: args.liveness,
        device_id: args.device.clone(),
        face_model: args.face_model.clone(),
    };
    let payload = client.send(path, &request)?;
    print_verified(&payload, &client.keys().identity)?;
    Ok(())
}

/// Prints a verified payload, and on stderr what was verified.
fn print_verified(
    payload: &serde_json::Value,
    identity: &tee_risk::crypto::sm2::PublicKey,
) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(payload)?);
    eprintln!(
        "signature verified (identity kid {}), rid and req_sm3 match",
        identity.kid()
    );
    Ok(())
}

/// A client trusting the identity key pinned in `pin_keys` (identity.pub.pem), or else the
/// one the service presents.
fn connect(url: &str, pin_keys: Option<&Path>) -> anyhow::Result<Client> {
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
