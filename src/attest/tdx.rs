//! Intel TDX: DCAP quotes (v4 and v5) verified with `dcap-qvl` (Phala Network, MIT; its
//! `rustcrypto` backend, so no C crypto): Intel's SGX root CA → PCK certificate (checked
//! against its CRL) → the quoting enclave's report → the quote's signature, and the TCB
//! status from the TCB info and QE identity collateral, each signed by Intel.
//!
//! What `dcap-qvl` leaves to its caller, and this module does: which TCB statuses and
//! advisories are acceptable (the policy's `[tdx]`), the TD's MRTD (the policy's
//! measurements), the RTMRs the policy pins, the debug attribute (`TD_ATTRIBUTES` bit 0:
//! `dcap-qvl` is told to let debug TDs through so that our own check names it), and
//! REPORTDATA, which carries our binding exactly as SNP's report_data does.
//!
//! Collateral never comes from the network here: the evidence carries it inline (endorsement
//! `tdx_collateral`, the JSON `dcap-qvl` reads), or the verifier reads
//! `<collateral_dir>/<fmspc hex>.json`, which an operator fills from Intel's PCS
//! (docs/ATTESTATION.md).
//!
//! Guest side: the kernel's configfs-tsm interface (`store::..`: see [`super::tsm`]).

use std::path::Path;

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::Quote;
use dcap_qvl::verify::QuoteVerifier;

pub use super::policy::{ALL_TCB_STATUSES, DEFAULT_ACCEPTED_STATUS, TdxPolicy};
use super::{AttestError, Check, err};

/// `TD_ATTRIBUTES` bit 0: the TD runs in debug mode (its memory is readable by the host).
const TD_ATTRIBUTES_DEBUG: u8 = 0x01;

/// What a verified TDX quote says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxFacts {
    /// MRTD: the measurement of the TD's initial contents.
    pub mr_td: [u8; 48],
    pub rtmrs: [[u8; 48]; 4],
    pub report_data: [u8; 64],
    pub debug: bool,
    /// Intel's TCB status of the platform and quoting enclave together.
    pub tcb_status: String,
    pub advisories: Vec<String>,
    /// The quote's version (4 or 5).
    pub version: u16,
}

/// The platform's FMSPC (family-model-stepping-platform-custom SKU), which names its
/// collateral: from the PCK certificate the quote carries.
pub fn fmspc(quote: &[u8]) -> Result<String, AttestError> {
    let parsed = parse(quote)?;
    let chain = parsed
        .raw_cert_chain()
        .map_err(|e| err(Check::Format, format!("the quote's certificate data: {e}")))?;
    let extension = dcap_qvl::intel::parse_pck_extension_from_pem(chain)
        .map_err(|e| err(Check::Format, format!("the PCK certificate: {e}")))?;
    Ok(hex::encode(extension.fmspc))
}

fn parse(quote: &[u8]) -> Result<Quote, AttestError> {
    Quote::parse(quote).map_err(|e| err(Check::Format, format!("not a DCAP quote: {e}")))
}

/// The collateral: inline (JSON bytes) or `<dir>/<fmspc>.json`.
fn collateral(
    quote: &[u8],
    inline: Option<&[u8]>,
    dir: Option<&Path>,
) -> Result<QuoteCollateralV3, AttestError> {
    let json = match (inline, dir) {
        (Some(json), _) => json.to_vec(),
        (None, Some(dir)) => {
            let path = dir.join(format!("{}.json", fmspc(quote)?));
            std::fs::read(&path).map_err(|e| {
                err(
                    Check::Platform,
                    format!(
                        "no collateral inline and none at {}: {e} (fetch it from Intel's PCS: \
                         docs/ATTESTATION.md)",
                        path.display()
                    ),
                )
            })?
        }
        (None, None) => {
            return Err(err(
                Check::Platform,
                "the evidence carries no collateral and the policy names no collateral_dir",
            ));
        }
    };
    serde_json::from_slice(&json).map_err(|e| {
        err(
            Check::Format,
            format!("the collateral is not DCAP collateral: {e}"),
        )
    })
}

/// Verifies a TDX quote to Intel's root at `now` (unix seconds) and applies the TDX part of
/// the policy (TCB status and advisories, RTMR pins). MRTD, debug and REPORTDATA are left
/// to the common checks, which get them from the facts.
pub fn verify(
    quote: &[u8],
    inline_collateral: Option<&[u8]>,
    policy: &TdxPolicy,
    now: u64,
) -> Result<TdxFacts, AttestError> {
    let parsed = parse(quote)?;
    let Some(td) = parsed.report.as_td10() else {
        return Err(err(
            Check::TeeKind,
            "the quote is an SGX enclave's, not a TD's",
        ));
    };
    let collateral = collateral(quote, inline_collateral, policy.collateral_dir.as_deref())?;
    let verified = QuoteVerifier::new_prod()
        .allow_debug(true)
        .verify(quote, &collateral, now)
        .map_err(classify)?;
    let accepted: Vec<&str> = if policy.accepted_tcb_status.is_empty() {
        DEFAULT_ACCEPTED_STATUS.to_vec()
    } else {
        policy
            .accepted_tcb_status
            .iter()
            .map(String::as_str)
            .collect()
    };
    if !accepted.contains(&verified.status.as_str()) {
        return Err(err(
            Check::Tcb,
            format!(
                "TCB status {} is not accepted (accepted: {accepted:?}; advisories {:?})",
                verified.status, verified.advisory_ids
            ),
        ));
    }
    if let Some(advisory) = verified
        .advisory_ids
        .iter()
        .find(|a| !policy.accepted_advisories.contains(a))
    {
        return Err(err(
            Check::Tcb,
            format!("advisory {advisory} is not accepted by the policy"),
        ));
    }
    let rtmrs = [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3];
    for (index, expected) in &policy.rtmrs {
        let slot: usize = index
            .parse()
            .ok()
            .filter(|i| *i < 4)
            .ok_or_else(|| err(Check::Measurement, format!("RTMR{index} does not exist")))?;
        let actual = hex::encode(rtmrs[slot]);
        if &actual != expected {
            return Err(err(
                Check::Measurement,
                format!("RTMR{slot} is {actual}, the policy pins {expected}"),
            ));
        }
    }
    Ok(TdxFacts {
        mr_td: td.mr_td,
        rtmrs,
        report_data: td.report_data,
        debug: td.td_attributes[0] & TD_ATTRIBUTES_DEBUG != 0,
        tcb_status: verified.status,
        advisories: verified.advisory_ids,
        version: parsed.header.version,
    })
}

/// Names the check a `dcap-qvl` refusal belongs to: collateral out of its validity is
/// freshness; everything else is the platform's chain (signatures, certificates, the CRL).
fn classify(error: anyhow::Error) -> AttestError {
    let detail = format!("{error:#}");
    let lower = detail.to_lowercase();
    let check = if [
        "expired",
        "not yet valid",
        "in the future",
        "next update",
        "nextupdate",
        "too old",
    ]
    .iter()
    .any(|word| lower.contains(word))
    {
        Check::Freshness
    } else if lower.contains("tcb level") {
        // The platform's TCB is below every level Intel's TCB info lists.
        Check::Tcb
    } else {
        Check::Platform
    };
    err(check, format!("DCAP verification failed: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/vectors/tdx")
                .join(name),
        )
        .unwrap()
    }

    /// (latest issue date, earliest next update) of the collateral's TCB info and QE
    /// identity.
    fn validity(collateral: &[u8]) -> (u64, u64) {
        let c: serde_json::Value = serde_json::from_slice(collateral).unwrap();
        let dates = |field: &str| {
            let signed: serde_json::Value =
                serde_json::from_str(c[field].as_str().unwrap()).unwrap();
            (
                unix_time(signed["issueDate"].as_str().unwrap()),
                unix_time(signed["nextUpdate"].as_str().unwrap()),
            )
        };
        let ((tcb_issued, tcb_next), (qe_issued, qe_next)) =
            (dates("tcb_info"), dates("qe_identity"));
        (tcb_issued.max(qe_issued), tcb_next.min(qe_next))
    }

    /// A time inside the collateral's validity: an hour after its latest issue date.
    fn now_for(collateral: &[u8]) -> u64 {
        validity(collateral).0 + 3_600
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` → unix seconds (days from civil, for the tests only).
    fn unix_time(text: &str) -> u64 {
        let n = |r: std::ops::Range<usize>| text[r].parse::<i64>().unwrap();
        let (y, m, d) = (n(0..4), n(5..7), n(8..10));
        let (h, mi, s) = (n(11..13), n(14..16), n(17..19));
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        (days * 86_400 + h * 3_600 + mi * 60 + s) as u64
    }

    fn all_statuses() -> TdxPolicy {
        TdxPolicy::any_status()
    }

    /// The three real quotes verify to Intel's root with their collateral (a policy taking
    /// every status and advisory they come with).
    #[test]
    fn the_real_quotes_verify_to_intels_root() {
        for name in ["tdx_quote", "tdx_quote_td15ex"] {
            let (quote, collateral) = (vector(name), vector(&format!("{name}_collateral.json")));
            let policy = permissive(&quote, &collateral);
            let facts = verify(&quote, Some(&collateral), &policy, now_for(&collateral))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            eprintln!(
                "{name}: v{} status {} advisories {:?} debug {} mrtd {}",
                facts.version,
                facts.tcb_status,
                facts.advisories,
                facts.debug,
                hex::encode(facts.mr_td)
            );
            assert!(matches!(facts.version, 4 | 5), "{name}");
            assert!(!facts.debug, "{name}: a production TD");
        }
    }

    /// Every status and every advisory the quote comes with accepted.
    fn permissive(quote: &[u8], collateral: &[u8]) -> TdxPolicy {
        let verified = QuoteVerifier::new_prod()
            .allow_debug(true)
            .verify(
                quote,
                &serde_json::from_slice(collateral).unwrap(),
                now_for(collateral),
            )
            .unwrap();
        let mut policy = all_statuses();
        policy.accepted_advisories = verified.advisory_ids;
        policy
    }

    fn sample() -> (Vec<u8>, Vec<u8>) {
        (vector("tdx_quote"), vector("tdx_quote_collateral.json"))
    }

    fn check_of(result: Result<TdxFacts, AttestError>) -> Check {
        result.expect_err("must be refused").check
    }

    /// Every byte of the signed part (header and TD report: 48 + 584 bytes for a v4 quote)
    /// flipped in turn, a different bit each time: each is refused.
    #[test]
    fn every_byte_of_the_signed_td_report_flipped_is_caught() {
        let (quote, collateral) = sample();
        let policy = permissive(&quote, &collateral);
        let now = now_for(&collateral);
        let signed = parse(&quote).unwrap().signed_length();
        assert_eq!(signed, 48 + 584);
        let mut checks = std::collections::BTreeSet::new();
        for offset in 0..signed {
            let mut tampered = quote.clone();
            tampered[offset] ^= 1 << (offset % 8);
            match verify(&tampered, Some(&collateral), &policy, now) {
                Ok(_) => panic!("a flip at byte {offset} went unnoticed"),
                Err(e) => {
                    checks.insert(e.check);
                }
            }
        }
        assert!(checks.contains(&Check::Platform), "{checks:?}");
    }

    /// An out-of-date platform: its TCB is below every level Intel lists; refused by `tcb`.
    #[test]
    fn a_stale_tcb_is_refused_by_the_tcb_check() {
        let (quote, collateral) = (
            vector("tdx_quote_outdated"),
            vector("tdx_quote_outdated_collateral.json"),
        );
        let now = now_for(&collateral);
        let refused = verify(&quote, Some(&collateral), &all_statuses(), now).unwrap_err();
        assert_eq!(refused.check, Check::Tcb, "{refused}");
    }

    /// The status is Intel's word; the policy decides which it accepts. With `UpToDate`
    /// missing from the list, the up-to-date sample is refused by `tcb`.
    #[test]
    fn a_status_the_policy_does_not_list_is_refused() {
        let (quote, collateral) = sample();
        let policy = TdxPolicy {
            accepted_tcb_status: vec!["SWHardeningNeeded".into()],
            ..TdxPolicy::default()
        };
        let refused = verify(&quote, Some(&collateral), &policy, now_for(&collateral));
        assert_eq!(check_of(refused), Check::Tcb);
        // The default policy: `UpToDate` only, which this quote is.
        let facts = verify(
            &quote,
            Some(&collateral),
            &TdxPolicy::default(),
            now_for(&collateral),
        );
        assert_eq!(facts.unwrap().tcb_status, "UpToDate");
    }

    /// Collateral used past its next update (or before its issue) is refused by `freshness`.
    #[test]
    fn expired_collateral_is_refused_by_the_freshness_check() {
        let (quote, collateral) = sample();
        let (issued, next) = validity(&collateral);
        let policy = TdxPolicy::default();
        assert_eq!(
            check_of(verify(&quote, Some(&collateral), &policy, next + 86_400)),
            Check::Freshness
        );
        assert_eq!(
            check_of(verify(&quote, Some(&collateral), &policy, issued - 86_400)),
            Check::Freshness
        );
    }

    /// Collateral signed for another platform or tampered with: `platform`.
    #[test]
    fn tampered_or_foreign_collateral_is_refused() {
        let (quote, collateral) = sample();
        let now = now_for(&collateral);
        let mut c: serde_json::Value = serde_json::from_slice(&collateral).unwrap();
        let tcb = c["tcb_info"].as_str().unwrap().replace(
            "\"tcbEvaluationDataNumber\":",
            "\"tcbEvaluationDataNumber\": 1",
        );
        c["tcb_info"] = serde_json::Value::String(tcb);
        let tampered = serde_json::to_vec(&c).unwrap();
        let refused = verify(&quote, Some(&tampered), &TdxPolicy::default(), now).unwrap_err();
        assert!(
            matches!(refused.check, Check::Platform | Check::Format),
            "{refused}"
        );
        // The td15ex sample's collateral is for another platform's quote.
        let foreign = vector("tdx_quote_td15ex_collateral.json");
        assert!(verify(&quote, Some(&foreign), &TdxPolicy::default(), now).is_err());
    }

    /// RTMR pins: the right values pass, one wrong byte is refused by `measurement`.
    #[test]
    fn rtmr_pins_are_checked() {
        let (quote, collateral) = sample();
        let now = now_for(&collateral);
        let facts = verify(&quote, Some(&collateral), &TdxPolicy::default(), now).unwrap();
        let mut policy = TdxPolicy::default();
        for (i, rtmr) in facts.rtmrs.iter().enumerate().take(3) {
            policy.rtmrs.insert(i.to_string(), hex::encode(rtmr));
        }
        verify(&quote, Some(&collateral), &policy, now).unwrap();
        let mut wrong = facts.rtmrs[1];
        wrong[0] ^= 1;
        policy.rtmrs.insert("1".into(), hex::encode(wrong));
        let refused = verify(&quote, Some(&collateral), &policy, now).unwrap_err();
        assert_eq!(refused.check, Check::Measurement);
        assert!(refused.detail.contains("RTMR1"), "{refused}");
    }

    /// Offline collateral: `<collateral_dir>/<fmspc>.json`; without it the refusal names the
    /// file to fetch.
    #[test]
    fn collateral_comes_from_the_offline_folder_named_by_fmspc() {
        let (quote, collateral) = sample();
        let now = now_for(&collateral);
        let dir = tempfile::tempdir().unwrap();
        let policy = TdxPolicy {
            collateral_dir: Some(dir.path().to_owned()),
            ..TdxPolicy::default()
        };
        let name = format!("{}.json", fmspc(&quote).unwrap());
        let missing = verify(&quote, None, &policy, now).unwrap_err();
        assert_eq!(missing.check, Check::Platform);
        assert!(missing.detail.contains(&name), "{missing}");
        std::fs::write(dir.path().join(&name), &collateral).unwrap();
        verify(&quote, None, &policy, now).unwrap();
    }

    /// The debug attribute is TD_ATTRIBUTES bit 0 of the signed report: set in a real quote
    /// it breaks Intel's signature first (no debug TD's quote is available to test with), so
    /// the bit is read here from the parsed report, and the common `debug` check refuses it
    /// (`attest::verify` tests).
    #[test]
    fn the_debug_attribute_is_read_from_td_attributes() {
        let (mut quote, collateral) = sample();
        let td_attributes_at = 48 + 16 + 48 + 48 + 8;
        assert_eq!(
            parse(&quote)
                .unwrap()
                .report
                .as_td10()
                .unwrap()
                .td_attributes,
            quote[td_attributes_at..td_attributes_at + 8]
        );
        quote[td_attributes_at] |= TD_ATTRIBUTES_DEBUG;
        let parsed = parse(&quote).unwrap();
        assert_eq!(
            parsed.report.as_td10().unwrap().td_attributes[0] & TD_ATTRIBUTES_DEBUG,
            TD_ATTRIBUTES_DEBUG
        );
        assert_eq!(
            check_of(verify(
                &quote,
                Some(&collateral),
                &TdxPolicy::default(),
                now_for(&collateral)
            )),
            Check::Platform
        );
    }
}
