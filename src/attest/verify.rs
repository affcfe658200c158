//! The one verifier of attestation evidence (client library, `tee-risk client attest`,
//! tests): parse → verify the platform's signature chain (per TEE, in its module) → common
//! checks (allowed TEE kinds, measurement, debug, report_data binding, freshness) → a trusted
//! identity key. What is accepted is the [`Policy`] (`policy.rs`); a failure names the check.

use super::policy::Policy;
use super::release::Release;
use super::sim::SimReport;
#[cfg(feature = "snp")]
use super::snp;
#[cfg(feature = "tdx")]
use super::tdx;
use super::{
    AttestError, Binding, Check, EVIDENCE_VERSION, Evidence, NONCE_LEN, TeeKind, bound_report_data,
    err,
};
use crate::crypto::sm2::PublicKey;
use crate::protocol::{PublicJwk, b64_decode};

/// Evidence that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The kind of TEE that made the report.
    pub tee: TeeKind,
    pub measurement: String,
    pub debug: bool,
    /// When the report says it was made (sim); SNP reports carry no time: the nonce makes
    /// them fresh.
    pub issued_at: Option<i64>,
    /// The identity key the report binds: trust it for responses and key certificates.
    pub identity: PublicKey,
    /// The signed release that lists the measurement, when the policy names releases.
    pub release: Option<Release>,
}

/// Evidence that passed every check but the binding ([`Policy::verify_platform`]).
#[derive(Debug, Clone)]
pub struct PlatformVerified {
    pub tee: TeeKind,
    pub measurement: String,
    pub debug: bool,
    pub issued_at: Option<i64>,
    /// The key the evidence names; not to be trusted until report_data binds it.
    pub identity: PublicKey,
    /// What the report carries in report_data (REPORTDATA for TDX).
    pub report_data: [u8; 64],
    /// The signed release that lists the measurement, when the policy names releases.
    pub release: Option<Release>,
}

/// What the platform-specific step hands to the common checks.
struct PlatformReport {
    measurement: Vec<u8>,
    report_data: [u8; 64],
    debug: bool,
    issued_at: Option<i64>,
}

impl PlatformReport {
    /// A hardware report: it carries no time, the verifier's nonce makes it fresh.
    #[cfg(any(feature = "snp", feature = "tdx", feature = "csv"))]
    fn hardware(measurement: &[u8], report_data: [u8; 64], debug: bool) -> Self {
        Self {
            measurement: measurement.to_vec(),
            report_data,
            debug,
            issued_at: None,
        }
    }
}

impl Policy {
    /// Verifies `evidence` for the `nonce` this verifier sent, at `now`: the platform's
    /// report and the policy ([`Policy::verify_platform`]), then the binding of the nonce and
    /// the identity key in report_data.
    pub fn verify(
        &self,
        evidence: &Evidence,
        nonce: &[u8; NONCE_LEN],
        now: i64,
    ) -> Result<Verified, AttestError> {
        self.verify_bound(Binding::Identity, evidence, nonce, now)
    }

    /// [`Policy::verify`] for evidence made for the purpose `binding` names (a joining
    /// replica's report binds its ephemeral key under its own label).
    pub fn verify_bound(
        &self,
        binding: Binding,
        evidence: &Evidence,
        nonce: &[u8; NONCE_LEN],
        now: i64,
    ) -> Result<Verified, AttestError> {
        self.allowed_kind(evidence)?;
        if b64_decode(&evidence.nonce).as_deref() != Some(&nonce[..]) {
            return Err(err(Check::Nonce, "the evidence answers another nonce"));
        }
        if evidence.identity_key.key_use != binding.key_use() {
            return Err(err(
                Check::IdentityKey,
                format!("the bound key's use is not `{}`", binding.key_use()),
            ));
        }
        let platform = self.verify_platform(evidence, now)?;
        // Last: everything above holds for any report of this platform; this ties it to
        // this nonce and this key.
        if platform.report_data != bound_report_data(binding, nonce, &platform.identity) {
            return Err(err(
                Check::ReportData,
                "the report does not bind this nonce and key",
            ));
        }
        Ok(Verified {
            tee: platform.tee,
            measurement: platform.measurement,
            debug: platform.debug,
            issued_at: platform.issued_at,
            identity: platform.identity,
            release: platform.release,
        })
    }

    /// Every check but the binding: the evidence's format and TEE kind, the platform's
    /// signature chain, the measurement, debug and freshness under this policy. What passes
    /// here is a genuine report of an accepted platform and build, for *some* report_data:
    /// an operator's check of a report and its collateral (`tee-risk client
    /// verify-evidence`), never a trusted identity key on its own.
    pub fn verify_platform(
        &self,
        evidence: &Evidence,
        now: i64,
    ) -> Result<PlatformVerified, AttestError> {
        let kind = self.allowed_kind(evidence)?;
        let identity = jwk_key(&evidence.identity_key)?;
        let report = b64_decode(&evidence.report)
            .ok_or_else(|| err(Check::Format, "the report is not base64url"))?;
        let platform = match kind {
            TeeKind::Sim => self.verify_sim(&report, evidence)?,
            #[cfg(feature = "snp")]
            TeeKind::Snp => self.verify_snp(&report, evidence)?,
            #[cfg(feature = "tdx")]
            TeeKind::Tdx => self.verify_tdx(&report, evidence, now)?,
            #[cfg(not(feature = "snp"))]
            TeeKind::Snp => return Err(not_in_this_build("snp")),
            #[cfg(not(feature = "tdx"))]
            TeeKind::Tdx => return Err(not_in_this_build("tdx")),
            #[cfg(feature = "csv")]
            TeeKind::Csv => self.verify_csv(&report, evidence)?,
            #[cfg(not(feature = "csv"))]
            TeeKind::Csv => return Err(not_in_this_build("csv")),
        };
        let measurement = hex::encode(platform.measurement);
        let release = self.release_of(kind, &measurement).cloned();
        if release.is_none()
            && !self.allow_any_measurement
            && !self.measurements.contains(&measurement)
        {
            let releases = match self.releases.len() {
                0 => String::new(),
                n => format!(" nor in the {n} signed release manifest(s) it names"),
            };
            return Err(err(
                Check::Measurement,
                format!("measurement {measurement} of `{kind}` is not in the policy{releases}"),
            ));
        }
        if platform.debug && !self.allow_debug {
            return Err(err(
                Check::Debug,
                "the report comes from a debug-mode guest",
            ));
        }
        if let Some(issued_at) = platform.issued_at
            && now.abs_diff(issued_at) > self.max_age_secs.unsigned_abs()
        {
            return Err(err(
                Check::Freshness,
                format!(
                    "the report was issued at {issued_at}, more than {} s from now ({now})",
                    self.max_age_secs
                ),
            ));
        }
        Ok(PlatformVerified {
            tee: kind,
            measurement,
            debug: platform.debug,
            issued_at: platform.issued_at,
            identity,
            report_data: platform.report_data,
            release,
        })
    }

    /// The evidence's version and TEE kind, which this policy must allow.
    fn allowed_kind(&self, evidence: &Evidence) -> Result<TeeKind, AttestError> {
        if evidence.v != EVIDENCE_VERSION {
            return Err(err(
                Check::Format,
                format!("unknown evidence version {}", evidence.v),
            ));
        }
        let kind: TeeKind = evidence.tee.parse().map_err(|()| {
            err(
                Check::TeeKind,
                format!("`{}` is not a TEE kind this verifier knows", evidence.tee),
            )
        })?;
        if !self.allowed_tee.contains(&kind) {
            return Err(err(
                Check::TeeKind,
                format!(
                    "`{kind}` evidence is not allowed by this policy (allowed: {:?})",
                    self.allowed_tee
                ),
            ));
        }
        Ok(kind)
    }

    /// Sim: the pinned platform key signed the report.
    fn verify_sim(
        &self,
        report: &[u8],
        evidence: &Evidence,
    ) -> Result<PlatformReport, AttestError> {
        let sim = self
            .sim
            .as_ref()
            .ok_or_else(|| err(Check::Platform, "the policy pins no sim platform key"))?;
        let pem = std::fs::read_to_string(&sim.platform_key).map_err(|e| {
            err(
                Check::Platform,
                format!("cannot read {}: {e}", sim.platform_key.display()),
            )
        })?;
        let platform = PublicKey::from_pem(&pem).map_err(|_| {
            err(
                Check::Platform,
                "the pinned sim platform key is not an SM2 key",
            )
        })?;
        let signature = evidence
            .endorsements
            .get("sim_signature")
            .and_then(|s| b64_decode(s))
            .ok_or_else(|| err(Check::Platform, "no sim_signature endorsement"))?;
        platform.verify(report, &signature).map_err(|_| {
            err(
                Check::Platform,
                "the sim platform signature does not verify",
            )
        })?;
        let parsed = SimReport::decode(report).map_err(|e| err(Check::Format, e))?;
        Ok(PlatformReport {
            measurement: parsed.measurement.to_vec(),
            report_data: parsed.report_data,
            debug: parsed.debug,
            issued_at: Some(parsed.issued_at),
        })
    }

    /// SNP: AMD root → ASK → VCEK → report, VCEK extensions, VMPL 0, TCB floor.
    #[cfg(feature = "snp")]
    fn verify_snp(
        &self,
        report: &[u8],
        evidence: &Evidence,
    ) -> Result<PlatformReport, AttestError> {
        let policy = self.snp.clone().unwrap_or_default();
        let inline = optional_endorsement(evidence, "vcek")?;
        let facts = snp::verify(
            report,
            inline.as_deref(),
            policy.vcek_dir.as_deref(),
            &policy.min_tcb,
        )?;
        Ok(PlatformReport::hardware(
            &facts.measurement,
            facts.report_data,
            facts.debug,
        ))
    }
}

#[cfg(feature = "tdx")]
impl Policy {
    /// TDX: Intel root → PCK (and CRL) → QE report → quote; TCB status, advisories, RTMRs.
    fn verify_tdx(
        &self,
        report: &[u8],
        evidence: &Evidence,
        now: i64,
    ) -> Result<PlatformReport, AttestError> {
        let policy = self.tdx.clone().unwrap_or_default();
        let inline = optional_endorsement(evidence, "tdx_collateral")?;
        let now = u64::try_from(now).map_err(|_| err(Check::Freshness, "a time before 1970"))?;
        let facts = tdx::verify(report, inline.as_deref(), &policy, now)?;
        Ok(PlatformReport::hardware(
            &facts.mr_td,
            facts.report_data,
            facts.debug,
        ))
    }
}

#[cfg(feature = "csv")]
impl Policy {
    /// CSV: Hygon root → HSK → CEK → PEK → report.
    fn verify_csv(
        &self,
        report: &[u8],
        evidence: &Evidence,
    ) -> Result<PlatformReport, AttestError> {
        let policy = self.csv.clone().unwrap_or_default();
        let inline = optional_endorsement(evidence, "hsk_cek")?;
        let facts = super::csv::verify(report, inline.as_deref(), policy.hsk_cek_dir.as_deref())?;
        Ok(PlatformReport::hardware(
            &facts.measurement,
            facts.report_data,
            facts.debug,
        ))
    }
}

/// The endorsement `name`, decoded, when the evidence carries it.
/// The refusal of evidence whose verifier this build leaves out (a TEE's feature).
#[cfg(not(all(feature = "snp", feature = "tdx", feature = "csv")))]
fn not_in_this_build(tee: &str) -> AttestError {
    err(
        Check::TeeKind,
        format!("`{tee}` evidence cannot be verified by this build: build with `--features {tee}`"),
    )
}

#[cfg(any(feature = "snp", feature = "tdx", feature = "csv"))]
fn optional_endorsement(evidence: &Evidence, name: &str) -> Result<Option<Vec<u8>>, AttestError> {
    evidence
        .endorsements
        .get(name)
        .map(|text| {
            b64_decode(text).ok_or_else(|| {
                err(
                    Check::Format,
                    format!("the {name} endorsement is not base64url"),
                )
            })
        })
        .transpose()
}

fn jwk_key(jwk: &PublicJwk) -> Result<PublicKey, AttestError> {
    jwk.key()
        .map_err(|e| err(Check::IdentityKey, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::policy::SimPolicy;
    use crate::attest::report_data;
    use crate::attest::sim::SimPlatform;
    use crate::crypto::sm2::IdentityKey;
    use crate::protocol::b64_encode;
    use std::path::Path;

    const NOW: i64 = 1_795_000_000;

    struct Setup {
        _dir: tempfile::TempDir,
        platform: SimPlatform,
        identity: IdentityKey,
        policy: Policy,
    }

    fn setup(debug: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let platform = SimPlatform::new(IdentityKey::generate().unwrap(), [7; 32], debug);
        let pem = dir.path().join("sim.pem");
        std::fs::write(&pem, platform.public().to_pem()).unwrap();
        let policy = Policy {
            allowed_tee: vec![TeeKind::Sim],
            measurements: vec![hex::encode([7u8; 32])],
            allow_any_measurement: false,
            release: None,
            releases: vec![],
            allow_debug: false,
            max_age_secs: 300,
            sim: Some(SimPolicy { platform_key: pem }),
            snp: None,
            csv: None,
            tdx: None,
        };
        Setup {
            _dir: dir,
            platform,
            identity: IdentityKey::generate().unwrap(),
            policy,
        }
    }

    fn evidence(s: &Setup, nonce: &[u8; 32], identity: &PublicKey) -> Evidence {
        let (report, signature) = s
            .platform
            .report(report_data(nonce, identity), NOW)
            .unwrap();
        Evidence {
            v: EVIDENCE_VERSION,
            tee: "sim".into(),
            nonce: b64_encode(nonce),
            identity_key: PublicJwk::new(s.identity.public(), "sig"),
            report: b64_encode(&report),
            endorsements: [("sim_signature".to_owned(), b64_encode(&signature))].into(),
        }
    }

    fn failed_check(result: Result<Verified, AttestError>) -> Check {
        result.expect_err("must fail").check
    }

    #[test]
    fn sim_evidence_verifies_when_the_policy_allows_it() {
        let s = setup(false);
        let verified = s
            .policy
            .verify(&evidence(&s, &[1; 32], s.identity.public()), &[1; 32], NOW)
            .unwrap();
        assert_eq!(&verified.identity, s.identity.public());
        assert_eq!(verified.measurement, hex::encode([7u8; 32]));
    }

    #[test]
    fn each_check_fails_on_its_own_fault() {
        let s = setup(false);
        let good = evidence(&s, &[1; 32], s.identity.public());

        let mut refusing = s.policy.clone();
        refusing.allowed_tee = vec![TeeKind::Snp];
        assert_eq!(
            failed_check(refusing.verify(&good, &[1; 32], NOW)),
            "tee_kind"
        );
        // Evidence for another nonce.
        assert_eq!(failed_check(s.policy.verify(&good, &[2; 32], NOW)), "nonce");
        // A report bound to another nonce, relabelled with ours.
        let mut relabelled = evidence(&s, &[2; 32], s.identity.public());
        relabelled.nonce = b64_encode(&[1; 32]);
        assert_eq!(
            failed_check(s.policy.verify(&relabelled, &[1; 32], NOW)),
            "report_data"
        );
        // A report bound to another key, presented with ours.
        let other = IdentityKey::generate().unwrap();
        let wrong_key = evidence(&s, &[1; 32], other.public());
        assert_eq!(
            failed_check(s.policy.verify(&wrong_key, &[1; 32], NOW)),
            "report_data"
        );
        // A tampered report no longer carries the platform's signature.
        let mut tampered = good.clone();
        let mut report = b64_decode(&tampered.report).unwrap();
        report[12] ^= 1;
        tampered.report = b64_encode(&report);
        assert_eq!(
            failed_check(s.policy.verify(&tampered, &[1; 32], NOW)),
            "platform"
        );
        // Another platform key pinned.
        let stranger = setup(false);
        let mut other_pin = s.policy.clone();
        other_pin.sim = stranger.policy.sim.clone();
        assert_eq!(
            failed_check(other_pin.verify(&good, &[1; 32], NOW)),
            "platform"
        );
        let mut unlisted = s.policy.clone();
        unlisted.measurements = vec![hex::encode([8u8; 32])];
        assert_eq!(
            failed_check(unlisted.verify(&good, &[1; 32], NOW)),
            "measurement"
        );
        assert_eq!(
            failed_check(s.policy.verify(&good, &[1; 32], NOW + 301)),
            "freshness"
        );
    }

    #[test]
    fn debug_guests_are_refused_unless_allowed() {
        let s = setup(true);
        let e = evidence(&s, &[1; 32], s.identity.public());
        assert_eq!(failed_check(s.policy.verify(&e, &[1; 32], NOW)), "debug");
        let mut lenient = s.policy.clone();
        lenient.allow_debug = true;
        assert!(lenient.verify(&e, &[1; 32], NOW).unwrap().debug);
    }

    /// Evidence of kind `tee` for nonce [1; 32] and `identity`, with one endorsement.
    fn hardware_evidence(
        tee: &str,
        report: &[u8],
        endorsement: Option<(&str, &[u8])>,
        identity: &PublicKey,
    ) -> Evidence {
        Evidence {
            v: EVIDENCE_VERSION,
            tee: tee.into(),
            nonce: b64_encode(&[1; 32]),
            identity_key: PublicJwk::new(identity, "sig"),
            report: b64_encode(report),
            endorsements: endorsement
                .map(|(name, bytes)| (name.to_owned(), b64_encode(bytes)))
                .into_iter()
                .collect(),
        }
    }

    fn hardware_policy(tee: &str) -> Policy {
        Policy {
            allowed_tee: vec![tee.parse().unwrap()],
            measurements: vec![],
            allow_any_measurement: true,
            release: None,
            releases: vec![],
            allow_debug: false,
            max_age_secs: 300,
            sim: None,
            snp: None,
            csv: None,
            tdx: None,
        }
    }

    /// A real hardware report passes the platform checks and then fails the binding (its
    /// report_data was not made for our nonce and key); a tampered copy, a missing
    /// endorsement, and a policy listing another kind each fail with their check.
    fn check_real_hardware_report(
        tee: &str,
        report: &[u8],
        endorsement: (&str, &[u8]),
        tamper_at: usize,
    ) {
        let identity = IdentityKey::generate().unwrap();
        let policy = hardware_policy(tee);
        let verify = |policy: &Policy, report: &[u8], endorsement: Option<(&str, &[u8])>| {
            let evidence = hardware_evidence(tee, report, endorsement, identity.public());
            failed_check(policy.verify(&evidence, &[1; 32], NOW))
        };
        assert_eq!(verify(&policy, report, Some(endorsement)), "report_data");
        let mut tampered = report.to_vec();
        tampered[tamper_at] ^= 1;
        assert_eq!(verify(&policy, &tampered, Some(endorsement)), "platform");
        assert_eq!(verify(&policy, report, None), "platform");
        let sim_only = hardware_policy("sim");
        assert_eq!(verify(&sim_only, report, Some(endorsement)), "tee_kind");
    }

    /// The real Milan report, from the `sev` crate's test data.
    #[test]
    fn snp_evidence_is_checked_to_amds_root_then_for_the_binding() {
        let (report, vcek) = crate::attest::snp::milan_vectors();
        check_real_hardware_report("snp", &report, ("vcek", &vcek), 0x90);
    }

    /// The real Hygon report ("user data" in its report_data), from `csv-rs`'s test data.
    #[cfg(feature = "csv")]
    #[test]
    fn csv_evidence_is_checked_to_hygons_root_then_for_the_binding() {
        let (report, hsk_cek) = crate::attest::csv::hygon_vectors();
        check_real_hardware_report("csv", &report, ("hsk_cek", &hsk_cek), 100);
    }

    /// A build without the `csv` feature says so instead of accepting or misreading CSV
    /// evidence.
    #[cfg(not(feature = "csv"))]
    #[test]
    fn csv_evidence_needs_a_build_with_the_csv_feature() {
        let identity = IdentityKey::generate().unwrap();
        let evidence = hardware_evidence("csv", &[0; 2548], None, identity.public());
        let error = hardware_policy("csv")
            .verify(&evidence, &[1; 32], NOW)
            .unwrap_err();
        assert_eq!(error.check, "tee_kind");
        assert!(error.detail.contains("cannot be verified by this build"));
    }

    #[test]
    fn shipped_policies_load_and_the_default_refuses_sim() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let production = Policy::load(&root.join("config/attestation-policy.toml")).unwrap();
        assert!(!production.allowed_tee.contains(&TeeKind::Sim));
        let dev = Policy::load(&root.join("config/attestation-policy.dev.toml")).unwrap();
        assert_eq!(dev.allowed_tee, [TeeKind::Sim]);
        assert!(
            dev.sim
                .unwrap()
                .platform_key
                .ends_with("keys/sim-platform.pub.pem")
        );
    }
}
