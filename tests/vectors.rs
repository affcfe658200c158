//! Official test vectors, each with its source, and a failing twin for each passing case.

use sm4::Sm4;
use sm4::cipher::{Array, BlockCipherEncrypt, KeyInit};
use tee_risk::internals::crypto::aead::Sm4Gcm;
use tee_risk::internals::crypto::secret::SecretBytes;
use tee_risk::internals::crypto::sm2::{DEFAULT_DISTID, DecryptionKey, IdentityKey, PublicKey};
use tee_risk::internals::crypto::{CryptoError, sm3};

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text.split_whitespace().collect::<String>()).expect("valid hex in a test vector")
}

// ---- SM3: GB/T 32905-2016, Appendix A ----

#[test]
fn sm3_gbt32905_example_1_abc() {
    assert_eq!(
        sm3(b"abc").to_vec(),
        unhex("66c7f0f4 62eeedd9 d1f2d46b dc10e4e2 4167c487 5cf2f7a2 297da02b 8f4ba8e0")
    );
    assert_ne!(sm3(b"abd").to_vec(), sm3(b"abc").to_vec());
}

#[test]
fn sm3_gbt32905_example_2_64_bytes() {
    let message = b"abcd".repeat(16);
    assert_eq!(
        sm3(&message).to_vec(),
        unhex("debe9ff9 2275b8a1 38604889 c18e5a4d 6fdb70e5 387e5765 293dcba3 9c0c5732")
    );
}

// ---- SM4: GB/T 32907-2016, Appendix A ----

fn sm4_encrypt_block(key: &[u8], block: &mut [u8; 16]) {
    let cipher = Sm4::new_from_slice(key).expect("16-byte key");
    let mut b = Array::from(*block);
    cipher.encrypt_block(&mut b);
    block.copy_from_slice(&b);
}

#[test]
fn sm4_gbt32907_example_1() {
    let key = unhex("0123456789abcdeffedcba9876543210");
    let mut block: [u8; 16] = key.clone().try_into().unwrap();
    sm4_encrypt_block(&key, &mut block);
    assert_eq!(block.to_vec(), unhex("681edf34d206965e86b3e94f536e4246"));
}

#[test]
fn sm4_gbt32907_example_2_one_million_rounds() {
    let key = unhex("0123456789abcdeffedcba9876543210");
    let cipher = Sm4::new_from_slice(&key).unwrap();
    let mut block = Array::from(<[u8; 16]>::try_from(key.as_slice()).unwrap());
    for _ in 0..1_000_000 {
        cipher.encrypt_block(&mut block);
    }
    assert_eq!(block.to_vec(), unhex("595298c7c6fd271f0402f804c33d3f66"));
}

// ---- SM4-GCM: RFC 8998, Appendix A.1 ----

struct GcmVector {
    key: Vec<u8>,
    iv: [u8; 12],
    aad: Vec<u8>,
    plaintext: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: [u8; 16],
}

fn rfc8998_a1() -> GcmVector {
    GcmVector {
        key: unhex("0123456789ABCDEFFEDCBA9876543210"),
        iv: unhex("00001234567800000000ABCD").try_into().unwrap(),
        aad: unhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2"),
        plaintext: unhex(
            "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD
             EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA",
        ),
        ciphertext: unhex(
            "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735
             D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D",
        ),
        tag: unhex("83DE3541E4C2B58177E065A9BF7B62EC")
            .try_into()
            .unwrap(),
    }
}

fn gcm(key: &[u8]) -> Sm4Gcm {
    Sm4Gcm::new(&SecretBytes::from_slice(key).unwrap())
}

#[test]
fn sm4_gcm_rfc8998_a1_seal_and_open() {
    let v = rfc8998_a1();
    let mut buffer = v.plaintext.clone();
    let tag = gcm(&v.key)
        .seal_in_place(&v.iv, &v.aad, &mut buffer)
        .unwrap();
    assert_eq!(buffer, v.ciphertext);
    assert_eq!(tag, v.tag);
    gcm(&v.key)
        .open_in_place(&v.iv, &v.aad, &mut buffer, &v.tag)
        .unwrap();
    assert_eq!(buffer, v.plaintext);
}

#[test]
fn sm4_gcm_rfc8998_a1_wrong_tag_fails() {
    let v = rfc8998_a1();
    let mut tag = v.tag;
    tag[15] ^= 1;
    let mut buffer = v.ciphertext.clone();
    assert_eq!(
        gcm(&v.key).open_in_place(&v.iv, &v.aad, &mut buffer, &tag),
        Err(CryptoError::Authentication)
    );
    assert_eq!(
        buffer, v.ciphertext,
        "nothing is decrypted when the tag fails"
    );
}

#[test]
fn sm4_gcm_rfc8998_a1_wrong_aad_fails() {
    let v = rfc8998_a1();
    let mut aad = v.aad.clone();
    aad[0] ^= 1;
    let mut buffer = v.ciphertext.clone();
    assert_eq!(
        gcm(&v.key).open_in_place(&v.iv, &aad, &mut buffer, &v.tag),
        Err(CryptoError::Authentication)
    );
}

#[test]
fn sm4_gcm_rfc8998_a1_tampered_ciphertext_fails() {
    let v = rfc8998_a1();
    let mut buffer = v.ciphertext.clone();
    buffer[0] ^= 1;
    assert!(
        gcm(&v.key)
            .open_in_place(&v.iv, &v.aad, &mut buffer, &v.tag)
            .is_err()
    );
}

// ---- SM2: GB/T 32918.5-2017, Appendix A (recommended curve, ID 1234567812345678) ----

const SM2_PRIVATE: &str = "3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8";
const SM2_PUBLIC_X: &str = "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020";
const SM2_PUBLIC_Y: &str = "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13";
const SM2_SIG_R: &str = "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3";
const SM2_SIG_S: &str = "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA";
/// Encryption of "encryption standard" with k = 59276E27…BC21, as GM/T 0009 DER.
const SM2_CIPHERTEXT_DER: &str =
    "307c022004EBFC718E8D1798620432268E77FEB6415E2EDE0E073C0F4F640ECD2E149A73
    022100E858F9D81E5430A57B36DAAB8F950A3C64E6EE6A63094D99283AFF767E124DF0
    042059983C18F809E262923C53AEC295D30383B54E39D609D160AFCB1908D0BD8766
    041321886CA989CA9C7D58087307CA93092D651EFA";

fn der_integer(bytes: &[u8]) -> Vec<u8> {
    let mut body: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
    if body.first().is_none_or(|&b| b & 0x80 != 0) {
        body.insert(0, 0);
    }
    let mut out = vec![0x02, body.len() as u8];
    out.extend(body);
    out
}

fn der_signature(r: &[u8], s: &[u8]) -> Vec<u8> {
    let mut body = der_integer(r);
    body.extend(der_integer(s));
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

fn official_scalar() -> SecretBytes<32> {
    SecretBytes::from_slice(&unhex(SM2_PRIVATE)).unwrap()
}

#[test]
fn sm2_gbt32918_public_key_derivation() {
    let key = IdentityKey::from_scalar(&official_scalar()).unwrap();
    assert_eq!(key.public().x(), unhex(SM2_PUBLIC_X).as_slice());
    assert_eq!(key.public().y(), unhex(SM2_PUBLIC_Y).as_slice());
    assert_eq!(DEFAULT_DISTID, "1234567812345678");
}

#[test]
fn sm2_gbt32918_signature_verifies_and_fails_when_changed() {
    let public = PublicKey::from_xy(&unhex(SM2_PUBLIC_X), &unhex(SM2_PUBLIC_Y)).unwrap();
    let signature = der_signature(&unhex(SM2_SIG_R), &unhex(SM2_SIG_S));
    public
        .verify(b"message digest", &signature)
        .expect("official signature verifies");
    assert_eq!(
        public.verify(b"message digesT", &signature),
        Err(CryptoError::Signature)
    );
    let mut s = unhex(SM2_SIG_S);
    s[31] ^= 1;
    assert_eq!(
        public.verify(b"message digest", &der_signature(&unhex(SM2_SIG_R), &s)),
        Err(CryptoError::Signature)
    );
}

#[test]
fn sm2_gbt32918_ciphertext_decrypts() {
    let key = DecryptionKey::from_scalar(&official_scalar()).unwrap();
    let plain = key.decrypt_der(&unhex(SM2_CIPHERTEXT_DER)).unwrap();
    assert_eq!(plain.as_slice(), b"encryption standard");
}

#[test]
fn sm2_tampered_c3_fails() {
    let key = DecryptionKey::from_scalar(&official_scalar()).unwrap();
    let mut ciphertext = unhex(SM2_CIPHERTEXT_DER);
    // C3 is the 32-byte OCTET STRING after the two INTEGERs: header 30 7c, x (2+32), y (2+33),
    // then 04 20 and the hash.
    let c3_start = 2 + 34 + 35 + 2;
    ciphertext[c3_start] ^= 1;
    assert_eq!(
        key.decrypt_der(&ciphertext).err(),
        Some(CryptoError::Decrypt)
    );
    let mut c2_tampered = unhex(SM2_CIPHERTEXT_DER);
    let last = c2_tampered.len() - 1;
    c2_tampered[last] ^= 1;
    assert_eq!(
        key.decrypt_der(&c2_tampered).err(),
        Some(CryptoError::Decrypt)
    );
}

#[test]
fn sm2_c1_not_on_curve_fails() {
    // An invalid-curve attack sends C1 off the curve; decoding must refuse it before the
    // private key touches it.
    let key = DecryptionKey::from_scalar(&official_scalar()).unwrap();
    let mut ciphertext = unhex(SM2_CIPHERTEXT_DER);
    let y_last = 2 + 34 + 35 - 1;
    ciphertext[y_last] ^= 1;
    assert_eq!(
        key.decrypt_der(&ciphertext).err(),
        Some(CryptoError::Decrypt)
    );
    // The same opaque error as a C3 mismatch, so show where it comes from: the DER decoding
    // (which builds C1 as a curve point) refuses the tampered ciphertext, before any use of
    // the private key, while it accepts the official one and one with a wrong C3.
    use sm2::pkcs8::der::Decode;
    type Cipher<'a> = sm2::pke::Cipher<'a, sm2::Sm2, ::sm3::Sm3>;
    assert!(Cipher::from_der(&unhex(SM2_CIPHERTEXT_DER)).is_ok());
    assert!(
        Cipher::from_der(&ciphertext).is_err(),
        "C1 off the curve is refused at decoding"
    );
    let mut c3_wrong = unhex(SM2_CIPHERTEXT_DER);
    let c3_first = 2 + 34 + 35 + 2;
    c3_wrong[c3_first] ^= 1;
    assert!(Cipher::from_der(&c3_wrong).is_ok(), "a wrong C3 decodes");
    assert_eq!(key.decrypt_der(&c3_wrong).err(), Some(CryptoError::Decrypt));
}

#[test]
fn sm2_session_key_length_is_enforced() {
    let key = DecryptionKey::from_scalar(&official_scalar()).unwrap();
    // The official ciphertext carries 19 bytes, not a 16-byte session key.
    assert!(
        key.decrypt_der_exact::<16>(&unhex(SM2_CIPHERTEXT_DER))
            .is_err()
    );
    let wrapped = key.public().encrypt_der(&[7u8; 16]).unwrap();
    assert_eq!(
        key.decrypt_der_exact::<16>(&wrapped).unwrap().expose(),
        &[7u8; 16]
    );
}

#[test]
fn sm2_round_trips_with_default_id() {
    let identity = IdentityKey::generate().unwrap();
    let signature = identity.sign_der(&[b"hello ", b"world"]).unwrap();
    identity
        .public()
        .verify(b"hello world", &signature)
        .unwrap();
    assert!(
        identity
            .public()
            .verify(b"hello world!", &signature)
            .is_err()
    );

    let decryption = DecryptionKey::generate().unwrap();
    let message = [0u8, 0, 1, 2, 3];
    let ciphertext = decryption.public().encrypt_der(&message).unwrap();
    assert_eq!(
        decryption.decrypt_der(&ciphertext).unwrap().as_slice(),
        &message,
        "leading zeros survive"
    );
    assert!(
        DecryptionKey::generate()
            .unwrap()
            .decrypt_der(&ciphertext)
            .is_err()
    );
}

/// The worked example of a client request signature in docs/PROTOCOL.md, read from the
/// document itself, so that the text a client author follows cannot drift from the code:
/// the key pair, SM3 of the body, the exact signed bytes, and a signature that the service's
/// own check accepts (and refuses for any other path or body).
#[test]
fn the_client_signature_example_in_protocol_md_holds() {
    use tee_risk::internals::service::access::{ClientRegistry, Permission};
    use tee_risk::protocol::client_auth::signed_message;

    let field = protocol_md_vector("client-signature-vector");
    let key = IdentityKey::from_hex(&field("private key (hex)")).unwrap();
    assert_eq!(
        hex::encode(key.public().sec1()),
        field("public key (SEC1 hex)")
    );
    let (id, method, path) = (field("client id"), field("method"), field("path"));
    let body = field("body").into_bytes();
    assert_eq!(hex::encode(sm3(&body)), field("SM3(body) (hex)"));
    let message = signed_message(&id, &method, &path, &body);
    assert_eq!(hex::encode(&message), field("signed message (hex)"));

    let authorization = field("Authorization");
    let registry = ClientRegistry::single(&id, key.public(), vec![Permission::Assess]).unwrap();
    let check = |path: &str, body: &[u8]| {
        registry.authorize(
            Some(&authorization),
            &method,
            path,
            body,
            Permission::Assess,
        )
    };
    assert_eq!(check(&path, &body), Ok(id.clone()));
    assert!(check("/v1/enroll", &body).is_err());
    assert!(check(&path, b"another body").is_err());
}

// ---- Outputs of an independent implementation: OpenSSL 3.0.19, committed ----
// (tests/vectors/openssl/README.md gives the commands; tests/openssl_interop.rs re-runs them
// where `openssl` is installed.)

fn openssl_vector(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors/openssl")
            .join(name),
    )
    .unwrap()
}

#[test]
fn openssl_sm2_signature_with_the_default_id_verifies() {
    let public =
        PublicKey::from_pem(&String::from_utf8(openssl_vector("pub.pem")).unwrap()).unwrap();
    let (message, signature) = (openssl_vector("msg"), openssl_vector("sig.der"));
    public.verify(&message, &signature).unwrap();
    let mut other = message.clone();
    other[0] ^= 1;
    assert!(public.verify(&other, &signature).is_err());
}

#[test]
fn openssl_sm2_ciphertext_decrypts() {
    let key = DecryptionKey::from_pkcs8_pem(&String::from_utf8(openssl_vector("key.pem")).unwrap())
        .unwrap();
    let ciphertext = openssl_vector("ct.der");
    assert_eq!(
        key.decrypt_der(&ciphertext).unwrap().as_slice(),
        openssl_vector("msg").as_slice()
    );
    let mut tampered = ciphertext.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(key.decrypt_der(&tampered).is_err());
}

#[test]
fn hmac_sm3_equals_openssl() {
    use tee_risk::internals::crypto::kdf::hmac_sm3;
    let mac = hmac_sm3(b"tee-risk hmac key", b"what the blind index hashes");
    assert_eq!(
        hex::encode(mac),
        "85052f31ecdc301e2fc02c73e3f93f65d388eab1f192883b3ed7806231e8e1d4"
    );
    assert_ne!(
        hex::encode(hmac_sm3(
            b"tee-risk hmac kez",
            b"what the blind index hashes"
        )),
        "85052f31ecdc301e2fc02c73e3f93f65d388eab1f192883b3ed7806231e8e1d4"
    );
}

#[test]
fn hkdf_sm3_equals_openssl() {
    use tee_risk::internals::crypto::kdf::hkdf_sm3;
    // 100 bytes: four SM3 blocks, the last one partial. Shorter outputs are its prefixes.
    let expected = unhex(
        "ECF78C6FF1E49843EC34A7D1A803006277D88C23176FD24A6BC4ACF858F15D6A21923F8E93D2E59B51E5\
         88ECD1FC3193491CDF5BCB7F792A56DF10AFE141AB0E48695C185F551BA26C27126F00AC824CE7E1E5C2\
         FC02F1CCC4A6DE07FCF46504447F0364",
    );
    for length in [16usize, 32, 42, 100] {
        let mut ours = vec![0u8; length];
        hkdf_sm3(
            &[0x0b; 32],
            b"per-database salt",
            b"tee-risk/v1/table-key/user_data",
            &mut ours,
        )
        .unwrap();
        assert_eq!(ours, expected[..length], "length {length}");
    }
    let mut other = vec![0u8; 32];
    hkdf_sm3(
        &[0x0b; 32],
        b"per-database salt",
        b"tee-risk/v1/table-key/risk_logs",
        &mut other,
    )
    .unwrap();
    assert_ne!(other, expected[..32]);
}

/// docs/PROTOCOL.md §3a's encrypted-answer vector: K_ans, and the sealed answer byte for
/// byte (computed independently with Python's gmssl and cryptography), and it opens.
#[test]
fn the_encrypted_answer_vector_in_protocol_md_holds() {
    use tee_risk::internals::crypto::secret::SecretBytes;
    use tee_risk::protocol::answer::{answer_key, open_answer, seal_answer_with_iv};
    let field = protocol_md_vector("answer-vector");
    let key = SecretBytes::<16>::from_hex(&field("session key K (hex)")).unwrap();
    let rid = field("rid");
    assert_eq!(
        hex::encode(answer_key(&key, &rid).unwrap().expose()),
        field("K_ans (hex)")
    );
    let iv: [u8; 12] = hex::decode(field("iv (hex)")).unwrap().try_into().unwrap();
    let plaintext = field("plaintext");
    let sealed = seal_answer_with_iv(&key, &rid, plaintext.as_bytes(), &iv).unwrap();
    assert_eq!(sealed.protected, field("protected"));
    assert_eq!(sealed.ciphertext, field("ciphertext"));
    assert_eq!(sealed.tag, field("tag"));
    assert_eq!(
        &open_answer(&key, &rid, &sealed).unwrap()[..],
        plaintext.as_bytes()
    );
}

/// The `name: value` lines of the ```` ```text <block> ```` block of docs/PROTOCOL.md, read
/// from the document itself so that what a client author follows cannot drift from the code.
fn protocol_md_vector(block: &str) -> impl Fn(&str) -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    let block = doc
        .split(&format!("```text {block}\n"))
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has the {block} block"))
        .to_owned();
    move |name: &str| {
        block
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("the vector has `{name}`"))
            .to_owned()
    }
}
