#!/usr/bin/env bash
# User-space instructions per request of the load generator (closed model, bare hello server),
# counted by callgrind: unlike CPU time, the count hardly moves when other work shares the
# machine, so it compares builds (allocator, LTO, a change in the request path) on a busy
# 2-core box where `load.sh`'s timings vary by 2x from run to run. Prints figures only.
#
#   workload/bench/load_instructions.sh                       # the current release build
#   workload/bench/load_instructions.sh old=/tmp/a new=/tmp/b # named generator binaries
#
# Each binary runs twice under callgrind (1 s and 3 s windows, no warm-up); the difference of
# the two counts over the difference of the requests leaves out start-up and the report. The
# generator runs ~50x slower under callgrind, so the server is never its bottleneck; the count
# covers user space only (the kernel's share, ~60 % of the CPU per request, is not in it).
#
# Needs: valgrind (apt-get install valgrind), taskset (util-linux).
set -euo pipefail
cd "$(dirname "$0")/../.."

CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18098}

command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }

cargo build --release -q -p loopscale-workload --bin loopscale-workload --example bare_hello
SERVER=target/release/examples/bare_hello
builds=("$@")
[[ ${#builds[@]} -gt 0 ]] || builds=("current=target/release/loopscale-workload")

server_cpu=(); client_cpu=()
if [[ $(nproc) -ge 2 ]]; then
  server_cpu=(taskset -c 0); client_cpu=(taskset -c 1)
fi
PORT=$PORT "${server_cpu[@]}" "$SERVER" &
server_pid=$!
scratch=$(mktemp -d)
trap 'kill "$server_pid" 2>/dev/null || true; rm -rf "$scratch"' EXIT
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

# Prints "<instructions> <requests>" of one run of $1 for $2 seconds.
count() {
  local out
  out=$("${client_cpu[@]}" valgrind --tool=callgrind --callgrind-out-file="$scratch/callgrind.out" \
    "$1" load --target "http://127.0.0.1:$PORT" --path /hello --model closed \
    --concurrency "$CONNECTIONS" --connections "$CONNECTIONS" --threads 1 \
    --warmup 0s --duration "${2}s" 2>&1)
  echo "$(awk '/Collected/ {print $4}' <<<"$out") $(awk '/^requests/ {print $2}' <<<"$out")"
}

echo "connections $CONNECTIONS, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for build in "${builds[@]}"; do
  name=${build%%=*}; bin=${build#*=}
  read -r short_ir short_n < <(count "$bin" 1)
  read -r long_ir long_n < <(count "$bin" 3)
  awk -v name="$name" -v a="$short_ir" -v b="$long_ir" -v m="$short_n" -v n="$long_n" 'BEGIN {
    printf "%-12s %7.0f user-space instructions per request (%d requests counted%s)\n", name, (b - a) / (n - m), n - m,
      (n - m < 3000) ? "; too few to trust: the machine is too busy, run it again" : ""
  }'
done
