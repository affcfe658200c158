//! Copying the database record by record, sealed as it is: backups (`db backup`) and moving
//! from one back-end to another. The copy needs no key and unseals nothing.

use super::layout::META_SALT;
use super::{Vault, VaultError};
use crate::store::{Store, Table};

impl Vault {
    /// Copies every record of every table into `to`, then makes `to` durable. Returns the
    /// records copied. Ids drawn in `to` afterwards come after every copied one (a new risk
    /// log must not land on a copied log's key).
    pub fn copy_records_to(&self, to: &dyn Store) -> Result<u64, VaultError> {
        let mut copied = 0u64;
        for table in Table::ALL {
            self.store().visit(table, &mut |key, value| {
                copied += 1;
                to.insert(table, key, value.to_vec())
            })?;
        }
        to.skip_ids_through(super::salvage::highest_id(to)?)?;
        to.flush()?;
        Ok(copied)
    }

    /// Whether `to` is empty or holds this same database (the same salt), so that a copy
    /// into it cannot mix two databases; an interrupted copy is the same database.
    pub fn is_copy_target(&self, to: &dyn Store) -> Result<bool, VaultError> {
        Ok(match to.get(Table::Meta, META_SALT)? {
            None => true,
            Some(theirs) => Some(theirs) == self.store().get(Table::Meta, META_SALT)?,
        })
    }
}
