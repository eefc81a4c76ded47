#!/usr/bin/env bash
# CPU time the gateway spends per request, the full stack against no layers (GATEWAY_BARE=1):
# a measure that other processes on a shared machine disturb far less than throughput.
#
# Both gateways run side by side in front of one mock DeepSeek (examples/mock_deepseek.rs), as
# in bench/e2e.sh. Each round loads the stack gateway, then the bare one, with the same wrk
# load; per run the gateway's CPU time (utime + stime from /proc/PID/stat, both threads and
# all) is read before and after and divided by the requests wrk completed. Rounds alternate
# so a change of load on the machine hits both alike.
#
# Usage: bench/cpu_per_call.sh [plain|stream]...   (default: plain)
# Environment (defaults in brackets): CPU_ROUNDS [3], CPU_DURATION [10] seconds per run,
# CPU_CONNECTIONS [1000], CPU_THREADS [2] wrk threads, CPU_RATE: a fixed offered load in
# requests a second over all connections (each waits CONNECTIONS/RATE s between requests);
# unset: as fast as each gateway answers. CPU time per request falls as throughput rises (more
# requests per wake-up), so compare at one rate both gateways sustain, e.g. CPU_RATE=3000; CPU_MOCK_PORT [18200], CPU_PORT [18180]
# (stack; bare on CPU_PORT+1), CPU_BIN: a directory holding already built `gateway` and
# `mock_deepseek` (skips the build), CARGO_TARGET_DIR, CPU_PERF_EVENTS: a comma-separated list
# of perf events (e.g. `raw_syscalls:sys_enter,context-switches`, or uprobes added with
# `perf probe -x libc.so.6 malloc`) counted on the gateway over each run and printed per
# request. Perf it while it runs with `perf record -g -p "$(cat $LOGS/stack.pid)"` (the log
# directory is printed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${CPU_ROUNDS:-3}
DURATION=${CPU_DURATION:-10}
CONNECTIONS=${CPU_CONNECTIONS:-1000}
THREADS=${CPU_THREADS:-2}
MOCK_PORT=${CPU_MOCK_PORT:-18200}
STACK_PORT=${CPU_PORT:-18180}
BARE_PORT=$((STACK_PORT + 1))
LUA=$ROOT/bench/e2e.lua
LOGS=$(mktemp -d /tmp/tower-deepseek-cpu.XXXXXX)
KINDS=("$@")
((${#KINDS[@]})) || KINDS=(plain)

SCRIPT=cpu_per_call
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
require wrk curl
(($(ulimit -Sn) >= 4 * CONNECTIONS + 256)) || ulimit -Sn $((4 * CONNECTIONS + 256))

if [[ -n ${CPU_BIN:-} ]]; then
    BIN=$CPU_BIN
else
    BIN=$LOGS/bin
    build_examples "$BIN"
fi

env MOCK_ADDR=127.0.0.1:$MOCK_PORT "$BIN/mock_deepseek" >"$LOGS/mock.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/models" "$LOGS/mock.log"

declare -A PID PORT
PORT[stack]=$STACK_PORT
PORT[bare]=$BARE_PORT
for mode in stack bare; do
    gateway_env "$mode" "$MOCK_PORT" "${PORT[$mode]}" 20000
    env "${GATEWAY_ENV[@]}" "$BIN/gateway" >"$LOGS/gateway-$mode.log" 2>&1 &
    PID[$mode]=$!
    PIDS+=($!)
    echo "${PID[$mode]}" >"$LOGS/$mode.pid"
    wait_http "http://127.0.0.1:${PORT[$mode]}/healthz" "$LOGS/gateway-$mode.log"
done
echo "== logs and pids in $LOGS (stack pid ${PID[stack]}, bare pid ${PID[bare]}); $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"

TICK=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of a process, in clock ticks (fields 14 and 15; comm has no spaces here)
    awk '{print $14 + $15}' "/proc/$1/stat"
}

PAUSE=
[[ -z ${CPU_RATE:-} ]] || PAUSE=$((CONNECTIONS * 1000 / CPU_RATE))
load() { # load MODE KIND SECONDS: wrk against the gateway; prints the requests completed
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${3}s" --timeout 30s -s "$LUA" \
        "http://127.0.0.1:${PORT[$1]}/v1/chat/completions" -- "$2" $PAUSE |
        sed -n 's/^E2E_RESULT requests=\([0-9]*\).*/\1/p'
}

declare -A SUM
for kind in "${KINDS[@]}"; do
    for mode in stack bare; do load "$mode" "$kind" 2 >/dev/null; done # warm-up (pools, caches)
    for round in $(seq 1 "$ROUNDS"); do
        line="   $kind round $round:"
        for mode in stack bare; do
            perf_pid=
            if [[ -n ${CPU_PERF_EVENTS:-} ]]; then
                perf stat -x, -e "$CPU_PERF_EVENTS" -p "${PID[$mode]}" -o "$LOGS/perf-$mode.csv" &
                perf_pid=$!
                sleep 0.2
            fi
            before=$(cpu_ticks "${PID[$mode]}")
            requests=$(load "$mode" "$kind" "$DURATION")
            sleep 0.5 # the calls still in flight when wrk stopped
            after=$(cpu_ticks "${PID[$mode]}")
            if [[ -n $perf_pid ]]; then
                kill -INT "$perf_pid"
                wait "$perf_pid" || true
                awk -F, -v n="$requests" -v m="$mode" \
                    '$1 ~ /^[0-9.]+$/ && n > 0 { printf "      %s %s: %.2f per request\n", m, $3, $1 / n }' "$LOGS/perf-$mode.csv"
            fi
            us=$(awk -v t=$((after - before)) -v n="$requests" -v hz="$TICK" \
                'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')
            SUM[$kind.$mode]=$(awk -v a="${SUM[$kind.$mode]:-0}" -v b="$us" 'BEGIN { print a + b }')
            line+=" $mode $us µs/req ($requests req, $(awk -v r="$requests" -v d="$DURATION" 'BEGIN { printf "%.0f", r / d }') req/s)"
        done
        echo "$line; load $(cut -d' ' -f1 /proc/loadavg)"
    done
    s=$(awk -v a="${SUM[$kind.stack]}" -v n="$ROUNDS" 'BEGIN { printf "%.1f", a / n }')
    b=$(awk -v a="${SUM[$kind.bare]}" -v n="$ROUNDS" 'BEGIN { printf "%.1f", a / n }')
    echo "CPU_PER_CALL kind=$kind connections=$CONNECTIONS stack_us=$s bare_us=$b added_us=$(awk -v s="$s" -v b="$b" 'BEGIN { printf "%.1f", s - b }') ratio=$(awk -v s="$s" -v b="$b" 'BEGIN { printf "%.3f", (b > 0 ? s / b : 0) }')"
done
