#!/usr/bin/env bash
# Benchmark: loopscale-workload load against wrk (Debian's package), same bare hello server
# (workload/examples/bare_hello.rs: axum on a current-thread runtime), one thread each, the same
# number of connections. Prints figures; it does not pass or fail.
#
# Both p50s measure the same span: wrk's from right before its `write` of a request to the read
# that completes the response; ours (closed model) from right before the request's first byte is
# written to the last byte of the response read (see "Models" in workload/LOAD.md; before
# 2026-11-26 ours counted from when its loop decided to send, hyper's hand-over included).
# "cpu us/req" is user + system time of the generator process over the requests it completed,
# "user us/req" its user-space part (on loopback the kernel part is mostly the same for both).
# On a busy machine throughput varies 2x between runs; CPU per request is the steadier figure, and
# workload/bench/load_instructions.sh the steadiest for comparing builds of ours.
#
#   workload/bench/load.sh                 # defaults below
#   CONNECTIONS=64 DURATION=10 ROUNDS=5 workload/bench/load.sh
#
# Needs: wrk (apt-get install wrk), taskset (util-linux). Target: throughput ≥ 1.0× wrk's and a
# p50 within 10 % of wrk's. On a shared machine, run it when the machine is otherwise idle: the
# server and each generator are pinned to their own core (PIN=0 turns that off).
set -euo pipefail
cd "$(dirname "$0")/../.."

CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-5}       # seconds per measured run
ROUNDS=${ROUNDS:-5}           # alternating runs of each: best and median are compared
PORT=${PORT:-18099}
PIN=${PIN:-1}

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }

cargo build --release -q -p loopscale-workload --bin loopscale-workload --example bare_hello
BIN=target/release/loopscale-workload
SERVER=target/release/examples/bare_hello

server_cpu=(); client_cpu=()
if [[ "$PIN" == 1 && $(nproc) -ge 2 ]]; then
  server_cpu=(taskset -c 0); client_cpu=(taskset -c 1)
fi

PORT=$PORT "${server_cpu[@]}" "$SERVER" &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -fs "http://127.0.0.1:$PORT/hello" >/dev/null 2>&1 && break
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
URL="http://127.0.0.1:$PORT"

# wrk's latency figures carry units (us, ms, s): convert to milliseconds.
to_ms() {
  awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v+0 } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000 } else print v }'
}

# Each run prints: req/s, p50 ms, CPU µs per request (user + system of the generator process),
# user-space CPU µs per request.
TIMEFORMAT='%U %S'

run_wrk() {
  local out cpu n rps p50
  { cpu=$( { time "${client_cpu[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$URL/hello" >/tmp/loopscale-bench-wrk.out; } 2>&1 ); }
  out=$(cat /tmp/loopscale-bench-wrk.out)
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out" | to_ms)
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$rps $p50 $(awk -v n="$n" '{ printf "%.1f %.2f", ($1 + $2) * 1e6 / n, $1 * 1e6 / n }' <<<"$cpu")"
}

run_ours() {
  local out cpu n rps p50
  { cpu=$( { time "${client_cpu[@]}" "$BIN" load --target "$URL" --path /hello --model closed \
          --concurrency "$CONNECTIONS" --connections "$CONNECTIONS" --threads 1 \
          --warmup 0s --duration "${DURATION}s" >/tmp/loopscale-bench-ours.out; } 2>&1 ); }
  out=$(cat /tmp/loopscale-bench-ours.out)
  rps=$(awk '/^throughput/ {print $2}' <<<"$out")
  p50=$(awk '/^latency ms/ {print $4}' <<<"$out")
  n=$(awk '/^requests/ {print $2}' <<<"$out")
  echo "$rps $p50 $(awk -v n="$n" '{ printf "%.1f %.2f", ($1 + $2) * 1e6 / n, $1 * 1e6 / n }' <<<"$cpu")"
}

echo "connections $CONNECTIONS, ${DURATION}s per run, $ROUNDS rounds, pinned: $PIN, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-20s %12s %10s %12s %12s\n' round generator "req/s" "p50 ms" "cpu us/req" "user us/req"
: >/tmp/loopscale-bench-wrk.rows; : >/tmp/loopscale-bench-ours.rows
for round in $(seq "$ROUNDS"); do
  w=$(run_wrk)
  # shellcheck disable=SC2086 # the row splits into printf fields on purpose
  printf '%-6s %-20s %12s %10s %12s %12s\n' "$round" wrk $w
  echo "$w" >>/tmp/loopscale-bench-wrk.rows
  o=$(run_ours)
  # shellcheck disable=SC2086 # the row splits into printf fields on purpose
  printf '%-6s %-20s %12s %10s %12s %12s\n' "$round" loopscale-workload $o
  echo "$o" >>/tmp/loopscale-bench-ours.rows
done

# best = the row with the highest throughput; median of each column separately.
best() { sort -k1,1 -g "$1" | tail -1; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
read -r wrk_rps wrk_p50 _ < <(best /tmp/loopscale-bench-wrk.rows)
read -r our_rps our_p50 _ < <(best /tmp/loopscale-bench-ours.rows)
wrk_med_rps=$(cut -d' ' -f1 /tmp/loopscale-bench-wrk.rows | median)
our_med_rps=$(cut -d' ' -f1 /tmp/loopscale-bench-ours.rows | median)
wrk_med_p50=$(cut -d' ' -f2 /tmp/loopscale-bench-wrk.rows | median)
our_med_p50=$(cut -d' ' -f2 /tmp/loopscale-bench-ours.rows | median)
wrk_cpu=$(cut -d' ' -f3 /tmp/loopscale-bench-wrk.rows | median)
our_cpu=$(cut -d' ' -f3 /tmp/loopscale-bench-ours.rows | median)
wrk_user=$(cut -d' ' -f4 /tmp/loopscale-bench-wrk.rows | median)
our_user=$(cut -d' ' -f4 /tmp/loopscale-bench-ours.rows | median)
echo
echo "best throughput:   wrk $wrk_rps req/s (p50 $wrk_p50 ms), loopscale-workload $our_rps req/s (p50 $our_p50 ms)"
echo "median throughput: wrk $wrk_med_rps req/s (p50 $wrk_med_p50 ms), loopscale-workload $our_med_rps req/s (p50 $our_med_p50 ms)"
echo "median CPU per request: wrk $wrk_cpu us, loopscale-workload $our_cpu us (user space: wrk $wrk_user us, loopscale-workload $our_user us)"
awk -v a="$our_rps" -v b="$wrk_rps" -v c="$our_p50" -v d="$wrk_p50" -v e="$our_med_rps" -v f="$wrk_med_rps" \
    -v g="$our_med_p50" -v h="$wrk_med_p50" -v i="$our_cpu" -v j="$wrk_cpu" 'BEGIN {
  printf "ratio best throughput (ours / wrk):   %.3f   (target >= 1.0)\n", a / b
  printf "ratio p50 at best (ours / wrk):       %.3f   (target 0.9 .. 1.1)\n", c / d
  printf "ratio median throughput (ours / wrk): %.3f\n", e / f
  printf "ratio median p50 (ours / wrk):        %.3f\n", g / h
  printf "ratio CPU per request (ours / wrk):   %.3f   (below 1: ours needs less CPU per request)\n", i / j
}'
