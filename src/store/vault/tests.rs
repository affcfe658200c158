//! The vault's tests, each run on every store back-end (sled and memory).

/// Turns `fn name(dir: &Backend)` bodies into one `#[test]` per name that runs on every
/// back-end.
macro_rules! every_backend {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                for backend in crate::store::testing::Backend::all() {
                    eprintln!("back-end: {}", backend.name());
                    bodies::$name(&backend);
                }
            }
        )*
    };
}

mod basics {
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

        pub(super) fn a_start_interrupted_before_the_salt_was_written_initialises_again(
            dir: &Backend,
        ) {
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
        /// write the vault makes, and after a reopen.
        pub(super) fn record_counters_match_the_store(dir: &Backend) {
            let check = |vault: &Vault| {
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
}

mod rotation {
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
        rotation_moves_and_reindexes_every_record,
        enrolment_during_rotation_moves_the_user_and_loses_nothing,
        a_restart_resumes_from_the_cursor,
        keys_are_checked_against_the_registry_and_fail_closed,
        records_under_an_unknown_key_or_a_broken_canary_are_refused,
        inspecting_changes_nothing
    );
}

mod legacy {
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
}
