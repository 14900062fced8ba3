# shellcheck shell=bash
# The outside services the test suite runs against, each started fresh for one run of
# scripts/test and stopped by test_services_stop:
#
#   PostgreSQL 15   throwaway server for the store tests, scram-sha-256, random superuser password,
#                   127.0.0.1 on a free port, unix socket in its own directory
#   s3s-fs          S3-compatible server on 127.0.0.1 on a free port, serving a fresh directory
#                   with one bucket and fixed test keys
#
# Everything lives under one temporary root (TEST_ROOT) that test_services_stop deletes. Readiness
# is polled with a deadline, never assumed after a sleep.
#
# Sourced after lib/common.sh, never run. Usable by hand:
#
#   source scripts/lib/common.sh; source scripts/lib/test-services.sh
#   test_services_start; env | grep WAYBACK_TEST_; test_services_stop

WAYBACK_TEST_SUPERUSER=wayback
WAYBACK_TEST_S3_ACCESS_KEY_DEFAULT=wayback-test-access-key
WAYBACK_TEST_S3_SECRET_KEY_DEFAULT=wayback-test-secret-key
WAYBACK_TEST_S3_BUCKET_DEFAULT=wayback-test
# Seconds each service gets to become ready.
WAYBACK_TEST_READY_TIMEOUT=${WAYBACK_TEST_READY_TIMEOUT:-60}

TEST_ROOT=
TEST_PG_DIR=
TEST_S3_PID=
# TMPDIR as it was before we pointed it into TEST_ROOT: tests' leftover clusters may live there.
TEST_ORIG_TMPDIR=${TMPDIR:-/tmp}

# Creates TEST_ROOT and points TMPDIR into it, so that everything the tests leave behind goes
# when the root goes. Traversable by the cluster user, which must reach data directories that
# root-run tests create under TMPDIR.
test_root_create() {
    [[ -n $TEST_ROOT ]] && return 0
    TEST_ROOT=$(mktemp -d "${TEST_ORIG_TMPDIR%/}/wayback-test.XXXXXX")
    chmod 0755 "$TEST_ROOT"
    mkdir -m 1777 "$TEST_ROOT/tmp"
    chmod 1777 "$TEST_ROOT/tmp"
    export WAYBACK_TEST_ROOT=$TEST_ROOT
    export TMPDIR=$TEST_ROOT/tmp
    # Tests make their roots as /tmp/wbt-<run>-* (short socket paths; tests/it/common): the
    # run's tag lets the stop below touch this run's clusters only, not a parallel run's.
    export WAYBACK_TEST_RUN=${TEST_ROOT##*.}
}

# initdb + pg_ctl start, retried on a fresh port if the one picked was taken in between.
test_pg_start() {
    test_root_create
    local bin=$WAYBACK_PG_BIN owner password attempt port
    [[ -x $bin/initdb ]] || die "PostgreSQL 15 not found in $bin (run scripts/setup)"
    owner=$(cluster_user_name)
    TEST_PG_DIR=$TEST_ROOT/pg
    mkdir -m 0700 "$TEST_PG_DIR"
    if is_root; then chown "$owner:" "$TEST_PG_DIR"; fi
    password=$(random_hex 16)
    # The password reaches initdb through a file only the cluster user can read.
    (umask 077 && printf '%s\n' "$password" >"$TEST_PG_DIR/pwfile")
    if is_root; then chown "$owner:" "$TEST_PG_DIR/pwfile"; fi
    if ! as_cluster_user "$bin/initdb" --pgdata="$TEST_PG_DIR/data" --username="$WAYBACK_TEST_SUPERUSER" \
        --auth=scram-sha-256 --pwfile="$TEST_PG_DIR/pwfile" --encoding=UTF8 --locale=C --no-sync \
        >"$TEST_PG_DIR/initdb.log" 2>&1; then
        cat "$TEST_PG_DIR/initdb.log" >&2
        die "initdb failed (as $owner, in $TEST_PG_DIR/data)"
    fi
    rm -f "$TEST_PG_DIR/pwfile"
    for attempt in 1 2 3; do
        port=$(free_port)
        # Durability is pointless for a server that lives as long as one test run.
        as_cluster_user tee "$TEST_PG_DIR/data/conf.d.wayback-test.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$TEST_PG_DIR'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
CONF
        if ! grep -q "^include_if_exists = 'conf.d.wayback-test.conf'" "$TEST_PG_DIR/data/postgresql.conf"; then
            as_cluster_user tee -a "$TEST_PG_DIR/data/postgresql.conf" >/dev/null <<<"include_if_exists = 'conf.d.wayback-test.conf'"
        fi
        if as_cluster_user "$bin/pg_ctl" --pgdata="$TEST_PG_DIR/data" --log="$TEST_PG_DIR/postgres.log" \
            --wait --timeout="$WAYBACK_TEST_READY_TIMEOUT" start >/dev/null 2>&1; then
            break
        fi
        if grep -q 'Address already in use' "$TEST_PG_DIR/postgres.log" 2>/dev/null && ((attempt < 3)); then
            say "port $port was taken; retrying PostgreSQL on another"
            continue
        fi
        tail -n 30 "$TEST_PG_DIR/postgres.log" >&2 || true
        die "PostgreSQL did not start (log: $TEST_PG_DIR/postgres.log)"
    done
    local deadline
    deadline=$(($(now) + WAYBACK_TEST_READY_TIMEOUT))
    until "$bin/pg_isready" --quiet --host=127.0.0.1 --port="$port" --dbname=postgres; do
        (($(now) < deadline)) || die "PostgreSQL on 127.0.0.1:$port not ready after ${WAYBACK_TEST_READY_TIMEOUT}s"
        sleep 0.1
    done
    export WAYBACK_TEST_PG_URL="postgres://$WAYBACK_TEST_SUPERUSER:$password@127.0.0.1:$port/postgres"
    say "PostgreSQL 15 ready on 127.0.0.1:$port (data $TEST_PG_DIR/data, as $owner)"
}

test_pg_stop() {
    [[ -n $TEST_PG_DIR && -f $TEST_PG_DIR/data/postmaster.pid ]] || return 0
    as_cluster_user "$WAYBACK_PG_BIN/pg_ctl" --pgdata="$TEST_PG_DIR/data" --mode=fast --wait \
        --timeout=30 stop >/dev/null 2>&1 || say "pg_ctl stop failed; the sweep below will stop it"
}

test_s3_binary() {
    if command -v s3s-fs 2>/dev/null; then
        return 0
    fi
    local candidate
    candidate="$(cargo_bin_dir)/s3s-fs"
    [[ -x $candidate ]] || return 1
    printf '%s\n' "$candidate"
}

# Prints the HTTP status of an unsigned GET /, or 000 when nothing answers.
test_s3_probe() {
    curl --silent --output /dev/null --write-out '%{http_code}' --max-time 2 "$1/" 2>/dev/null || true
}

test_s3_start() {
    test_root_create
    local bin dir port attempt code deadline
    bin=$(test_s3_binary) || die "s3s-fs not found (run scripts/setup --with-s3)"
    export WAYBACK_TEST_S3_ACCESS_KEY=${WAYBACK_TEST_S3_ACCESS_KEY:-$WAYBACK_TEST_S3_ACCESS_KEY_DEFAULT}
    export WAYBACK_TEST_S3_SECRET_KEY=${WAYBACK_TEST_S3_SECRET_KEY:-$WAYBACK_TEST_S3_SECRET_KEY_DEFAULT}
    export WAYBACK_TEST_S3_BUCKET=${WAYBACK_TEST_S3_BUCKET:-$WAYBACK_TEST_S3_BUCKET_DEFAULT}
    export WAYBACK_TEST_S3_REGION=${WAYBACK_TEST_S3_REGION:-us-east-1}
    dir=$TEST_ROOT/s3
    # s3s-fs serves each top-level directory as a bucket.
    mkdir -p "$dir/$WAYBACK_TEST_S3_BUCKET"
    for attempt in 1 2 3; do
        port=$(free_port)
        "$bin" --host 127.0.0.1 --port "$port" --access-key "$WAYBACK_TEST_S3_ACCESS_KEY" \
            --secret-key "$WAYBACK_TEST_S3_SECRET_KEY" "$dir" </dev/null >"$TEST_ROOT/s3s-fs.log" 2>&1 &
        TEST_S3_PID=$!
        deadline=$(($(now) + WAYBACK_TEST_READY_TIMEOUT))
        while :; do
            code=$(test_s3_probe "http://127.0.0.1:$port")
            [[ $code == 000 ]] || break
            kill -0 "$TEST_S3_PID" 2>/dev/null || break
            (($(now) < deadline)) || break
            sleep 0.1
        done
        if [[ $code != 000 ]] && kill -0 "$TEST_S3_PID" 2>/dev/null; then
            break
        fi
        test_s3_stop
        if ((attempt < 3)) && grep -qi 'address already in use' "$TEST_ROOT/s3s-fs.log"; then
            say "port $port was taken; retrying s3s-fs on another"
            continue
        fi
        cat "$TEST_ROOT/s3s-fs.log" >&2 || true
        die "s3s-fs did not answer on 127.0.0.1:$port within ${WAYBACK_TEST_READY_TIMEOUT}s"
    done
    export WAYBACK_TEST_S3_ENDPOINT=http://127.0.0.1:$port
    test_s3_check >/dev/null || die "s3s-fs answers but a signed ListObjectsV2 on $WAYBACK_TEST_S3_BUCKET failed (log: $TEST_ROOT/s3s-fs.log)"
    say "s3s-fs ready on $WAYBACK_TEST_S3_ENDPOINT (bucket $WAYBACK_TEST_S3_BUCKET in $dir)"
}

# Lists the test bucket with a signed request (curl's SigV4): proves the keys and the bucket.
# s3s insists on x-amz-content-sha256, which curl does not add by itself.
test_s3_check() {
    curl --silent --show-error --fail --max-time 10 \
        --user "$WAYBACK_TEST_S3_ACCESS_KEY:$WAYBACK_TEST_S3_SECRET_KEY" \
        --aws-sigv4 "aws:amz:$WAYBACK_TEST_S3_REGION:s3" \
        --header 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
        "$WAYBACK_TEST_S3_ENDPOINT/$WAYBACK_TEST_S3_BUCKET?list-type=2"
}

test_s3_stop() {
    [[ -n $TEST_S3_PID ]] || return 0
    local deadline
    kill -TERM "$TEST_S3_PID" 2>/dev/null || true
    deadline=$(($(now) + 10))
    while kill -0 "$TEST_S3_PID" 2>/dev/null && (($(now) < deadline)); do
        sleep 0.1
    done
    kill -KILL "$TEST_S3_PID" 2>/dev/null || true
    wait "$TEST_S3_PID" 2>/dev/null || true
    TEST_S3_PID=
}

test_services_start() {
    test_root_create
    test_pg_start
    test_s3_start
}

# Stops what test_services_start started, then any cluster the tests left running as the cluster
# user under a temporary directory, then deletes TEST_ROOT (kept if WAYBACK_KEEP_TEST_ROOT=1).
# Never fails: it runs from an EXIT trap.
test_services_stop() {
    local uid
    test_s3_stop || true
    test_pg_stop || true
    uid=$(id -u "$(cluster_user_name)" 2>/dev/null) || uid=
    if [[ -n $uid ]]; then
        # Only directories this run's tests make: their roots (tests/common:
        # /tmp/wbt-<run>-*) and this run's TEST_ROOT (TMPDIR points inside it). Never other /tmp
        # clusters: a developer's benchmark or broker, or another test run, may be running beside.
        stop_postmasters_under "$uid" "/tmp/wbt-${WAYBACK_TEST_RUN:-}-" "$TEST_ROOT" || true
    fi
    if [[ -n $TEST_ROOT && -d $TEST_ROOT ]]; then
        if [[ ${WAYBACK_KEEP_TEST_ROOT:-0} == 1 ]]; then
            say "kept $TEST_ROOT"
        else
            rm -rf "$TEST_ROOT" || say "could not remove $TEST_ROOT"
        fi
    fi
    if [[ -n ${TMPDIR:-} && $TMPDIR == "$TEST_ROOT"/* ]]; then
        export TMPDIR=$TEST_ORIG_TMPDIR
    fi
    TEST_ROOT=
    TEST_PG_DIR=
}
