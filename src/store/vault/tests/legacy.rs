//! Stores made before the key registry and the face-model field.

mod bodies {
    #![allow(unused_imports)]
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use zeroize::Zeroizing;

    use crate::store::keys::{MasterKey, TableKeys};
    use crate::store::registry::KeyState;
    use crate::store::testing::Backend;
    use crate::store::vault::layout::META_LEGACY_CANARY;
    use crate::store::vault::*;
    use crate::store::{OpenMode, Store, Table, audit, record};

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_hex(&format!("{byte:02x}").repeat(32)).unwrap()
    }

    /// A database as version 0.1 wrote it: salt, one `canary`, a user record without a
    /// sealed user id (templates as JSON arrays).
    fn legacy_database(dir: &Backend) -> [u8; 32] {
        let store = dir.open();
        let salt = [7u8; 32];
        let keys = TableKeys::derive(&key(1), &salt).unwrap();
        let seal = |table: Table, record_key: &[u8], plain: &[u8]| {
            record::seal(
                keys.cipher(table),
                keys.key_id(),
                table,
                record_key,
                Zeroizing::new(plain.to_vec()),
            )
            .unwrap()
        };
        let index = keys.blind_index("old-user");
        store
            .insert(
                Table::Meta,
                b"canary",
                seal(Table::Meta, b"canary", b"tee-risk canary v1"),
            )
            .unwrap();
        let user = br#"{"templates":[{"features":[0.6,0.8],"enrolled_at":1}]}"#;
        store
            .insert(Table::UserData, &index, seal(Table::UserData, &index, user))
            .unwrap();
        store.insert(Table::Meta, b"salt", salt.to_vec()).unwrap();
        store.flush().unwrap();
        index
    }

    fn open(dir: &Backend, current: u8, previous: &[u8]) -> Result<Vault, VaultError> {
        let store: Arc<dyn Store> = dir.open();
        let previous: Vec<MasterKey> = previous.iter().map(|b| key(*b)).collect();
        Vault::open_keyring(store, &key(current), &previous, OpenMode::Write)
    }

    pub(super) fn a_version_0_1_database_opens_upgrades_and_rotates(dir: &Backend) {
        legacy_database(dir);
        let vault = open(dir, 1, &[]).unwrap();
        assert_eq!(vault.registry_snapshot().active(), Some(key(1).key_id()));
        drop(vault);

        // Rotating before the user was seen stops with a message saying why.
        let vault = open(dir, 2, &[1]).unwrap();
        let err = vault.rotate_batch(10).unwrap_err().to_string();
        assert!(err.contains("no sealed user id"), "{err}");
        // An assessment reads the templates and upgrades the record on the way.
        let templates = vault
            .templates(&vault.user("old-user"), "old-user")
            .unwrap();
        assert_eq!(&templates[0][..], &[0.6, 0.8]);
        while !vault.rotate_batch(10).unwrap().complete {}
        drop(vault);
        let vault = open(dir, 2, &[]).unwrap();
        let templates = vault
            .templates(&vault.user("old-user"), "old-user")
            .unwrap();
        assert_eq!(&templates[0][..], &[0.6, 0.8]);
        assert_eq!(vault.verify_all().unwrap().user_data, 1);
    }
}

every_backend!(a_version_0_1_database_opens_upgrades_and_rotates);
