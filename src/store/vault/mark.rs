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
//!   can compare without a key). The file holds two fixed-size slots written in turn, in
//!   place (a torn write spoils one slot, and the other holds the mark before it); the
//!   reader takes the slot with the highest count. It is not synced on the request path:
//!   the store's flush is the one fsync a request waits for. `sync_high_water_mark` syncs
//!   it, every second from the background and at every stop
//!   (docs/adr/0003-high-water-mark-sync.md says why that keeps every guarantee the mark
//!   gives).
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
/// Bytes per slot of the mark file (two slots): a mark's JSON, padded with spaces and a
/// newline. A mark takes about 600 bytes.
const SLOT_LEN: usize = 1024;

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

/// The mark a file holds: of its two slots, the one with the highest count that parses (a
/// torn slot does not); a file of one JSON document is a mark written before the slots.
fn read_file(path: &Path) -> Result<Option<MarkFile>, VaultError> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() == 2 * SLOT_LEN => bytes
            .chunks(SLOT_LEN)
            .filter_map(|slot| serde_json::from_slice::<MarkFile>(slot.trim_ascii_end()).ok())
            .max_by_key(|file| file.clear.commits)
            .map(Some)
            .ok_or_else(|| {
                VaultError::Corrupt(format!("{}: neither slot holds a mark", path.display()))
            }),
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
        // Written and synced now, so that the mark matches the store from the first request.
        self.flush()?;
        self.sync_high_water_mark()
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
        self.sync_high_water_mark()
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
        let slot = slot_bytes(&MarkFile {
            clear: mark,
            sealed: hex::encode(sealed),
        })?;
        let mut file = self.mark_file.lock().unwrap_or_else(|p| p.into_inner());
        match file.as_ref() {
            Some(open) => {
                use std::os::unix::fs::FileExt;
                let offset = (next % 2) * SLOT_LEN as u64;
                open.write_all_at(&slot, offset)
                    .map_err(|e| mark_error(dir, "write", e))?;
                self.mark_unsynced
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            // The first mark of this process: a whole new file, synced.
            None => *file = Some(create_mark_file(dir, &slot)?),
        }
        Ok(())
    }

    /// Makes the latest mark durable (the file and the directory entry that names it), if
    /// one was written since the last sync. Called every second by the server and after
    /// every last flush; a crash before it leaves an older mark, which only weakens the
    /// check by the commits of the last second, never fails it.
    pub fn sync_high_water_mark(&self) -> Result<(), VaultError> {
        let Some(dir) = &self.mark_dir else {
            return Ok(());
        };
        if !self
            .mark_unsynced
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(());
        }
        // A slot written after the flag was cleared sets it again, so the next call syncs it.
        let file = self.mark_file.lock().unwrap_or_else(|p| p.into_inner());
        let Some(file) = file.as_ref() else {
            return Ok(());
        };
        file.sync_data().map_err(|e| {
            self.mark_unsynced
                .store(true, std::sync::atomic::Ordering::Release);
            mark_error(dir, "sync", e)
        })
    }
}

/// A mark as one slot: its JSON, padded with spaces to `SLOT_LEN` (a newline last).
fn slot_bytes(file: &MarkFile) -> Result<Vec<u8>, VaultError> {
    let mut slot = serde_json::to_vec(file).expect("a mark always serialises");
    if slot.len() >= SLOT_LEN {
        return Err(VaultError::Corrupt(format!(
            "a high-water mark of {} bytes does not fit its {SLOT_LEN}-byte slot",
            slot.len()
        )));
    }
    slot.resize(SLOT_LEN - 1, b' ');
    slot.push(b'\n');
    Ok(slot)
}

fn mark_error(dir: &Path, what: &str, e: std::io::Error) -> VaultError {
    VaultError::Store(crate::store::StoreError::Backend(format!(
        "cannot {what} the high-water mark {}: {e}",
        dir.join(MARK_FILE).display()
    )))
}

/// Replaces the mark file by one whose two slots hold `slot`: a new file written and synced,
/// renamed over the old one, and the folder synced, so that a crash leaves either file
/// whole. Returns the new file, open for the slots' writes in place.
fn create_mark_file(dir: &Path, slot: &[u8]) -> Result<std::fs::File, VaultError> {
    use std::io::Write;
    let path: PathBuf = dir.join(MARK_FILE);
    let temporary = dir.join(format!("{MARK_FILE}.new"));
    let fail = |e| mark_error(dir, "write", e);
    let mut out = std::fs::File::create(&temporary).map_err(fail)?;
    out.write_all(slot).map_err(fail)?;
    out.write_all(slot).map_err(fail)?;
    out.sync_all().map_err(fail)?;
    drop(out);
    std::fs::rename(&temporary, &path).map_err(fail)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(fail)
}

/// A vault dropped with a mark written but not synced (a tool's last flush, a stop) syncs
/// it: the last line of defence; the server syncs explicitly at its stop.
impl Drop for Vault {
    fn drop(&mut self) {
        if let Err(error) = self.sync_high_water_mark() {
            tracing::error!(%error, "the high-water mark may not be durable");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::store::SledStore;
    use crate::store::keys::MasterKey;

    #[test]
    fn the_mark_follows_every_commit_and_is_synced_off_the_request_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        let mut vault =
            Vault::open(store, &MasterKey::from_hex(&"11".repeat(32)).unwrap()).unwrap();
        vault.keep_high_water_mark(dir.path(), false).unwrap();
        // The first mark is a new file of two slots, synced at once.
        assert!(!vault.mark_unsynced.load(Ordering::Acquire));
        let path = dir.path().join(MARK_FILE);
        assert_eq!(std::fs::read(&path).unwrap().len(), 2 * SLOT_LEN);
        let first = read_clear(dir.path()).unwrap().unwrap().commits;

        // A commit replaces the mark before the flush returns (any process sees it), and
        // leaves it to be synced.
        vault.spend_rid("r-1", 1).unwrap();
        vault.flush().unwrap();
        assert_eq!(read_clear(dir.path()).unwrap().unwrap().commits, first + 1);
        assert!(vault.mark_unsynced.load(Ordering::Acquire));
        assert!(!dir.path().join(format!("{MARK_FILE}.new")).exists());

        vault.sync_high_water_mark().unwrap();
        assert!(!vault.mark_unsynced.load(Ordering::Acquire));
        // Nothing new: nothing to sync.
        vault.sync_high_water_mark().unwrap();
        // And the store agrees with the mark.
        assert_eq!(
            vault.check_high_water_mark(dir.path()).unwrap().behind,
            None
        );

        // A slot torn by a crash mid-write: the other slot's mark (one commit older) is
        // read, and still holds the store to all but the commit being written.
        vault.spend_rid("r-2", 1).unwrap();
        vault.flush().unwrap();
        let newest = first + 2;
        let mut bytes = std::fs::read(&path).unwrap();
        let torn = (newest % 2) as usize * SLOT_LEN;
        bytes[torn + 40..torn + SLOT_LEN].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_clear(dir.path()).unwrap().unwrap().commits, newest - 1);
        assert_eq!(
            vault.check_high_water_mark(dir.path()).unwrap().behind,
            None
        );
        // Both slots spoiled: a mark that cannot be read is an error, not an empty mark.
        std::fs::write(&path, vec![b'x'; 2 * SLOT_LEN]).unwrap();
        assert!(read_clear(dir.path()).is_err());
    }

    #[test]
    fn a_mark_written_before_the_slots_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let old = MarkFile {
            clear: Mark {
                commits: 7,
                audit_len: 2,
                audit_head: GENESIS.to_owned(),
            },
            sealed: String::new(),
        };
        std::fs::write(
            dir.path().join(MARK_FILE),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        assert_eq!(read_clear(dir.path()).unwrap().unwrap().commits, 7);
    }
}
