//! Every enrolled user's centroid, in TEE memory: the index behind 1:N identification and
//! the identity-conflict search ("one face, many accounts").
//!
//! An **exact** search over a compact layout, chosen by measurement over a graph index
//! (docs/PERFORMANCE.md, "1:N"): each unit centroid is kept twice, contiguously — as int8
//! codes `round(127 · c)` for a fast scan, and as f32 for the exact score. A search scores
//! every user on the codes (exact integer dot products, `scan`: AVX2), then
//! re-scores in f32 every user whose code score is within twice the quantisation error bound
//! of the k-th best. That bound is computed per probe (below), so the answer is provably the
//! brute-force top k, not an approximation; usually a few hundred users are re-scored.
//!
//! Bound, for probe q (unit), its codes q̂ = round(s·q) with s = 127 / max|qᵢ|, a centroid c
//! (unit) and its codes ĉ = round(127·c), with rounding errors |e| ≤ ½ per component:
//! `|q̂·ĉ − 127·s·(q·c)| ≤ ½·s·‖q‖₁ + ½·127·√d + ¼·d`.
//!
//! Users are keyed by SM3 of their id (a key rotation re-indexes the store, not this), and
//! carry their id for identification answers. Updates are visible to the next search. Every
//! buffer holding face data is wiped when replaced or dropped, including on growth.

use std::collections::HashMap;
use std::sync::RwLock;

use zeroize::Zeroizing;

use super::{Conflict, centroid};

/// Key of a user in the gallery: SM3 of the user id.
pub type GalleryKey = [u8; 32];

pub fn gallery_key(user_id: &str) -> GalleryKey {
    crate::crypto::sm3(user_id.as_bytes())
}

mod scan;

/// Scale of the centroids' int8 codes.
const CODE_SCALE: f32 = 127.0;

/// Rows scored per call of the scan (16 KiB of scores on the stack, reused).
const SCAN_BLOCK: usize = 4096;

/// A user found by a search.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub user_id: String,
    /// Cosine of the probe with the user's centroid (exact, f32).
    pub similarity: f32,
    /// The user's template count (for the calibration curve).
    pub templates: usize,
}

/// A user's place in the index.
struct Slot {
    key: GalleryKey,
    user_id: Zeroizing<String>,
    templates: usize,
}

#[derive(Default)]
struct Index {
    /// The dimension, fixed by the first user.
    dim: usize,
    slots: Vec<Slot>,
    /// `slots.len() × dim` int8 codes.
    codes: Zeroizing<Vec<i8>>,
    /// `slots.len() × dim` unit centroids.
    exact: Zeroizing<Vec<f32>>,
    positions: HashMap<GalleryKey, usize>,
}

#[derive(Default)]
pub struct Gallery {
    index: RwLock<Index>,
}

/// Appends to a wiping buffer; on growth the old allocation is wiped, not just freed.
fn append<T: Copy + Default + zeroize::Zeroize>(buffer: &mut Zeroizing<Vec<T>>, items: &[T]) {
    if buffer.len() + items.len() > buffer.capacity() {
        let capacity = (buffer.capacity() * 2)
            .max(buffer.len() + items.len())
            .max(1024);
        let mut grown = Zeroizing::new(Vec::with_capacity(capacity));
        grown.extend_from_slice(buffer);
        *buffer = grown; // the old one is wiped as it drops
    }
    buffer.extend_from_slice(items);
}

fn quantise(unit: &[f32], scale: f32) -> Zeroizing<Vec<i8>> {
    Zeroizing::new(
        unit.iter()
            .map(|x| (x * scale).round().clamp(-127.0, 127.0) as i8)
            .collect(),
    )
}

/// The integer dot product of two code vectors: SimSIMD's kernel for this CPU (exact: it
/// accumulates in 32-bit integers; `tests` compares it with the scalar sum).
fn dot_codes(a: &[i8], b: &[i8]) -> i32 {
    use simsimd::SpatialSimilarity;
    match i8::dot(a, b) {
        Some(dot) => dot as i32,
        None => dot_codes_scalar(a, b),
    }
}

/// The same sum, one product at a time (the reference, and the fallback for unequal lengths,
/// which the index never passes).
fn dot_codes_scalar(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

/// The exact score: the same f32 dot product as `risk::cosine`, in the same order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    super::cosine(a, b)
}

impl Index {
    fn set(&mut self, key: GalleryKey, user_id: &str, unit: &[f32], templates: usize) {
        if self.slots.is_empty() {
            self.dim = unit.len();
        }
        if unit.len() != self.dim {
            // The service checks the dimension of every probe; a mismatch here is a bug.
            tracing::error!(
                dim = unit.len(),
                expected = self.dim,
                "gallery centroid of the wrong dimension ignored"
            );
            return;
        }
        let codes = quantise(unit, CODE_SCALE);
        match self.positions.get(&key) {
            Some(&at) => {
                let range = at * self.dim..(at + 1) * self.dim;
                self.codes[range.clone()].copy_from_slice(&codes);
                self.exact[range].copy_from_slice(unit);
                self.slots[at].templates = templates;
            }
            None => {
                append(&mut self.codes, &codes);
                append(&mut self.exact, unit);
                self.positions.insert(key, self.slots.len());
                self.slots.push(Slot {
                    key,
                    user_id: Zeroizing::new(user_id.to_owned()),
                    templates,
                });
            }
        }
    }

    /// Removes a user: the last slot moves into its place.
    fn remove(&mut self, key: &GalleryKey) {
        let Some(at) = self.positions.remove(key) else {
            return;
        };
        let last = self.slots.len() - 1;
        let dim = self.dim;
        if at != last {
            self.codes
                .copy_within(last * dim..(last + 1) * dim, at * dim);
            self.exact
                .copy_within(last * dim..(last + 1) * dim, at * dim);
            self.positions.insert(self.slots[last].key, at);
        }
        self.slots.swap_remove(at);
        // Wipe the vacated tail before shortening (truncate does not wipe).
        self.codes[last * dim..].iter_mut().for_each(|x| *x = 0);
        self.exact[last * dim..].iter_mut().for_each(|x| *x = 0.0);
        self.codes.truncate(last * dim);
        self.exact.truncate(last * dim);
    }

    /// The `k` users most similar to `probe` (unit), best first, but `skip`: exactly the
    /// brute-force answer (module comment).
    fn search(&self, probe: &[f32], k: usize, skip: Option<usize>) -> Vec<(usize, f32)> {
        let n = self.slots.len();
        if k == 0 || n == 0 || probe.len() != self.dim {
            return Vec::new();
        }
        let peak = probe.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        if peak == 0.0 {
            return Vec::new();
        }
        let scale = CODE_SCALE / peak;
        let query = quantise(probe, scale);
        let l1: f32 = probe.iter().map(|x| x.abs()).sum();
        let d = self.dim as f32;
        let bound = 0.5 * scale * l1 + 0.5 * CODE_SCALE * d.sqrt() + 0.25 * d;
        // Twice the bound (the k-th best and a candidate may each be off by it), rounded
        // up with a margin for the f32 arithmetic of the bound itself.
        let slack = (2.0 * bound).ceil() as i64 + 2;

        // One pass over the codes: keep the k best code scores (a min-heap, touched only
        // when a score beats its smallest), and every user within `slack` of the k-th best
        // so far. The k-th best only rises, so that is a superset of the final candidates.
        let mut best = std::collections::BinaryHeap::with_capacity(k + 1);
        let mut kth = i64::MIN;
        let mut near: Vec<(usize, i32)> = Vec::new();
        // Scored a block of rows at a time (`scan`: the probe stays in registers).
        let mut scores = Zeroizing::new([0i32; SCAN_BLOCK]);
        for (b, block) in self.codes.chunks(SCAN_BLOCK * self.dim).enumerate() {
            let rows = block.len() / self.dim;
            scan::score_rows(&query[..], block, &mut scores[..rows]);
            for (r, &score) in scores[..rows].iter().enumerate() {
                let i = b * SCAN_BLOCK + r;
                if Some(i) == skip || i64::from(score) < kth.saturating_sub(slack) {
                    continue;
                }
                near.push((i, score));
                if best.len() < k {
                    best.push(std::cmp::Reverse(score));
                } else if i64::from(score) > kth {
                    best.pop();
                    best.push(std::cmp::Reverse(score));
                } else {
                    continue;
                }
                if best.len() == k {
                    kth = i64::from(best.peek().map_or(i32::MIN, |r| r.0));
                }
            }
        }
        if best.is_empty() {
            return Vec::new();
        }
        let threshold = kth.saturating_sub(slack);

        // The exact score of every user that could be in the top k.
        let mut found: Vec<(usize, f32)> = near
            .into_iter()
            .filter(|&(_, s)| i64::from(s) >= threshold)
            .map(|(i, _)| (i, dot(probe, &self.exact[i * self.dim..(i + 1) * self.dim])))
            .collect();
        found.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        found.truncate(k);
        found
    }
}

impl Gallery {
    /// Sets a user's templates (replacing what was there); no templates removes the user.
    pub fn set<T: AsRef<[f32]>>(&self, user_id: &str, templates: &[T]) {
        let key = gallery_key(user_id);
        let mut index = self.write();
        if templates.is_empty() {
            index.remove(&key);
        } else {
            let unit = Zeroizing::new(centroid(templates));
            index.set(key, user_id, &unit, templates.len());
        }
    }

    pub fn remove(&self, user: &GalleryKey) {
        self.write().remove(user);
    }

    pub fn len(&self) -> usize {
        self.read().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory per enrolled user at `dim` dimensions, besides the user id's own
    /// bytes: codes, f32 centroid, slot, and the position map's entry (docs/PERFORMANCE.md).
    pub fn bytes_per_user(dim: usize) -> usize {
        dim + 4 * dim
            + std::mem::size_of::<Slot>()
            + std::mem::size_of::<String>()
            + std::mem::size_of::<(GalleryKey, usize)>()
            + 8 // the map's control byte and load-factor headroom, about
    }

    /// The `k` enrolled users most similar to `probe` (unit length), best first.
    pub fn top_k(&self, probe: &[f32], k: usize) -> Vec<Candidate> {
        let index = self.read();
        index
            .search(probe, k, None)
            .into_iter()
            .map(|(i, similarity)| Candidate {
                user_id: index.slots[i].user_id.to_string(),
                similarity,
                templates: index.slots[i].templates,
            })
            .collect()
    }

    /// The other enrolled user whose centroid is closest to `probe`, if any.
    pub fn best_other(&self, probe: &[f32], claimed: &GalleryKey) -> Option<Conflict> {
        let index = self.read();
        let skip = index.positions.get(claimed).copied();
        let searched = index.slots.len() - usize::from(skip.is_some());
        let (i, similarity) = index.search(probe, 1, skip).into_iter().next()?;
        Some(Conflict {
            similarity,
            templates: index.slots[i].templates,
            searched,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // Updates complete before the lock is released; a panic cannot leave half a slot.
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::risk::cosine;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        // A small deterministic generator (splitmix64) of Gaussian-ish components.
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        };
        let v: Vec<f32> = (0..dim).map(|_| next() + next() + next()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / norm).collect()
    }

    #[test]
    fn finds_the_closest_other_user_and_never_the_claimed_one() {
        let gallery = Gallery::default();
        gallery.set("alice", &[vec![1.0, 0.0]]);
        gallery.set("bob", &[vec![0.6, 0.8], vec![0.8, 0.6]]);
        gallery.set("carol", &[vec![0.0, 1.0]]);
        let alice = gallery_key("alice");
        let best = gallery.best_other(&[1.0, 0.0], &alice).unwrap();
        assert_eq!((best.templates, best.searched), (2, 2));
        assert!(
            (best.similarity - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-5,
            "{best:?}"
        );
        gallery.remove(&gallery_key("bob"));
        let best = gallery.best_other(&[1.0, 0.0], &alice).unwrap();
        assert_eq!((best.templates, best.similarity), (1, 0.0));
        gallery.set::<Vec<f32>>("carol", &[]);
        assert_eq!(gallery.best_other(&[1.0, 0.0], &alice), None);
        assert_eq!(gallery.len(), 1);
        assert_eq!(gallery.top_k(&[1.0, 0.0], 3)[0].user_id, "alice");
    }

    /// The brute-force answer: every centroid scored with the same f32 dot product.
    fn brute_force(users: &[(String, Vec<f32>)], probe: &[f32], k: usize) -> Vec<(String, f32)> {
        let mut all: Vec<(String, f32)> = users
            .iter()
            .map(|(id, c)| (id.clone(), cosine(probe, &centroid(&[c]))))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all.truncate(k);
        all
    }

    #[test]
    fn every_search_is_the_brute_force_answer_through_updates() {
        let dim = 128;
        let gallery = Gallery::default();
        let mut users: Vec<(String, Vec<f32>)> = (0..3_000)
            .map(|i| (format!("user-{i}"), unit(i, dim)))
            .collect();
        // Near-duplicates and exact ties: the cases quantisation could get wrong.
        for i in 0..200u64 {
            let base = &users[i as usize].1;
            let twin: Vec<f32> = base
                .iter()
                .zip(unit(10_000 + i, dim))
                .map(|(a, b)| a + b * 1e-3)
                .collect();
            let norm = twin.iter().map(|x| x * x).sum::<f32>().sqrt();
            users.push((format!("twin-{i}"), twin.iter().map(|x| x / norm).collect()));
        }
        users.push(("copy-0".into(), users[0].1.clone()));
        for (id, c) in &users {
            gallery.set(id, std::slice::from_ref(c));
        }
        // Updates: erase some, re-enrol others with new faces.
        for i in (0..3_000).step_by(7) {
            gallery.remove(&gallery_key(&users[i].0));
        }
        for i in (1..3_000).step_by(11) {
            users[i].1 = unit(50_000 + i as u64, dim);
            gallery.set(&users[i].0, &[users[i].1.clone()]);
        }
        let live: Vec<(String, Vec<f32>)> = users
            .iter()
            .enumerate()
            // Erased, unless enrolled again afterwards.
            .filter(|(i, _)| !(*i < 3_000 && i % 7 == 0) || (*i >= 1 && (i - 1) % 11 == 0))
            .map(|(_, u)| u.clone())
            .collect();
        assert_eq!(gallery.len(), live.len());

        let mut queries: Vec<Vec<f32>> = (0..300).map(|i| unit(90_000 + i, dim)).collect();
        // Probes near enrolled users (mated searches) and exactly on them.
        queries.extend(live.iter().step_by(17).map(|(_, c)| {
            let noisy: Vec<f32> = c
                .iter()
                .zip(unit(7, dim))
                .map(|(a, b)| a + 0.3 * b)
                .collect();
            let norm = noisy.iter().map(|x| x * x).sum::<f32>().sqrt();
            noisy.iter().map(|x| x / norm).collect()
        }));
        queries.extend(live.iter().step_by(97).map(|(_, c)| c.clone()));
        for probe in &queries {
            for k in [1, 5] {
                let expected = brute_force(&live, probe, k);
                let found = gallery.top_k(probe, k);
                let found: Vec<(String, f32)> = found
                    .into_iter()
                    .map(|c| (c.user_id, c.similarity))
                    .collect();
                // Equal scores may come in either order; the scores must be identical.
                let scores = |v: &[(String, f32)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
                assert_eq!(scores(&found), scores(&expected));
                if expected.len() < 2 || expected[0].1 != expected[1].1 {
                    assert_eq!(found[0].0, expected[0].0);
                }
            }
        }
    }

    #[test]
    fn the_simd_kernel_is_the_exact_integer_sum() {
        let mut state = 1u32;
        let mut byte = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8 as i8
        };
        for len in [1, 7, 16, 31, 64, 128, 129, 512] {
            let a: Vec<i8> = (0..len).map(|_| byte()).collect();
            let b: Vec<i8> = (0..len).map(|_| byte()).collect();
            assert_eq!(dot_codes(&a, &b), dot_codes_scalar(&a, &b), "len {len}");
        }
        // The extremes of the code range (codes are clamped to ±127).
        let high = vec![127i8; 128];
        let low = vec![-127i8; 128];
        assert_eq!(dot_codes(&high, &high), 127 * 127 * 128);
        assert_eq!(dot_codes(&high, &low), -127 * 127 * 128);
    }

    #[test]
    fn growth_and_removal_leave_no_face_data_behind_in_the_live_buffers() {
        let gallery = Gallery::default();
        for i in 0..2_000 {
            gallery.set(&format!("u{i}"), &[unit(i, 16)]);
        }
        for i in 0..2_000 {
            gallery.remove(&gallery_key(&format!("u{i}")));
        }
        let index = gallery.read();
        assert!(index.codes.is_empty() && index.exact.is_empty());
        assert!(index.positions.is_empty());
    }
}
