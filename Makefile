# The two commands of the README: `make run` and `make test`.
.PHONY: run test lint bench fmt

# Run the service on its embedded defaults: sled in ./data, dev master key (loud warning),
# listening on 127.0.0.1:8080, public keys written to ./keys.
run:
	cargo run --release -- serve --dev

# Every test: unit tests, official vectors, OpenSSL interop, end-to-end server tests.
test:
	cargo test --all-targets

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt --all

# Criterion benchmarks of the primitives and the in-process request flow, with OpenSSL's
# SM2 figures from the same machine and run for reference.
bench:
	cargo bench --bench primitives
	@if command -v openssl >/dev/null; then echo "== reference: openssl speed sm2"; openssl speed -seconds 3 sm2 2>/dev/null | tail -2; else echo "openssl not installed: no reference column"; fi
