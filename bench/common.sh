# Shared by the bench scripts (e2e.sh, cpu_per_call.sh, callgrind_per_call.sh): source it after
# setting SCRIPT (the name used in messages) and ROOT. It starts nothing itself.

# Every process a script starts goes into PIDS and is stopped on exit, however the script ends.
PIDS=()
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

require() { # require TOOL...: fail early, naming the package to install
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$SCRIPT: $tool is missing (apt-get install -y $tool)" >&2; exit 1; }
    done
}

build_examples() { # build_examples DIR: the release gateway and standalone mock, copied into DIR
    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    echo "== building the release examples (target dir $target)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$target cargo build --release --example gateway --example mock_deepseek \
        --features mock,axum,upstream,prometheus,redis,pprof)
    # Copies: another build in a shared target dir must not swap the binaries mid-run.
    mkdir -p "$1"
    cp "$target/release/examples/gateway" "$target/release/examples/mock_deepseek" "$1/"
}

wait_http() { # wait_http URL LOG [TRIES] [PAUSE]: until URL answers (default 100 tries 0.1 s apart)
    local i
    for i in $(seq 1 "${3:-100}"); do
        curl -s -o /dev/null "$1" && return 0
        sleep "${4:-0.1}"
    done
    echo "$SCRIPT: $1 did not come up; its log ($2):" >&2
    cat "$2" >&2
    exit 1
}

# gateway_env stack|bare MOCK_PORT PORT MAX_IN_FLIGHT: sets GATEWAY_ENV to the settings every
# bench runs the gateway with: key mode against the mock, the per-caller rate limit on with a
# quota it never reaches (so it decides every call), a concurrency limit that never sheds.
gateway_env() {
    local bare=0
    [[ $1 == bare ]] && bare=1
    GATEWAY_ENV=(DEEPSEEK_API_KEY=sk-e2e-upstream "DEEPSEEK_BASE_URL=http://127.0.0.1:$2"
        "GATEWAY_ADDR=127.0.0.1:$3" "GATEWAY_BARE=$bare"
        GATEWAY_RATE_LIMIT_PER_MINUTE=1000000000 GATEWAY_RATE_LIMIT_BURST=1000000000
        "GATEWAY_MAX_IN_FLIGHT=$4" RUST_LOG=warn)
}
