# `make test` is the one test command: the README gives it and .ci/run calls it. It runs every
# layer of DESIGN.md's testing plan, cheapest first:
#   lint          rustfmt, clippy (also with the control-plane feature), shellcheck
#   unit          cargo test: unit tests, data-plane tests with real processes and sockets,
#                 the quick.yaml end-to-end run, the HTML report in headless Chromium, chart checks
#   dashboards    every dashboard query against a real Prometheus scraping a real `loopscale run`
#   reference     real Express and FastAPI installed from the registries, route and parity checks,
#                 a quick calibration run
#   control-plane the operator and chart on a real API server + controller manager + scheduler +
#                 kwok built from Kubernetes' Go modules (deploy/testenv), started and stopped here
.PHONY: test lint scripts testenv-build reference-install unit dashboards reference control-plane-test

test: lint scripts testenv-build unit dashboards reference control-plane-test

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p loopscale --all-targets --features control-plane -- -D warnings

# Every shell script, including those that cannot run here (kind needs a container engine).
scripts:
	shellcheck deploy/kind/up.sh deploy/kind/down.sh dashboards/sync-chart \
	  deploy/testenv/build deploy/testenv/build-prometheus deploy/testenv/up deploy/testenv/down \
	  deploy/testenv/smoke-test \
	  deploy/crd/check-against-apiserver workload/reference/test workload/reference/install \
	  workload/reference/gil-micro \
	  workload/bench/serve.sh workload/bench/load.sh workload/bench/load_instructions.sh

# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, etcd and helm from
# deploy/testenv/go.mod, and a Prometheus with Kubernetes discovery from
# deploy/testenv/prometheus/go.mod (each skipped when deploy/testenv/bin matches). The chart
# tests in `unit` use its helm.
testenv-build:
	deploy/testenv/build
	deploy/testenv/build-prometheus

# Real Express (npm ci) and FastAPI (a venv) from the registries, into workload/reference (git-
# ignored): `unit` runs a reference Experiment end to end (operator/tests/local_run.rs).
reference-install:
	workload/reference/install

unit: testenv-build reference-install
	cargo test --workspace

# Every dashboard query against a real Prometheus scraping a real local `loopscale run`
# (Debian's prometheus and promtool; about two minutes).
dashboards:
	cargo build -j 2 -p loopscale -p loopscale-workload
	dashboards/test/check-dashboards

# The quick calibration only checks that every shape metric is measured for all four
# implementations, so the debug build (hot crates optimised, see Cargo.toml) is enough here;
# real calibrations use the release build (workload/reference/README.md).
reference:
	cargo build -j 2 -p loopscale-workload
	LOOPSCALE_WORKLOAD_BIN="$(CURDIR)/target/debug/loopscale-workload" workload/reference/test --calibrate

# Control-plane tests on the real control plane of deploy/testenv: up, the smoke test, the CRD
# and every invalid manifest against the API server, helm lint, the operator's cluster tests,
# and always down. Ports: deploy/testenv/README.md (TESTENV_*_PORT).
control-plane-test: testenv-build reference-install
	cargo build -j 2 -p loopscale -p loopscale-workload   # the stand-in runs the real load generator
	deploy/testenv/up
	status=0; \
	export KUBECONFIG="$(CURDIR)/deploy/testenv/run/kubeconfig"; \
	export PATH="$(CURDIR)/deploy/testenv/bin:$$PATH"; \
	deploy/testenv/smoke-test \
	&& deploy/crd/check-against-apiserver \
	&& deploy/testenv/bin/helm lint --strict charts/loopscale \
	&& cargo test -p loopscale --features control-plane \
	     --test cluster_operator --test cluster_validation --test cluster_permissions \
	     --test monitoring_deploy \
	|| status=$$?; \
	deploy/testenv/down --keep-logs; \
	exit $$status
