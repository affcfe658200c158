//! A dudect-style check (Reparaz, Balasch, Verbauwhede 2017) of the two operations that use
//! the service's private keys on every request: the session-key unwrap ([d]C1,
//! `crypto::sm2::unwrap`) and the answer's signature (`sign_der_random`); and of SM4
//! (`crypto::sm4_block`: the key schedule and SM4-GCM under a session or table key).
//!
//! Two private keys take turns in random order: a fixed key d = 1 (every signed digit zero
//! but the lowest, the extreme case for the selects around zero digits) and a key drawn at
//! random, one pair at a time for a few random keys (two keys, not one against a pool: a pool
//! is colder in the cache than one key and its times differ for that reason alone; the first
//! version of this bench saw exactly that for signing). Each call is timed alone; Welch's t compares the classes' times, on all
//! samples and on those below the 50th, 75th and 90th percentiles (dudect's crops, which
//! drop interrupts and the VM's pauses). |t| above 4.5 is dudect's sign of a leak; this is a
//! report, not a test (timings are never asserted), and `make bench` prints the verdict.
//!
//! `CONSTANT_TIME_SAMPLES` (default 20,000 per operation) sets the size; `make bench-smoke`
//! uses a few hundred, as does `cargo test` (which runs it without `--bench`). Output: stdout and `target/constant-time-report.json`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use sm2::elliptic_curve::Generate;
use sm2::elliptic_curve::group::Group;
use sm2::{NonZeroScalar, ProjectivePoint, Scalar};
use tee_risk::internals::crypto::aead::Sm4Gcm;
use tee_risk::internals::crypto::secret::SecretBytes;
use tee_risk::internals::crypto::sm2::{DecryptionKey, IdentityKey};

/// Random keys, each compared with d = 1 in its own run.
const RANDOM_KEYS: usize = 3;
const CIPHERTEXTS: usize = 64;
/// dudect's threshold: |t| above it over many samples means the classes' times differ.
const LEAK_T: f64 = 4.5;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn samples() -> usize {
    // `cargo test --all-targets` runs this binary without `--bench`: a quick pass that proves
    // it works, a few hundred calls.
    if !std::env::args().any(|a| a == "--bench") {
        return 400;
    }
    std::env::var("CONSTANT_TIME_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n >= 100)
        .unwrap_or(20_000)
}

/// The scalar 1, as the fixed class's key.
fn one() -> SecretBytes<32> {
    let mut bytes = [0u8; 32];
    bytes[31] = 1;
    SecretBytes::from_slice(&bytes).unwrap()
}

/// A small xorshift for the class and input choices (the order must not follow a pattern
/// the machine could line up with; it need not be secret).
struct Coin(u64);

impl Coin {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Welch's t between the two classes' times, on the samples at or below `quantile` of all;
/// `None` when fewer than two of a class are left (the classes separate completely).
fn welch_t(times: &[(bool, f64)], quantile: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = times.iter().map(|&(_, t)| t).collect();
    sorted.sort_by(f64::total_cmp);
    let cut = sorted[((sorted.len() - 1) as f64 * quantile) as usize];
    let stats = |class: bool| {
        let xs: Vec<f64> = times
            .iter()
            .filter(|&&(c, t)| c == class && t <= cut)
            .map(|&(_, t)| t)
            .collect();
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (n, mean, var)
    };
    let (n0, m0, v0) = stats(false);
    let (n1, m1, v1) = stats(true);
    (n0 >= 2.0 && n1 >= 2.0).then(|| (m0 - m1) / (v0 / n0 + v1 / n1).sqrt())
}

/// Times `op(class, input)` `n` times with classes in random order; returns the report row.
fn measure(name: &str, n: usize, mut op: impl FnMut(bool, usize)) -> serde_json::Value {
    let mut coin = Coin(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    for i in 0..n / 10 {
        op(i % 2 == 0, i);
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let draw = coin.next();
        let class = draw & 1 == 1;
        let input = (draw >> 8) as usize;
        let start = Instant::now();
        op(class, input);
        times.push((class, start.elapsed().as_nanos() as f64));
    }
    let crops = [1.0, 0.9, 0.75, 0.5];
    let ts: Vec<Option<f64>> = crops.iter().map(|&q| welch_t(&times, q)).collect();
    let max_t = ts.iter().flatten().fold(0.0f64, |m, t| m.max(t.abs()));
    let leak = ts.iter().any(Option::is_none) || max_t >= LEAK_T;
    let verdict = if leak {
        "LEAK SUSPECTED"
    } else {
        "no leak detected"
    };
    let shown: Vec<String> = ts
        .iter()
        .map(|t| t.map_or("separate".into(), |t| format!("{:.2}", t.abs())))
        .collect();
    println!(
        "{name:<14} {n:>7} samples  |t| all {}, p90 {}, p75 {}, p50 {}  → {verdict} \
         (threshold {LEAK_T})",
        shown[0], shown[1], shown[2], shown[3]
    );
    json!({"operation": name, "samples": n, "t_all": ts[0], "t_p90": ts[1], "t_p75": ts[2],
           "t_p50": ts[3], "max_abs_t": max_t, "threshold": LEAK_T, "leak_suspected": leak})
}

fn main() {
    let n = samples();
    println!("dudect-style check: fixed key d = 1 against random keys, classes in random order");

    let fixed = DecryptionKey::from_scalar(&one()).unwrap();
    let random: Vec<DecryptionKey> = (0..RANDOM_KEYS)
        .map(|_| DecryptionKey::generate().unwrap())
        .collect();
    // Ciphertexts to a third key: every call fails at C3 for both classes, after the same
    // work, so only the key differs between them.
    let third = DecryptionKey::generate().unwrap();
    let ciphertexts: Vec<Vec<u8>> = (0..CIPHERTEXTS)
        .map(|i| third.public().encrypt_der(&[i as u8; 16]).unwrap())
        .collect();
    let mut rows = Vec::new();
    for (i, other) in random.iter().enumerate() {
        rows.push(measure(
            &format!("sm2_unwrap {}", i + 1),
            n,
            |class, input| {
                let key = if class { other } else { &fixed };
                let ciphertext = &ciphertexts[input % CIPHERTEXTS];
                black_box(key.decrypt_der_exact::<16>(black_box(ciphertext)).is_err());
            },
        ));
    }

    let fixed = IdentityKey::from_scalar(&one()).unwrap();
    let random: Vec<IdentityKey> = (0..RANDOM_KEYS)
        .map(|_| IdentityKey::generate().unwrap())
        .collect();
    for (i, other) in random.iter().enumerate() {
        rows.push(measure(&format!("sm2_sign {}", i + 1), n, |class, _| {
            let key = if class { other } else { &fixed };
            black_box(key.sign_der_random(&[b"an answer"]).unwrap());
        }));
    }

    // SM4 (`crypto::sm4_block`): key schedule and a 128-byte SM4-GCM seal, dudect's
    // fixed-against-random classes: an all-zero key and message against random ones, each
    // class read from a table of the same shape. (A first version took the zeros from
    // constants and the random ones from a table: |t| 7.6, the reads and not SM4; with
    // equal tables |t| at most 3.5 in five runs of 20,000–40,000.)
    let table = |random: bool| -> Vec<(SecretBytes<16>, [u8; 128])> {
        (0..CIPHERTEXTS)
            .map(|_| {
                let (mut key, mut message) = ([0u8; 16], [0u8; 128]);
                if random {
                    getrandom::fill(&mut key).unwrap();
                    getrandom::fill(&mut message).unwrap();
                }
                (SecretBytes::from_slice(&key).unwrap(), message)
            })
            .collect()
    };
    let (zeros, randoms) = (table(false), table(true));
    rows.push(measure("sm4_gcm", n, |class, input| {
        let (key, message) = match class {
            true => &randoms[input % CIPHERTEXTS],
            false => &zeros[input % CIPHERTEXTS],
        };
        let mut message = *message;
        let gcm = Sm4Gcm::new(black_box(key));
        black_box(gcm.seal_in_place(&[0u8; 12], b"", &mut message).unwrap());
    }));

    // The control: RustCrypto's variable-time multiplication (wNAF, skips zero digits) must
    // show a leak between the same two kinds of scalar, or this bench could not see one.
    let point = ProjectivePoint::generator() * Scalar::from(0x5eedu64);
    let (low, high) = (Scalar::ONE, *NonZeroScalar::generate());
    let control = measure("control", n / 4, |class, _| {
        let k = if class { &high } else { &low };
        black_box(black_box(point).mul_vartime(k));
    });
    let control_seen = control["leak_suspected"] == json!(true);
    rows.push(control);
    println!(
        "control (variable-time multiplication): {}",
        if control_seen {
            "leak seen, as it must be"
        } else {
            "NO LEAK SEEN: this check is blind"
        }
    );

    let path = target_dir().join("constant-time-report.json");
    let document = json!({"rows": rows});
    std::fs::write(&path, serde_json::to_vec_pretty(&document).unwrap()).unwrap();
    println!("report: {}", path.display());
}
