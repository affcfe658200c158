//! The fuzz targets on the stable toolchain, as part of `make test`: every input the fuzzers
//! ever crashed on and every hand-made input for a known failure (`fuzz/regressions/<target>/`),
//! then thousands of mutations of the committed valid seeds (`fuzz/seeds/<target>/`). Each
//! must come back without a panic. Keys, seeds and the mutator are fixed, so a failure here
//! fails again the same way. `make fuzz` runs the real coverage-guided fuzzers (cargo fuzz,
//! nightly) for a bounded time.

use std::path::Path;

use tee_risk::internals::fuzzing;

fn target(name: &str) -> fn(&[u8]) {
    match name {
        "envelope" => fuzzing::envelope,
        "decrypt" => fuzzing::decrypt,
        "authorization" => fuzzing::authorization,
        "record" => fuzzing::record,
        "evidence" => fuzzing::evidence,
        "config" => fuzzing::config,
        "tdx_quote" => fuzzing::tdx_quote,
        other => panic!("no fuzz target {other}"),
    }
}

#[test]
fn every_past_crash_stays_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            target(&name)(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    eprintln!("{replayed} regression inputs replayed");
    assert!(
        replayed > 0,
        "fuzz/regressions holds no input: the replay proved nothing"
    );
}

/// The committed seeds, in a fixed order: (target, file name, bytes).
fn committed_seeds() -> Vec<(String, String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let target = dir.file_name().unwrap().to_str().unwrap().to_owned();
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            seeds.push((target.clone(), name, std::fs::read(&path).unwrap()));
        }
    }
    seeds.sort();
    seeds
}

/// Every committed seed is a valid input of its target (it reaches the deep code under the
/// fixed keys), and every target has seeds.
#[test]
fn committed_seeds_are_valid_inputs_of_every_target() {
    let seeds = committed_seeds();
    for name in TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| t == name),
            "no seed for the {name} target: run the ignored test write_fuzz_seeds"
        );
    }
    for (target, file, data) in &seeds {
        assert!(
            fuzzing::reaches_the_end(target, data),
            "fuzz/seeds/{target}/{file} is no longer a valid input: rewrite the seeds \
             (cargo test --test fuzz_regressions -- --ignored write_fuzz_seeds)"
        );
    }
}

/// The fuzz targets (the `[[bin]]`s of fuzz/Cargo.toml).
const TARGETS: [&str; 7] = [
    "envelope",
    "decrypt",
    "authorization",
    "record",
    "evidence",
    "config",
    "tdx_quote",
];

/// A small deterministic mutator (xorshift): flips, overwrites with boundary bytes, inserts,
/// deletes, truncates and splices.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn mutate(&mut self, seed: &[u8], other: &[u8]) -> Vec<u8> {
        let mut data = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(data.len() + 1);
            let last = data.len().saturating_sub(1);
            match self.below(7) {
                0 if !data.is_empty() => data[at.min(last)] ^= 1 << self.below(8),
                1 if !data.is_empty() => {
                    const EDGES: [u8; 8] = [0, 0xff, b'"', b'{', b'}', b'\\', b'0', 0x80];
                    data[at.min(last)] = EDGES[self.below(EDGES.len())];
                }
                2 => data.insert(at, self.next() as u8),
                3 if at < data.len() => {
                    data.remove(at);
                }
                4 => data.truncate(at),
                5 => {
                    let from = self.below(other.len());
                    let len = self.below(other.len() - from + 1);
                    data.splice(at..at, other[from..from + len].iter().copied());
                }
                _ => {
                    let len = self.below(64);
                    data.splice(at..at, std::iter::repeat_n(self.next() as u8, len));
                }
            }
        }
        data
    }
}

#[test]
fn mutated_seeds_never_panic() {
    const PER_SEED: usize = 3_000;
    let seeds = committed_seeds();
    let mut mutator = Mutator(0x9e37_79b9_7f4a_7c15);
    let mut runs = 0;
    for (i, (name, _, seed)) in seeds.iter().enumerate() {
        let run = target(name);
        run(seed);
        let (_, _, other) = &seeds[(i + 1) % seeds.len()];
        for _ in 0..PER_SEED {
            run(&mutator.mutate(seed, other));
            runs += 1;
        }
    }
    eprintln!("{runs} mutated inputs, no panic");
}

/// Writes the seeds under the fixed keys to fuzz/seeds (run once after a change to a
/// target's input format, and commit the files).
#[test]
#[ignore = "writes fuzz/seeds; run by hand when the inputs change"]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let _ = std::fs::remove_dir_all(&root);
    for (i, (name, seed)) in fuzzing::seeds().into_iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
    }
}

/// `make fuzz` runs this to give the fuzzers valid starting points.
#[test]
#[ignore = "writes fuzz/corpus; run by make fuzz"]
fn write_fuzz_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, file, seed) in committed_seeds() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), seed).unwrap();
    }
    // The real hardware reports, for the SNP parser and (with `--features csv`) the CSV one.
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let milan = hex::decode(
        std::fs::read_to_string(vectors.join("snp/report_milan.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    std::fs::write(root.join("evidence/snp-milan"), milan).unwrap();
    std::fs::copy(
        vectors.join("csv/report.cert"),
        root.join("evidence/csv-report"),
    )
    .unwrap();
}
