//! Every enrolled user's centroid, held in TEE memory for the identity-conflict search ("one
//! face, many accounts"): a brute-force scan, about 0.1 µs per user per probe at 128
//! dimensions. Loaded from the vault at start and kept in step with enrolment and erasure;
//! users are keyed by SM3 of their id, so a key rotation (which re-indexes the store) does
//! not touch it. Centroids are wiped when replaced or dropped.

use std::collections::HashMap;
use std::sync::RwLock;

use zeroize::Zeroizing;

use super::{Conflict, centroid, cosine};

/// Key of a user in the gallery: SM3 of the user id.
pub type GalleryKey = [u8; 32];

pub fn gallery_key(user_id: &str) -> GalleryKey {
    crate::crypto::sm3(user_id.as_bytes())
}

struct Entry {
    centroid: Zeroizing<Vec<f32>>,
    templates: usize,
}

#[derive(Default)]
pub struct Gallery {
    users: RwLock<HashMap<GalleryKey, Entry>>,
}

impl Gallery {
    /// Sets a user's templates (replacing what was there); no templates removes the user.
    pub fn set<T: AsRef<[f32]>>(&self, user: GalleryKey, templates: &[T]) {
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        if templates.is_empty() {
            users.remove(&user);
        } else {
            users.insert(
                user,
                Entry {
                    centroid: Zeroizing::new(centroid(templates)),
                    templates: templates.len(),
                },
            );
        }
    }

    pub fn remove(&self, user: &GalleryKey) {
        self.users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(user);
    }

    pub fn len(&self) -> usize {
        self.users.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The other enrolled user whose centroid is closest to `probe`, if any.
    pub fn best_other(&self, probe: &[f32], claimed: &GalleryKey) -> Option<Conflict> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let searched = users.len() - usize::from(users.contains_key(claimed));
        users
            .iter()
            .filter(|(key, _)| *key != claimed)
            .map(|(_, entry)| Conflict {
                similarity: cosine(probe, &entry.centroid),
                templates: entry.templates,
                searched,
            })
            .max_by(|a, b| a.similarity.total_cmp(&b.similarity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_closest_other_user_and_never_the_claimed_one() {
        let gallery = Gallery::default();
        let (alice, bob, carol) = (
            gallery_key("alice"),
            gallery_key("bob"),
            gallery_key("carol"),
        );
        gallery.set(alice, &[vec![1.0, 0.0]]);
        gallery.set(bob, &[vec![0.6, 0.8], vec![0.8, 0.6]]);
        gallery.set(carol, &[vec![0.0, 1.0]]);
        let best = gallery.best_other(&[1.0, 0.0], &alice).unwrap();
        assert_eq!((best.templates, best.searched), (2, 2));
        assert!(
            (best.similarity - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-5,
            "{best:?}"
        );
        gallery.remove(&bob);
        let best = gallery.best_other(&[1.0, 0.0], &alice).unwrap();
        assert_eq!((best.templates, best.similarity), (1, 0.0));
        gallery.set::<Vec<f32>>(carol, &[]);
        assert_eq!(gallery.best_other(&[1.0, 0.0], &alice), None);
        assert_eq!(gallery.len(), 1);
    }
}
