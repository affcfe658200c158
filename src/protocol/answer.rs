//! Encrypted answers (docs/PROTOCOL.md §3a): the signed answer, encrypted to the client that
//! built the request, so that the host in between cannot read it (an identification names
//! users). Sign, then encrypt: the signature is inside, so only the client sees it too — a
//! signature over a readable payload would let the host test guesses of it (which of a few
//! users, which decision), since SM2 verification needs only the public key.
//!
//! ```text
//! K_ans     = HKDF-SM3(ikm = session key K of the request, salt = "",
//!                      info = "tee-risk/answer/v1" ‖ 0x00 ‖ rid, 16 bytes)
//! protected = base64url({"enc":"SM4-GCM","rid":<the request's rid>})
//! ciphertext ‖ tag = SM4-GCM(K_ans, iv (12 random bytes), the signed answer's JSON,
//!                            AAD = ASCII(protected))
//! body      = {"protected","iv","ciphertext","tag"}
//! ```
//! Only the holder of K can derive K_ans: the client that drew it, and the service, which
//! wipes both once the answer is sealed.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{b64_decode, b64_encode};
use crate::crypto::CryptoError;
use crate::crypto::aead::{KEY_LEN, NONCE_LEN, Sm4Gcm, TAG_LEN, random_nonce};
use crate::crypto::kdf::hkdf_sm3;
use crate::crypto::secret::SecretBytes;

/// The value of the request header's `ans` member that asks for an encrypted answer.
pub const ANS_SM4_GCM: &str = "SM4-GCM";
const INFO_LABEL: &[u8] = b"tee-risk/answer/v1";

/// An encrypted answer, as sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EncryptedAnswer {
    pub protected: String,
    pub iv: String,
    pub ciphertext: String,
    pub tag: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerHeader {
    enc: String,
    rid: String,
}

/// Why an encrypted answer could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the encrypted answer is malformed")]
    Malformed,
    #[error("the encrypted answer is for another request")]
    OtherRequest,
    #[error("the encrypted answer does not decrypt under this request's key")]
    Decrypt,
}

/// K_ans for the request `rid` whose session key is `session_key`.
pub fn answer_key(
    session_key: &SecretBytes<KEY_LEN>,
    rid: &str,
) -> Result<SecretBytes<KEY_LEN>, CryptoError> {
    let mut info = INFO_LABEL.to_vec();
    info.push(0);
    info.extend_from_slice(rid.as_bytes());
    let mut key = SecretBytes::zeroed();
    hkdf_sm3(session_key.expose(), b"", &info, key.expose_mut())?;
    Ok(key)
}

/// Encrypts `signed_json` (a signed answer's JSON) for the client of request `rid`.
pub fn seal_answer(
    session_key: &SecretBytes<KEY_LEN>,
    rid: &str,
    signed_json: &[u8],
) -> Result<EncryptedAnswer, CryptoError> {
    seal_answer_with_iv(session_key, rid, signed_json, &random_nonce()?)
}

/// [`seal_answer`] with a given IV (the test vector; never reuse an IV under one key).
pub fn seal_answer_with_iv(
    session_key: &SecretBytes<KEY_LEN>,
    rid: &str,
    signed_json: &[u8],
    iv: &[u8; NONCE_LEN],
) -> Result<EncryptedAnswer, CryptoError> {
    let key = answer_key(session_key, rid)?;
    let header = AnswerHeader {
        enc: ANS_SM4_GCM.into(),
        rid: rid.into(),
    };
    let protected = b64_encode(&serde_json::to_vec(&header).expect("a header serialises"));
    let mut buffer = Zeroizing::new(signed_json.to_vec());
    let tag = Sm4Gcm::new(&key).seal_in_place(iv, protected.as_bytes(), &mut buffer)?;
    Ok(EncryptedAnswer {
        protected,
        iv: b64_encode(iv),
        ciphertext: b64_encode(&buffer),
        tag: b64_encode(&tag),
    })
}

/// The client side: checks that the answer is for `rid` and decrypts it; the result is the
/// signed answer's JSON, still to be verified (`response::verify`).
pub fn open_answer(
    session_key: &SecretBytes<KEY_LEN>,
    rid: &str,
    answer: &EncryptedAnswer,
) -> Result<Zeroizing<Vec<u8>>, AnswerError> {
    let header: AnswerHeader = b64_decode(&answer.protected)
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(AnswerError::Malformed)?;
    if header.enc != ANS_SM4_GCM {
        return Err(AnswerError::Malformed);
    }
    if header.rid != rid {
        return Err(AnswerError::OtherRequest);
    }
    let iv: [u8; NONCE_LEN] = b64_decode(&answer.iv)
        .and_then(|v| v.try_into().ok())
        .ok_or(AnswerError::Malformed)?;
    let tag: [u8; TAG_LEN] = b64_decode(&answer.tag)
        .and_then(|v| v.try_into().ok())
        .ok_or(AnswerError::Malformed)?;
    let mut buffer = Zeroizing::new(b64_decode(&answer.ciphertext).ok_or(AnswerError::Malformed)?);
    let key = answer_key(session_key, rid).map_err(|_| AnswerError::Decrypt)?;
    Sm4Gcm::new(&key)
        .open_in_place(&iv, answer.protected.as_bytes(), &mut buffer, &tag)
        .map_err(|_| AnswerError::Decrypt)?;
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_requests_session_key_opens_its_answer() {
        let key = SecretBytes::<KEY_LEN>::from_slice(&[7; 16]).unwrap();
        let sealed = seal_answer(&key, "rid-1", b"{\"signed\":1}").unwrap();
        assert_eq!(
            &open_answer(&key, "rid-1", &sealed).unwrap()[..],
            b"{\"signed\":1}"
        );
        assert_eq!(
            open_answer(&key, "rid-2", &sealed),
            Err(AnswerError::OtherRequest)
        );
        let other = SecretBytes::<KEY_LEN>::from_slice(&[8; 16]).unwrap();
        assert_eq!(
            open_answer(&other, "rid-1", &sealed),
            Err(AnswerError::Decrypt)
        );
        let mut tampered = sealed.clone();
        tampered.ciphertext = b64_encode(b"{\"signed\":2}");
        assert_eq!(
            open_answer(&key, "rid-1", &tampered),
            Err(AnswerError::Decrypt)
        );
        // The rid in the protected header is authenticated: swapping it fails too.
        let mut moved = seal_answer(&key, "rid-2", b"x").unwrap();
        moved.protected = sealed.protected.clone();
        assert!(open_answer(&key, "rid-1", &moved).is_err());
    }
}
