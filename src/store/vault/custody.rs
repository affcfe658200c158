//! What key custody (`service::custody`) needs of the vault: the key ids a database was
//! sealed with, read before any key is at hand, and audit entries naming custodians.

use std::collections::BTreeMap;

use super::layout::{META_SALT, canary_id};
use super::{Vault, VaultError};
use crate::store::keys::KeyId;
use crate::store::{Store, Table, audit};

impl Vault {
    /// The master key ids `store` holds canaries for (its active and decrypt-only keys),
    /// read without a key: `None` for an empty database. A sealed service checks
    /// custodians' shares against them before it can open anything.
    pub fn key_ids_of(store: &dyn Store) -> Result<Option<Vec<KeyId>>, VaultError> {
        if store.get(Table::Meta, META_SALT)?.is_none() {
            return Ok(None);
        }
        let ids = store
            .scan(Table::Meta)?
            .into_iter()
            .filter_map(|(key, _)| canary_id(&key))
            .collect();
        Ok(Some(ids))
    }

    /// Appends a key-custody event to the audit log: who acted (custodians' roster names)
    /// and the key ids concerned, never a share.
    pub fn record_custody_event(
        &self,
        at: i64,
        event: &str,
        key_ids: Vec<String>,
        who: Vec<String>,
        counts: BTreeMap<String, u64>,
    ) -> Result<(), VaultError> {
        audit::append_by(self.store(), at, event, key_ids, who, counts)?;
        self.flush().map(|_| ())
    }
}
