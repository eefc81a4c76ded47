#!/usr/bin/env bash
# End-to-end load benchmark of the gateway example: the full stack (GATEWAY_BARE unset) versus
# the same gateway with no layers (GATEWAY_BARE=1), both in key mode in front of a mock
# DeepSeek running as its own process (examples/mock_deepseek.rs), loaded with wrk.
#
#   1. throughput and latency at E2E_CONNECTIONS (1,000) connections for E2E_DURATION (20) s,
#      non-streaming and streaming (wrk times a stream to its last byte, `data: [DONE]`), in
#      E2E_ROUNDS (3) rounds that alternate which gateway goes first (a machine that speeds up
#      or slows down during the run favours neither), with each gateway's CPU time per request
#      (user + system, from /proc/<pid>/stat); the figure is the median round. wrk is a closed
#      loop: at saturation latency is about connections / throughput, so the same cases also
#      run once at E2E_LATENCY_CONNECTIONS (10), where latency is the per-call cost;
#   2. E2E_STREAMS (10,000) streams held open at once (the mock sends one chunk a second), and
#      the gateway's memory per open stream: (VmRSS with them open - VmRSS idle) / open streams,
#      on a freshly started gateway, VmRSS read from /proc/<pid>/status. The gateway speaks
#      HTTP/2 to the mock here (GATEWAY_UPSTREAM_HTTP2_ONLY, h2c: every stream on one
#      connection, as a production gateway multiplexes over TLS+ALPN), so it needs one
#      descriptor per stream; E2E_UPSTREAM_HTTP2=0 keeps HTTP/1.1 (a connection per stream).
#
# Needs wrk (`apt-get install -y wrk`), curl and ss. Usage: bench/e2e.sh
# Environment (defaults in brackets): E2E_DURATION [20] seconds per wrk run, E2E_WARMUP [2]
# seconds of warm-up per gateway and case, E2E_ROUNDS [3], E2E_CONNECTIONS [1000], E2E_THREADS [2] wrk
# threads, E2E_LATENCY_CONNECTIONS [10] (the unsaturated latency rows), E2E_STREAMS [10000],
# E2E_RAMP [60] longest wait for all streams to be open, E2E_UPSTREAM_HTTP2 [1] (0: phase 2's
# upstream is HTTP/1.1, two descriptors per stream),
# E2E_MOCK_PORT [18100], E2E_PORT [18080] (stack; bare on E2E_PORT+1), CARGO_TARGET_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${E2E_DURATION:-20}
WARMUP=${E2E_WARMUP:-2}
ROUNDS=${E2E_ROUNDS:-3}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "e2e: E2E_ROUNDS must be a positive whole number" >&2; exit 1; }
CONNECTIONS=${E2E_CONNECTIONS:-1000}
LATENCY_CONNECTIONS=${E2E_LATENCY_CONNECTIONS:-10}
THREADS=${E2E_THREADS:-2}
STREAMS=${E2E_STREAMS:-10000}
RAMP=${E2E_RAMP:-60}
UPSTREAM_HTTP2=${E2E_UPSTREAM_HTTP2:-1}
[[ $UPSTREAM_HTTP2 == [01] ]] || { echo "e2e: E2E_UPSTREAM_HTTP2 must be 0 or 1" >&2; exit 1; }
MOCK_PORT=${E2E_MOCK_PORT:-18100}
STACK_PORT=${E2E_PORT:-18080}
BARE_PORT=$((STACK_PORT + 1))
LUA=$ROOT/bench/e2e.lua
LOGS=$(mktemp -d /tmp/tower-deepseek-e2e.XXXXXX)

SCRIPT=e2e
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
require wrk curl ss

# Every process this script starts, stopped on any exit.

stop() { # stop PID: stops one process started here and forgets it
    local pid=$1 kept=() p
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
    PIDS=("${kept[@]+"${kept[@]}"}")
}

# Descriptors per held stream in the gateway: the caller's connection, plus with HTTP/1.1 its
# own connection to the mock (with HTTP/2 all streams share one). wrk needs one per stream, and
# the mock one per upstream connection. Without CAP_SYS_RESOURCE the hard limit cannot be
# raised: then hold as many streams as it allows, and say so.
if ((UPSTREAM_HTTP2)); then
    FDS_PER_STREAM=1
    UPSTREAM_NOTE="HTTP/2 (h2c), all streams on one connection"
else
    FDS_PER_STREAM=2
    UPSTREAM_NOTE="HTTP/1.1, a connection per stream"
fi
NEED_FDS=$((FDS_PER_STREAM * STREAMS + 256))
STREAMS_NOTE=
if (($(ulimit -Hn) < NEED_FDS)) && ! ulimit -Hn "$NEED_FDS" 2>/dev/null; then
    FITS=$((($(ulimit -Hn) - 256) / FDS_PER_STREAM))
    STREAMS_NOTE="only $FITS of the $STREAMS streams asked for: the open-files hard limit is $(ulimit -Hn) and cannot be raised here (no CAP_SYS_RESOURCE); the gateway needs $FDS_PER_STREAM per stream"
    echo "e2e: WARNING: $STREAMS_NOTE" >&2
    STREAMS=$FITS
    NEED_FDS=$((FDS_PER_STREAM * STREAMS + 256))
fi
(($(ulimit -Sn) >= NEED_FDS)) || ulimit -Sn "$NEED_FDS"

BIN=$LOGS/bin
build_examples "$BIN"

MOCK_PID=
start_mock() { # start_mock [VAR=value...]: the mock DeepSeek on MOCK_PORT
    env MOCK_ADDR=127.0.0.1:$MOCK_PORT "$@" "$BIN/mock_deepseek" >"$LOGS/mock.log" 2>&1 &
    MOCK_PID=$!
    PIDS+=("$MOCK_PID")
    # Any answer (a 401 without a key) means it listens.
    wait_http "http://127.0.0.1:$MOCK_PORT/models" "$LOGS/mock.log"
}

GATEWAY_PID=
GATEWAY_HTTP2=0 # GATEWAY_UPSTREAM_HTTP2_ONLY of the gateways started next
start_gateway() { # start_gateway stack|bare PORT
    local mode=$1 port=$2
    gateway_env "$mode" "$MOCK_PORT" "$port" $((STREAMS * 2))
    env "${GATEWAY_ENV[@]}" GATEWAY_UPSTREAM_HTTP2_ONLY="$GATEWAY_HTTP2" "$BIN/gateway" >"$LOGS/gateway-$mode.log" 2>&1 &
    GATEWAY_PID=$!
    PIDS+=("$GATEWAY_PID")
    wait_http "http://127.0.0.1:$port/healthz" "$LOGS/gateway-$mode.log"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Streams through the gateway on PORT: "IN UP CONNS", its established connections from callers
# (HTTP/1.1, one per stream), the answers the mock has in flight (its /_mock/stats: streams,
# however many connections carry them) and the connections open to the mock.
stream_counts() {
    local up
    up=$(curl -s "http://127.0.0.1:$MOCK_PORT/_mock/stats" | sed -n 's/.*"in_flight":\([0-9]*\).*/\1/p')
    echo "$(ss -Htn state established "( sport = :$1 )" | wc -l)" "${up:-0}" \
        "$(ss -Htn state established "( dport = :$MOCK_PORT )" | wc -l)"
}
open_streams() { # the fewer of the two: streams open end to end
    local inbound upstream conns
    read -r inbound upstream conns <<<"$(stream_counts "$1")"
    echo $((inbound < upstream ? inbound : upstream))
}

field() { # field NAME LINE: the value of NAME=value in an E2E_RESULT line
    sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system, in clock ticks
TICK_US=$((1000000 / $(getconf CLK_TCK)))

declare -A RESULT
run_wrk() { # run_wrk stack|bare PORT PID plain|stream CONNECTIONS [ROUND]
    local mode=$1 port=$2 pid=$3 kind=$4 conns=$5 round=${6:-1} threads=$THREADS out line before requests cpu
    ((threads <= conns)) || threads=$conns
    wrk -t"$threads" -c"$conns" -d"${WARMUP}s" --timeout 30s -s "$LUA" \
        "http://127.0.0.1:$port/v1/chat/completions" -- "$kind" >/dev/null
    before=$(cpu_ticks "$pid")
    out=$(wrk -t"$threads" -c"$conns" -d"${DURATION}s" --timeout 30s -s "$LUA" \
        "http://127.0.0.1:$port/v1/chat/completions" -- "$kind")
    line=$(grep '^E2E_RESULT' <<<"$out")
    requests=$(field requests "$line")
    cpu=n/a
    ((requests > 0)) && cpu=$(awk -v t=$(($(cpu_ticks "$pid") - before)) -v us="$TICK_US" -v n="$requests" \
        'BEGIN { printf "%.1f", t * us / n }')
    line="$line cpu_us_per_request=$cpu"
    echo "   round $round: $mode $kind, $conns connections: $line"
    RESULT[$mode.$kind.$conns.$round]=$line
}

echo "== logs in $LOGS"
echo "== gateway settings: key mode on the mock, the per-caller rate limit on with a quota it never reaches (10^9 a minute)," \
    "GATEWAY_MAX_IN_FLIGHT=$((STREAMS * 2)) (the concurrency limit never sheds), RUST_LOG=warn"
echo "== machine: $(nproc) CPUs, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo); wrk, mock and gateway share them"

echo "== 1. $CONNECTIONS and $LATENCY_CONNECTIONS connections, ${DURATION}s per run (after ${WARMUP}s of warm-up)"
start_mock
start_gateway stack "$STACK_PORT"
STACK_PID=$GATEWAY_PID
start_gateway bare "$BARE_PORT"
BARE_PID=$GATEWAY_PID
for round in $(seq 1 "$ROUNDS"); do
    for kind in plain stream; do
        # Odd rounds run the stack first, even rounds the bare gateway.
        if ((round % 2)); then
            run_wrk stack "$STACK_PORT" "$STACK_PID" "$kind" "$CONNECTIONS" "$round"
            run_wrk bare "$BARE_PORT" "$BARE_PID" "$kind" "$CONNECTIONS" "$round"
        else
            run_wrk bare "$BARE_PORT" "$BARE_PID" "$kind" "$CONNECTIONS" "$round"
            run_wrk stack "$STACK_PORT" "$STACK_PID" "$kind" "$CONNECTIONS" "$round"
        fi
    done
done
for kind in plain stream; do
    run_wrk stack "$STACK_PORT" "$STACK_PID" "$kind" "$LATENCY_CONNECTIONS"
    run_wrk bare "$BARE_PORT" "$BARE_PID" "$kind" "$LATENCY_CONNECTIONS"
done
stop "$STACK_PID"
stop "$BARE_PID"
stop "$MOCK_PID"

echo "== 2. $STREAMS streams held open (up to ${RAMP}s to open them all), upstream $UPSTREAM_NOTE"
# The mock sends one chunk a second and every stream outlasts wrk's run: none ends and none
# is re-sent while the memory is read. It allows every stream on one HTTP/2 connection.
start_mock MOCK_STREAM_CHUNKS=$((RAMP + 90)) MOCK_CHUNK_DELAY_MS=1000 \
    MOCK_MAX_CONCURRENT_STREAMS=$((STREAMS * 2))
GATEWAY_HTTP2=$UPSTREAM_HTTP2
declare -A MEMORY
for mode in stack bare; do
    port=$STACK_PORT
    [[ $mode == bare ]] && port=$BARE_PORT
    start_gateway "$mode" "$port"
    # Warm up the paths (and the pool) with a short call, then let the gateway settle.
    curl -s -o /dev/null -H 'content-type: application/json' \
        -d '{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"hi"}]}' \
        "http://127.0.0.1:$port/v1/chat/completions"
    sleep 1
    idle=$(rss_kb "$GATEWAY_PID")
    wrk -t"$THREADS" -c"$STREAMS" -d$((RAMP + 30))s --timeout 300s -s "$LUA" \
        "http://127.0.0.1:$port/v1/chat/completions" -- stream >"$LOGS/wrk-hold-$mode.log" 2>&1 &
    wrk_pid=$!
    PIDS+=("$wrk_pid")
    # Wait until every stream is open on both sides of the gateway (or the ramp time is up).
    start=$SECONDS
    while (($(open_streams "$port") < STREAMS && SECONDS - start < RAMP)); do sleep 0.5; done
    ramp=$((SECONDS - start))
    sleep 2
    peak=0
    for _ in 1 2 3 4 5 6; do
        rss=$(rss_kb "$GATEWAY_PID")
        ((rss > peak)) && peak=$rss
        sleep 0.5
    done
    # Per request the gateway holds (every caller connection has sent one), whether or not
    # its upstream connection is open yet; both counts are reported.
    read -r held upstream conns <<<"$(stream_counts "$port")"
    open=$held
    fds=$(find "/proc/$GATEWAY_PID/fd" -mindepth 1 | wc -l)
    stop "$wrk_pid"
    sleep 2
    closed=$(rss_kb "$GATEWAY_PID")
    per_stream=$(awk -v a="$peak" -v b="$idle" -v n="$open" 'BEGIN { if (n > 0) printf "%.0f", (a - b) * 1024 / n; else print "n/a" }')
    echo "   $mode: idle ${idle} kB; after ${ramp}s $held streams held ($upstream open upstream on $conns connection(s)): ${peak} kB ($fds fds); $per_stream bytes per stream; ${closed} kB 2 s after they closed"
    MEMORY[$mode]="$idle $peak $held $upstream $conns $per_stream $closed"
    stop "$GATEWAY_PID"
done
stop "$MOCK_PID"

ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.2f", (a - b) / 1000 }'; }
errors() { # errors LINE: the sum of wrk's error counts (non-2xx answers included)
    local l=$1
    echo $(($(field connect "$l") + $(field read "$l") + $(field write "$l") + $(field status "$l") + $(field timeout "$l")))
}

label_of() { [[ $1 == stream ]] && echo "streaming (to [DONE])" || echo "non-streaming"; }

# The round whose stack/bare throughput ratio is the median, per case.
declare -A MEDIAN
for kind in plain stream; do
    MEDIAN[$kind]=$(for round in $(seq 1 "$ROUNDS"); do
        echo "$(ratio "$(field rps "${RESULT[stack.$kind.$CONNECTIONS.$round]}")" "$(field rps "${RESULT[bare.$kind.$CONNECTIONS.$round]}")") $round"
    done | sort -n | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2) { print $2 }')
done

echo
echo "### Saturated: $CONNECTIONS connections, $ROUNDS rounds of ${DURATION}s per gateway and case (odd rounds stack first), wrk -t$THREADS"
echo
echo "| case | round | stack req/s | bare req/s | stack/bare | stack CPU µs/request | bare CPU µs/request | CPU added µs/request |"
echo "|---|---|---|---|---|---|---|---|"
for kind in plain stream; do for round in $(seq 1 "$ROUNDS"); do
    s=${RESULT[stack.$kind.$CONNECTIONS.$round]}
    b=${RESULT[bare.$kind.$CONNECTIONS.$round]}
    mark=
    [[ $round == "${MEDIAN[$kind]}" ]] && mark=" (median)"
    echo "| $(label_of "$kind") | $round$mark | $(field rps "$s") | $(field rps "$b") | $(ratio "$(field rps "$s")" "$(field rps "$b")") |" \
        "$(field cpu_us_per_request "$s") | $(field cpu_us_per_request "$b") |" \
        "$(awk -v a="$(field cpu_us_per_request "$s")" -v b="$(field cpu_us_per_request "$b")" 'BEGIN { printf "%+.1f", a - b }') |"
done; done

echo
echo "### End to end: the gateway with the full stack vs bare, ${DURATION}s per run, wrk -t$THREADS ($CONNECTIONS connections: the median round)"
echo
echo "| case | connections | stack req/s | bare req/s | stack/bare | p50 stack ms | p50 bare ms | p50 added ms | p99 stack ms | p99 bare ms | p99 added ms | errors stack/bare |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for conns in "$CONNECTIONS" "$LATENCY_CONNECTIONS"; do for kind in plain stream; do
    round=1
    [[ $conns == "$CONNECTIONS" ]] && round=${MEDIAN[$kind]}
    s=${RESULT[stack.$kind.$conns.$round]}
    b=${RESULT[bare.$kind.$conns.$round]}
    label="non-streaming"
    [[ $kind == stream ]] && label="streaming (to [DONE])"
    echo "| $label | $conns | $(field rps "$s") | $(field rps "$b") | $(ratio "$(field rps "$s")" "$(field rps "$b")") |" \
        "$(ms "$(field p50_us "$s")") | $(ms "$(field p50_us "$b")") | $(added "$(field p50_us "$s")" "$(field p50_us "$b")") |" \
        "$(ms "$(field p99_us "$s")") | $(ms "$(field p99_us "$b")") | $(added "$(field p99_us "$s")" "$(field p99_us "$b")") |" \
        "$(errors "$s")/$(errors "$b") |"
done; done
echo
echo "### Open streams: $STREAMS requested, upstream $UPSTREAM_NOTE; gateway VmRSS (per stream: (open - idle) / streams held)"
echo
[[ -z $STREAMS_NOTE ]] || { echo "Note: $STREAMS_NOTE."; echo; }
echo "| gateway | idle RSS kB | RSS with streams open kB | streams held (callers) | open upstream (connections) | bytes per stream | RSS 2 s after they closed kB |"
echo "|---|---|---|---|---|---|---|"
for mode in stack bare; do
    read -r idle peak held upstream conns per closed <<<"${MEMORY[$mode]}"
    echo "| $mode | $idle | $peak | $held | $upstream ($conns) | $per | $closed |"
done
