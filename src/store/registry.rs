//! The key registry kept in `meta`: every master key id this database has used, with its
//! state, and the progress of the current rotation. Sealed under the current master key, so
//! the host cannot flip a retired key back to usable.
//!
//! ```text
//! active ──(a new DB_MASTER_KEY starts a rotation)──▶ decrypt_only ──(db retire-key)──▶ retired
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::keys::KeyId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Seals every new record (exactly one key).
    Active,
    /// Opens records not yet moved by rotation; never seals.
    DecryptOnly,
    /// Refused, even if supplied; its canary is gone.
    Retired,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub id: String,
    pub state: KeyState,
    /// When it entered this state (unix seconds).
    pub since: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// The key records are moved to.
    pub to: String,
    pub started_at: i64,
    /// Records per data table when the rotation began (new writes only add to them).
    pub counts_at_start: BTreeMap<String, u64>,
    /// Per table: hex of the last record key processed; a restart resumes after it.
    pub cursor: BTreeMap<String, String>,
    pub moved: u64,
    /// Per data table: records erasures removed since the rotation began, so that a
    /// legitimate erasure is not taken for a lost record (`db verify`). Counted before the
    /// records go: a crash in between overstates it by one user's records at most.
    #[serde(default)]
    pub erased: BTreeMap<String, u64>,
    pub completed_at: Option<i64>,
    pub verified_at: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub keys: Vec<KeyEntry>,
    pub rotation: Option<Rotation>,
}

impl Registry {
    pub fn new(active: KeyId, now: i64) -> Self {
        Self {
            keys: vec![KeyEntry {
                id: active.to_string(),
                state: KeyState::Active,
                since: now,
            }],
            rotation: None,
        }
    }

    pub fn state(&self, id: KeyId) -> Option<KeyState> {
        let id = id.to_string();
        self.keys.iter().find(|k| k.id == id).map(|k| k.state)
    }

    pub fn active(&self) -> Option<KeyId> {
        self.keys
            .iter()
            .find(|k| k.state == KeyState::Active)
            .and_then(|k| k.id.parse().ok())
    }

    /// Sets `id`'s state, adding it if unknown.
    pub fn set_state(&mut self, id: KeyId, state: KeyState, now: i64) {
        let text = id.to_string();
        match self.keys.iter_mut().find(|k| k.id == text) {
            Some(entry) => {
                entry.state = state;
                entry.since = now;
            }
            None => self.keys.push(KeyEntry {
                id: text,
                state,
                since: now,
            }),
        }
    }

    /// A rotation has begun and not yet moved every record.
    pub fn rotation_pending(&self) -> bool {
        self.rotation
            .as_ref()
            .is_some_and(|r| r.completed_at.is_none())
    }
}
