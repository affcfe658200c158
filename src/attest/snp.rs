//! AMD SEV-SNP (`tee: "snp"`), through the `sev` crate (pure-Rust crypto).
//!
//! Guest side: the report comes from `/dev/sev-guest` with our report_data, at VMPL 0,
//! with the VCEK from the host's certificate table when it provides one.
//!
//! Verifier side: parse the 1,184-byte report and insist that re-encoding it gives back the
//! exact bytes received (the signature is checked over the re-encoding, so bytes the parser
//! skips must not be able to differ); find the VCEK (inline in the evidence, or in an offline
//! folder keyed by chip id and TCB: no network fetch); verify ARK → ASK → VCEK against AMD's
//! roots built into `sev` (Milan, Genoa, Turin) and the report's signature with the VCEK;
//! match the VCEK's TCB and hardware-id extensions against the report; require VMPL 0 and a
//! reported TCB at or above the policy's floor, component by component.

use std::path::Path;

use sev::certs::snp::{Certificate, Chain, Verifiable, builtin, ca};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use x509_cert::der::Decode;
use x509_cert::der::asn1::OctetString;

#[cfg(feature = "server")]
use super::EvidenceError;
use super::policy::Tcb;
use super::{AttestError, Check, err};

/// Length of an SNP attestation report.
pub const REPORT_LEN: usize = 1184;
/// Where the signature starts; the bytes before it are what the VCEK signs.
const SIGNATURE_OFFSET: usize = 0x2a0;
/// AMD's VCEK extension OIDs (VCEK specification, chapter 3).
const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_HW_ID: &str = "1.3.6.1.4.1.3704.1.4";

/// What SNP verification established, for the common checks.
#[derive(Debug, Clone)]
pub struct SnpFacts {
    pub product: &'static str,
    pub measurement: [u8; 48],
    pub report_data: [u8; 64],
    pub debug: bool,
    pub vmpl: u32,
    pub reported_tcb: Tcb,
    pub chip_id: [u8; 64],
}

/// The VCEK's GUID in the SEV certificate table (63da758d-e664-4564-adc5-f4b93be8accd, in
/// the GUID byte order: the first three fields little-endian).
#[cfg(feature = "server")]
const VCEK_GUID: [u8; 16] = [
    0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];

/// The VCEK in an SEV certificate table (configfs-tsm's `auxblob`): entries of GUID (16
/// bytes), offset and length (u32 little-endian each, from the table's start), ended by an
/// all-zero entry.
#[cfg(feature = "server")]
fn vcek_from_cert_table(table: &[u8]) -> Option<Vec<u8>> {
    for entry in table.chunks_exact(24) {
        let (guid, rest) = entry.split_at(16);
        if guid.iter().all(|b| *b == 0) {
            return None;
        }
        if guid == VCEK_GUID {
            let offset = u32::from_le_bytes(rest[..4].try_into().ok()?) as usize;
            let length = u32::from_le_bytes(rest[4..].try_into().ok()?) as usize;
            return table
                .get(offset..offset.checked_add(length)?)
                .map(<[u8]>::to_vec);
        }
    }
    None
}

/// Gets a report binding `report_data`, with the VCEK when the host supplies one: through
/// configfs-tsm (Linux 6.7+) where the kernel offers it, else from `/dev/sev-guest`. Only
/// works inside an SNP guest.
#[cfg(feature = "server")]
pub fn guest_report(report_data: [u8; 64]) -> Result<(Vec<u8>, Option<Vec<u8>>), EvidenceError> {
    if super::tsm::available() {
        let report = super::tsm::report(report_data)?;
        if report.provider != "sev_guest" {
            return Err(EvidenceError::Device {
                device: super::tsm::REPORT_DIR,
                detail: format!("the provider is {}, not sev_guest", report.provider),
            });
        }
        let vcek = report.auxblob.as_deref().and_then(vcek_from_cert_table);
        return Ok((report.outblob, vcek));
    }
    use sev::firmware::guest::Firmware;
    use sev::firmware::host::CertType;
    let device = |detail: String| EvidenceError::Device {
        device: "/dev/sev-guest",
        detail,
    };
    let mut firmware = Firmware::open().map_err(|e| device(format!("cannot open: {e}")))?;
    let (report, certs) = firmware
        .get_ext_report(None, Some(report_data), Some(0))
        .map_err(|e| device(format!("SNP_GET_EXT_REPORT failed: {e}")))?;
    let vcek = certs
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.cert_type == CertType::VCEK)
        .map(|c| c.data);
    Ok((report, vcek))
}

/// The file an offline VCEK folder holds for a chip and TCB:
/// `<chip id hex>-<bootloader>-<tee>-<snp>-<microcode>.der`.
pub fn vcek_file_name(chip_id: &[u8; 64], tcb: &Tcb) -> String {
    format!(
        "{}-{}-{}-{}-{}.der",
        hex::encode(chip_id),
        tcb.bootloader,
        tcb.tee,
        tcb.snp,
        tcb.microcode
    )
}

/// Verifies an SNP report up to and including the hardware chain, VMPL and TCB floor.
pub fn verify(
    report: &[u8],
    inline_vcek: Option<&[u8]>,
    vcek_dir: Option<&Path>,
    min_tcb: &Tcb,
) -> Result<SnpFacts, AttestError> {
    let parsed = parse_canonical(report)?;
    let reported_tcb = Tcb {
        bootloader: parsed.reported_tcb.bootloader,
        tee: parsed.reported_tcb.tee,
        snp: parsed.reported_tcb.snp,
        microcode: parsed.reported_tcb.microcode,
    };
    let vcek_der = vcek_bytes(inline_vcek, vcek_dir, &parsed, &reported_tcb)?;
    let vcek = Certificate::from_der(&vcek_der).map_err(|e| {
        err(
            Check::Platform,
            format!("the VCEK is not a certificate: {e}"),
        )
    })?;
    let product = chain_product(&vcek)?;
    let chain = Chain {
        ca: product.1,
        vek: vcek.clone(),
    };
    (&chain, &parsed)
        .verify()
        .map_err(|e| err(Check::Platform, format!("report signature: {e}")))?;
    check_vcek_extensions(&vcek, &reported_tcb, &parsed.chip_id)?;
    if parsed.vmpl != 0 {
        return Err(err(
            Check::Vmpl,
            format!("the report comes from VMPL {}", parsed.vmpl),
        ));
    }
    check_tcb(&reported_tcb, min_tcb)?;
    Ok(SnpFacts {
        product: product.0,
        measurement: parsed.measurement,
        report_data: parsed.report_data,
        debug: parsed.policy.debug_allowed(),
        vmpl: parsed.vmpl,
        reported_tcb,
        chip_id: parsed.chip_id,
    })
}

/// Parses a report and refuses any byte form but the one its fields encode to: the length,
/// a re-encoding equal to the bytes received, and zero padding around the signature (or
/// the same signed report could travel in many byte forms).
fn parse_canonical(report: &[u8]) -> Result<AttestationReport, AttestError> {
    if report.len() != REPORT_LEN {
        return Err(err(
            Check::Format,
            format!("an SNP report is {REPORT_LEN} bytes"),
        ));
    }
    let parsed = AttestationReport::from_bytes(report)
        .map_err(|e| err(Check::Format, format!("not an SNP report: {e}")))?;
    let reencoded = parsed
        .to_bytes()
        .map_err(|e| err(Check::Format, format!("the report does not re-encode: {e}")))?;
    if reencoded.as_slice() != report {
        return Err(err(
            Check::Format,
            "re-encoding the parsed report does not give back the bytes received",
        ));
    }
    // The signature field is r and s (48 significant little-endian bytes, each padded to 72)
    // then reserved bytes.
    let padding = [
        SIGNATURE_OFFSET + 48..SIGNATURE_OFFSET + 72,
        SIGNATURE_OFFSET + 72 + 48..SIGNATURE_OFFSET + 144,
        SIGNATURE_OFFSET + 144..REPORT_LEN,
    ];
    if padding
        .into_iter()
        .any(|r| report[r].iter().any(|b| *b != 0))
    {
        return Err(err(Check::Format, "the signature's padding is not zero"));
    }
    Ok(parsed)
}

/// The VCEK's DER: sent inline, or from the offline folder by chip id and TCB.
fn vcek_bytes(
    inline_vcek: Option<&[u8]>,
    vcek_dir: Option<&Path>,
    parsed: &AttestationReport,
    reported_tcb: &Tcb,
) -> Result<Vec<u8>, AttestError> {
    match (inline_vcek, vcek_dir) {
        (Some(der), _) => Ok(der.to_vec()),
        (None, Some(dir)) => {
            let path = dir.join(vcek_file_name(&parsed.chip_id, reported_tcb));
            std::fs::read(&path).map_err(|e| {
                err(
                    Check::Platform,
                    format!("no VCEK at {}: {e}", path.display()),
                )
            })
        }
        (None, None) => Err(err(Check::Platform, "no VCEK inline and no VCEK folder")),
    }
}

/// Every part of the reported TCB at or above the policy's floor.
fn check_tcb(reported: &Tcb, min: &Tcb) -> Result<(), AttestError> {
    let below = [
        ("bootloader", reported.bootloader, min.bootloader),
        ("tee", reported.tee, min.tee),
        ("snp", reported.snp, min.snp),
        ("microcode", reported.microcode, min.microcode),
    ]
    .into_iter()
    .find(|(_, have, need)| have < need);
    match below {
        Some((part, have, need)) => Err(err(
            Check::Tcb,
            format!("reported {part} SVN {have} is below the policy's {need}"),
        )),
        None => Ok(()),
    }
}

/// Returns one of `sev`'s built-in AMD root or signing-key certificates.
type CertLoader = fn() -> std::io::Result<Certificate>;

/// The AMD product whose built-in ARK → ASK chain signed `vcek`.
fn chain_product(vcek: &Certificate) -> Result<(&'static str, ca::Chain), AttestError> {
    let roots: [(&'static str, CertLoader, CertLoader); 3] = [
        ("milan", builtin::milan::ark, builtin::milan::ask),
        ("genoa", builtin::genoa::ark, builtin::genoa::ask),
        ("turin", builtin::turin::ark, builtin::turin::ask),
    ];
    for (name, ark, ask) in roots {
        let (Ok(ark), Ok(ask)) = (ark(), ask()) else {
            continue;
        };
        let ca = ca::Chain { ark, ask };
        let chain = Chain {
            ca: ca.clone(),
            vek: vcek.clone(),
        };
        if chain.verify().is_ok() {
            return Ok((name, ca));
        }
    }
    Err(err(
        Check::Platform,
        "the VCEK does not chain to AMD's Milan, Genoa or Turin root",
    ))
}

/// The VCEK's TCB extensions must equal the report's reported TCB, and its hwID the
/// report's chip id.
fn check_vcek_extensions(
    vcek: &Certificate,
    tcb: &Tcb,
    chip_id: &[u8; 64],
) -> Result<(), AttestError> {
    let x509: x509_cert::Certificate = vcek.clone().into();
    let extensions = x509.tbs_certificate.extensions.unwrap_or_default();
    let find = |oid: &str| {
        extensions
            .iter()
            .find(|e| e.extn_id.to_string() == oid)
            .map(|e| e.extn_value.as_bytes().to_vec())
    };
    for (oid, name, reported) in [
        (OID_BL_SPL, "bootloader", tcb.bootloader),
        (OID_TEE_SPL, "tee", tcb.tee),
        (OID_SNP_SPL, "snp", tcb.snp),
        (OID_UCODE_SPL, "microcode", tcb.microcode),
    ] {
        let value =
            find(oid).ok_or_else(|| err(Check::Tcb, format!("the VCEK has no {name} SPL")))?;
        let certified = u8::from_der(&value).map_err(|_| {
            err(
                Check::Tcb,
                format!("the VCEK's {name} SPL is not a small integer"),
            )
        })?;
        if certified != reported {
            return Err(err(
                Check::Tcb,
                format!("the VCEK certifies {name} SPL {certified}, the report says {reported}"),
            ));
        }
    }
    let hw_id = find(OID_HW_ID).ok_or_else(|| err(Check::ChipId, "the VCEK has no hwID"))?;
    // The hwID is the raw 64 bytes, or (in some issuances) a DER OCTET STRING holding them.
    let hw_id = if hw_id.len() == 64 {
        hw_id
    } else {
        OctetString::from_der(&hw_id)
            .map(|o| o.as_bytes().to_vec())
            .map_err(|_| err(Check::ChipId, "the VCEK's hwID is malformed"))?
    };
    if hw_id.as_slice() != chip_id.as_slice() {
        return Err(err(Check::ChipId, "the VCEK was issued for another chip"));
    }
    Ok(())
}

/// The real Milan report and its VCEK (`tests/vectors/snp`, from the `sev` crate).
#[cfg(test)]
pub(crate) fn milan_vectors() -> (Vec<u8>, Vec<u8>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/snp");
    let report = hex::decode(
        std::fs::read_to_string(dir.join("report_milan.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    (report, std::fs::read(dir.join("vcek_milan.der")).unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::milan_vectors as vectors;

    /// The VCEK is found in a certificate table by its GUID, among other entries; a table
    /// without it, or with an entry pointing outside it, yields none.
    #[test]
    fn the_vcek_is_read_from_an_sev_certificate_table() {
        let (_, vcek) = vectors();
        let ark_guid = [0xc0u8; 16];
        let mut table = Vec::new();
        let data_at = 3 * 24;
        for (guid, offset, len) in [
            (ark_guid, data_at + vcek.len(), 4usize),
            (VCEK_GUID, data_at, vcek.len()),
        ] {
            table.extend_from_slice(&guid);
            table.extend_from_slice(&(offset as u32).to_le_bytes());
            table.extend_from_slice(&(len as u32).to_le_bytes());
        }
        table.extend_from_slice(&[0; 24]);
        table.extend_from_slice(&vcek);
        table.extend_from_slice(b"ark!");
        assert_eq!(vcek_from_cert_table(&table), Some(vcek.clone()));
        let mut without = table[..24].to_vec();
        without.extend_from_slice(&table[48..]);
        assert_eq!(vcek_from_cert_table(&without), None, "no VCEK entry");
        let mut outside = table.clone();
        outside[24 + 16..24 + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(vcek_from_cert_table(&outside), None);
    }

    #[test]
    fn the_real_milan_report_verifies_against_amds_root() {
        let (report, vcek) = vectors();
        let facts = verify(&report, Some(&vcek), None, &Tcb::default()).unwrap();
        assert_eq!(facts.product, "milan");
        assert_eq!(facts.vmpl, 0);
    }

    #[test]
    /// A flipped bit in every byte of the report (bit `offset % 8`, so every bit position
    /// is covered across the bytes), and every one of the 8 × 64 bits of report_data (where
    /// our binding lives) and of the 48-byte measurement: each is caught. Every bit of all
    /// 1,184 bytes would be 9,472 P-384 verifications, too slow for every `make test`.
    fn a_flipped_bit_in_every_byte_and_every_bit_of_the_bound_fields_is_caught() {
        let (report, vcek) = vectors();
        // report_data at 0x50 (64 bytes), measurement at 0x90 (48 bytes): AMD SEV-SNP ABI,
        // attestation report table.
        let bound = (0x50..0x50 + 64).chain(0x90..0x90 + 48);
        let flips = (0..REPORT_LEN)
            .map(|offset| (offset, 1u8 << (offset % 8)))
            .chain(bound.flat_map(|offset| (0..8).map(move |bit| (offset, 1u8 << bit))));
        let mut checks = std::collections::BTreeSet::new();
        for (offset, mask) in flips {
            let mut tampered = report.clone();
            tampered[offset] ^= mask;
            match verify(&tampered, Some(&vcek), None, &Tcb::default()) {
                Ok(_) => panic!("a flip ({mask:#04x}) at byte {offset:#x} went unnoticed"),
                Err(e) => {
                    checks.insert(e.check.as_str());
                }
            }
        }
        // Signature failures, and parsed-but-not-re-encodable reports.
        assert!(
            checks.contains("platform") && checks.contains("format"),
            "{checks:?}"
        );
    }

    #[test]
    fn a_vcek_not_signed_by_amd_or_a_tcb_floor_above_the_report_fails() {
        let (report, vcek) = vectors();
        let mut forged = vcek.clone();
        forged[40] ^= 0xff;
        let check = |r: Result<SnpFacts, AttestError>| r.expect_err("must fail").check;
        assert_eq!(
            check(verify(&report, Some(&forged), None, &Tcb::default())),
            "platform"
        );
        let facts = verify(&report, Some(&vcek), None, &Tcb::default()).unwrap();
        let floor = Tcb {
            snp: facts.reported_tcb.snp + 1,
            ..facts.reported_tcb
        };
        assert_eq!(check(verify(&report, Some(&vcek), None, &floor)), "tcb");
        assert!(verify(&report, Some(&vcek), None, &facts.reported_tcb).is_ok());
    }

    #[test]
    fn the_vcek_can_come_from_an_offline_folder() {
        let (report, vcek) = vectors();
        let facts = verify(&report, Some(&vcek), None, &Tcb::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(verify(&report, None, Some(dir.path()), &Tcb::default()).is_err());
        std::fs::write(
            dir.path()
                .join(vcek_file_name(&facts.chip_id, &facts.reported_tcb)),
            &vcek,
        )
        .unwrap();
        assert!(verify(&report, None, Some(dir.path()), &Tcb::default()).is_ok());
    }
}
