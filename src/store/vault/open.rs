//! Opening the database: the keyring from the master keys, the sealed key registry, the
//! canaries, and the fail-closed checks (a message for every refusal that tells the operator
//! what to do). A new database is initialised here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use super::layout::{
    CANARY_PLAINTEXT, META_LEGACY_CANARY, META_REGISTRY, META_ROTATION_LEASE, META_SALT, canary_key,
};
use super::status::table_totals;
use super::{OpenMode, Vault, VaultError};
use crate::crypto::random_array;
use crate::obs::unix_now;
use crate::store::audit;
use crate::store::group_commit::GroupCommit;
use crate::store::keys::{KeyId, Keyring, MasterKey, SALT_LEN, TableKeys};
use crate::store::record;
use crate::store::registry::{KeyState, Registry, Rotation};
use crate::store::{Store, StoreError, Table};

impl Vault {
    /// Opens (or initialises, when empty) the database with one master key and no previous
    /// ones.
    pub fn open(store: Arc<dyn Store>, master: &MasterKey) -> Result<Self, VaultError> {
        Self::open_keyring(store, master, &[], OpenMode::Write)
    }

    /// Opens the database with the current master key and previous (decrypt-only) ones, and
    /// checks them against the key registry, failing closed:
    /// - a current key the database does not know is accepted only when a previous key is
    ///   the registered active key: that starts a rotation to it (in [`OpenMode::Write`]);
    /// - a retired key, an unregistered previous key, or a failing canary is refused;
    /// - so is any record sealed under a key that is retired, unknown, or not supplied.
    pub fn open_keyring(
        store: Arc<dyn Store>,
        current: &MasterKey,
        previous: &[MasterKey],
        mode: OpenMode,
    ) -> Result<Self, VaultError> {
        let now = unix_now();
        let Some(salt) = store.get(Table::Meta, META_SALT)? else {
            if !previous.is_empty() {
                return Err(VaultError::PreviousKeyOnNewDatabase);
            }
            if mode != OpenMode::Write {
                return Err(VaultError::Refused(
                    "the database is empty: nothing to inspect".into(),
                ));
            }
            return Self::initialise(store, current, now);
        };
        let keyring = Self::keyring(&salt, current, previous)?;
        let current_id = keyring.current().key_id();
        let (mut registry, legacy) = Self::load_registry(&*store, &keyring, current_id)?;
        let registered = Self::register_current(&mut registry, &keyring, mode, now)?;
        let changed = legacy || registered == Registered::Now;
        for keys in keyring.all() {
            // A key registered just now (or about to be) has no canary yet.
            let new_here =
                keys.key_id() == current_id && (changed || registered == Registered::NotYet);
            if !new_here {
                Self::check_canary(&*store, keys)?;
            }
        }
        let mut vault = Self {
            counts: super::RecordCounts::default(),
            store,
            keyring,
            registry: Mutex::new(registry),
            group_commit: GroupCommit::default(),
            mark_dir: None,
            commits: Mutex::new(0),
            mark_unsynced: Default::default(),
            mark_file: Mutex::new(None),
        };
        if mode == OpenMode::Salvage {
            // Counting records by key reads every header and refuses unknown keys: what a
            // salvage sorts out record by record instead.
            return Ok(vault);
        }
        let by_key = vault.counts_by_key()?;
        vault.counts = super::RecordCounts::from_open(&by_key, vault.store.len(Table::Replay));
        vault.check_records_have_keys(&by_key)?;
        if mode == OpenMode::Write && vault.store.exclusive() {
            // A rotation lease in a store no other process can open is a crashed
            // process's: this one sweeps now, without waiting for it to run out.
            vault.store.remove(Table::Meta, META_ROTATION_LEASE)?;
        }
        if changed && mode == OpenMode::Write {
            vault.save_key_change(&by_key, legacy, now)?;
        }
        Ok(vault)
    }

    /// The table keys of the current and previous master keys under the database's salt.
    fn keyring(
        salt: &[u8],
        current: &MasterKey,
        previous: &[MasterKey],
    ) -> Result<Keyring, VaultError> {
        let salt: [u8; SALT_LEN] = salt
            .try_into()
            .map_err(|_| VaultError::Corrupt("the database salt has the wrong length".into()))?;
        let derive = |master: &MasterKey| {
            TableKeys::derive(master, &salt).map_err(|e| VaultError::Corrupt(e.to_string()))
        };
        let keyring = Keyring::new(
            derive(current)?,
            previous.iter().map(derive).collect::<Result<_, _>>()?,
        );
        let current_id = keyring.current().key_id();
        if previous.iter().any(|p| p.key_id() == current_id) {
            return Err(VaultError::Refused(format!(
                "key {current_id} is both DB_MASTER_KEY and in DB_MASTER_KEY_PREVIOUS: list it once"
            )));
        }
        Ok(keyring)
    }

    /// Checks every supplied key against the registry, and registers a new current key (the
    /// start of a rotation) when opened to write; inspecting only shows what it would do.
    fn register_current(
        registry: &mut Registry,
        keyring: &Keyring,
        mode: OpenMode,
        now: i64,
    ) -> Result<Registered, VaultError> {
        let current_id = keyring.current().key_id();
        for keys in keyring.all() {
            let id = keys.key_id();
            match registry.state(id) {
                Some(KeyState::Retired) => return Err(VaultError::RetiredKey(id)),
                None if id != current_id => return Err(VaultError::UnknownPreviousKey(id)),
                _ => {}
            }
        }
        match registry.state(current_id) {
            Some(KeyState::Active) => Ok(Registered::Already),
            Some(KeyState::DecryptOnly) => Err(VaultError::ReplacedKey {
                supplied: current_id,
                active: registry.active().unwrap_or(current_id),
            }),
            Some(KeyState::Retired) => Err(VaultError::RetiredKey(current_id)),
            None => {
                let active = registry.active().ok_or_else(|| {
                    VaultError::Corrupt("the key registry has no active key".into())
                })?;
                if keyring.get(active).is_none() {
                    return Err(VaultError::WrongMasterKey {
                        database: active,
                        supplied: current_id,
                    });
                }
                // Inspecting (e.g. `db rotate --dry-run`) shows what a rotation to this key
                // would do without registering it.
                if mode != OpenMode::Write {
                    return Ok(Registered::NotYet);
                }
                registry.set_state(active, KeyState::DecryptOnly, now);
                registry.set_state(current_id, KeyState::Active, now);
                registry.rotation = Some(Rotation {
                    to: current_id.to_string(),
                    started_at: now,
                    counts_at_start: BTreeMap::new(),
                    cursor: BTreeMap::new(),
                    moved: 0,
                    erased: BTreeMap::new(),
                    completed_at: None,
                    verified_at: None,
                });
                Ok(Registered::Now)
            }
        }
    }

    /// Writes a changed key registry (a new current key, or a legacy canary replaced):
    /// the new key's canary, the registry, and a rotation's start in the audit log.
    fn save_key_change(
        &self,
        by_key: &BTreeMap<(Table, KeyId), u64>,
        legacy: bool,
        now: i64,
    ) -> Result<(), VaultError> {
        self.write_canary(self.keyring.current())?;
        let starting = {
            let mut registry = self.registry();
            match registry.rotation.as_mut() {
                Some(rotation) if rotation.counts_at_start.is_empty() => {
                    rotation.counts_at_start = table_totals(by_key);
                    true
                }
                _ => false,
            }
        };
        self.save_registry()?;
        if legacy {
            self.store.remove(Table::Meta, META_LEGACY_CANARY)?;
        }
        self.store.flush()?;
        if starting {
            let from: Vec<String> = self.keyring.ids().iter().map(ToString::to_string).collect();
            audit::append(
                &*self.store,
                now,
                "rotation_started",
                from,
                table_totals(by_key),
            )?;
            self.store.flush()?;
        }
        Ok(())
    }

    /// The registry, or for a database created before it, one made from the legacy canary
    /// (its key becomes the active key). Returns whether it is such a new one.
    fn load_registry(
        store: &dyn Store,
        keyring: &Keyring,
        current: KeyId,
    ) -> Result<(Registry, bool), VaultError> {
        if let Some(sealed) = store.get(Table::Meta, META_REGISTRY)? {
            let (_, plain) = open_meta(keyring, current, META_REGISTRY, &sealed)?;
            let registry = serde_json::from_slice(&plain)
                .map_err(|e| VaultError::Corrupt(format!("key registry: {e}")))?;
            return Ok((registry, false));
        }
        let canary = store
            .get(Table::Meta, META_LEGACY_CANARY)?
            .ok_or_else(|| VaultError::Corrupt("the database has a salt but no canary".into()))?;
        let (id, plain) = open_meta(keyring, current, META_LEGACY_CANARY, &canary)?;
        let keys = keyring.get(id).expect("open_meta found it");
        if plain.as_slice() != CANARY_PLAINTEXT {
            return Err(VaultError::CanaryFailed(id));
        }
        // Registered now, with a per-key canary written when the registry is saved.
        store.insert(
            Table::Meta,
            &canary_key(id),
            seal_canary(keys, &canary_key(id))?,
        )?;
        Ok((Registry::new(id, unix_now()), true))
    }

    fn check_canary(store: &dyn Store, keys: &TableKeys) -> Result<(), VaultError> {
        let id = keys.key_id();
        let key = canary_key(id);
        let sealed = store
            .get(Table::Meta, &key)?
            .ok_or(VaultError::CanaryFailed(id))?;
        let plain = record::open(keys.cipher(Table::Meta), id, Table::Meta, &key, &sealed)
            .map_err(|_| VaultError::CanaryFailed(id))?;
        if plain.as_slice() != CANARY_PLAINTEXT {
            return Err(VaultError::CanaryFailed(id));
        }
        Ok(())
    }

    fn write_canary(&self, keys: &TableKeys) -> Result<(), VaultError> {
        let key = canary_key(keys.key_id());
        self.store
            .insert(Table::Meta, &key, seal_canary(keys, &key)?)?;
        Ok(())
    }

    /// Refuses to go on while a data record names a key that is retired, unknown, or not
    /// supplied.
    fn check_records_have_keys(
        &self,
        by_key: &BTreeMap<(Table, KeyId), u64>,
    ) -> Result<(), VaultError> {
        let registry = self.registry();
        for (&(table, key), &count) in by_key {
            if self.keyring.get(key).is_some() {
                continue;
            }
            let table = table.name();
            return Err(match registry.state(key) {
                Some(KeyState::Retired) => VaultError::RecordsUnderRetiredKey { table, key, count },
                None => VaultError::RecordsUnderUnknownKey { table, key, count },
                Some(_) => VaultError::RecordsUnderMissingKey { table, key, count },
            });
        }
        Ok(())
    }

    /// Records of each data table per master key id named in their headers (no decryption).
    pub fn counts_by_key(&self) -> Result<BTreeMap<(Table, KeyId), u64>, VaultError> {
        let mut counts = BTreeMap::new();
        for table in Table::DATA {
            self.store.visit(table, &mut |_, value| {
                let id = record::key_id_of(value)
                    .map_err(|e| StoreError::Aborted(format!("{}: {e}", table.name())))?;
                *counts.entry((table, id)).or_insert(0) += 1;
                Ok(())
            })?;
        }
        Ok(counts)
    }

    /// Creates a new database: the active key's canary, the registry, then the salt last. A
    /// database with a salt always has the rest; a start interrupted before the salt leaves
    /// only meta records, which the next start overwrites.
    fn initialise(store: Arc<dyn Store>, master: &MasterKey, now: i64) -> Result<Self, VaultError> {
        if let Some(table) = Table::DATA.iter().find(|t| store.len(**t) > 0) {
            return Err(VaultError::Corrupt(format!(
                "table {} holds records but the database has no salt",
                table.name()
            )));
        }
        let salt: [u8; SALT_LEN] =
            random_array().map_err(|e| VaultError::Corrupt(e.to_string()))?;
        let keys =
            TableKeys::derive(master, &salt).map_err(|e| VaultError::Corrupt(e.to_string()))?;
        let id = keys.key_id();
        let vault = Self {
            counts: super::RecordCounts::default(),
            store,
            keyring: Keyring::new(keys, Vec::new()),
            registry: Mutex::new(Registry::new(id, now)),
            group_commit: GroupCommit::default(),
            mark_dir: None,
            commits: Mutex::new(0),
            mark_unsynced: Default::default(),
            mark_file: Mutex::new(None),
        };
        vault.write_canary(vault.keyring.current())?;
        vault.save_registry()?;
        vault.store.flush()?;
        if !vault
            .store
            .compare_and_swap(Table::Meta, META_SALT, None, Some(salt.to_vec()))?
        {
            return Err(VaultError::Corrupt(
                "another process initialised the database at the same time".into(),
            ));
        }
        vault.store.flush()?;
        Ok(vault)
    }
}

/// Opens a `meta` record with the key its header names. A key the process does not hold
/// means the database belongs to another key (`current` is named in the message); a record
/// that does not open means tampering.
fn open_meta(
    keyring: &Keyring,
    current: KeyId,
    key: &[u8],
    sealed: &[u8],
) -> Result<(KeyId, Zeroizing<Vec<u8>>), VaultError> {
    let id = record::key_id_of(sealed).map_err(|_| VaultError::CanaryFailed(current))?;
    let Some(keys) = keyring.get(id) else {
        return Err(VaultError::WrongMasterKey {
            database: id,
            supplied: current,
        });
    };
    let plain = record::open(keys.cipher(Table::Meta), id, Table::Meta, key, sealed)
        .map_err(|_| VaultError::CanaryFailed(id))?;
    Ok((id, plain))
}

fn seal_canary(keys: &TableKeys, key: &[u8]) -> Result<Vec<u8>, VaultError> {
    record::seal(
        keys.cipher(Table::Meta),
        keys.key_id(),
        Table::Meta,
        key,
        Zeroizing::new(CANARY_PLAINTEXT.to_vec()),
    )
    .map_err(|source| VaultError::Record {
        table: "meta",
        source,
    })
}

/// Whether the current master key is in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registered {
    /// It was (the active key).
    Already,
    /// It was registered by this open: a rotation to it starts.
    Now,
    /// It is new, but an inspection does not register it.
    NotYet,
}
