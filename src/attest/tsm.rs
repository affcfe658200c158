//! Linux's common interface for confidential-computing reports, configfs-tsm
//! (`/sys/kernel/config/tsm/report`, Linux 6.7+), which serves TDX and SEV-SNP guests alike:
//! make an entry, write the 64 bytes of report data to `inblob`, read the report or quote
//! from `outblob` (and the platform's certificates, if any, from `auxblob`), remove the
//! entry. `provider` names the TEE (`tdx_guest`, `sev_guest`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::EvidenceError;

/// Where the kernel offers report entries.
pub const REPORT_DIR: &str = "/sys/kernel/config/tsm/report";
/// The device of a TDX guest (present with or without configfs-tsm).
pub const TDX_GUEST_DEVICE: &str = "/dev/tdx_guest";

/// A report the kernel made.
pub struct TsmReport {
    /// The TEE that made it (`tdx_guest`, `sev_guest`).
    pub provider: String,
    /// The report or quote.
    pub outblob: Vec<u8>,
    /// The platform's certificates, when the provider gives any.
    pub auxblob: Option<Vec<u8>>,
}

/// Whether this kernel offers configfs-tsm reports.
pub fn available() -> bool {
    Path::new(REPORT_DIR).is_dir()
}

fn device_error(detail: String) -> EvidenceError {
    EvidenceError::Device {
        device: REPORT_DIR,
        detail,
    }
}

/// Asks the kernel for a report binding `report_data`.
pub fn report(report_data: [u8; 64]) -> Result<TsmReport, EvidenceError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let entry: PathBuf = Path::new(REPORT_DIR).join(format!(
        "tee-risk-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&entry).map_err(|e| device_error(format!("cannot make an entry: {e}")))?;
    // The entry is removed whatever happens next.
    let result = read_entry(&entry, report_data);
    let _ = std::fs::remove_dir(&entry);
    result
}

fn read_entry(entry: &Path, report_data: [u8; 64]) -> Result<TsmReport, EvidenceError> {
    let read = |name: &str| {
        std::fs::read(entry.join(name)).map_err(|e| device_error(format!("{name}: {e}")))
    };
    std::fs::write(entry.join("inblob"), report_data)
        .map_err(|e| device_error(format!("inblob: {e}")))?;
    let provider = String::from_utf8_lossy(&read("provider")?)
        .trim()
        .to_owned();
    let outblob = read("outblob")?;
    let auxblob = read("auxblob").ok().filter(|blob| !blob.is_empty());
    Ok(TsmReport {
        provider,
        outblob,
        auxblob,
    })
}
