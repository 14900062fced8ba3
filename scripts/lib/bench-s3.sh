# shellcheck shell=bash
# The S3 side of scripts/bench-archive: one S3-compatible server on 127.0.0.1 (Garage when its
# binary is installed, else s3s-fs), buckets and one key on it, and an stunnel TLS front for
# clients that speak only HTTPS to S3 (pgBackRest 2.45).
#
#   bench_s3_start ROOT BUCKET...   starts the server under ROOT/s3 and creates the buckets; sets
#                                   BENCH_S3_KIND (garage | s3s-fs), BENCH_S3_VERSION,
#                                   BENCH_S3_ENDPOINT (http://127.0.0.1:PORT), BENCH_S3_PORT,
#                                   BENCH_S3_REGION, BENCH_S3_ACCESS_KEY, BENCH_S3_SECRET_KEY
#   bench_tls_front_start ROOT      stunnel with a fresh self-signed certificate in front of it;
#                                   sets BENCH_TLS_PORT
#   bench_s3_stop                   stops both (never fails; for EXIT traps)
#
# BENCH_S3=garage | s3s-fs | auto (default auto: Garage if installed, else s3s-fs).
# Sourced after lib/common.sh, never run.

# Keep in step with GARAGE_VERSION in scripts/setup.
BENCH_GARAGE_VERSION=2.5.0
BENCH_S3_READY_TIMEOUT=${BENCH_S3_READY_TIMEOUT:-60}

BENCH_S3_KIND=
BENCH_S3_VERSION=
BENCH_S3_PID=
BENCH_S3_CONF=
BENCH_S3_BIN=
BENCH_TLS_PID=
BENCH_TLS_PORT=

# Where scripts/setup --with-garage installs Garage (a versioned cache, never rebuilt when there).
bench_garage_root() {
    printf '%s\n' "${WAYBACK_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wayback}/garage-$BENCH_GARAGE_VERSION"
}

bench_garage_path() {
    local candidate
    candidate="$(bench_garage_root)/bin/garage"
    [[ -x $candidate ]] && printf '%s\n' "$candidate"
}

bench_s3s_fs_path() {
    if command -v s3s-fs 2>/dev/null; then
        return 0
    fi
    local candidate
    candidate="$(cargo_bin_dir)/s3s-fs"
    [[ -x $candidate ]] && printf '%s\n' "$candidate"
}

# Signed ListObjectsV2 of bucket $1 through curl's SigV4: proves the server, the key and the bucket.
bench_s3_list() {
    curl --silent --show-error --fail --max-time 10 \
        --user "$BENCH_S3_ACCESS_KEY:$BENCH_S3_SECRET_KEY" \
        --aws-sigv4 "aws:amz:$BENCH_S3_REGION:s3" \
        --header 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
        "$BENCH_S3_ENDPOINT/$1?list-type=2&max-keys=1"
}

# Waits until every bucket named lists with a signed request.
bench_s3_wait_buckets() {
    local bucket deadline
    deadline=$(($(now) + BENCH_S3_READY_TIMEOUT))
    for bucket in "$@"; do
        until bench_s3_list "$bucket" >/dev/null 2>&1; do
            pid_alive "$BENCH_S3_PID" || die "$BENCH_S3_KIND exited (log: $BENCH_S3_LOG)"
            (($(now) < deadline)) || die "bucket $bucket on $BENCH_S3_ENDPOINT not listable after ${BENCH_S3_READY_TIMEOUT}s (log: $BENCH_S3_LOG)"
            sleep 0.2
        done
    done
}

bench_garage() {
    "$BENCH_S3_BIN" -c "$BENCH_S3_CONF" "$@"
}

bench_garage_start() {
    local root=$1
    shift
    local dir=$root/s3 rpc_port admin_port deadline node bucket
    mkdir -p "$dir/meta" "$dir/data"
    BENCH_S3_PORT=$(free_port)
    rpc_port=$(free_port)
    admin_port=$(free_port)
    BENCH_S3_CONF=$dir/garage.toml
    BENCH_S3_LOG=$dir/garage.log
    BENCH_S3_REGION=garage
    (umask 077 && cat >"$BENCH_S3_CONF") <<CONF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(random_hex 32)"

[s3_api]
s3_region = "$BENCH_S3_REGION"
api_bind_addr = "127.0.0.1:$BENCH_S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
admin_token = "$(random_hex 32)"
CONF
    # Not through bench_garage: a function run with & is a subshell, whose pid is not garage's.
    "$BENCH_S3_BIN" -c "$BENCH_S3_CONF" server </dev/null >"$BENCH_S3_LOG" 2>&1 &
    BENCH_S3_PID=$!
    deadline=$(($(now) + BENCH_S3_READY_TIMEOUT))
    # 'node id' reads the key on disk; 'status' needs the server to answer RPC.
    until bench_garage status >/dev/null 2>&1; do
        pid_alive "$BENCH_S3_PID" || { tail -n 30 "$BENCH_S3_LOG" >&2; die "garage server exited (log: $BENCH_S3_LOG)"; }
        (($(now) < deadline)) || die "garage did not answer 'status' within ${BENCH_S3_READY_TIMEOUT}s (log: $BENCH_S3_LOG)"
        sleep 0.2
    done
    node=$(bench_garage node id --quiet 2>/dev/null) || die "garage node id failed"
    node=${node%%@*}
    bench_garage layout assign --zone dc1 --capacity 10GB "$node" >"$dir/layout.log" 2>&1 ||
        { cat "$dir/layout.log" >&2; die "garage layout assign failed"; }
    bench_garage layout apply --version 1 >>"$dir/layout.log" 2>&1 ||
        { cat "$dir/layout.log" >&2; die "garage layout apply failed"; }
    # Garage's key ids are GK + 24 hex digits, secrets 64 hex digits.
    BENCH_S3_ACCESS_KEY=GK$(random_hex 12)
    BENCH_S3_SECRET_KEY=$(random_hex 32)
    bench_garage key import --yes -n bench "$BENCH_S3_ACCESS_KEY" "$BENCH_S3_SECRET_KEY" >"$dir/key.log" 2>&1 ||
        { cat "$dir/key.log" >&2; die "garage key import failed"; }
    for bucket in "$@"; do
        bench_garage bucket create "$bucket" >>"$dir/key.log" 2>&1 ||
            { cat "$dir/key.log" >&2; die "garage bucket create $bucket failed"; }
        bench_garage bucket allow --read --write --owner "$bucket" --key "$BENCH_S3_ACCESS_KEY" >>"$dir/key.log" 2>&1 ||
            { cat "$dir/key.log" >&2; die "garage bucket allow $bucket failed"; }
    done
    BENCH_S3_VERSION="Garage $BENCH_GARAGE_VERSION"
}

bench_s3s_fs_start() {
    local root=$1
    shift
    local dir=$root/s3 bucket
    for bucket in "$@"; do
        mkdir -p "$dir/data/$bucket"
    done
    BENCH_S3_PORT=$(free_port)
    BENCH_S3_LOG=$dir/s3s-fs.log
    BENCH_S3_REGION=us-east-1
    BENCH_S3_ACCESS_KEY=bench-$(random_hex 8)
    BENCH_S3_SECRET_KEY=$(random_hex 24)
    "$BENCH_S3_BIN" --host 127.0.0.1 --port "$BENCH_S3_PORT" --access-key "$BENCH_S3_ACCESS_KEY" \
        --secret-key "$BENCH_S3_SECRET_KEY" "$dir/data" </dev/null >"$BENCH_S3_LOG" 2>&1 &
    BENCH_S3_PID=$!
    BENCH_S3_VERSION="s3s-fs $("$BENCH_S3_BIN" --version 2>/dev/null | awk '{print $NF; exit}')"
}

bench_s3_start() {
    local root=$1
    shift
    local want=${BENCH_S3:-auto}
    case $want in
        auto)
            if BENCH_S3_BIN=$(bench_garage_path); then
                BENCH_S3_KIND=garage
            elif BENCH_S3_BIN=$(bench_s3s_fs_path); then
                BENCH_S3_KIND=s3s-fs
                say "Garage $BENCH_GARAGE_VERSION is not installed in $(bench_garage_root) (scripts/setup --with-garage builds it, ~15 min); falling back to s3s-fs"
            else
                die "neither Garage nor s3s-fs is installed (run scripts/setup --with-garage or --with-s3)"
            fi
            ;;
        garage)
            BENCH_S3_BIN=$(bench_garage_path) || die "Garage not installed in $(bench_garage_root) (run scripts/setup --with-garage)"
            BENCH_S3_KIND=garage
            ;;
        s3s-fs)
            BENCH_S3_BIN=$(bench_s3s_fs_path) || die "s3s-fs not installed (run scripts/setup --with-s3)"
            BENCH_S3_KIND=s3s-fs
            ;;
        *) die "BENCH_S3/--s3 must be garage, s3s-fs or auto, not '$want'" ;;
    esac
    mkdir -p "$root/s3"
    if [[ $BENCH_S3_KIND == garage ]]; then
        bench_garage_start "$root" "$@"
    else
        bench_s3s_fs_start "$root" "$@"
    fi
    BENCH_S3_ENDPOINT=http://127.0.0.1:$BENCH_S3_PORT
    # For helpers in other languages (scripts/lib/bench_archive.py lists buckets with these).
    export BENCH_S3_ENDPOINT BENCH_S3_REGION BENCH_S3_ACCESS_KEY BENCH_S3_SECRET_KEY
    bench_s3_wait_buckets "$@"
    say "S3 server: $BENCH_S3_VERSION on $BENCH_S3_ENDPOINT (region $BENCH_S3_REGION, buckets: $*)"
}

# stunnel: TLS on 127.0.0.1:BENCH_TLS_PORT -> plain HTTP on the S3 server's port.
bench_tls_front_start() {
    local root=$1 dir deadline
    dir=$root/stunnel
    mkdir -p "$dir"
    command -v stunnel >/dev/null 2>&1 || die "stunnel not found (apt-get install stunnel4)"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" >"$dir/openssl.log" 2>&1 ||
        { cat "$dir/openssl.log" >&2; die "openssl could not make a self-signed certificate"; }
    chmod 600 "$dir/key.pem"
    BENCH_TLS_PORT=$(free_port)
    cat >"$dir/stunnel.conf" <<CONF
foreground = yes
pid =
output = $dir/stunnel.log
debug = 4

[s3]
accept = 127.0.0.1:$BENCH_TLS_PORT
connect = 127.0.0.1:$BENCH_S3_PORT
cert = $dir/cert.pem
key = $dir/key.pem
CONF
    stunnel "$dir/stunnel.conf" </dev/null >"$dir/stunnel.stdout" 2>&1 &
    BENCH_TLS_PID=$!
    deadline=$(($(now) + BENCH_S3_READY_TIMEOUT))
    until curl --silent --insecure --output /dev/null --max-time 2 "https://127.0.0.1:$BENCH_TLS_PORT/"; do
        pid_alive "$BENCH_TLS_PID" || { cat "$dir/stunnel.stdout" "$dir/stunnel.log" >&2 2>/dev/null; die "stunnel exited"; }
        (($(now) < deadline)) || die "stunnel on 127.0.0.1:$BENCH_TLS_PORT not answering after ${BENCH_S3_READY_TIMEOUT}s"
        sleep 0.1
    done
    say "stunnel: https://127.0.0.1:$BENCH_TLS_PORT -> $BENCH_S3_ENDPOINT (self-signed)"
}

bench_stop_pid() {
    local pid=$1 deadline
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(($(now) + 10))
    while pid_alive "$pid" && (($(now) < deadline)); do
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

bench_s3_stop() {
    bench_stop_pid "$BENCH_TLS_PID" || true
    BENCH_TLS_PID=
    bench_stop_pid "$BENCH_S3_PID" || true
    BENCH_S3_PID=
}
