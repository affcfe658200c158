//! `tee-risk client …`: talk to a running service through the client library.

use std::path::Path;
use std::sync::Arc;

use crate::attest::Policy;
use crate::client::{
    Client, ClientError, FeatureRequest, IdentifyMode, IdentifyRequest, RawResponse, ServerKeys,
    read_features_file, verify_answer_to,
};
use crate::crypto::keyfile::load_sm2_key;
use crate::protocol::IDENTITY_PEM;
use crate::protocol::client_auth::ClientCredential;
use crate::protocol::reply::{AssessReply, EnrollReply, EraseReply, IdentifyReply};
use anyhow::Context;

use super::CliError;
use super::args::{
    AccessArgs, AttestArgs, ClientCommand, IdentifyArgs, KeysArgs, ModeArg, PostArgs, RequestArgs,
    SealArgs, VerifyAnswerArgs, VerifyEvidenceArgs,
};

/// The client's credential from its id and key file.
fn credential(access: &AccessArgs) -> anyhow::Result<Arc<ClientCredential>> {
    Ok(Arc::new(ClientCredential::new(
        &access.client_id,
        load_sm2_key(&access.client_key)?,
    )))
}

/// Runs one `client` command.
pub fn run(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Attest(args) => attest(args),
        ClientCommand::VerifyEvidence(args) => verify_evidence(args),
        ClientCommand::VerifyRelease(args) => super::release::verify(args),
        ClientCommand::Keys(args) => keys(args),
        ClientCommand::Enroll(args) => {
            let (client, request) = feature_request(&args)?;
            let reply: EnrollReply = client.enroll(&request)?;
            print_verified(&reply, &client.keys().identity)
        }
        ClientCommand::Assess(args) => {
            let (client, request) = feature_request(&args)?;
            let reply: AssessReply = client.assess(&request)?;
            print_verified(&reply, &client.keys().identity)
        }
        ClientCommand::Identify(args) => identify(args),
        ClientCommand::Erase(args) => {
            let client = connect(&args.url, args.pin_keys.as_deref())?
                .with_credential(credential(&args.access)?);
            let reply: EraseReply = client.erase(&args.user)?;
            print_verified(&reply, &client.keys().identity)
        }
        ClientCommand::Seal(args) => seal(args),
        ClientCommand::Post(args) => post(args),
        ClientCommand::VerifyAnswer(args) => verify_answer(args),
    }
}

/// `client attest`: the evidence under the policy (or the signed releases), then the keys
/// it certifies. A refused check exits 3.
fn attest(args: AttestArgs) -> anyhow::Result<()> {
    let policy = super::release::policy(&args.policy, &args.release)?;
    let (client, verified) = Client::attest(&args.url, &policy).map_err(|e| match e {
        ClientError::Untrusted { .. } => CliError::CheckFailed(e.to_string()).into(),
        e => anyhow::Error::from(e),
    })?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "tee": verified.tee,
            "measurement": verified.measurement,
            "debug": verified.debug,
            "issued_at": verified.issued_at,
            "identity_kid": verified.identity.kid(),
            "release": super::release::summary(verified.release.as_ref()),
            "encryption_kid": client.keys().encryption.kid(),
            "encryption_valid_until": client.keys().encryption_not_after,
        }))?
    );
    eprintln!(
        "attestation verified: report signature, nonce, report_data binding of the identity \
         key, measurement, debug flag and age; encryption key certified by that identity"
    );
    Ok(())
}

/// `client verify-evidence`: a document's platform checks, offline.
fn verify_evidence(args: VerifyEvidenceArgs) -> anyhow::Result<()> {
    let policy = Policy::load(&args.policy)?;
    let text = read(&args.evidence)?;
    let evidence: crate::attest::Evidence = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not an evidence document", args.evidence.display()))?;
    let now = args.at.unwrap_or_else(crate::obs::unix_now);
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
    Ok(())
}

/// `client keys`: the keys the service presents, checked.
fn keys(args: KeysArgs) -> anyhow::Result<()> {
    let keys = Client::fetch_keys(&args.url)?.keys();
    println!(
        "identity   kid={}  (signs responses and certifies encryption keys)",
        keys.identity.kid()
    );
    println!(
        "encryption kid={}  (certificate verified; valid until {})",
        keys.encryption.kid(),
        keys.encryption_not_after
    );
    Ok(())
}

/// The client and the feature message of an enrol or assess command.
fn feature_request(args: &RequestArgs) -> anyhow::Result<(Client, FeatureRequest)> {
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
    Ok((client, request))
}

/// `client identify`: 1:N, the answer decrypted and verified.
fn identify(args: IdentifyArgs) -> anyhow::Result<()> {
    let client =
        connect(&args.url, args.pin_keys.as_deref())?.with_credential(credential(&args.access)?);
    let reply: IdentifyReply = client.identify(&IdentifyRequest {
        features: read_features_file(&args.features)?,
        liveness: args.liveness,
        device_id: args.device,
        top_k: args.top_k,
        // A decision is the default: sent without `mode`, as v1.1 clients send it.
        mode: matches!(args.mode, ModeArg::Investigate).then_some(IdentifyMode::Investigate),
        face_model: args.face_model,
    })?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    eprintln!(
        "answer decrypted with this request's key; signature verified (identity kid {}), rid \
         and req_sm3 match",
        client.keys().identity.kid()
    );
    Ok(())
}

/// `client seal`: an envelope file for another program to post.
fn seal(args: SealArgs) -> anyhow::Result<()> {
    let client = connect(&args.url, args.pin_keys.as_deref())?;
    let sealed = client.seal_request(
        &FeatureRequest {
            user_id: args.user,
            features: read_features_file(&args.features)?,
            liveness: args.liveness,
            device_id: args.device,
            face_model: args.face_model,
        },
        false,
    )?;
    std::fs::write(&args.out, &sealed.body)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("{}", sealed.header.rid);
    Ok(())
}

/// `client post`: any program's envelope, signed as this client, its answer verified.
fn post(args: PostArgs) -> anyhow::Result<()> {
    let client =
        connect(&args.url, args.pin_keys.as_deref())?.with_credential(credential(&args.access)?);
    let body = read(&args.request)?;
    let method = if args.path == "/v1/users" {
        "DELETE"
    } else {
        "POST"
    };
    let raw = client.request_raw(method, &args.path, &body)?;
    if let Some(file) = args.save_answer {
        std::fs::write(&file, &raw.body)
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    // Any route's answer: printed as signed.
    let payload: serde_json::Value = verify_answer_to(&client.keys().identity, &body, &raw)?;
    print_verified(&payload, &client.keys().identity)
}

/// `client verify-answer`: an answer file to an envelope file, offline.
fn verify_answer(args: VerifyAnswerArgs) -> anyhow::Result<()> {
    let pem = String::from_utf8(read(&args.identity)?)
        .with_context(|| format!("{} is not a PEM file", args.identity.display()))?;
    let identity = ServerKeys::identity_from_pem(&pem)?;
    let raw = RawResponse {
        status: 200,
        body: read(&args.answer)?,
    };
    let payload: serde_json::Value = verify_answer_to(&identity, &read(&args.request)?, &raw)
        .map_err(|e| CliError::CheckFailed(e.to_string()))?;
    print_verified(&payload, &identity)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Prints a verified payload, and on stderr what was verified.
fn print_verified(
    payload: &impl serde::Serialize,
    identity: &crate::crypto::sm2::PublicKey,
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
