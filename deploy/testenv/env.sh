# shellcheck shell=bash disable=SC2034
# Shared settings of deploy/testenv/{up,down,smoke-test}; sourced, not run.
# Every port can be overridden through the environment so two checkouts (or another service on
# this machine) do not collide. All components listen on 127.0.0.1 only.

testenv_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="$testenv_dir/bin"
run_dir="${TESTENV_RUN_DIR:-$testenv_dir/run}"
pki_dir="$run_dir/pki"
pid_dir="$run_dir/pids"
log_dir="$run_dir/logs"
kubeconfig="$run_dir/kubeconfig"

etcd_port="${TESTENV_ETCD_PORT:-24379}"
etcd_peer_port="${TESTENV_ETCD_PEER_PORT:-24380}"
apiserver_port="${TESTENV_APISERVER_PORT:-24443}"
controller_manager_port="${TESTENV_CONTROLLER_MANAGER_PORT:-24257}"
scheduler_port="${TESTENV_SCHEDULER_PORT:-24259}"
kwok_port="${TESTENV_KWOK_PORT:-24247}"

# Components in start order; `down` stops them in reverse.
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# True when pid is alive and still runs the binary `up` started under that name (pids get reused).
is_ours() { # pid name
	local exe
	exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
	[[ "$exe" == "$bin_dir/$2" || "$exe" == "$bin_dir/$2 (deleted)" ]]
}

kubectl() {
	"$bin_dir/kubectl" --kubeconfig "$kubeconfig" "$@"
}
