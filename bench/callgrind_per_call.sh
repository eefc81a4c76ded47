#!/usr/bin/env bash
# Instructions the gateway executes per request (non-streaming, or streamed with CG_KIND=stream),
# under callgrind: a count that other processes on a shared machine cannot disturb
# (bench/cpu_per_call.sh measures time).
#
# Starts a mock DeepSeek and the gateway (stack, or bare with `bare`) under
# `valgrind --tool=callgrind` with instrumentation off, warms it up with wrk, counts over a
# second wrk run, and prints the instructions (Ir) per request. The profile stays in the
# printed directory: `callgrind_annotate --tree=caller DIR/cg.out.1` shows who calls what.
#
# Usage: bench/callgrind_per_call.sh BIN_DIR [stack|bare]   (BIN_DIR holds release builds of
# the `gateway` and `mock_deepseek` examples). Environment: CG_KIND [plain] (or stream: one
# streamed answer to `[DONE]` per request), CG_CONNECTIONS [20], CG_DURATION
# [10] seconds counted, CG_PORT [18400] (the mock on CG_PORT+100). Needs valgrind, wrk, curl.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$1
MODE=${2:-stack}
CONNECTIONS=${CG_CONNECTIONS:-20}
DURATION=${CG_DURATION:-10}
KIND=${CG_KIND:-plain}
[[ $KIND == plain || $KIND == stream ]] || { echo "callgrind_per_call: CG_KIND must be plain or stream" >&2; exit 1; }
PORT=${CG_PORT:-18400}
MOCK_PORT=$((PORT + 100))
LUA=$ROOT/bench/e2e.lua
OUT=$(mktemp -d /tmp/tower-deepseek-callgrind.XXXXXX)

SCRIPT=callgrind_per_call
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
require valgrind callgrind_control wrk curl

env MOCK_ADDR=127.0.0.1:$MOCK_PORT "$BIN/mock_deepseek" >"$OUT/mock.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/models" "$OUT/mock.log"
gateway_env "$MODE" "$MOCK_PORT" "$PORT" 20000
env "${GATEWAY_ENV[@]}" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/cg.out" \
    "$BIN/gateway" >"$OUT/gateway.log" 2>&1 &
GATEWAY=$!
PIDS+=("$GATEWAY")
# 300 tries 0.2 s apart: valgrind starts slowly.
wait_http "http://127.0.0.1:$PORT/healthz" "$OUT/gateway.log" 300 0.2
url=http://127.0.0.1:$PORT/v1/chat/completions
wrk -t1 -c"$CONNECTIONS" -d4s -s "$LUA" "$url" -- "$KIND" >/dev/null
callgrind_control -i on "$GATEWAY" >/dev/null
requests=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$LUA" "$url" -- "$KIND" |
    sed -n 's/^E2E_RESULT requests=\([0-9]*\).*/\1/p')
sleep 1 # the calls still in flight when wrk stopped
callgrind_control -i off "$GATEWAY" >/dev/null
callgrind_control -d "$GATEWAY" >/dev/null
ir=$(awk '/^totals:/ {print $2}' "$OUT"/cg.out.*)
echo "CALLGRIND_PER_CALL mode=$MODE kind=$KIND connections=$CONNECTIONS requests=$requests ir=$ir ir_per_request=$((ir / requests)) profile=$OUT"
