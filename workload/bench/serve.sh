#!/usr/bin/env bash
# Benchmark of `loopscale-workload serve` (prints figures; not a pass/fail test).
#
#  1. /hello throughput and p99 of the workload (event-loop, 1 process, no per-request overhead)
#     against a bare axum current_thread hello server (examples/bare_hello.rs), same wrk load,
#     alternating runs so drift on a shared machine hits both alike.
#     Targets: workload >= 0.9x the bare throughput, p99 <= 1.2x the bare p99.
#  2. RSS of one idle worker (target < 10 MiB) and of a supervisor with 4 workers.
#
# Needs wrk (Debian: apt-get install -y wrk). Usage: workload/bench/serve.sh [DURATION_SECS] [ROUNDS]
# Env: CONNECTIONS (default 50), WRK_THREADS (default 1). Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."

# On a shared machine, run in an own scheduler autogroup at nice -10 (root only), so other
# sessions' builds disturb the comparison less; both servers and wrk share the group.
if [ "$(id -u)" = 0 ] && [ -z "${LOOPSCALE_BENCH_GROUP:-}" ] && command -v setsid >/dev/null; then
  # shellcheck disable=SC2016 # the single-quoted script is for the inner bash
  exec setsid env LOOPSCALE_BENCH_GROUP=1 bash -c 'echo -10 > /proc/self/autogroup 2>/dev/null || true; exec "$0" "$@"' "$0" "$@"
fi

DURATION=${1:-10}
ROUNDS=${2:-3}
CONNECTIONS=${CONNECTIONS:-50}
WRK_THREADS=${WRK_THREADS:-1}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 2; }

cargo build -q --release -j 2 -p loopscale-workload --bin loopscale-workload --example bare_hello
BIN=target/release/loopscale-workload
BARE=target/release/examples/bare_hello

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_http() { for _ in $(seq 100); do curl -fs "http://127.0.0.1:$1$2" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer on port $1" >&2; exit 1; }
children() { ps --ppid "$1" -o pid= | tr -d ' '; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# wrk prints "Requests/sec: N", "N requests in" and, with --latency, "99%  1.23ms".
# Prints "rps p99_ms cpu_us_per_request" (CPU of server process $2 per answered request: a
# figure that contention on a shared machine disturbs much less than req/s).
run_wrk() {
  local out t0 t1
  t0=$(cpu_ticks "$2")
  out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$1/hello")
  t1=$(cpu_ticks "$2")
  local rps p99 n
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}' <<<"$out")
  awk -v r="$rps" -v p="$p99" -v t="$((t1 - t0))" -v n="$n" -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%s %s %.1f\n", r, p, t / hz * 1e6 / n}'
}

BARE_PORT=$(free_port)
PORT=$BARE_PORT "$BARE" & PIDS+=($!)
BARE_PID=$!
WL_PORT=$(free_port)
env -i PATH="$PATH" LOOPSCALE_MODE=event-loop LOOPSCALE_PROCESSES=1 LOOPSCALE_REQUEST_OVERHEAD_US=0 \
  LOOPSCALE_HOST=127.0.0.1 PORT="$WL_PORT" RUST_LOG=warn "$BIN" serve & PIDS+=($!)
WL_SUP=$!
wait_http "$BARE_PORT" /hello
wait_http "$WL_PORT" /readyz
WL_WORKER=$(children "$WL_SUP" | head -1)

echo "# load: wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s --latency /hello; $ROUNDS alternating rounds; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$BARE_PORT/hello" >/dev/null   # warm-up
wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$WL_PORT/hello" >/dev/null
printf '%-8s %-10s %12s %10s %14s\n' round server req/s p99_ms cpu_us/req
BARE_RPS=(); BARE_P99=(); BARE_CPU=(); WL_RPS=(); WL_P99=(); WL_CPU=()
for r in $(seq "$ROUNDS"); do
  read -r a b c < <(run_wrk "$BARE_PORT" "$BARE_PID"); BARE_RPS+=("$a"); BARE_P99+=("$b"); BARE_CPU+=("$c")
  printf '%-8s %-10s %12s %10s %14s\n' "$r" bare "$a" "$b" "$c"
  read -r a b c < <(run_wrk "$WL_PORT" "$WL_WORKER"); WL_RPS+=("$a"); WL_P99+=("$b"); WL_CPU+=("$c")
  printf '%-8s %-10s %12s %10s %14s\n' "$r" workload "$a" "$b" "$c"
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
BR=$(median "${BARE_RPS[@]}"); BP=$(median "${BARE_P99[@]}")
WR=$(median "${WL_RPS[@]}"); WP=$(median "${WL_P99[@]}")
BC=$(median "${BARE_CPU[@]}"); WC=$(median "${WL_CPU[@]}")
echo "median bare:     ${BR} req/s, p99 ${BP} ms, ${BC} us CPU/request"
echo "median workload: ${WR} req/s, p99 ${WP} ms, ${WC} us CPU/request"
awk -v wr="$WR" -v br="$BR" -v wp="$WP" -v bp="$BP" 'BEGIN {
  printf "throughput ratio workload/bare: %.3f (target >= 0.9)\n", wr/br;
  printf "p99 ratio workload/bare:        %.3f (target <= 1.2)\n", wp/bp }'
awk -v wc="$WC" -v bc="$BC" 'BEGIN { printf "CPU per request bare/workload:  %.3f (the throughput ratio a CPU-bound loop would reach)\n", bc/wc }'

# RSS: the idle 1-process pod from above, after the load has finished.
sleep 2
echo "RSS idle worker (after load): $(rss_kib "$WL_WORKER") KiB; its supervisor: $(rss_kib "$WL_SUP") KiB"

P4_PORT=$(free_port)
env -i PATH="$PATH" LOOPSCALE_MODE=event-loop LOOPSCALE_PROCESSES=4 LOOPSCALE_HOST=127.0.0.1 \
  PORT="$P4_PORT" RUST_LOG=warn "$BIN" serve & PIDS+=($!)
P4_SUP=$!
wait_http "$P4_PORT" /readyz
sleep 2
TOTAL=$(rss_kib "$P4_SUP")
LINE="supervisor $(rss_kib "$P4_SUP") KiB"
for w in $(children "$P4_SUP"); do
  k=$(rss_kib "$w"); TOTAL=$((TOTAL + k)); LINE="$LINE, worker $k KiB"
done
echo "RSS fresh idle worker: $(rss_kib "$(children "$P4_SUP" | head -1)") KiB (target < 10240 KiB)"
echo "RSS supervisor + 4 workers: $TOTAL KiB ($LINE)"
