//! Hygon CSV (`tee: "csv"`), through Hygon's `csv-rs` crate: behind the cargo feature `csv`
//! because `csv-rs` builds OpenSSL from source.
//!
//! Guest side: the report comes from `/dev/csv-guest` with our report_data (`csv-rs` checks
//! the firmware's MAC and unmasks the signer); the HSK ‖ CEK certificates come from a file the
//! operator downloaded once from Hygon's key server for this chip.
//!
//! Verifier side, for a version-1 report (TEE info ‖ signer, 2,548 bytes) or an extended
//! version-2 report (3,380 bytes):
//! 1. the signer block is accepted in the firmware's form (PEK certificate and chip serial
//!    masked with the report's `anonce`, HMAC-SM3 keyed by the guest's mnonce over them) or in
//!    the unmasked form `csv-rs` hands a guest (reserved bytes zeroed);
//! 2. HRK (built into `csv-rs`) → HSK → CEK → PEK, each SM2 signature with its certificate's
//!    user id, each certificate with the usage its place demands;
//! 3. PEK → the report's signature over its TEE info;
//! 4. facts for the common checks: measurement, report_data and policy read through the
//!    accessors that undo the version-1 XOR masking, and the debug bit (`NODBG` clear).
//!
//! `csv-rs` slices a certificate's user id by a length read from the certificate, and panics
//! when that length is out of range; every certificate is checked here before it reaches
//! `csv-rs`, so malformed evidence is an error, never a panic.

use std::path::Path;

use codicon::Decoder;
use csv_rs::api::guest::{AttestationReport, AttestationReportWrapper, TeeInfo};
use csv_rs::certs::{Algorithm, Usage, Verifiable, builtin::HRK, ca, csv};

use super::{AttestError, Check, EvidenceError, err};
use crate::crypto::kdf::hmac_sm3;

/// TEE info (0x150 bytes) ‖ signer (2,212 bytes): a version-1 report.
pub const REPORT_V1_LEN: usize = 0x150 + SIGNER_LEN;
/// Extended TEE info (0x490 bytes) ‖ signer: a version-2 report.
pub const REPORT_V2_LEN: usize = 0x490 + SIGNER_LEN;
/// PEK certificate (2,084) ‖ chip serial (64) ‖ reserved (32) ‖ MAC (32).
const SIGNER_LEN: usize = 2084 + 64 + 32 + 32;
/// HSK certificate ‖ CEK certificate, as Hygon's key server serves them.
pub const HSK_CEK_LEN: usize = 832 + 2084;
/// Room for a certificate's user id.
const USER_ID_CAPACITY: usize = 254;
/// SM2 signatures sit in 72-byte little-endian fields; only 32 bytes are significant.
const SIGNATURE_FIELD: usize = 72;
const SM2_SCALAR: usize = 32;
/// The extended-report magic of the `csv-rs` report wrapper.
const EXTENDED_MAGIC: [u8; 16] = *b"ATTESTATION_EXT\0";

/// What CSV verification established, for the common checks.
#[derive(Debug, Clone)]
pub struct CsvFacts {
    pub version: u32,
    pub measurement: [u8; 32],
    pub report_data: [u8; 64],
    pub debug: bool,
    /// The chip's serial number, as Hygon's key server names it.
    pub chip_serial: String,
}

/// Gets a report binding `report_data` from `/dev/csv-guest`, with the HSK ‖ CEK file when
/// the operator provides one. Only works inside a CSV guest.
pub fn guest_report(
    report_data: [u8; 64],
    hsk_cek_file: Option<&Path>,
) -> Result<(Vec<u8>, Option<Vec<u8>>), EvidenceError> {
    let device = |detail: String| EvidenceError::Device {
        device: "/dev/csv-guest",
        detail,
    };
    let mut guest =
        csv_rs::api::guest::CsvGuest::open().map_err(|e| device(format!("cannot open: {e}")))?;
    let wrapper = guest
        .get_report(Some(report_data), None)
        .map_err(|e| device(format!("CSV_GET_REPORT failed: {e:?}")))?;
    let report = AttestationReport::try_from(&wrapper)
        .map_err(|e| device(format!("the firmware's report does not parse: {e}")))?;
    let mut bytes = bincode::serialize(&report)
        .map_err(|e| device(format!("cannot encode the report: {e}")))?;
    // bincode prefixes the enum variant (u32); the report itself follows, padded to 4 KiB.
    bytes.drain(..4);
    bytes.truncate(match report {
        AttestationReport::V1(_) => REPORT_V1_LEN,
        AttestationReport::V2(_) => REPORT_V2_LEN,
    });
    let hsk_cek = match hsk_cek_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| EvidenceError::File {
            path: path.to_owned(),
            source,
        })?),
        None => None,
    };
    Ok((bytes, hsk_cek))
}

/// The file an offline HSK ‖ CEK folder holds for a chip: `<chip serial>.cert`.
pub fn hsk_cek_file_name(chip_serial: &str) -> String {
    format!("{chip_serial}.cert")
}

/// Verifies a CSV report up to and including the hardware chain.
pub fn verify(
    report: &[u8],
    inline_hsk_cek: Option<&[u8]>,
    hsk_cek_dir: Option<&Path>,
) -> Result<CsvFacts, AttestError> {
    let (info_len, flags) = match report.len() {
        REPORT_V1_LEN => (0x150, 0),
        REPORT_V2_LEN => (0x490, 1),
        other => {
            return Err(err(
                Check::Format,
                format!(
                    "a CSV report is {REPORT_V1_LEN} (v1) or {REPORT_V2_LEN} (v2) bytes, not {other}"
                ),
            ));
        }
    };
    check_signature_padding(&report[info_len - 2 * SIGNATURE_FIELD..info_len])?;
    let mut padded = report.to_vec();
    let wrapper = AttestationReportWrapper::new(EXTENDED_MAGIC, flags, &mut padded);
    let parsed = AttestationReport::try_from(&wrapper)
        .map_err(|e| err(Check::Format, format!("not a CSV report: {e}")))?;
    let tee_info = parsed.tee_info();
    // The PEK's signature does not cover these two fields: insist on the only values a
    // genuine report carries, so that no byte of an accepted report can vary.
    if Usage::from(tee_info.sig_usage()) != Usage::PEK
        || Algorithm::from(tee_info.sig_algo()) != Algorithm::SM2_SA
    {
        return Err(err(
            Check::Format,
            "the report is not marked as signed by the PEK with SM2",
        ));
    }
    let signer = &report[info_len..];
    let (pek_bytes, chip_serial) = unmask_signer(signer, &tee_info, &masked_mnonce(report))?;

    let pek = decode_csv_cert(&pek_bytes, "PEK")?;
    let hsk_cek = match (inline_hsk_cek, hsk_cek_dir) {
        (Some(bytes), _) => bytes.to_vec(),
        (None, Some(dir)) => {
            let path = dir.join(hsk_cek_file_name(&chip_serial));
            std::fs::read(&path).map_err(|e| {
                err(
                    Check::Platform,
                    format!("no HSK/CEK at {}: {e}", path.display()),
                )
            })?
        }
        (None, None) => {
            return Err(err(
                Check::Platform,
                "no HSK/CEK inline and no HSK/CEK folder",
            ));
        }
    };
    if hsk_cek.len() != HSK_CEK_LEN {
        return Err(err(
            Check::Platform,
            format!("HSK ‖ CEK is {HSK_CEK_LEN} bytes, not {}", hsk_cek.len()),
        ));
    }
    let hrk = decode_ca_cert(HRK, "HRK")?;
    let hsk = decode_ca_cert(&hsk_cek[..832], "HSK")?;
    let cek = decode_csv_cert(&hsk_cek[832..], "CEK")?;
    let usages = [
        ("HRK", hrk.body.preamble.data.usage, Usage::HRK),
        ("HSK", hsk.body.preamble.data.usage, Usage::HSK),
        ("CEK", cek.body.data.pubkey.usage, Usage::CEK),
        ("PEK", pek.body.data.pubkey.usage, Usage::PEK),
    ];
    if let Some((name, _, _)) = usages.iter().find(|(_, have, want)| have != want) {
        return Err(err(
            Check::Platform,
            format!("the {name} certificate is not marked for {name} use"),
        ));
    }
    let link = |ok: std::io::Result<()>, what: &str| {
        ok.map_err(|_| err(Check::Platform, format!("{what} does not verify")))
    };
    link((&hrk, &hrk).verify(), "the Hygon root key's self-signature")?;
    link((&hrk, &hsk).verify(), "HRK → HSK")?;
    link((&hsk, &cek).verify(), "HSK → CEK")?;
    link((&cek, &pek).verify(), "CEK → PEK")?;
    link((&pek, &tee_info).verify(), "the report signature (PEK)")?;

    Ok(CsvFacts {
        version: parsed.version(),
        measurement: fixed(tee_info.measure(), "measure")?,
        report_data: fixed(tee_info.report_data(), "report_data")?,
        debug: tee_info.policy().nodbg() == 0,
        chip_serial,
    })
}

/// The mnonce field as it sits in the report (masked in version 1).
fn masked_mnonce(report: &[u8]) -> [u8; 16] {
    // user_pubkey_digest (32) ‖ vm_id (16) ‖ vm_version (16) ‖ report_data (64) ‖ mnonce
    let mut mnonce = [0u8; 16];
    mnonce.copy_from_slice(&report[128..144]);
    mnonce
}

/// The unmasked PEK certificate bytes and chip serial of a signer block.
fn unmask_signer(
    signer: &[u8],
    tee_info: &TeeInfo<'_>,
    masked_mnonce: &[u8; 16],
) -> Result<(Vec<u8>, String), AttestError> {
    let (masked_part, mac) = signer.split_at(SIGNER_LEN - 32);
    let anonce = tee_info.anonce();
    let xor = |bytes: &[u8]| -> Vec<u8> {
        let mask = anonce.to_le_bytes();
        bytes
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect()
    };
    let mnonce = xor(masked_mnonce);
    let firmware_form = hmac_sm3(&mnonce, masked_part)[..] == *mac;
    let reserved = &masked_part[2084 + 64..];
    let (pek, serial) = if firmware_form {
        (xor(&masked_part[..2084]), xor(&masked_part[2084..2148]))
    } else if reserved.iter().all(|b| *b == 0) {
        // Unmasked by the guest (`csv-rs` zeroes the reserved bytes, so the MAC cannot be
        // recomputed): the PEK's chain to the Hygon root and its signature decide.
        (
            masked_part[..2084].to_vec(),
            masked_part[2084..2148].to_vec(),
        )
    } else {
        return Err(err(
            Check::Platform,
            "the signer block's MAC does not verify (PEK or chip serial altered)",
        ));
    };
    let serial_text = serial.split(|b| *b == 0).next().unwrap_or_default();
    if serial_text.is_empty()
        || !serial_text.iter().all(|b| b.is_ascii_alphanumeric())
        || serial[serial_text.len()..].iter().any(|b| *b != 0)
    {
        return Err(err(
            Check::Format,
            "the chip serial is not ASCII letters and digits padded with zeros",
        ));
    }
    let serial_text = String::from_utf8(serial_text.to_vec()).expect("ASCII checked above");
    Ok((pek, serial_text))
}

fn fixed<const N: usize>(bytes: Vec<u8>, what: &str) -> Result<[u8; N], AttestError> {
    bytes
        .try_into()
        .map_err(|_| err(Check::Format, format!("{what} has the wrong length")))
}

fn check_signature_padding(signature: &[u8]) -> Result<(), AttestError> {
    let (r, s) = signature.split_at(SIGNATURE_FIELD);
    if r[SM2_SCALAR..]
        .iter()
        .chain(&s[SM2_SCALAR..])
        .any(|b| *b != 0)
    {
        return Err(err(
            Check::Format,
            "the report signature's padding is not zero",
        ));
    }
    Ok(())
}

fn check_user_id_len(len: u16, name: &str) -> Result<(), AttestError> {
    if usize::from(len) > USER_ID_CAPACITY {
        return Err(err(
            Check::Platform,
            format!("the {name} certificate's user id length {len} exceeds {USER_ID_CAPACITY}"),
        ));
    }
    Ok(())
}

fn decode_csv_cert(bytes: &[u8], name: &str) -> Result<csv::Certificate, AttestError> {
    decode_cert(bytes, name, |c: &csv::Certificate| c.body.data.uid_size)
}

fn decode_ca_cert(bytes: &[u8], name: &str) -> Result<ca::Certificate, AttestError> {
    decode_cert(bytes, name, |c: &ca::Certificate| c.body.uid_size)
}

/// Decodes a certificate and checks its user id length before `csv-rs` slices by it.
fn decode_cert<C: Decoder<(), Error = std::io::Error>>(
    bytes: &[u8],
    name: &str,
    uid_size: fn(&C) -> u16,
) -> Result<C, AttestError> {
    let cert = C::decode(bytes, ()).map_err(|e| {
        err(
            Check::Platform,
            format!("the {name} certificate does not parse: {e}"),
        )
    })?;
    check_user_id_len(uid_size(&cert), name)?;
    Ok(cert)
}

/// The real Hygon report and its chip's HSK ‖ CEK, from `csv-rs`'s test data.
#[cfg(test)]
pub(crate) fn hygon_vectors() -> (Vec<u8>, Vec<u8>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/csv");
    (
        std::fs::read(dir.join("report.cert")).unwrap(),
        std::fs::read(dir.join("hsk_cek.cert")).unwrap(),
    )
}

#[cfg(test)]
mod tests {
    use super::hygon_vectors as vectors;
    use super::*;

    /// What `csv-rs` hands a guest: PEK and chip serial unmasked, reserved bytes zeroed.
    fn guest_form(report: &[u8]) -> Vec<u8> {
        let mut unmasked = report.to_vec();
        let anonce = report[188..192].to_vec();
        for (i, byte) in unmasked[0x150..0x150 + 2148].iter_mut().enumerate() {
            *byte ^= anonce[i % 4];
        }
        unmasked[0x150 + 2148..0x150 + 2180].fill(0);
        unmasked
    }

    fn platform_failure(report: &[u8], hsk_cek: &[u8]) -> Check {
        verify(report, Some(hsk_cek), None)
            .expect_err("must fail")
            .check
    }

    #[test]
    fn the_real_hygon_report_verifies_to_the_hygon_root() {
        let (report, hsk_cek) = vectors();
        let facts = verify(&report, Some(&hsk_cek), None).unwrap();
        assert_eq!(facts.version, 1);
        assert_eq!(facts.chip_serial, "NZA9T14052605");
        let mut expected = [0u8; 64];
        expected[..9].copy_from_slice(b"user data");
        assert_eq!(facts.report_data, expected, "report_data read unmasked");
    }

    #[test]
    fn the_guest_unmasked_form_verifies_too() {
        let (report, hsk_cek) = vectors();
        assert_eq!(
            verify(&guest_form(&report), Some(&hsk_cek), None)
                .unwrap()
                .chip_serial,
            "NZA9T14052605"
        );
    }

    /// In the unmasked form no MAC binds the (unsigned) anonce; a changed anonce changes
    /// how report_data is unmasked, which the binding's 32 zero bytes then refuse.
    #[test]
    fn an_altered_anonce_in_the_unmasked_form_cannot_keep_a_binding() {
        let (report, hsk_cek) = vectors();
        let genuine = verify(&report, Some(&hsk_cek), None).unwrap();
        assert_eq!(genuine.report_data[32..], [0u8; 32]);
        let unmasked = guest_form(&report);
        for bit in 0..32 {
            let mut tampered = unmasked.clone();
            tampered[188 + bit / 8] ^= 1 << (bit % 8);
            // The PEK in the signer is unmasked already, so the chain still verifies; the
            // anonce is then caught by the policy fields or by report_data's zero half.
            if let Ok(facts) = verify(&tampered, Some(&hsk_cek), None) {
                assert_ne!(facts.report_data[32..], [0u8; 32], "anonce bit {bit}");
            }
        }
    }

    /// Every bit of the TEE info (signed fields, signature, and the unsigned anonce that
    /// unmasks them) and one bit of every signer byte: each flip is caught.
    #[test]
    fn every_flipped_bit_is_caught() {
        let (report, hsk_cek) = vectors();
        let mut flips: Vec<(usize, u8)> = (0..0x150)
            .flat_map(|i| (0..8).map(move |bit| (i, 1u8 << bit)))
            .collect();
        flips.extend((0x150..report.len()).map(|i| (i, 1u8 << (i % 8))));
        for (index, mask) in flips {
            let mut tampered = report.clone();
            tampered[index] ^= mask;
            // sig_usage and sig_algo (bytes 180..188) are outside what the PEK signs: they
            // must hold their only genuine values. The anonce (188..192), also unsigned,
            // unmasks the MAC key, so it is bound through the MAC.
            match verify(&tampered, Some(&hsk_cek), None) {
                Ok(facts) => panic!("flip at byte {index} (mask {mask:#x}) verified: {facts:?}"),
                Err(e) => assert!([Check::Platform, Check::Format].contains(&e.check)),
            }
        }
    }

    #[test]
    fn altered_certificates_and_wrong_lengths_fail() {
        let (report, hsk_cek) = vectors();
        // A bit inside the HSK's public key, then inside the CEK's.
        for index in [100, 832 + 100] {
            let mut bad = hsk_cek.clone();
            bad[index] ^= 1;
            assert_eq!(platform_failure(&report, &bad), "platform");
        }
        // The CEK in the HSK's place.
        let mut swapped = hsk_cek[832..].to_vec();
        swapped.extend_from_slice(&hsk_cek[..832]);
        assert_eq!(platform_failure(&report, &swapped), "platform");
        assert_eq!(platform_failure(&report, &hsk_cek[..832]), "platform");
        assert_eq!(platform_failure(&report[..100], &hsk_cek), "format");
        assert_eq!(
            verify(&report, None, None).expect_err("no HSK/CEK").check,
            "platform"
        );
    }

    /// A user id length past its field made `csv-rs` panic (slice out of range); it is an
    /// error here, for the PEK in the report and for the CEK.
    #[test]
    fn oversized_user_id_lengths_are_errors_not_panics() {
        let (report, hsk_cek) = vectors();
        // The guest's form, so the PEK bytes can be edited without the MAC.
        let unmasked = guest_form(&report);
        // csv::Certificate: ver (4) ‖ firmware (2) ‖ reserved1 (2) ‖ pubkey ‖ uid_size.
        let uid_size_at = uid_size_offset(&unmasked[0x150..0x150 + 2084]);
        let mut bad_pek = unmasked.clone();
        bad_pek[0x150 + uid_size_at..0x150 + uid_size_at + 2].copy_from_slice(&[0xff, 0xff]);
        let AttestError { check, detail } = verify(&bad_pek, Some(&hsk_cek), None).unwrap_err();
        assert_eq!(check, "platform");
        assert!(detail.contains("user id length"), "{detail}");
        let mut bad_cek = hsk_cek.clone();
        bad_cek[832 + uid_size_at..832 + uid_size_at + 2].copy_from_slice(&[0xff, 0xff]);
        let detail = verify(&report, Some(&bad_cek), None).unwrap_err().detail;
        assert!(detail.contains("user id length"), "{detail}");
    }

    /// Where `uid_size` sits in a CSV certificate: found, not assumed, by looking for the
    /// real certificate's value (13, the length of "HYGON-SSD-PEK").
    fn uid_size_offset(cert: &[u8]) -> usize {
        let parsed = csv::Certificate::decode(cert, ()).unwrap();
        let len = parsed.body.data.uid_size.to_le_bytes();
        let id = &parsed.body.data.user_id[..usize::from(parsed.body.data.uid_size)];
        (0..cert.len() - 2 - id.len())
            .find(|&i| cert[i..i + 2] == len && cert[i + 2..i + 2 + id.len()] == *id)
            .expect("uid_size precedes the user id")
    }

    #[test]
    fn the_hsk_cek_can_come_from_an_offline_folder() {
        let (report, hsk_cek) = vectors();
        let dir = tempfile::tempdir().unwrap();
        let err = verify(&report, None, Some(dir.path())).unwrap_err();
        assert!(err.detail.contains("NZA9T14052605.cert"), "{}", err.detail);
        std::fs::write(
            dir.path().join(hsk_cek_file_name("NZA9T14052605")),
            &hsk_cek,
        )
        .unwrap();
        assert!(verify(&report, None, Some(dir.path())).is_ok());
    }
}
