# The one test command the README gives and .ci/run calls.
.PHONY: test lint unit

test: lint unit

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit:
	cargo test --workspace
