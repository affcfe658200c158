//! Opening, sealing, erasure, counts, and what the stored bytes hold.

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

    fn master(byte: u8) -> MasterKey {
        MasterKey::from_hex(&format!("{byte:02x}").repeat(32)).unwrap()
    }

    fn open_at(dir: &Backend, byte: u8) -> Result<Vault, VaultError> {
        let store: Arc<dyn Store> = dir.open();
        Vault::open(store, &master(byte))
    }

    fn log(rid: &str) -> RiskLogEntry {
        sample_log(rid, "00")
    }

    pub(super) fn records_survive_reopen_with_the_same_key(dir: &Backend) {
        {
            let vault = open_at(dir, 1).unwrap();
            let user = vault.user("alice");
            assert_eq!(vault.enrol(&user, "alice", &[0.6, 0.8], 1, 5).unwrap(), 1);
            assert_eq!(vault.enrol(&user, "alice", &[0.8, 0.6], 2, 5).unwrap(), 2);
            vault
                .record_assessment(user.current(), &log("r1"), true)
                .unwrap();
            vault.flush().unwrap();
        }
        let vault = open_at(dir, 1).unwrap();
        let user = vault.user("alice");
        let templates = vault.templates(&user, "alice").unwrap();
        assert_eq!(templates.len(), 2);
        assert_eq!(&templates[1][..], &[0.8, 0.6]);
        assert_eq!(
            vault.verify_all().unwrap(),
            TableCounts {
                user_data: 1,
                feature_history: 1,
                risk_logs: 1
            }
        );
        assert_eq!(vault.risk_logs().unwrap(), vec![log("r1")]);
    }

    pub(super) fn wrong_master_key_is_refused_with_both_ids(dir: &Backend) {
        drop(open_at(dir, 1).unwrap());
        let err = open_at(dir, 2).err().unwrap();
        let message = err.to_string();
        assert!(matches!(err, VaultError::WrongMasterKey { .. }));
        assert!(message.contains(&master(1).key_id().to_string()));
        assert!(message.contains(&master(2).key_id().to_string()));
    }

    pub(super) fn concurrent_enrolments_of_one_user_are_all_kept(dir: &Backend) {
        let vault = Arc::new(open_at(dir, 1).unwrap());
        let user = vault.user("dave");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let vault = vault.clone();
                std::thread::spawn(move || {
                    let user = vault.user("dave");
                    for j in 0..10 {
                        vault
                            .enrol(&user, "dave", &[i as f32, j as f32], 1, 100)
                            .unwrap();
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let templates = vault.templates(&user, "dave").unwrap();
        assert_eq!(templates.len(), 80);
        let mut seen: Vec<(u32, u32)> = templates
            .iter()
            .map(|t| (t[0] as u32, t[1] as u32))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 80, "every enrolment is present exactly once");
    }

    pub(super) fn a_start_interrupted_before_the_salt_was_written_initialises_again(dir: &Backend) {
        {
            let store = dir.open();
            store
                .insert(Table::Meta, META_LEGACY_CANARY, b"left over".to_vec())
                .unwrap();
            store.flush().unwrap();
        }
        let vault = open_at(dir, 1).unwrap();
        let user = vault.user("erin");
        vault.enrol(&user, "erin", &[1.0, 0.0], 1, 5).unwrap();
        vault.flush().unwrap();
        drop(vault);
        assert_eq!(open_at(dir, 1).unwrap().verify_all().unwrap().user_data, 1);
    }

    pub(super) fn data_without_a_salt_is_refused(dir: &Backend) {
        {
            let store = dir.open();
            store.insert(Table::RiskLogs, b"1", b"x".to_vec()).unwrap();
            store.flush().unwrap();
        }
        let err = open_at(dir, 1).err().unwrap().to_string();
        assert!(err.contains("risk_logs holds records"), "{err}");
    }

    pub(super) fn template_limit_is_enforced(dir: &Backend) {
        let vault = open_at(dir, 1).unwrap();
        let user = vault.user("bob");
        vault.enrol(&user, "bob", &[1.0, 0.0], 1, 1).unwrap();
        assert!(matches!(
            vault.enrol(&user, "bob", &[1.0, 0.0], 1, 1),
            Err(VaultError::TemplateLimit(1))
        ));
        assert_eq!(vault.templates(&user, "bob").unwrap().len(), 1);
    }

    pub(super) fn stored_bytes_hold_no_user_id_or_features(dir: &Backend) {
        let vault = open_at(dir, 1).unwrap();
        let user = vault.user("carol-the-user");
        vault
            .enrol(&user, "carol-the-user", &[0.6, 0.8], 1, 5)
            .unwrap();
        vault.flush().unwrap();
        drop(vault);
        let store = dir.open();
        for table in Table::ALL {
            for (key, value) in store.scan(table).unwrap() {
                for haystack in [&key, &value] {
                    assert!(!haystack.windows(14).any(|w| w == b"carol-the-user"));
                    assert!(!haystack.windows(8).any(|w| w == b"features"));
                }
            }
        }
    }
    /// The record counters behind `/metrics` equal what the store holds after every kind of
    /// write the vault makes (once flushed: logs and history wait for the flush on
    /// PostgreSQL), and after a reopen.
    pub(super) fn record_counters_match_the_store(dir: &Backend) {
        let check = |vault: &Vault| {
            vault.flush().unwrap();
            for (table, counted) in vault.table_sizes() {
                let table = Table::ALL.into_iter().find(|t| t.name() == table).unwrap();
                assert_eq!(counted, vault.store().len(table) as u64, "{}", table.name());
            }
        };
        let vault = open_at(dir, 1).unwrap();
        for i in 0..5 {
            let id = format!("c{i}");
            let user = vault.user(&id);
            vault.enrol(&user, &id, &[1.0, i as f32], 1, 5).unwrap();
            vault.enrol(&user, &id, &[i as f32, 1.0], 1, 5).unwrap();
            let log = sample_log(&format!("rc{i}"), &hex::encode(user.current()));
            vault
                .record_assessment(user.current(), &log, i % 2 == 0)
                .unwrap();
            vault.spend_rid(&format!("rid-{i}"), i64::from(i)).unwrap();
        }
        check(&vault);
        vault.erase_user(&vault.user("c2"), "c2").unwrap();
        vault.forget_spent_rids(3).unwrap();
        check(&vault);
        vault.flush().unwrap();
        drop(vault);
        let vault = open_at(dir, 1).unwrap();
        check(&vault);
        assert_eq!(vault.table_sizes()["user_data"], 4);
        assert_eq!(vault.table_sizes()["replay"], 2);
    }
}

every_backend!(
    record_counters_match_the_store,
    records_survive_reopen_with_the_same_key,
    wrong_master_key_is_refused_with_both_ids,
    concurrent_enrolments_of_one_user_are_all_kept,
    a_start_interrupted_before_the_salt_was_written_initialises_again,
    data_without_a_salt_is_refused,
    template_limit_is_enforced,
    stored_bytes_hold_no_user_id_or_features
);
