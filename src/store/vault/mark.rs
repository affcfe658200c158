//! The high-water mark: a defence against a store that silently lost acknowledged writes.
//!
//! Every log-structured engine (sled included) ends its log at the first bad checksum, so a
//! few damaged bytes in the middle of the log make it drop everything after them, and it
//! then opens as if nothing had happened. The vault therefore keeps a count of commits in two
//! places:
//! - in the store, as the sealed meta record `commit-seq`, written before each group commit's
//!   flush (so it is durable with the writes that commit acknowledges);
//! - outside the store, in the file `high-water-mark` beside it: after each flush that
//!   succeeded, the same count, the audit log's length and head hash, sealed under the meta
//!   key (SM4-GCM; the count and audit fields are also in the clear, so that `db verify-log`
//!   can compare without a key).
//!
//! A store whose `commit-seq` is behind the mark, or whose audit log is shorter than the
//! mark's or ends elsewhere, lost acknowledged data: opening it is refused, with a message
//! that says so, unless the operator explicitly accepts the loss (which is then recorded in
//! the audit log and resets the mark). The mark protects against damage, not against a host
//! that rolls back both the store and the mark to an older consistent copy: that needs a
//! monotonic counter in the TEE (SECURITY.md).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Vault, VaultError};
use crate::obs::unix_now;
use crate::store::audit::{self, GENESIS};
use crate::store::{Store, Table};

/// The meta record holding the store's commit count.
pub(super) const COMMIT_SEQ_KEY: &[u8] = b"commit-seq";
/// The record key the mark file is sealed under (its AAD).
const MARK_RECORD_KEY: &[u8] = b"high-water-mark";
/// The mark's file name, beside the store's folder.
pub const MARK_FILE: &str = "high-water-mark";

/// What the mark says the store holds at least.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mark {
    /// Commits made durable.
    pub commits: u64,
    /// Audit log entries.
    pub audit_len: u64,
    /// The hash of the last audit entry ([`GENESIS`] when there is none).
    pub audit_head: String,
}

/// The mark file: the mark in the clear (for `db verify-log`, which holds no key) and
/// sealed (for everything that does).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkFile {
    clear: Mark,
    /// Hex of the mark sealed as a meta record.
    sealed: String,
}

/// What the store holds against a mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MarkCheck {
    /// The mark (what was acknowledged).
    pub mark: Mark,
    /// The store's own commit count.
    pub store_commits: u64,
    /// The store's audit log length.
    pub store_audit_len: u64,
    /// Why the store is behind, if it is.
    pub behind: Option<String>,
}

/// Reads the mark in the clear, without a key (`db verify-log`); `None` without a file.
pub fn read_clear(dir: &Path) -> Result<Option<Mark>, VaultError> {
    let path = dir.join(MARK_FILE);
    let Some(file) = read_file(&path)? else {
        return Ok(None);
    };
    Ok(Some(file.clear))
}

fn read_file(path: &Path) -> Result<Option<MarkFile>, VaultError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| VaultError::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VaultError::Corrupt(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Compares the audit log of `store` with `mark`: `Some(why)` when the log is behind it.
pub fn audit_behind(store: &dyn Store, mark: &Mark) -> Option<String> {
    match audit::verify(store) {
        Ok(entries) => entries_behind(&entries, mark),
        Err(e) => Some(format!("the audit log is broken: {e}")),
    }
}

/// [`audit_behind`] on entries already read.
fn entries_behind(entries: &[audit::AuditEntry], mark: &Mark) -> Option<String> {
    let len = entries.len() as u64;
    if len < mark.audit_len {
        return Some(format!(
            "the audit log has {len} entries, the high-water mark {}",
            mark.audit_len
        ));
    }
    let head = match mark.audit_len {
        0 => GENESIS,
        n => entries[usize::try_from(n - 1).unwrap_or(usize::MAX)]
            .hash
            .as_str(),
    };
    (head != mark.audit_head).then(|| {
        format!(
            "audit entry {} is not the one the high-water mark recorded",
            mark.audit_len
        )
    })
}

impl Vault {
    /// Whether any table of data (templates, history, risk logs) holds a record.
    fn holds_records(&self) -> Result<bool, VaultError> {
        for table in [Table::UserData, Table::FeatureHistory, Table::RiskLogs] {
            if self.store().last(table)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The store's own commit count (0 before the first commit).
    pub(super) fn store_commits(&self) -> Result<u64, VaultError> {
        match self.store().get(Table::Meta, COMMIT_SEQ_KEY)? {
            Some(sealed) => self.unseal(Table::Meta, COMMIT_SEQ_KEY, &sealed),
            None => Ok(0),
        }
    }

    /// Keeps the high-water mark in `dir` (the data folder) from now on, after checking the
    /// store against the mark already there. A store behind it is refused with
    /// [`VaultError::BehindHighWaterMark`] unless `accept_loss`, which records the loss in
    /// the audit log and moves the mark down to what the store holds.
    pub fn keep_high_water_mark(
        &mut self,
        dir: &Path,
        accept_loss: bool,
    ) -> Result<(), VaultError> {
        let check = self.check_high_water_mark(dir)?;
        if let Some(behind) = &check.behind {
            if !accept_loss {
                return Err(VaultError::BehindHighWaterMark {
                    detail: behind.clone(),
                    mark_commits: check.mark.commits,
                    store_commits: check.store_commits,
                });
            }
            tracing::error!(
                %behind,
                "the database is behind its high-water mark: serving what is left, as the \
                 operator accepted the loss"
            );
            audit::append(
                self.store(),
                unix_now(),
                "data_loss_accepted",
                vec![self.key_id().to_string()],
                [
                    ("mark_commits".to_owned(), check.mark.commits),
                    ("store_commits".to_owned(), check.store_commits),
                    ("mark_audit_len".to_owned(), check.mark.audit_len),
                    ("store_audit_len".to_owned(), check.store_audit_len),
                ]
                .into(),
            )?;
        }
        self.mark_dir = Some(dir.to_owned());
        *self.commits.lock().unwrap_or_else(|p| p.into_inner()) = check.store_commits;
        // Written now, so that the mark matches the store from the first request on.
        self.flush()?;
        Ok(())
    }

    /// Starts the high-water mark in `dir` for a store this process has just built from
    /// records of another (`db salvage`): its count starts at what the store holds. Refused
    /// where a mark exists already (that store has a history to be checked against).
    pub fn start_high_water_mark(&mut self, dir: &Path) -> Result<(), VaultError> {
        if read_file(&dir.join(MARK_FILE))?.is_some() {
            return Err(VaultError::Refused(format!(
                "{} already has a high-water mark: a salvage writes into a new folder",
                dir.display()
            )));
        }
        self.mark_dir = Some(dir.to_owned());
        *self.commits.lock().unwrap_or_else(|p| p.into_inner()) = self.store_commits()?;
        self.flush()?;
        Ok(())
    }

    /// The store against the mark in `dir`. A missing mark is a mark of zero only for a new
    /// store (no commits, no records); for any other it is a store that cannot be checked,
    /// reported as behind.
    pub fn check_high_water_mark(&self, dir: &Path) -> Result<MarkCheck, VaultError> {
        let store_commits = self.store_commits()?;
        let audit = audit::verify(self.store());
        let store_audit_len = audit.as_ref().map_or(0, |e| e.len() as u64);
        let path = dir.join(MARK_FILE);
        let mark = match read_file(&path)? {
            // No mark: a new store, or one whose mark was removed. The store records that it
            // had one (its commit count: every commit under a mark counts), and a store that
            // holds records had one too.
            None if store_commits > 0 || self.holds_records()? => {
                return Ok(MarkCheck {
                    behind: Some(format!(
                        "the high-water mark {} is missing, but the store holds {store_commits} commits \
                         and records: the mark was removed or lost, so the store cannot be checked \
                         for lost data; put the mark back (it is in every copy of the data folder)",
                        path.display()
                    )),
                    mark: Mark {
                        commits: 0,
                        audit_len: 0,
                        audit_head: GENESIS.to_owned(),
                    },
                    store_commits,
                    store_audit_len,
                });
            }
            None => Mark {
                commits: 0,
                audit_len: 0,
                audit_head: GENESIS.to_owned(),
            },
            Some(file) => {
                let sealed = hex::decode(&file.sealed).map_err(|_| {
                    VaultError::Corrupt("the high-water mark is not sealed hex".into())
                })?;
                match self.unseal::<Mark>(Table::Meta, MARK_RECORD_KEY, &sealed) {
                    Ok(mark) if mark == file.clear => mark,
                    Ok(_) => {
                        return Err(VaultError::Corrupt(
                            "the high-water mark's clear copy differs from its sealed one".into(),
                        ));
                    }
                    // Sealed under a key this start does not hold: the mark of a later
                    // database (a backup from before a rotation was put back). It cannot be
                    // checked, so the store is taken as behind it until the operator accepts.
                    Err(VaultError::Record {
                        source: crate::store::record::RecordError::WrongKey { found, .. },
                        ..
                    }) => {
                        return Ok(MarkCheck {
                            behind: Some(format!(
                                "the high-water mark is sealed under master key {found}, which \
                                 this start does not hold: the store is older than the mark \
                                 (a backup from before a key rotation?)"
                            )),
                            mark: file.clear,
                            store_commits,
                            store_audit_len,
                        });
                    }
                    Err(other) => return Err(other),
                }
            }
        };
        let behind = if store_commits < mark.commits {
            Some(format!(
                "the store holds {store_commits} commits, the high-water mark {}: {} \
                 acknowledged commits are missing",
                mark.commits,
                mark.commits - store_commits
            ))
        } else {
            match &audit {
                Ok(entries) => entries_behind(entries, &mark),
                Err(e) => Some(format!("the audit log is broken: {e}")),
            }
        };
        Ok(MarkCheck {
            mark,
            store_commits,
            store_audit_len,
            behind,
        })
    }

    /// One group commit: the next commit count into the store, the flush, then the mark
    /// beside the store (when one is kept). Runs in the group commit's leader only.
    pub(super) fn commit_and_mark(&self) -> Result<(), VaultError> {
        let Some(dir) = &self.mark_dir else {
            return Ok(self.store().flush()?);
        };
        let mut commits = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        let next = *commits + 1;
        let sealed = self.seal_value(Table::Meta, COMMIT_SEQ_KEY, &next)?;
        self.store().insert(Table::Meta, COMMIT_SEQ_KEY, sealed)?;
        self.store().flush()?;
        *commits = next;
        let (audit_len, audit_head) = match self.store().last(Table::Audit)? {
            Some((key, value)) => {
                let entry: audit::AuditEntry = serde_json::from_slice(&value)
                    .map_err(|e| VaultError::Corrupt(format!("audit log: {e}")))?;
                let seq = <[u8; 8]>::try_from(key.as_slice()).map_or(0, u64::from_be_bytes);
                (seq + 1, entry.hash)
            }
            None => (0, GENESIS.to_owned()),
        };
        let mark = Mark {
            commits: next,
            audit_len,
            audit_head,
        };
        let sealed = self.seal_value(Table::Meta, MARK_RECORD_KEY, &mark)?;
        write_mark(
            dir,
            &MarkFile {
                clear: mark,
                sealed: hex::encode(sealed),
            },
        )
    }
}

/// Replaces the mark file: a new file synced, then renamed over the old one, so that a crash
/// leaves either mark whole (an older one only weakens the check, never fails it).
fn write_mark(dir: &Path, file: &MarkFile) -> Result<(), VaultError> {
    use std::io::Write;
    let path: PathBuf = dir.join(MARK_FILE);
    let temporary = dir.join(format!("{MARK_FILE}.new"));
    let fail = |e: std::io::Error| {
        VaultError::Store(crate::store::StoreError::Backend(format!(
            "cannot write the high-water mark {}: {e}",
            path.display()
        )))
    };
    let mut out = std::fs::File::create(&temporary).map_err(fail)?;
    out.write_all(&serde_json::to_vec(file).expect("a mark always serialises"))
        .map_err(fail)?;
    out.sync_all().map_err(fail)?;
    std::fs::rename(&temporary, &path).map_err(fail)
}
