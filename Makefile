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
# (Debian's prometheus and promtool; about two minutes).
dashboards:
	cargo build -j 2 -p loopscale -p loopscale-workload
	dashboards/test/check-dashboards

# Control-plane tests of the operator and chart (operator/tests/cluster_*.rs) on the real
# control plane of deploy/testenv: build (skipped when bin/ is current), up, lint the chart,
# run the tests, and always down. Ports: deploy/testenv/README.md (TESTENV_*_PORT).
.PHONY: control-plane-test
control-plane-test:
	deploy/testenv/build
	deploy/testenv/up
	status=0; \
	export KUBECONFIG="$(CURDIR)/deploy/testenv/run/kubeconfig"; \
	deploy/testenv/bin/helm lint --strict charts/loopscale \
	&& cargo test -p loopscale --features control-plane \
	     --test cluster_operator --test cluster_validation --test cluster_permissions \
	|| status=$$?; \
	deploy/testenv/down; \
	exit $$status
