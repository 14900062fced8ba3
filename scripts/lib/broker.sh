# shellcheck shell=bash
# Builds, starts and stops a local broker for scripts/quickstart and scripts/bench-provision.
#
# broker_start exports WAYBACK_BROKER_URL, WAYBACK_BROKER_USERNAME and WAYBACK_BROKER_PASSWORD
# (the form scripts/osb.py reads) and sets BROKER_PID and BROKER_LOG; broker_stop stops the broker
# and then any cluster still running under its data directory. Sourced after lib/common.sh.
#
# WAYBACK_BIN=PATH runs that binary instead of building target/release/wayback.

BROKER_PID=
BROKER_LOG=
BROKER_DATA_DIR=
# Seconds the broker gets to answer GET /health with 200.
WAYBACK_BROKER_READY_TIMEOUT=${WAYBACK_BROKER_READY_TIMEOUT:-60}

broker_build() {
    if [[ -n ${WAYBACK_BIN:-} ]]; then
        say "using WAYBACK_BIN=$WAYBACK_BIN (no build)"
        return 0
    fi
    ensure_cargo_on_path || die "cargo not found (scripts/setup says how to install it)"
    say "cargo build --release"
    cargo build --release
}

# broker_start DATA_DIR PORT: runs target/release/wayback serve in the background and waits for
# GET /health to answer 200. The password is random and printed only in part.
broker_start() {
    local data_dir=$1 port=$2 bin code deadline
    bin=${WAYBACK_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/release/wayback}
    [[ -x $bin ]] || die "$bin not found or not executable"
    mkdir -p "$data_dir"
    BROKER_DATA_DIR=$(cd "$data_dir" && pwd)
    # Clusters run as the cluster user when we are root; it must be able to reach the data dir.
    if is_root; then chmod o+x "$BROKER_DATA_DIR"; fi
    BROKER_LOG=$(mktemp -t wayback-broker.XXXXXX.log)
    export WAYBACK_BROKER_USERNAME=admin
    WAYBACK_BROKER_PASSWORD=$(random_hex 16)
    export WAYBACK_BROKER_PASSWORD
    export WAYBACK_BROKER_URL=http://127.0.0.1:$port
    if is_root; then export WAYBACK_PG_OS_USER; fi
    say "wayback serve --listen 127.0.0.1:$port --data-dir $BROKER_DATA_DIR (user admin, password ${WAYBACK_BROKER_PASSWORD:0:4}..., log $BROKER_LOG)"
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$BROKER_DATA_DIR" \
        </dev/null >"$BROKER_LOG" 2>&1 &
    BROKER_PID=$!
    deadline=$(($(now) + WAYBACK_BROKER_READY_TIMEOUT))
    while :; do
        code=$(curl --silent --output /dev/null --write-out '%{http_code}' --max-time 2 \
            "$WAYBACK_BROKER_URL/health" 2>/dev/null) || true
        [[ $code == 200 ]] && break
        if ! pid_alive "$BROKER_PID"; then
            tail -n 40 "$BROKER_LOG" >&2 || true
            BROKER_PID=
            die "the broker exited before answering /health (log: $BROKER_LOG)"
        fi
        if (($(now) >= deadline)); then
            tail -n 40 "$BROKER_LOG" >&2 || true
            die "GET /health did not answer 200 within ${WAYBACK_BROKER_READY_TIMEOUT}s (last: $code; log: $BROKER_LOG)"
        fi
        sleep 0.1
    done
    say "broker ready: GET $WAYBACK_BROKER_URL/health -> 200"
}

# Never fails: runs from EXIT traps. Deletes the broker's log when the script is ending with
# status 0 (pass it as $1); otherwise says where the log is.
broker_stop() {
    local status=${1:-1} deadline uid
    if [[ -n $BROKER_PID ]]; then
        say "stopping the broker (pid $BROKER_PID)"
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        deadline=$(($(now) + 30))
        while pid_alive "$BROKER_PID" && (($(now) < deadline)); do
            sleep 0.1
        done
        if pid_alive "$BROKER_PID"; then
            say "the broker ignored SIGTERM for 30 s; killing it"
            kill -KILL "$BROKER_PID" 2>/dev/null || true
        fi
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=
    fi
    if [[ -n $BROKER_DATA_DIR ]]; then
        uid=$(id -u "$(cluster_user_name)" 2>/dev/null) || uid=
        if [[ -n $uid ]]; then
            stop_postmasters_under "$uid" "$BROKER_DATA_DIR" || true
        fi
    fi
    if [[ -n $BROKER_LOG && -f $BROKER_LOG ]]; then
        if ((status == 0)); then
            rm -f "$BROKER_LOG"
        else
            say "the broker's log: $BROKER_LOG"
        fi
    fi
}
