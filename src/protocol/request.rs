//! The request envelope: `{"protected","encrypted_key","iv","ciphertext","tag"}`.
//!
//! `protected` is base64url(JSON header); `encrypted_key` is the 16-byte SM4 session key
//! encrypted with SM2 to the service's encryption key (GM/T 0009 DER); `ciphertext`/`tag` are
//! SM4-GCM of the plaintext under that key with `iv` and AAD = ASCII(`protected`).

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{b64_decode, b64_encode};
use crate::crypto::aead::{KEY_LEN, NONCE_LEN, Sm4Gcm, TAG_LEN, random_nonce};
use crate::crypto::secret::SecretBytes;
use crate::crypto::sm2::{DecryptionKey, PublicKey};
use crate::crypto::{CryptoError, random_array};

pub const ALG_SM2: &str = "SM2";
pub const ENC_SM4_GCM: &str = "SM4-GCM";
/// A request id carries at least this many random bytes.
pub const MIN_RID_BYTES: usize = 16;
pub const MAX_RID_BYTES: usize = 64;
/// An SM2 ciphertext of a 16-byte key is 16 + 32 (C3) + two coordinates + DER overhead.
pub const MAX_ENCRYPTED_KEY_BYTES: usize = 160;
pub const MAX_PROTECTED_BYTES: usize = 1024;

/// Why an envelope was refused. Each maps to one stable HTTP error code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error(
        "the body is not a JSON envelope with exactly the fields protected, encrypted_key, iv, ciphertext, tag"
    )]
    MalformedEnvelope,
    #[error("field `{0}` is not base64url without padding")]
    BadBase64(&'static str),
    #[error("field `{field}` has the wrong length: {detail}")]
    BadLength {
        field: &'static str,
        detail: &'static str,
    },
    #[error("the protected header is not the expected JSON object: {0}")]
    BadHeader(&'static str),
    #[error(
        "unsupported algorithm: alg must be \"SM2\", enc \"SM4-GCM\" and ans absent or \"SM4-GCM\""
    )]
    UnsupportedAlgorithm,
    #[error("the session key or the payload could not be decrypted and authenticated")]
    DecryptionFailed,
}

/// The wire object, exactly as sent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope {
    protected: String,
    encrypted_key: String,
    iv: String,
    ciphertext: String,
    tag: String,
}

/// The protected header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProtectedHeader {
    pub alg: String,
    pub enc: String,
    pub kid: String,
    pub rid: String,
    pub iat: i64,
    /// `"SM4-GCM"`: encrypt the answer to this request's session key (docs/PROTOCOL.md §3a;
    /// protocol v1.1). Absent: a signed answer readable by anyone on the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ans: Option<String>,
}

impl ProtectedHeader {
    /// A header for a new request to the key `kid`, with a fresh 16-byte request id.
    pub fn new(kid: &str, iat: i64) -> Result<Self, CryptoError> {
        Ok(Self {
            alg: ALG_SM2.into(),
            enc: ENC_SM4_GCM.into(),
            kid: kid.into(),
            rid: b64_encode(&random_array::<MIN_RID_BYTES>()?),
            iat,
            ans: None,
        })
    }

    /// The same, asking for an encrypted answer.
    pub fn with_encrypted_answer(mut self) -> Self {
        self.ans = Some(super::answer::ANS_SM4_GCM.into());
        self
    }

    /// Whether the client asked for an encrypted answer.
    pub fn wants_encrypted_answer(&self) -> bool {
        self.ans.is_some()
    }
}

/// A parsed envelope: every field decoded and length-checked, nothing decrypted yet.
#[derive(Debug)]
pub struct RequestEnvelope {
    protected: String,
    pub header: ProtectedHeader,
    encrypted_key: Vec<u8>,
    iv: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
    tag: [u8; TAG_LEN],
}

fn decode_field(value: &str, field: &'static str) -> Result<Vec<u8>, EnvelopeError> {
    b64_decode(value).ok_or(EnvelopeError::BadBase64(field))
}

fn decode_fixed<const N: usize>(
    value: &str,
    field: &'static str,
    detail: &'static str,
) -> Result<[u8; N], EnvelopeError> {
    decode_field(value, field)?
        .try_into()
        .map_err(|_| EnvelopeError::BadLength { field, detail })
}

impl RequestEnvelope {
    /// Parses and checks the shape of an envelope. The ciphertext size is bounded by the
    /// caller's body limit.
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        let wire: WireEnvelope =
            serde_json::from_slice(body).map_err(|_| EnvelopeError::MalformedEnvelope)?;
        if wire.protected.len() > MAX_PROTECTED_BYTES {
            return Err(EnvelopeError::BadLength {
                field: "protected",
                detail: "at most 1024 characters",
            });
        }
        let header_json = decode_field(&wire.protected, "protected")?;
        let header: ProtectedHeader = serde_json::from_slice(&header_json).map_err(|_| {
            EnvelopeError::BadHeader("it must hold exactly alg, enc, kid, rid, iat (and ans)")
        })?;
        if header.alg != ALG_SM2
            || header.enc != ENC_SM4_GCM
            || header
                .ans
                .as_deref()
                .is_some_and(|a| a != super::answer::ANS_SM4_GCM)
        {
            return Err(EnvelopeError::UnsupportedAlgorithm);
        }
        let rid =
            b64_decode(&header.rid).ok_or(EnvelopeError::BadHeader("rid is not base64url"))?;
        if !(MIN_RID_BYTES..=MAX_RID_BYTES).contains(&rid.len()) {
            return Err(EnvelopeError::BadHeader("rid must carry 16 to 64 bytes"));
        }
        let encrypted_key = decode_field(&wire.encrypted_key, "encrypted_key")?;
        if encrypted_key.len() > MAX_ENCRYPTED_KEY_BYTES {
            return Err(EnvelopeError::BadLength {
                field: "encrypted_key",
                detail: "an SM2 ciphertext of a 16-byte key",
            });
        }
        Ok(Self {
            iv: decode_fixed(&wire.iv, "iv", "12 bytes")?,
            tag: decode_fixed(&wire.tag, "tag", "16 bytes")?,
            ciphertext: decode_field(&wire.ciphertext, "ciphertext")?,
            encrypted_key,
            header,
            protected: wire.protected,
        })
    }

    /// Unwraps the session key with `key`, then decrypts and authenticates the payload.
    /// The session key is wiped when this returns; the plaintext is wiped when dropped.
    pub fn open(&self, key: &DecryptionKey) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let session_key = self.unwrap_session_key(key)?;
        self.open_payload(&session_key)
    }

    /// The wrapped session key: GM/T 0009 DER of an SM2 ciphertext of 16 bytes.
    pub fn encrypted_key(&self) -> &[u8] {
        &self.encrypted_key
    }

    /// The SM2 half of [`RequestEnvelope::open`]: the session key, wiped on drop.
    pub fn unwrap_session_key(
        &self,
        key: &DecryptionKey,
    ) -> Result<SecretBytes<KEY_LEN>, EnvelopeError> {
        key.decrypt_der_exact(&self.encrypted_key)
            .map_err(|_| EnvelopeError::DecryptionFailed)
    }

    /// The SM4-GCM half of [`RequestEnvelope::open`]: the authenticated plaintext, wiped on
    /// drop (the envelope keeps its ciphertext).
    pub fn open_payload(
        &self,
        session_key: &SecretBytes<KEY_LEN>,
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let mut buffer = Zeroizing::new(self.ciphertext.clone());
        Sm4Gcm::new(session_key)
            .open_in_place(&self.iv, self.protected.as_bytes(), &mut buffer, &self.tag)
            .map_err(|_| EnvelopeError::DecryptionFailed)?;
        Ok(buffer)
    }
}

/// Builds an envelope (the client side): a fresh session key wrapped to `recipient`, the
/// plaintext sealed under it. Returns the JSON body.
pub fn seal(
    recipient: &PublicKey,
    header: &ProtectedHeader,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    seal_keeping_key(recipient, header, plaintext).map(|(body, _)| body)
}

/// [`seal`], also returning the session key (wiped on drop), which opens an encrypted
/// answer (`protocol::answer`).
pub fn seal_keeping_key(
    recipient: &PublicKey,
    header: &ProtectedHeader,
    plaintext: &[u8],
) -> Result<(Vec<u8>, SecretBytes<KEY_LEN>), CryptoError> {
    let protected = b64_encode(&serde_json::to_vec(header).expect("a header always serialises"));
    let session_key = SecretBytes::<KEY_LEN>::random()?;
    let encrypted_key = recipient.encrypt_der(session_key.expose())?;
    let iv = random_nonce()?;
    let mut buffer = Zeroizing::new(plaintext.to_vec());
    let tag = Sm4Gcm::new(&session_key).seal_in_place(&iv, protected.as_bytes(), &mut buffer)?;
    let wire = WireEnvelope {
        encrypted_key: b64_encode(&encrypted_key),
        iv: b64_encode(&iv),
        ciphertext: b64_encode(&buffer),
        tag: b64_encode(&tag),
        protected,
    };
    Ok((
        serde_json::to_vec(&wire).expect("an envelope always serialises"),
        session_key,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn sample() -> (DecryptionKey, ProtectedHeader, Vec<u8>) {
        let key = DecryptionKey::generate().unwrap();
        let header = ProtectedHeader::new(&key.public().kid(), 1_700_000_000).unwrap();
        let body = seal(key.public(), &header, b"{\"hello\":1}").unwrap();
        (key, header, body)
    }

    fn mutate(body: &[u8], field: &str, f: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut value: Value = serde_json::from_slice(body).unwrap();
        f(&mut value[field]);
        serde_json::to_vec(&value).unwrap()
    }

    fn flip_b64(value: &mut Value) {
        let mut bytes = b64_decode(value.as_str().unwrap()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        *value = json!(b64_encode(&bytes));
    }

    #[test]
    fn round_trip() {
        let (key, header, body) = sample();
        let envelope = RequestEnvelope::parse(&body).unwrap();
        assert_eq!(envelope.header, header);
        assert_eq!(&envelope.open(&key).unwrap()[..], b"{\"hello\":1}");
    }

    #[test]
    fn wrong_key_fails() {
        let (_, _, body) = sample();
        let other = DecryptionKey::generate().unwrap();
        let envelope = RequestEnvelope::parse(&body).unwrap();
        assert_eq!(
            envelope.open(&other).unwrap_err(),
            EnvelopeError::DecryptionFailed
        );
    }

    #[test]
    fn any_tampered_field_fails_to_open() {
        let (key, _, body) = sample();
        for field in ["encrypted_key", "ciphertext", "tag", "iv"] {
            let tampered = mutate(&body, field, flip_b64);
            let envelope = RequestEnvelope::parse(&tampered).unwrap();
            assert_eq!(
                envelope.open(&key).unwrap_err(),
                EnvelopeError::DecryptionFailed,
                "{field}"
            );
        }
    }

    #[test]
    fn tampered_header_fails_as_wrong_aad() {
        let (key, mut header, body) = sample();
        header.iat += 1;
        let protected = b64_encode(&serde_json::to_vec(&header).unwrap());
        let tampered = mutate(&body, "protected", |v| *v = json!(protected));
        let envelope = RequestEnvelope::parse(&tampered).unwrap();
        assert_eq!(
            envelope.open(&key).unwrap_err(),
            EnvelopeError::DecryptionFailed
        );
    }

    #[test]
    fn shape_errors_are_typed() {
        let (_, _, body) = sample();
        assert_eq!(
            RequestEnvelope::parse(b"not json").unwrap_err(),
            EnvelopeError::MalformedEnvelope
        );
        let extra = mutate(&body, "extra", |v| *v = json!(1));
        assert_eq!(
            RequestEnvelope::parse(&extra).unwrap_err(),
            EnvelopeError::MalformedEnvelope
        );
        let bad = mutate(&body, "iv", |v| *v = json!("a+b/"));
        assert_eq!(
            RequestEnvelope::parse(&bad).unwrap_err(),
            EnvelopeError::BadBase64("iv")
        );
        let short = mutate(&body, "tag", |v| *v = json!(b64_encode(&[0u8; 15])));
        assert!(matches!(
            RequestEnvelope::parse(&short).unwrap_err(),
            EnvelopeError::BadLength { field: "tag", .. }
        ));
    }

    #[test]
    fn header_errors_are_typed() {
        let (key, header, body) = sample();
        let with_header = |h: Value| {
            let protected = b64_encode(&serde_json::to_vec(&h).unwrap());
            mutate(&body, "protected", |v| *v = json!(protected))
        };
        let mut wrong_alg = serde_json::to_value(&header).unwrap();
        wrong_alg["alg"] = json!("RSA-OAEP");
        assert_eq!(
            RequestEnvelope::parse(&with_header(wrong_alg)).unwrap_err(),
            EnvelopeError::UnsupportedAlgorithm
        );
        let mut short_rid = serde_json::to_value(&header).unwrap();
        short_rid["rid"] = json!(b64_encode(&[1u8; 8]));
        assert!(matches!(
            RequestEnvelope::parse(&with_header(short_rid)).unwrap_err(),
            EnvelopeError::BadHeader(_)
        ));
        let missing = json!({"alg": "SM2", "enc": "SM4-GCM", "kid": key.public().kid()});
        assert!(matches!(
            RequestEnvelope::parse(&with_header(missing)).unwrap_err(),
            EnvelopeError::BadHeader(_)
        ));
    }
}
