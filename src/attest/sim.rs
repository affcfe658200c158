//! The simulated TEE (`tee: "sim"`) for machines without TEE hardware. Unlike a sim mode that
//! returns no report at all, sim evidence goes through every check a hardware report does
//! (measurement, report_data binding, debug flag, age) except the hardware chain: the report
//! is signed by a local "sim platform" SM2 key that verifiers pin. It proves nothing about
//! the machine, which is why verifiers refuse it unless their policy lists `sim`, and why the
//! service refuses sim mode on a machine that has a TEE device.
//!
//! ```text
//! report (115 bytes) = magic "TRSIMRPT" ‖ u16be version (1) ‖ measurement (32)
//!                      ‖ report_data (64) ‖ debug (1 byte: 0 or 1) ‖ i64be issued_at
//! signature          = SM2 (default ID) over the report, DER, by the sim platform key
//! ```

use std::path::Path;
use std::sync::{Arc, OnceLock};

use super::EvidenceError;
use crate::crypto::sm2::IdentityKey;

pub const MAGIC: &[u8; 8] = b"TRSIMRPT";
pub const VERSION: u16 = 1;
pub const REPORT_LEN: usize = 8 + 2 + 32 + 64 + 1 + 8;
/// Devices whose presence means a real TEE is available: sim mode is refused there.
pub const TEE_DEVICES: [&str; 3] = ["/dev/sev-guest", "/dev/csv-guest", "/dev/tdx_guest"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimReport {
    pub measurement: [u8; 32],
    pub report_data: [u8; 64],
    pub debug: bool,
    pub issued_at: i64,
}

impl SimReport {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REPORT_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&self.measurement);
        out.extend_from_slice(&self.report_data);
        out.push(u8::from(self.debug));
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out
    }

    /// Parses exactly [`REPORT_LEN`] bytes with the right magic, version and debug byte.
    pub fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        if bytes.len() != REPORT_LEN {
            return Err("a sim report is 115 bytes");
        }
        if &bytes[..8] != MAGIC || bytes[8..10] != VERSION.to_be_bytes() {
            return Err("not a version 1 sim report");
        }
        let debug = match bytes[106] {
            0 => false,
            1 => true,
            _ => return Err("the debug flag is neither 0 nor 1"),
        };
        Ok(Self {
            measurement: bytes[10..42].try_into().expect("length checked"),
            report_data: bytes[42..106].try_into().expect("length checked"),
            debug,
            issued_at: i64::from_be_bytes(bytes[107..115].try_into().expect("length checked")),
        })
    }
}

/// Where the measurement a sim report carries comes from.
pub enum Measurement {
    Fixed([u8; 32]),
    /// SM3 of this file, computed at the first report (hashing a large executable at start-up
    /// would delay every start).
    FileDigest(std::path::PathBuf),
}

/// The service side of sim mode: the platform key and the measurement it reports.
pub struct SimPlatform {
    key: IdentityKey,
    measurement: Measurement,
    /// The file digest, once computed (the error kept so that every report says it).
    digest: OnceLock<Result<[u8; 32], Arc<std::io::Error>>>,
    debug: bool,
}

impl SimPlatform {
    pub fn new(key: IdentityKey, measurement: [u8; 32], debug: bool) -> Self {
        Self::with_measurement(key, Measurement::Fixed(measurement), debug)
    }

    pub fn with_measurement(key: IdentityKey, measurement: Measurement, debug: bool) -> Self {
        Self {
            key,
            measurement,
            digest: OnceLock::new(),
            debug,
        }
    }

    /// The measurement reports carry.
    pub fn measurement(&self) -> Result<[u8; 32], EvidenceError> {
        match &self.measurement {
            Measurement::Fixed(m) => Ok(*m),
            Measurement::FileDigest(path) => self
                .digest
                .get_or_init(|| {
                    std::fs::read(path)
                        .map(|bytes| crate::crypto::sm3(&bytes))
                        .map_err(Arc::new)
                })
                .clone()
                .map_err(|e| EvidenceError::File {
                    path: path.clone(),
                    source: std::io::Error::new(e.kind(), e.to_string()),
                }),
        }
    }

    /// Refuses to simulate a TEE on a machine that has one: returns the device found.
    pub fn tee_device_present() -> Option<&'static str> {
        TEE_DEVICES.iter().copied().find(|d| Path::new(d).exists())
    }

    pub fn public(&self) -> &crate::crypto::sm2::PublicKey {
        self.key.public()
    }

    /// A signed report carrying `report_data`.
    pub fn report(
        &self,
        report_data: [u8; 64],
        now: i64,
    ) -> Result<(Vec<u8>, Vec<u8>), EvidenceError> {
        let report = SimReport {
            measurement: self.measurement()?,
            report_data,
            debug: self.debug,
            issued_at: now,
        }
        .encode();
        let signature = self.key.sign_der(&[&report])?;
        Ok((report, signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_malformed_ones_are_refused() {
        let report = SimReport {
            measurement: [3; 32],
            report_data: [4; 64],
            debug: true,
            issued_at: 1_795_000_000,
        };
        let bytes = report.encode();
        assert_eq!(bytes.len(), REPORT_LEN);
        assert_eq!(SimReport::decode(&bytes).unwrap(), report);
        assert!(SimReport::decode(&bytes[1..]).is_err());
        let mut bad_magic = bytes.clone();
        bad_magic[0] ^= 1;
        assert!(SimReport::decode(&bad_magic).is_err());
        let mut bad_flag = bytes;
        bad_flag[106] = 2;
        assert!(SimReport::decode(&bad_flag).is_err());
    }
}
