# The one test command the README gives and .ci/run calls.
.PHONY: test lint unit scripts dashboards

test: lint scripts unit dashboards

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit:
	cargo test --workspace

# Shell scripts that cannot run here (kind needs a container engine) are at least shellcheck-clean.
scripts:
	shellcheck deploy/kind/up.sh deploy/kind/down.sh dashboards/sync-chart

# Every dashboard query against a real Prometheus scraping a real local `loopscale run`
# (Debian's prometheus and promtool; about a minute).
dashboards:
	cargo build -j 2 -p loopscale -p loopscale-workload
	dashboards/test/check-dashboards
