//! What a verifier accepts: the attestation policy, read from a TOML file
//! (`config/attestation-policy*.toml`, docs/ATTESTATION.md). Unknown keys are errors. The
//! format holds every TEE's section whatever the build verifies, so that one policy file
//! serves every verifier; a build without a TEE's verifier refuses its evidence by name.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::TeeKind;
use super::release::{Release, ReleaseError, ReleaseLog, SignedManifest};
use crate::crypto::sm2::PublicKey;

/// What a verifier accepts. Unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// TEE kinds accepted: `snp`, `csv`, `sim`. Sim evidence proves nothing about hardware;
    /// list it only for development.
    pub allowed_tee: Vec<TeeKind>,
    /// Accepted measurements (lowercase hex).
    #[serde(default)]
    pub measurements: Vec<String>,
    /// Accept any measurement (development only).
    #[serde(default)]
    pub allow_any_measurement: bool,
    /// Signed release manifests whose measurements are accepted too (`[release]`).
    #[serde(default)]
    pub release: Option<ReleasePolicy>,
    /// The manifests, opened: by [`Policy::load`] from `release`, or by
    /// [`Policy::require_releases`].
    #[serde(skip)]
    pub releases: Vec<Release>,
    /// Accept reports from debug-mode guests.
    #[serde(default)]
    pub allow_debug: bool,
    /// Reports issued longer ago than this (or in the future by more) are refused.
    pub max_age_secs: i64,
    #[serde(default)]
    pub sim: Option<SimPolicy>,
    #[serde(default)]
    pub snp: Option<SnpPolicy>,
    /// Hygon CSV (verified only by builds with the `csv` feature).
    #[serde(default)]
    pub csv: Option<CsvPolicy>,
    /// Intel TDX: accepted TCB statuses and advisories, RTMR pins, offline collateral.
    #[serde(default)]
    pub tdx: Option<TdxPolicy>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvPolicy {
    /// Offline HSK ‖ CEK files from Hygon's key server, named `<chip serial>.cert`
    /// (relative to the policy file), for evidence that carries none.
    #[serde(default)]
    pub hsk_cek_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpPolicy {
    /// The lowest reported TCB accepted, component by component.
    #[serde(default)]
    pub min_tcb: Tcb,
    /// Offline VCEKs, named `<chip id hex>-<bl>-<tee>-<snp>-<ucode>.der` (relative to the
    /// policy file), for evidence that carries none.
    #[serde(default)]
    pub vcek_dir: Option<PathBuf>,
}

/// `[release]`: accept the measurements that signed release manifests list
/// (docs/ATTESTATION.md, "From measurement to source").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasePolicy {
    /// The release key's public PEM, relative to the policy file.
    pub key: PathBuf,
    /// Signed manifests (`release.json`), relative to the policy file.
    pub manifests: Vec<PathBuf>,
    /// The release log (`releases.log`): when named, every manifest must be in it.
    #[serde(default)]
    pub log: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimPolicy {
    /// The pinned sim platform public key (PEM), relative to the policy file.
    pub platform_key: PathBuf,
}

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The policy file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not a policy (unknown keys are errors).
    #[error("{path}: {source}")]
    Parse {
        /// The policy file.
        path: PathBuf,
        /// What the TOML parser said.
        source: toml::de::Error,
    },
    /// A release the policy names does not pass its checks.
    #[error("{path}: {source}")]
    Release {
        /// The policy file.
        path: PathBuf,
        /// The failed check.
        source: ReleaseError,
    },
    /// The policy contradicts itself.
    #[error("{path}: {detail}")]
    Invalid {
        /// The policy file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// A minimum TCB (security patch levels), compared component by component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tcb {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

/// What a TDX policy adds to the common ones (`[tdx]` in a policy file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxPolicy {
    /// TCB statuses accepted (Intel's names: `UpToDate`, `SWHardeningNeeded`,
    /// `ConfigurationNeeded`, `ConfigurationAndSWHardeningNeeded`, `OutOfDate`, …); default
    /// `UpToDate` only.
    #[serde(default)]
    pub accepted_tcb_status: Vec<String>,
    /// Advisories (`INTEL-SA-…`) accepted; a status that comes with any other is refused.
    #[serde(default)]
    pub accepted_advisories: Vec<String>,
    /// RTMRs to pin, by index (0–3), lowercase hex of 48 bytes. RTMR0 holds the TD's
    /// firmware configuration, RTMR1 the kernel and its command line, RTMR2 the initrd and
    /// what the kernel measures; RTMR3 is left to the workload.
    #[serde(default)]
    pub rtmrs: std::collections::BTreeMap<String, String>,
    /// Offline collateral files, `<fmspc hex>.json` (relative to the policy file).
    #[serde(default)]
    pub collateral_dir: Option<std::path::PathBuf>,
}

/// The TCB statuses accepted when the policy names none.
pub const DEFAULT_ACCEPTED_STATUS: &[&str] = &["UpToDate"];

/// Every TCB status Intel's TCB info uses (for policies that take them all: tests, fuzzing).
pub const ALL_TCB_STATUSES: [&str; 6] = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
];

impl TdxPolicy {
    /// A policy that accepts every TCB status (and no advisory).
    pub fn any_status() -> Self {
        Self {
            accepted_tcb_status: ALL_TCB_STATUSES.map(String::from).to_vec(),
            ..Self::default()
        }
    }
}

impl Policy {
    /// Loads a policy file; a relative `sim.platform_key` is resolved against its folder.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut policy: Policy = toml::from_str(&text).map_err(|source| PolicyError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(sim) = policy.sim.as_mut()
            && sim.platform_key.is_relative()
        {
            sim.platform_key = base.join(&sim.platform_key);
        }
        if let Some(dir) = policy.snp.as_mut().and_then(|p| p.vcek_dir.as_mut())
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
        if let Some(dir) = policy.csv.as_mut().and_then(|p| p.hsk_cek_dir.as_mut())
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
        if let Some(dir) = policy.tdx.as_mut().and_then(|p| p.collateral_dir.as_mut())
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
        if let Some(release) = policy.release.clone() {
            if policy.allow_any_measurement {
                return Err(PolicyError::Invalid {
                    path: path.to_owned(),
                    detail: "`allow_any_measurement` and `[release]` contradict each other".into(),
                });
            }
            let failed = |source| PolicyError::Release {
                path: path.to_owned(),
                source,
            };
            let manifests: Vec<PathBuf> = release.manifests.iter().map(|m| base.join(m)).collect();
            let log = release.log.as_ref().map(|l| base.join(l));
            policy.releases = load_releases(&base.join(&release.key), &manifests, log.as_deref())
                .map_err(failed)?;
        }
        Ok(policy)
    }

    /// This policy with its measurements replaced by those of signed release manifests: a
    /// measurement passes only if a manifest signed by `key` lists it (and, with a `log`,
    /// only if the log lists the manifest).
    pub fn require_releases(
        self,
        key: &PublicKey,
        manifests: &[SignedManifest],
        log: Option<&ReleaseLog>,
    ) -> Result<Self, ReleaseError> {
        Ok(self.only_releases(open_releases(key, manifests, log)?))
    }

    /// This policy with its measurements replaced by those of `releases` (opened already,
    /// e.g. by [`load_releases`]).
    pub fn only_releases(mut self, releases: Vec<Release>) -> Self {
        self.releases = releases;
        self.measurements.clear();
        self.allow_any_measurement = false;
        self
    }

    /// The release that lists `measurement` of a `tee`, if any.
    pub fn release_of(&self, tee: TeeKind, measurement: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.lists(tee, measurement))
    }
}

/// Reads a release key's public PEM.
pub fn read_release_key(path: &Path) -> Result<PublicKey, ReleaseError> {
    let failed = |detail: String| ReleaseError {
        check: super::release::ReleaseCheck::Key,
        detail,
    };
    let pem = std::fs::read_to_string(path)
        .map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
    PublicKey::from_pem(&pem)
        .map_err(|_| failed(format!("{} is not an SM2 public key PEM", path.display())))
}

/// The release key, the signed manifests and the log (optional) read from their files, and
/// the manifests opened: each signed by that key (and listed in the log).
pub fn load_releases(
    key: &Path,
    manifests: &[PathBuf],
    log: Option<&Path>,
) -> Result<Vec<Release>, ReleaseError> {
    let key = read_release_key(key)?;
    let manifests = manifests
        .iter()
        .map(|m| SignedManifest::load(m))
        .collect::<Result<Vec<_>, _>>()?;
    let log = log.map(ReleaseLog::load).transpose()?;
    open_releases(&key, &manifests, log.as_ref())
}

fn open_releases(
    key: &PublicKey,
    manifests: &[SignedManifest],
    log: Option<&ReleaseLog>,
) -> Result<Vec<Release>, ReleaseError> {
    manifests
        .iter()
        .map(|signed| {
            let release = signed.open(key)?;
            if let Some(log) = log {
                log.inclusion(&release)?;
            }
            Ok(release)
        })
        .collect()
}
