//! Online rotation of the master key: the sweep, its restarts, the registry, retirement.

mod bodies {
    #![allow(unused_imports)]
    use crate::store::vault::sample_log as log;
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

    fn open(
        dir: &Backend,
        current: u8,
        previous: &[u8],
        mode: OpenMode,
    ) -> Result<Vault, VaultError> {
        let store: Arc<dyn Store> = dir.open();
        let previous: Vec<MasterKey> = previous.iter().map(|b| key(*b)).collect();
        Vault::open_keyring(store, &key(current), &previous, mode)
    }

    /// Users u0..u{n}, each with one template, one accepted assessment (log + history), and
    /// one assessment of an id that never enrolled.
    fn seed(dir: &Backend, master: u8, users: usize) {
        let vault = open(dir, master, &[], OpenMode::Write).unwrap();
        for i in 0..users {
            let id = format!("u{i}");
            let user = vault.user(&id);
            vault.enrol(&user, &id, &[i as f32, 1.0], 1, 5).unwrap();
            let hex_index = hex::encode(user.current());
            vault
                .record_assessment(user.current(), &log(&format!("r{i}"), &hex_index), true)
                .unwrap();
        }
        let stranger = vault.user("never-enrolled");
        vault
            .record_assessment(
                stranger.current(),
                &log("r-stranger", &hex::encode(stranger.current())),
                false,
            )
            .unwrap();
        vault.flush().unwrap();
    }

    fn rotate_all(vault: &Vault) {
        while !vault.rotate_batch(7).unwrap().complete {}
    }

    pub(super) fn rotation_moves_and_reindexes_every_record(dir: &Backend) {
        seed(dir, 1, 20);
        let vault = open(dir, 2, &[1], OpenMode::Write).unwrap();
        assert!(vault.rotation_pending());
        assert_eq!(
            vault.pending_moves().unwrap(),
            BTreeMap::from([
                ("user_data".to_owned(), 20),
                ("feature_history".to_owned(), 20),
                ("risk_logs".to_owned(), 21),
            ])
        );
        // Readable under either key while the rotation runs.
        let before = vault.templates(&vault.user("u3"), "u3").unwrap();
        assert_eq!(before.len(), 1);
        rotate_all(&vault);
        assert!(!vault.rotation_pending());
        // Moving records left the record counters equal to the store.
        for (table, counted) in vault.table_sizes() {
            let table = Table::ALL.into_iter().find(|t| t.name() == table).unwrap();
            assert_eq!(counted, vault.store().len(table) as u64, "{}", table.name());
        }
        assert_eq!(vault.pending_moves().unwrap().values().sum::<u64>(), 0);
        drop(vault);

        // The new key alone now opens everything, under the new indexes.
        let vault = open(dir, 2, &[], OpenMode::Write).unwrap();
        let counts = vault.verify_all().unwrap();
        assert_eq!(
            (counts.user_data, counts.feature_history, counts.risk_logs),
            (20, 20, 21)
        );
        for i in 0..20 {
            let id = format!("u{i}");
            let user = vault.user(&id);
            let templates = vault.templates(&user, &id).unwrap();
            assert_eq!(&templates[0][..], &[i as f32, 1.0]);
            let mut history_key = user.current().to_vec();
            let prefix_hits = vault
                .store
                .scan(Table::FeatureHistory)
                .unwrap()
                .into_iter()
                .filter(|(k, _)| k.starts_with(&history_key))
                .count();
            assert_eq!(prefix_hits, 1, "history of {id} under its new index");
            history_key.clear();
        }
        let logs = vault.risk_logs().unwrap();
        let u5 = hex::encode(vault.user("u5").current());
        assert!(logs.iter().any(|l| l.rid == "r5" && l.user == u5));
        assert!(vault.verify_rotation().unwrap().passed());
        vault.retire_key(key(1).key_id()).unwrap();
        assert_eq!(
            vault.registry_snapshot().state(key(1).key_id()),
            Some(KeyState::Retired)
        );
        let events: Vec<String> = audit::verify(&*vault.store)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(
            events,
            [
                "rotation_started",
                "rotation_completed",
                "verify_passed",
                "verify_passed",
                "key_retired"
            ]
        );
    }

    pub(super) fn enrolment_during_rotation_moves_the_user_and_loses_nothing(dir: &Backend) {
        seed(dir, 1, 10);
        let vault = open(dir, 2, &[1], OpenMode::Write).unwrap();
        let user = vault.user("u4");
        assert_eq!(vault.enrol(&user, "u4", &[9.0, 9.0], 2, 5).unwrap(), 2);
        rotate_all(&vault);
        let templates = vault.templates(&vault.user("u4"), "u4").unwrap();
        assert_eq!(templates.len(), 2);
        assert_eq!(vault.verify_all().unwrap().user_data, 10, "no duplicate");
    }

    pub(super) fn a_restart_resumes_from_the_cursor(dir: &Backend) {
        seed(dir, 1, 30);
        let progress = {
            let vault = open(dir, 2, &[1], OpenMode::Write).unwrap();
            for _ in 0..3 {
                vault.rotate_batch(5).unwrap();
            }
            vault.registry_snapshot().rotation.unwrap()
        };
        // (Moved users get new keys that may sort after the cursor and are visited again,
        // already under the new key: at most 15 of the 15 visited records moved.)
        assert!((1..=15).contains(&progress.moved));
        let vault = open(dir, 2, &[1], OpenMode::Write).unwrap();
        assert_eq!(vault.registry_snapshot().rotation.unwrap(), progress);
        rotate_all(&vault);
        let counts = vault.verify_all().unwrap();
        assert_eq!(
            (counts.user_data, counts.feature_history, counts.risk_logs),
            (30, 30, 31)
        );
    }

    pub(super) fn keys_are_checked_against_the_registry_and_fail_closed(dir: &Backend) {
        let message = |r: Result<Vault, VaultError>| r.err().expect("must refuse").to_string();
        assert!(message(open(dir, 1, &[2], OpenMode::Write)).contains("the database is new"));
        seed(dir, 1, 3);
        let id = |b: u8| key(b).key_id().to_string();

        let unknown = message(open(dir, 3, &[], OpenMode::Write));
        assert!(
            unknown.contains("does not match this database"),
            "{unknown}"
        );
        assert!(unknown.contains("DB_MASTER_KEY_PREVIOUS") && unknown.contains(&id(1)));
        // A previous key that is not the active one does not vouch for a new current key.
        let stranger = message(open(dir, 3, &[4], OpenMode::Write));
        assert!(stranger.contains(&id(1)), "{stranger}");
        let unregistered = message(open(dir, 1, &[4], OpenMode::Write));
        assert!(unregistered.contains("never used") && unregistered.contains(&id(4)));

        // Rotation 1 → 2 begins; records stay under 1 until moved.
        let vault = open(dir, 2, &[1], OpenMode::Write).unwrap();
        vault.rotate_batch(2).unwrap();
        drop(vault);
        let missing = message(open(dir, 2, &[], OpenMode::Write));
        assert!(
            missing.contains("still sealed under master key") && missing.contains(&id(1)),
            "{missing}"
        );
        let replaced = message(open(dir, 1, &[2], OpenMode::Write));
        assert!(replaced.contains("older key") && replaced.contains(&id(2)));

        let vault = open(dir, 2, &[1], OpenMode::Write).unwrap();
        let early = vault.retire_key(key(1).key_id()).unwrap_err().to_string();
        assert!(early.contains("cannot be retired"), "{early}");
        rotate_all(&vault);
        vault.retire_key(key(1).key_id()).unwrap();
        // A record sealed under the retired key (an old backup restored into it).
        plant_record(&vault, 1, Table::RiskLogs);
        drop(vault);
        let retired = message(open(dir, 2, &[1], OpenMode::Write));
        assert!(retired.contains("was retired") && retired.contains(&id(1)));
        let under_retired = message(open(dir, 2, &[], OpenMode::Write));
        assert!(
            under_retired.contains("which was retired") && under_retired.contains("risk_logs"),
            "{under_retired}"
        );
    }

    /// Writes a record sealed under master key `byte` behind the vault's back.
    fn plant_record(vault: &Vault, byte: u8, table: Table) {
        let salt: [u8; 32] = vault
            .store
            .get(Table::Meta, b"salt")
            .unwrap()
            .unwrap()
            .try_into()
            .unwrap();
        let keys = crate::store::keys::TableKeys::derive(&key(byte), &salt).unwrap();
        let sealed = record::seal(
            keys.cipher(table),
            keys.key_id(),
            table,
            b"planted",
            zeroize::Zeroizing::new(b"{}".to_vec()),
        )
        .unwrap();
        vault.store.insert(table, b"planted", sealed).unwrap();
        vault.flush().unwrap();
    }

    pub(super) fn records_under_an_unknown_key_or_a_broken_canary_are_refused(dir: &Backend) {
        seed(dir, 1, 2);
        let vault = open(dir, 1, &[], OpenMode::Write).unwrap();
        plant_record(&vault, 9, Table::UserData);
        drop(vault);
        let err = open(dir, 1, &[], OpenMode::Write)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("never registered") && err.contains("user_data"),
            "{err}"
        );

        let dir = &dir.fresh();
        seed(dir, 1, 2);
        {
            let store = dir.open();
            let canary = format!("canary/{}", key(1).key_id());
            let mut sealed = store.get(Table::Meta, canary.as_bytes()).unwrap().unwrap();
            let last = sealed.len() - 1;
            sealed[last] ^= 1;
            store
                .insert(Table::Meta, canary.as_bytes(), sealed)
                .unwrap();
            store.flush().unwrap();
        }
        let err = open(dir, 1, &[], OpenMode::Write)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("canary of master key"), "{err}");
    }

    pub(super) fn inspecting_changes_nothing(dir: &Backend) {
        seed(dir, 1, 4);
        let vault = open(dir, 2, &[1], OpenMode::Inspect).unwrap();
        assert_eq!(vault.pending_moves().unwrap().values().sum::<u64>(), 13);
        assert!(!vault.rotation_pending());
        drop(vault);
        // Still the original keyring: key 1 alone opens it.
        open(dir, 1, &[], OpenMode::Write).unwrap();
    }

    /// Erasure in the middle of a rotation: one user already moved to the new index, one
    /// not yet, each with history and a risk log entry under the old index. After the
    /// erasure and the end of the sweep, nothing of either remains under either index,
    /// their log entries are scrubbed, and their index map entries are gone.
    pub(super) fn erasure_during_a_rotation_leaves_nothing_under_either_index(dir: &Backend) {
        seed(dir, 1, 12);
        let salt: [u8; 32] = open(dir, 1, &[], OpenMode::Inspect)
            .unwrap()
            .store()
            .get(Table::Meta, b"salt")
            .unwrap()
            .unwrap()
            .try_into()
            .unwrap();
        let old_keys = TableKeys::derive(&key(1), &salt).unwrap();
        let old_index = |id: &str| old_keys.blind_index(id);
        let vault = open(dir, 2, &[1], OpenMode::Write).unwrap();
        // Part of the user sweep: the first users in key order move, the rest wait.
        vault.rotate_batch(4).unwrap();
        let moved_id = (0..12)
            .map(|i| format!("u{i}"))
            .find(|id| {
                let new = vault.user(id);
                vault
                    .store()
                    .get(Table::UserData, new.current())
                    .unwrap()
                    .is_some()
            })
            .expect("the partial sweep moved a user");
        let waiting_id = (0..12)
            .map(|i| format!("u{i}"))
            .find(|id| {
                vault
                    .store()
                    .get(Table::UserData, &old_index(id))
                    .unwrap()
                    .is_some()
            })
            .expect("a user still waits under the old index");
        for id in [&moved_id, &waiting_id] {
            let erased = vault.erase_user(&vault.user(id), id).unwrap();
            assert_eq!(erased.templates, 1, "{id}");
            assert_eq!(erased.history, 1, "{id}");
            assert_eq!(erased.risk_logs_scrubbed, 1, "{id}");
        }
        rotate_all(&vault);
        vault.flush().unwrap();
        for id in [&moved_id, &waiting_id] {
            let indexes = [old_index(id), *vault.user(id).current()];
            for index in &indexes {
                assert!(vault.store().get(Table::UserData, index).unwrap().is_none());
                assert!(
                    vault
                        .store()
                        .scan_prefix_last(Table::FeatureHistory, index, usize::MAX)
                        .unwrap()
                        .is_empty(),
                    "history of {id} left"
                );
                assert!(
                    vault
                        .store()
                        .get(
                            Table::Meta,
                            &crate::store::vault::layout::index_map_key(index)
                        )
                        .unwrap()
                        .is_none(),
                    "index map of {id} left"
                );
            }
            let named: Vec<String> = indexes.iter().map(hex::encode).collect();
            let rid = format!("r{}", &id[1..]);
            for entry in vault.risk_logs().unwrap() {
                assert!(!named.contains(&entry.user), "a log names {id}");
                if entry.rid == rid {
                    assert_eq!(entry.user, ERASED_USER);
                    assert!(entry.features.is_empty() && entry.device_id.is_none());
                }
            }
            assert!(vault.templates(&vault.user(id), id).unwrap().is_empty());
        }
        // Everyone else is whole, and the verification the operator runs before retiring
        // the old key counts the erasures as erasures, not as lost records.
        assert_eq!(vault.verify_all().unwrap().user_data, 10);
        let report = vault.verify_rotation().unwrap();
        assert!(report.passed(), "{:?}", report.problems);
    }
    /// The sweep reads a batch, then an erasure removes a user in it before the sweep moves
    /// that user's record and history: the moves find their sources gone and bring nothing
    /// back (made of two compare-and-swaps, the move recreated the record at the new index:
    /// a SIGKILL test caught one in CI), and leave no index map entry naming the user.
    pub(super) fn a_sweep_that_read_a_user_before_the_erasure_brings_nothing_back(dir: &Backend) {
        seed(dir, 1, 12);
        let vault = open(dir, 2, &[1], OpenMode::Write).unwrap();
        let read_users = vault.store().scan(Table::UserData).unwrap();
        let read_history = vault.store().scan(Table::FeatureHistory).unwrap();
        let id = "u7";
        let old_index = vault
            .user(id)
            .indexes
            .iter()
            .find(|index| index != &vault.user(id).current())
            .copied()
            .expect("two keys, two indexes");
        assert!(read_users.iter().any(|(key, _)| key[..] == old_index[..]));
        let erased = vault.erase_user(&vault.user(id), id).unwrap();
        assert_eq!((erased.templates, erased.history), (1, 1));
        for (key, value) in &read_users {
            vault.move_record(Table::UserData, key, value).unwrap();
        }
        for (key, value) in &read_history {
            vault
                .move_record(Table::FeatureHistory, key, value)
                .unwrap();
        }
        vault.flush().unwrap();
        for index in [old_index, *vault.user(id).current()] {
            assert!(
                vault
                    .store()
                    .get(Table::UserData, &index)
                    .unwrap()
                    .is_none()
            );
            let history = vault
                .store()
                .scan_prefix_last(Table::FeatureHistory, &index, usize::MAX)
                .unwrap();
            assert!(history.is_empty(), "history of {id} came back");
            let map = crate::store::vault::layout::index_map_key(&index);
            assert!(vault.store().get(Table::Meta, &map).unwrap().is_none());
        }
        assert!(vault.templates(&vault.user(id), id).unwrap().is_empty());
        rotate_all(&vault);
        assert_eq!(vault.verify_all().unwrap().user_data, 11);
        let report = vault.verify_rotation().unwrap();
        assert!(report.passed(), "{:?}", report.problems);
    }

    /// `db salvage`: a record whose seal fails, one with a header past reading, and a
    /// risk log that no longer opens are left behind (and counted); everything else is
    /// copied, opens as a whole database, and new ids come after the copied ones.
    pub(super) fn salvage_keeps_what_opens_and_new_ids_follow_the_copied(dir: &Backend) {
        seed(dir, 1, 4);
        {
            let store = dir.open();
            let flip = |table: Table, key: &[u8]| {
                let mut value = store.get(table, key).unwrap().unwrap();
                let last = value.len() - 1;
                value[last] ^= 1;
                store.insert(table, key, value).unwrap();
            };
            let (user_key, _) = store.scan(Table::UserData).unwrap().remove(0);
            flip(Table::UserData, &user_key);
            let (log_key, _) = store.last(Table::RiskLogs).unwrap().unwrap();
            flip(Table::RiskLogs, &log_key);
            store
                .insert(Table::FeatureHistory, &[7u8; 40], b"not a record".to_vec())
                .unwrap();
            store.flush().unwrap();
        }
        assert!(
            open(dir, 1, &[], OpenMode::Inspect).is_err(),
            "an unreadable header stops an ordinary open"
        );
        let source = open(dir, 1, &[], OpenMode::Salvage).unwrap();
        let target = dir.fresh();
        let report = source.salvage_into(&*target.open()).unwrap();
        let count = |map: &BTreeMap<String, u64>, t: &str| map.get(t).copied().unwrap_or(0);
        assert_eq!(count(&report.kept, "user_data"), 3, "{report:?}");
        assert_eq!(count(&report.dropped, "user_data"), 1);
        assert_eq!(count(&report.kept, "feature_history"), 4);
        assert_eq!(count(&report.dropped, "feature_history"), 1);
        assert_eq!(count(&report.kept, "risk_logs"), 4);
        assert_eq!(count(&report.dropped, "risk_logs"), 1);
        assert!(report.lost_anything());
        drop(source);

        let salvaged = open(&target, 1, &[], OpenMode::Write).unwrap();
        assert!(salvaged.verify().unwrap().passed());
        let users = salvaged.enrolled_users().unwrap();
        assert_eq!(users.len(), 3);
        // New logs and history land after the copied ones, never on them.
        for i in 0..3 {
            let user = salvaged.user(&users[0].0);
            salvaged
                .record_assessment(user.current(), &log(&format!("new{i}"), "00"), true)
                .unwrap();
        }
        salvaged.flush().unwrap();
        let counts = salvaged.verify_all().unwrap();
        assert_eq!((counts.risk_logs, counts.feature_history), (7, 7));
    }

    /// `db copy` and `db backup`: a log written into the copy never lands on a copied one.
    pub(super) fn a_copy_draws_ids_after_the_copied_records(dir: &Backend) {
        seed(dir, 1, 3);
        let source = open(dir, 1, &[], OpenMode::Inspect).unwrap();
        let target = dir.fresh();
        source.copy_records_to(&*target.open()).unwrap();
        drop(source);
        let copy = open(&target, 1, &[], OpenMode::Write).unwrap();
        let user = copy.user("u0");
        for i in 0..5 {
            copy.record_assessment(user.current(), &log(&format!("new{i}"), "00"), true)
                .unwrap();
        }
        copy.flush().unwrap();
        let counts = copy.verify_all().unwrap();
        assert_eq!((counts.risk_logs, counts.feature_history), (4 + 5, 3 + 5));
    }
}

every_backend!(
    salvage_keeps_what_opens_and_new_ids_follow_the_copied,
    a_copy_draws_ids_after_the_copied_records,
    erasure_during_a_rotation_leaves_nothing_under_either_index,
    a_sweep_that_read_a_user_before_the_erasure_brings_nothing_back,
    rotation_moves_and_reindexes_every_record,
    enrolment_during_rotation_moves_the_user_and_loses_nothing,
    a_restart_resumes_from_the_cursor,
    keys_are_checked_against_the_registry_and_fail_closed,
    records_under_an_unknown_key_or_a_broken_canary_are_refused,
    inspecting_changes_nothing
);
