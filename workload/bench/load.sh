#!/usr/bin/env bash
# Benchmark: loopscale-workload load against wrk (Debian's package), same bare hello server
# (workload/examples/bare_hello.rs: axum on a current-thread runtime), one thread each, the same
# number of connections. Prints figures; it does not pass or fail.
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
DURATION=${DURATION:-10}      # seconds per measured run
ROUNDS=${ROUNDS:-3}           # alternating runs of each; the best throughput of each is compared
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

run_wrk() {
  local out rps p50
  out=$("${client_cpu[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$URL/hello")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out" | to_ms)
  echo "$rps $p50"
}

run_ours() {
  local out rps p50
  out=$("${client_cpu[@]}" "$BIN" load --target "$URL" --path /hello --model closed \
          --concurrency "$CONNECTIONS" --connections "$CONNECTIONS" --threads 1 \
          --warmup 1s --duration "${DURATION}s")
  rps=$(awk '/^throughput/ {print $2}' <<<"$out")
  p50=$(awk '/^latency ms/ {print $4}' <<<"$out")
  echo "$rps $p50"
}

echo "connections $CONNECTIONS, ${DURATION}s per run, $ROUNDS rounds, pinned: $PIN, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-20s %12s %10s\n' round generator "req/s" "p50 ms"
best_wrk="0 0"; best_ours="0 0"
for round in $(seq "$ROUNDS"); do
  w=$(run_wrk);  printf '%-6s %-20s %12s %10s\n' "$round" wrk $w
  o=$(run_ours); printf '%-6s %-20s %12s %10s\n' "$round" loopscale-workload $o
  best_wrk=$(awk -v a="$best_wrk" -v b="$w" 'BEGIN { split(a,x," "); split(b,y," "); print (y[1] > x[1] ? b : a) }')
  best_ours=$(awk -v a="$best_ours" -v b="$o" 'BEGIN { split(a,x," "); split(b,y," "); print (y[1] > x[1] ? b : a) }')
done
read -r wrk_rps wrk_p50 <<<"$best_wrk"
read -r our_rps our_p50 <<<"$best_ours"
echo
echo "best throughput: wrk $wrk_rps req/s (p50 $wrk_p50 ms), loopscale-workload $our_rps req/s (p50 $our_p50 ms)"
awk -v a="$our_rps" -v b="$wrk_rps" -v c="$our_p50" -v d="$wrk_p50" 'BEGIN {
  printf "ratio throughput (ours / wrk): %.3f   (target >= 1.0)\n", a / b
  printf "ratio p50 (ours / wrk):        %.3f   (target within 0.9 .. 1.1)\n", c / d
}'
