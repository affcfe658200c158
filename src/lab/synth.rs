//! What the evaluation and the training share: labelled samples, the deterministic random
//! generator, and the assumed context (liveness, velocity, devices) of genuine and impostor
//! attempts. Faces come from the data; the context of each attempt does not exist in any
//! public face set, so it is drawn from the stated distributions below. Those are
//! assumptions about clients and attackers, to be replaced by a deployment's own labelled
//! traffic.

use crate::risk::model::LIVE_SCORE_FLOOR;
use crate::risk::{Signals, Velocity};

/// A live person's liveness score: uniform in [`LIVE_SCORE_FLOOR`, 1].
fn live_score(rng: &mut Rng) -> f32 {
    rng.between(f64::from(LIVE_SCORE_FLOOR), 1.0) as f32
}

/// One labelled sample: an identity number and a unit embedding.
pub struct Labelled<'a> {
    pub identity: usize,
    pub embedding: &'a [f32],
}

/// Images per identity, identities in order of first appearance, images in file order.
pub fn group<'a>(samples: &[Labelled<'a>]) -> Vec<Vec<&'a [f32]>> {
    let mut groups: Vec<Vec<&[f32]>> = Vec::new();
    let mut index: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for sample in samples {
        let slot = *index.entry(sample.identity).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[slot].push(sample.embedding);
    }
    groups
}

/// A small deterministic generator (xorshift64*): training must be reproducible, and no
/// other randomness is wanted here.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }
}

/// The context of an attempt (everything but the face).
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    pub liveness: Option<f32>,
    pub velocity: Velocity,
    pub new_device: bool,
}

/// A genuine user: liveness given half the time and high (a live person); usually no other
/// recent attempt, rarely a refused one; a new device one time in twenty; a device shared
/// with one other account one time in fifty.
pub fn genuine_context(rng: &mut Rng) -> Context {
    Context {
        liveness: rng.chance(0.5).then(|| live_score(rng)),
        velocity: Velocity {
            user_attempts: small_count(rng, 0.7, 2),
            user_failures: u32::from(rng.chance(0.05)),
            device_users: u32::from(rng.chance(0.02)),
        },
        new_device: rng.chance(0.05),
    }
}

/// A single attempt by a zero-effort impostor (a live person, their own face): liveness as
/// high as a genuine user's, a few recent tries, usually a device new to the account.
pub fn impostor_context(rng: &mut Rng) -> Context {
    Context {
        liveness: rng.chance(0.5).then(|| live_score(rng)),
        velocity: Velocity {
            user_attempts: small_count(rng, 0.4, 5),
            user_failures: small_count(rng, 0.5, 3),
            device_users: small_count(rng, 0.6, 3),
        },
        new_device: rng.chance(0.7),
    }
}

/// 0 with probability `p_zero`, else uniform in 1..=max.
fn small_count(rng: &mut Rng, p_zero: f64, max: usize) -> u32 {
    if rng.chance(p_zero) {
        0
    } else {
        1 + rng.below(max) as u32
    }
}

impl Context {
    /// The signals of an attempt in this context.
    pub fn apply(self, mut s: Signals) -> Signals {
        s.liveness = self.liveness;
        s.velocity = self.velocity;
        s.new_device = self.new_device;
        s
    }
}
