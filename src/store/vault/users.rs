//! Enrolled users: one sealed record per user (templates, known devices, the sealed user id
//! that rotation re-indexes with), updated by compare-and-swap so that no concurrent update
//! is lost, and the index map that rotation leaves behind.

use zeroize::Zeroizing;

use super::history::Probes;
use super::layout::index_map_key;
use super::records::{
    Enrolment, LEGACY_FACE_MODEL, StoredTemplate, Template, UserRecord, remember,
};
use super::spent::spent_value;
use super::{UserIndex, UserRef, Vault, VaultError};
use crate::store::{Fetched, Moved, Read, Table};

/// What [`Vault::enrolment_and_recent`] read.
pub struct UserReading {
    pub enrolment: Enrolment,
    pub recent: Probes,
    /// Fresh ids, increasing.
    pub ids: Vec<u64>,
    /// Whether the request id asked to be spent was fresh (`None`: none was asked).
    pub fresh_rid: Option<bool>,
}

/// What a reading of a user brings along in the same round trip.
#[derive(Debug, Default, Clone, Copy)]
pub struct Along<'a> {
    /// Fresh ids to draw, for the records the request will write.
    pub ids: usize,
    /// A request id to spend, with its `iat` ([`Vault::spend_rid`]).
    pub spend: Option<(&'a str, i64)>,
}

impl Vault {
    /// Where the user's record is: (its index, its sealed bytes), current index first.
    fn find_user(&self, user: &UserRef) -> Result<Option<(UserIndex, Vec<u8>)>, VaultError> {
        for index in &user.indexes {
            if let Some(sealed) = self.store().get(Table::UserData, index)? {
                return Ok(Some((*index, sealed)));
            }
        }
        Ok(None)
    }

    /// The user's templates (unit vectors, of every face model); empty when not enrolled. A
    /// record from before user ids were sealed in it is upgraded on the way (once), so that a
    /// later key rotation can re-index it. Not durable until [`Vault::flush`].
    pub fn templates(
        &self,
        user: &UserRef,
        user_id: &str,
    ) -> Result<Vec<Zeroizing<Vec<f32>>>, VaultError> {
        Ok(self
            .enrolment(user, user_id)?
            .templates
            .into_iter()
            .map(|t| t.features)
            .collect())
    }

    /// The user's templates and known devices (see [`Vault::templates`]).
    pub fn enrolment(&self, user: &UserRef, user_id: &str) -> Result<Enrolment, VaultError> {
        let found = self.find_user(user)?;
        self.enrolment_of(user, user_id, found)
    }

    /// What an assessment needs of the store, in one read of it (one round trip on
    /// PostgreSQL instead of four): the spend of its request id ([`Vault::spend_rid`]),
    /// [`Vault::enrolment`], the user's recent accepted probes of `face_model` (at most
    /// `limit`, newest first), and fresh ids for the records the request will write
    /// ([`Vault::record_assessment_with_ids`]).
    pub fn enrolment_and_recent(
        &self,
        user: &UserRef,
        user_id: &str,
        face_model: &str,
        limit: usize,
        along: Along<'_>,
    ) -> Result<UserReading, VaultError> {
        let spend = along.spend.map(|(rid, iat)| (rid, spent_value(iat)));
        let claim = spend.as_ref().map(|(rid, value)| Read::Claim {
            table: Table::Replay,
            key: rid.as_bytes(),
            value,
        });
        let reads: Vec<Read> = (claim.into_iter())
            .chain(user.indexes.iter().map(|index| Read::Get {
                table: Table::UserData,
                key: index,
            }))
            .chain(user.indexes.iter().map(|index| Read::Last {
                table: Table::FeatureHistory,
                prefix: index,
                limit,
            }))
            .collect();
        let Fetched {
            mut answers,
            ids: fresh,
        } = self.store().read_many(&reads, along.ids)?;
        let fresh_rid = claim.map(|_| self.counted_spend(!answers.remove(0).is_empty()));
        let history = answers.split_off(user.indexes.len());
        // Current index first, as `find_user` looks.
        let found = (user.indexes.iter().zip(answers))
            .find_map(|(index, rows)| rows.into_iter().next().map(|(_, sealed)| (*index, sealed)));
        let enrolment = self.enrolment_of(user, user_id, found)?;
        let recent = self.probes_among(user, history, face_model, limit)?;
        Ok(UserReading {
            enrolment,
            recent,
            ids: fresh,
            fresh_rid,
        })
    }

    fn enrolment_of(
        &self,
        user: &UserRef,
        user_id: &str,
        found: Option<(UserIndex, Vec<u8>)>,
    ) -> Result<Enrolment, VaultError> {
        let Some((index, sealed)) = found else {
            return Ok(Enrolment::default());
        };
        let mut record: UserRecord = self.unseal(Table::UserData, &index, &sealed)?;
        if record.user_id.is_empty() {
            self.update_user(user, user_id, &|_| Ok(()))?;
        }
        Ok(record.take_enrolment())
    }

    /// Every enrolled user's id and templates (to build the in-memory gallery at start).
    /// Records from before user ids were sealed are left out until their user is next seen.
    pub fn enrolled_users(&self) -> Result<Vec<(String, Enrolment)>, VaultError> {
        let mut users = Vec::new();
        for (key, sealed) in self.store().scan(Table::UserData)? {
            let mut record: UserRecord = self.unseal(Table::UserData, &key, &sealed)?;
            if record.user_id.is_empty() {
                continue;
            }
            users.push((std::mem::take(&mut record.user_id), record.take_enrolment()));
        }
        Ok(users)
    }

    /// Adds `device` (SM3 hex) to the user's known devices, keeping the `max` most recent.
    /// Not durable until [`Vault::flush`].
    pub fn remember_device(
        &self,
        user: &UserRef,
        user_id: &str,
        device: &str,
        max: usize,
    ) -> Result<(), VaultError> {
        self.update_user(user, user_id, &|record| {
            remember(&mut record.devices, device, max);
            Ok(())
        })
        .map(|_| ())
    }

    /// Adds a template of the [`LEGACY_FACE_MODEL`] and returns the user's template count of
    /// that model. Not durable until [`Vault::flush`].
    pub fn enrol(
        &self,
        user: &UserRef,
        user_id: &str,
        template: &[f32],
        now: i64,
        max_templates: usize,
    ) -> Result<usize, VaultError> {
        let template = Template {
            face_model: LEGACY_FACE_MODEL.to_owned(),
            features: Zeroizing::new(template.to_vec()),
        };
        self.enrol_from(user, user_id, &template, now, max_templates, None)
            .map(|templates| templates.len())
    }

    /// Adds a template (at most `max_templates` per face model: a user re-enrolling under a
    /// new model keeps the old model's until erased), remembering the enrolling device (SM3
    /// hex, at most `max_devices`); returns the user's templates of the template's model as
    /// stored (for that model's in-memory gallery).
    pub fn enrol_from(
        &self,
        user: &UserRef,
        user_id: &str,
        template: &Template,
        now: i64,
        max_templates: usize,
        device: Option<(&str, usize)>,
    ) -> Result<Vec<Zeroizing<Vec<f32>>>, VaultError> {
        let model = template.face_model.as_str();
        let templates = self.update_user(user, user_id, &|record| {
            if record.count_of(model) >= max_templates {
                return Err(VaultError::TemplateLimit(max_templates));
            }
            record.templates.push(StoredTemplate {
                features: template.features.to_vec(),
                enrolled_at: now,
                face_model: model.to_owned(),
            });
            if let Some((device, max)) = device {
                remember(&mut record.devices, device, max);
            }
            Ok(())
        })?;
        // Other replicas' galleries learn of it from the change feed.
        self.note_change(user_id, now)?;
        Ok(templates
            .into_iter()
            .filter(|t| t.face_model == model)
            .map(|t| t.features)
            .collect())
    }

    /// Read-modify-write of a user's record, atomic per user: a compare-and-swap, retried
    /// when a concurrent enrolment (or the rotation moving this user) got there first, so
    /// no update is lost. A record still under an old key's index moves to the current
    /// index on the way. Returns the templates as stored.
    fn update_user(
        &self,
        user: &UserRef,
        user_id: &str,
        change: &dyn Fn(&mut UserRecord) -> Result<(), VaultError>,
    ) -> Result<Vec<Template>, VaultError> {
        let target = *user.current();
        loop {
            let found = self.find_user(user)?;
            let mut record: UserRecord = match &found {
                Some((index, sealed)) => self.unseal(Table::UserData, index, sealed)?,
                None => UserRecord::default(),
            };
            change(&mut record)?;
            record.user_id = user_id.to_owned();
            let sealed = self.seal_value(Table::UserData, &target, &record)?;
            match found {
                Some((index, old)) if index != target => {
                    // Moving to the current index, in one write (an erasure in between
                    // must not be undone). A copy already there, or a changed source:
                    // read again and apply the change to what is there now.
                    self.map_index(&index, &target)?;
                    match self
                        .store()
                        .move_value(Table::UserData, &index, &old, &target, sealed)?
                    {
                        Moved::Placed => return Ok(record.take_templates()),
                        Moved::Kept => self.counted(Table::UserData, -1),
                        Moved::Gone => {}
                    }
                }
                found => {
                    let expected = found.as_ref().map(|(_, old)| old.as_slice());
                    if self.store().compare_and_swap(
                        Table::UserData,
                        &target,
                        expected,
                        Some(sealed),
                    )? {
                        if expected.is_none() {
                            self.counted(Table::UserData, 1);
                        }
                        return Ok(record.take_templates());
                    }
                }
            }
        }
    }

    /// Records that the user at `old` is now at `new` (for history and logs still under the
    /// old index).
    pub(super) fn map_index(&self, old: &UserIndex, new: &UserIndex) -> Result<(), VaultError> {
        let key = index_map_key(old);
        let sealed = self.seal_value(Table::Meta, &key, &new.to_vec())?;
        self.store().insert(Table::Meta, &key, sealed)?;
        Ok(())
    }

    pub(super) fn mapped_index(&self, old: &[u8]) -> Result<Option<UserIndex>, VaultError> {
        let key = index_map_key(old);
        let Some(sealed) = self.store().get(Table::Meta, &key)? else {
            return Ok(None);
        };
        let new: Vec<u8> = self.unseal(Table::Meta, &key, &sealed)?;
        new.try_into()
            .map(Some)
            .map_err(|_| VaultError::Corrupt("an index map entry has the wrong length".into()))
    }
}
