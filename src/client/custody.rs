//! A custodian's side of key custody (`protocol::custody`): read the service's state,
//! initialise an empty service, send a share. The client must have attested the service
//! ([`Client::attest`]) under the custodian's own policy: shares are sealed to the
//! encryption key that attested identity certified, and every answer is checked against it.

use serde::de::DeserializeOwned;

use super::error::untrusted;
use super::transport::{get_ok, read};
use super::{Client, ClientError, Distrust};
use crate::crypto::sm2::{DecryptionKey, IdentityKey};
use crate::protocol::custody::{
    Approval, CustodyStatus, INIT_TYP, InitReply, Purpose, REKEY_TYP, RekeyReply, ShareFile,
    UNSEAL_TYP, UnsealReply, UnsealRequest, attempt_bytes,
};
use crate::protocol::response::{SignedResponse, verify};

/// `GET /v1/custody` of the service at `base_url`, unauthenticated (what an operator's
/// dashboard reads; every decision is taken on signed answers).
pub fn custody_status(base_url: &str) -> Result<CustodyStatus, ClientError> {
    let body = get_ok(
        &super::transport::agent(),
        base_url.trim_end_matches('/'),
        "/v1/custody",
    )?;
    serde_json::from_slice(&body)
        .map_err(|e| ClientError::Http(format!("GET /v1/custody: not a custody status: {e}")))
}

impl Client {
    /// `GET /v1/custody`: sealed or not, the attempt, who has sent a share.
    pub fn custody_status(&self) -> Result<CustodyStatus, ClientError> {
        custody_status(&self.base_url)
    }

    /// Asks an empty, sealed service to make the master key and split it among its
    /// custodians; returns every custodian's share file (each opens only with its
    /// custodian's key), checked to be signed by the attested identity.
    pub fn custody_init(
        &self,
        custodian: &str,
        key: &IdentityKey,
    ) -> Result<InitReply, ClientError> {
        let attempt = self.current_attempt()?;
        let request = Approval::sign(Purpose::Init, custodian, &attempt, key)
            .map_err(|e| ClientError::Keys(e.to_string()))?;
        let reply: InitReply = self.post_signed("/v1/custody/init", &request)?;
        if reply.typ != INIT_TYP || reply.attempt != request.attempt {
            return Err(untrusted(
                Distrust::Payload,
                "the answer is not an init answer for this attempt",
            ));
        }
        Ok(reply)
    }

    /// Opens `share` with the custodian's key (`signing` and `decrypting` are the same SM2
    /// key in its two roles), seals it to the service's attested encryption key for the
    /// current attempt, and sends it.
    pub fn custody_unseal(
        &self,
        share: &ShareFile,
        signing: &IdentityKey,
        decrypting: &DecryptionKey,
    ) -> Result<UnsealReply, ClientError> {
        let plain = share
            .open(decrypting)
            .map_err(|e| ClientError::Keys(format!("the share file: {e}")))?;
        let attempt = self.current_attempt()?;
        let request = UnsealRequest::seal(
            &share.custodian,
            &attempt,
            &plain,
            &self.keys().encryption,
            signing,
        )
        .map_err(|e| ClientError::Keys(e.to_string()))?;
        let reply: UnsealReply = self.post_signed("/v1/custody/unseal", &request)?;
        if reply.typ != UNSEAL_TYP
            || reply.attempt != request.attempt
            || reply.custodian != share.custodian
        {
            return Err(untrusted(
                Distrust::Payload,
                "the answer is not an unseal answer for this share and attempt",
            ));
        }
        Ok(reply)
    }

    /// Approves a new master key; the k-th approval's answer carries the new key's share
    /// files (each opens only with its custodian's key).
    pub fn custody_rekey(
        &self,
        custodian: &str,
        key: &IdentityKey,
    ) -> Result<RekeyReply, ClientError> {
        let attempt = self.current_attempt()?;
        let request = Approval::sign(Purpose::Rekey, custodian, &attempt, key)
            .map_err(|e| ClientError::Keys(e.to_string()))?;
        let reply: RekeyReply = self.post_signed("/v1/custody/rekey", &request)?;
        if reply.typ != REKEY_TYP
            || reply.attempt != request.attempt
            || reply.custodian != custodian
        {
            return Err(untrusted(
                Distrust::Payload,
                "the answer is not a rekey answer for this approval and attempt",
            ));
        }
        Ok(reply)
    }

    /// The service's current attempt (of the unseal while sealed, of the next rekey once
    /// unsealed: a message for the wrong one is refused by the service).
    fn current_attempt(&self) -> Result<[u8; 32], ClientError> {
        attempt_bytes(&self.custody_status()?.attempt).map_err(|e| ClientError::Http(e.to_string()))
    }

    /// POSTs `request` as JSON; a refusal becomes [`ClientError::Refused`], an answer is
    /// accepted only when signed by the attested identity.
    fn post_signed<R: DeserializeOwned>(
        &self,
        path: &str,
        request: &impl serde::Serialize,
    ) -> Result<R, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Http(e.to_string()))?;
        let raw = read(
            self.agent
                .post(format!("{}{path}", self.base_url))
                .header("content-type", "application/json")
                .send(&body[..])
                .map_err(|e| ClientError::Http(e.to_string()))?,
        )?;
        if raw.status != 200 {
            return Err(super::check::refusal(&raw));
        }
        let signed: SignedResponse = serde_json::from_slice(&raw.body)
            .map_err(|_| untrusted(Distrust::Envelope, "not a signed response"))?;
        let payload = verify(&self.keys().identity, &signed)
            .map_err(|e| untrusted(Distrust::Signature, e))?;
        serde_json::from_slice(&payload).map_err(|e| untrusted(Distrust::Payload, e))
    }
}
