# shellcheck shell=bash
# The pgBackRest anchor of the archive benchmarks (scripts/bench-archive, scripts/bench-undo) and
# the PostgreSQL measurements they share: a cluster of Wayback's plan "small" settings archiving
# through pgBackRest (tuned: lz4, two processes) to the benchmark's S3 server behind its TLS
# front (lib/bench-s3.sh), loaded with pgbench, backed up, restored and started until promoted.
#
#   run_pgbackrest SIDE     pgbr (in clear) or pgbre (repo1-cipher-type=aes-256-cbc), in bucket
#                           bench-SIDE under ROOT/SIDE; records SIDE_* lines (db_bytes,
#                           backup_s, catchup/wal figures when a load runs, restore_s,
#                           replay_s, stored bytes) and removes its data directories at the end
#   init_data, load_and_catch_up, switch_and_wait, wait_promoted, stop_cluster,
#   stop_root_helpers, ensure_bench_packages, ts, since, record, jq_num   (see each below)
#
# The caller sets ROOT (the temporary root), RESULTS (key=value lines), PGBIN, scale and
# load_args (pgbench arguments of the timed load; empty: no load between the base backup and
# the restore), has started the S3 server and its TLS front, and stops CLUSTERS and
# SAMPLER_PID in its EXIT trap. Sourced after lib/common.sh and lib/bench-s3.sh, never run.

# Settings of both clusters: those of Wayback's plan "small" (catalog.json) and of its managed
# tier, so both tools archive the same kind of WAL.
PLAN_SETTINGS="shared_buffers = '128MB'
max_connections = '50'
work_mem = '4MB'
maintenance_work_mem = '64MB'
effective_cache_size = '384MB'
max_wal_size = '1GB'
min_wal_size = '80MB'
wal_level = 'replica'
logging_collector = 'off'
lc_messages = 'C'
timezone = 'UTC'"
# pgBackRest at its best settings here (issue 3): lz4 and two processes for the backup and the
# archive (pgbackrest.conf); restore takes only the process count (it reads any compression).
PGBR_TUNING=(--compress-type=lz4 --process-max=2)
PGBR_RESTORE_TUNING=(--process-max=2)
WAIT_TIMEOUT=${BENCH_WAIT_TIMEOUT:-900}

CLUSTERS=()
SAMPLER_PID=

ts() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(ts)" 'BEGIN { printf "%.2f", b - a }'; }
record() { printf '%s=%s\n' "$1" "$2" >>"$RESULTS"; }

stop_cluster() {
    [[ -f $1/postmaster.pid ]] || return 0
    as_cluster_user "$PGBIN/pg_ctl" --pgdata="$1" --mode=fast --wait --timeout=60 stop >/dev/null 2>&1 ||
        say "pg_ctl stop failed for $1; the sweep will stop it"
}

# Processes of the cluster user that are not PostgreSQL but carry ROOT in their command line:
# pgBackRest's detached async archive-push/get workers. Stopped by pid.
stop_root_helpers() {
    local uid proc pid
    uid=$(id -u "$(cluster_user_name)" 2>/dev/null) || return 0
    for proc in /proc/[0-9]*; do
        pid=${proc#/proc/}
        [[ $(stat -c %u "$proc" 2>/dev/null) == "$uid" ]] || continue
        [[ $(cat "$proc/comm" 2>/dev/null) == pgbackrest ]] || continue
        tr '\0' ' ' <"$proc/cmdline" 2>/dev/null | grep -qF -- "$ROOT/" || continue
        kill -TERM "$pid" 2>/dev/null || true
    done
}

# --- generic PostgreSQL measurements ------------------------------------------------------

count_ready() {
    find "$1/pg_wal/archive_status" -maxdepth 1 -name '*.ready' 2>/dev/null | wc -l
}

# backlog_sampler_start PGDATA FILE: writes the largest number of .ready files seen, every 0.25 s.
backlog_sampler_start() {
    local pgdata=$1 out=$2
    echo 0 >"$out"
    (
        max=0
        while :; do
            n=$(count_ready "$pgdata")
            if ((n > max)); then max=$n; echo "$max" >"$out"; fi
            sleep 0.25
        done
    ) &
    SAMPLER_PID=$!
}

backlog_sampler_stop() {
    [[ -n $SAMPLER_PID ]] || return 0
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=
}

# wait_archived PGDATA SQLFN SEGMENT: until no .ready file is left and pg_stat_archiver has
# archived SEGMENT (or a later file).
wait_archived() {
    local pgdata=$1 sql=$2 seg=$3 deadline last
    deadline=$(($(now) + WAIT_TIMEOUT))
    while :; do
        if (($(count_ready "$pgdata") == 0)); then
            last=$("$sql" "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
            last=${last:0:24}
            if [[ $last == "$seg" || $last > $seg ]]; then
                return 0
            fi
        fi
        (($(now) < deadline)) || die "WAL up to $seg not archived after ${WAIT_TIMEOUT}s ($(count_ready "$pgdata") .ready files left in $pgdata)"
        sleep 0.05
    done
}

# switch_and_wait PGDATA SQLFN: closes the current segment and waits until all WAL is archived.
switch_and_wait() {
    local seg
    seg=$("$2" "SELECT pg_walfile_name(pg_switch_wal())")
    wait_archived "$1" "$2" "$seg"
}

# load_and_catch_up SIDE PGDATA SQLFN URI: the timed pgbench run, then archive catch-up.
load_and_catch_up() {
    local side=$1 pgdata=$2 sql=$3 uri=$4 start_lsn end_lsn t0 backlog_end catchup wal tps
    start_lsn=$("$sql" "SELECT pg_current_wal_lsn()")
    backlog_sampler_start "$pgdata" "$ROOT/$side-backlog"
    say "$side: pgbench ${load_args[*]}"
    "$PGBIN/pgbench" "${load_args[@]}" -P 10 "$uri" \
        >"$ROOT/$side-pgbench.log" 2>&1 ||
        { tail -n 20 "$ROOT/$side-pgbench.log" >&2; die "$side: pgbench failed"; }
    t0=$(ts)
    backlog_end=$(count_ready "$pgdata")
    end_lsn=$("$sql" "SELECT pg_current_wal_lsn()")
    switch_and_wait "$pgdata" "$sql"
    catchup=$(since "$t0")
    backlog_sampler_stop
    wal=$("$sql" "SELECT pg_wal_lsn_diff('$end_lsn', '$start_lsn')::bigint")
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$ROOT/$side-pgbench.log" | tail -n1)
    record "${side}_catchup_s" "$catchup"
    record "${side}_backlog_end" "$backlog_end"
    record "${side}_backlog_max" "$(cat "$ROOT/$side-backlog")"
    record "${side}_wal_bytes" "$wal"
    record "${side}_tps" "${tps:-}"
    say "$side: load wrote $((wal / 1000000)) MB of WAL at ${tps:-?} tps; $backlog_end segments waited at its end (max $(cat "$ROOT/$side-backlog")); all archived ${catchup}s after it ended"
    if ((wal < 300000000 || wal > 450000000)); then
        say "$side: note: the load's WAL is outside the intended 300-450 MB; tune --rate/--seconds/--clients"
    fi
}

# init_data SIDE PGDATA SQLFN URI: pgbench -i, then (untimed) archive everything and checkpoint,
# so that the timed base backup starts from the same state on both sides.
init_data() {
    local side=$1 pgdata=$2 sql=$3 uri=$4 t
    say "$side: pgbench -i -s $scale"
    t=$(ts)
    "$PGBIN/pgbench" -i -s "$scale" -q "$uri" >"$ROOT/$side-init.log" 2>&1 ||
        { tail -n 20 "$ROOT/$side-init.log" >&2; die "$side: pgbench -i failed"; }
    say "$side: loaded in $(since "$t")s; waiting until its WAL is archived (untimed)"
    t=$(ts)
    switch_and_wait "$pgdata" "$sql"
    say "$side: archive caught up with the initial load in $(since "$t")s"
    "$sql" "CHECKPOINT" >/dev/null
    record "${side}_db_bytes" "$("$sql" "SELECT pg_database_size(current_database())")"
}

# --- pgBackRest ---------------------------------------------------------------------------

PGBR_DIR=
PGBR_PORT=
PGBR_PASSWORD=
PGBR_SIDE=
PGBR_CIPHER=0

pgbr_sql() {
    PGPASSWORD=$PGBR_PASSWORD "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 \
        -p "$PGBR_PORT" -U "$(cluster_user_name)" -d "${PGBR_DB:-bench}" -c "$1"
}

pgbr() {
    as_cluster_user pgbackrest --config="$PGBR_DIR/pgbackrest.conf" --stanza=bench "$@"
}

pgbr_initdb() {
    local dir=$1 owner
    owner=$(cluster_user_name)
    (umask 077 && printf '%s\n' "$PGBR_PASSWORD" >"$PGBR_DIR/pwfile")
    if is_root; then chown "$owner:" "$PGBR_DIR/pwfile"; fi
    as_cluster_user "$PGBIN/initdb" --pgdata="$dir" --username="$owner" --auth-local=peer \
        --auth-host=scram-sha-256 --pwfile="$PGBR_DIR/pwfile" --encoding=UTF8 --locale=C \
        --lc-ctype=C.UTF-8 --data-checksums --no-sync >"$PGBR_DIR/initdb.log" 2>&1 ||
        { cat "$PGBR_DIR/initdb.log" >&2; die "pgbackrest side: initdb failed"; }
    rm -f "$PGBR_DIR/pwfile"
    as_cluster_user tee -a "$dir/postgresql.conf" >/dev/null <<CONF

# bench-archive
listen_addresses = '127.0.0.1'
port = '$PGBR_PORT'
unix_socket_directories = '$PGBR_DIR/run'
$PLAN_SETTINGS
archive_mode = 'on'
archive_command = 'pgbackrest --config=$PGBR_DIR/pgbackrest.conf --stanza=bench archive-push %p'
archive_timeout = '60s'
CONF
}

pgbr_config() {
    local owner
    owner=$(cluster_user_name)
    (umask 077 && cat >"$PGBR_DIR/pgbackrest.conf") <<CONF
[global]
repo1-type=s3
repo1-path=/pgbackrest
repo1-s3-bucket=bench-$PGBR_SIDE
repo1-s3-endpoint=127.0.0.1
repo1-storage-port=$BENCH_TLS_PORT
repo1-s3-region=$BENCH_S3_REGION
repo1-s3-key=$BENCH_S3_ACCESS_KEY
repo1-s3-key-secret=$BENCH_S3_SECRET_KEY
repo1-s3-uri-style=path
repo1-storage-verify-tls=n
repo1-retention-full=2
log-path=$PGBR_DIR/log
lock-path=$PGBR_DIR/lock
spool-path=$PGBR_DIR/spool
log-level-console=warn
log-level-file=info
start-fast=y
archive-async=y
process-max=2
compress-type=lz4
$(if ((PGBR_CIPHER)); then printf 'repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=%s\n' "$(random_hex 32)"; fi)

[bench]
pg1-path=$PGBR_DIR/data
pg1-socket-path=$PGBR_DIR/run
pg1-port=$PGBR_PORT
pg1-user=$owner
CONF
    if is_root; then chown "$owner:" "$PGBR_DIR/pgbackrest.conf"; fi
}

# Polls until the cluster answers pg_is_in_recovery() = false; dies if its postmaster exits.
wait_promoted() {
    local pgdata=$1 sql=$2 log=$3 deadline state pid
    deadline=$(($(now) + WAIT_TIMEOUT))
    while :; do
        state=$("$sql" "SELECT pg_is_in_recovery()" 2>/dev/null) || state=
        [[ $state == f ]] && return 0
        if [[ -f $pgdata/postmaster.pid ]]; then
            pid=$(head -n1 "$pgdata/postmaster.pid" 2>/dev/null) || pid=
            if [[ -n $pid ]] && ! pid_alive "$pid"; then
                tail -n 30 "$log" >&2 || true
                die "the restored cluster in $pgdata exited before promotion (log: $log)"
            fi
        fi
        (($(now) < deadline)) || { tail -n 30 "$log" >&2 || true; die "not promoted after ${WAIT_TIMEOUT}s (log: $log)"; }
        sleep 0.05
    done
}

# run_pgbackrest SIDE: pgbr (in clear) or pgbre (repo1-cipher-type=aes-256-cbc), each in the
# bucket bench-SIDE; results are recorded as SIDE_*.
run_pgbackrest() {
    local side=$1 owner t rows restored info
    PGBR_SIDE=$side
    PGBR_CIPHER=0
    [[ $side == pgbre ]] && PGBR_CIPHER=1
    owner=$(cluster_user_name)
    command -v pgbackrest >/dev/null 2>&1 || die "pgbackrest not found (apt-get install pgbackrest)"
    PGBR_DIR=$ROOT/$side
    mkdir -m 0700 "$PGBR_DIR"
    if is_root; then chown "$owner:" "$PGBR_DIR"; fi
    as_cluster_user mkdir -m 0700 "$PGBR_DIR/run" "$PGBR_DIR/log" "$PGBR_DIR/lock" "$PGBR_DIR/spool" "$PGBR_DIR/restore"
    PGBR_PORT=$(free_port)
    PGBR_PASSWORD=$(random_hex 16)
    pgbr_initdb "$PGBR_DIR/data"
    pgbr_config
    as_cluster_user "$PGBIN/pg_ctl" --pgdata="$PGBR_DIR/data" --log="$PGBR_DIR/postgres.log" \
        --wait --timeout=60 start >/dev/null || { tail -n 30 "$PGBR_DIR/postgres.log" >&2; die "$side: PostgreSQL did not start"; }
    CLUSTERS+=("$PGBR_DIR/data")
    say "$side: PostgreSQL 15 on 127.0.0.1:$PGBR_PORT, data $PGBR_DIR/data"
    pgbr stanza-create >"$PGBR_DIR/stanza.log" 2>&1 || { cat "$PGBR_DIR/stanza.log" >&2; die "pgbackrest stanza-create failed"; }
    pgbr check >>"$PGBR_DIR/stanza.log" 2>&1 || { cat "$PGBR_DIR/stanza.log" >&2; die "pgbackrest check failed (archive-push through stunnel to S3)"; }
    PGBR_DB=postgres pgbr_sql "CREATE DATABASE bench" >/dev/null
    init_data "$side" "$PGBR_DIR/data" pgbr_sql \
        "postgresql://$owner:$PGBR_PASSWORD@127.0.0.1:$PGBR_PORT/bench"

    say "$side: backup --type=full ${PGBR_TUNING[*]}"
    t=$(ts)
    pgbr --type=full "${PGBR_TUNING[@]}" backup >"$PGBR_DIR/backup.log" 2>&1 ||
        { cat "$PGBR_DIR/backup.log" >&2; die "pgbackrest backup failed"; }
    record "${side}"_backup_s "$(since "$t")"
    say "$side: backup took $(tail -n1 "$RESULTS" | cut -d= -f2)s"

    if ((${#load_args[@]})); then
        load_and_catch_up "$side" "$PGBR_DIR/data" pgbr_sql \
            "postgresql://$owner:$PGBR_PASSWORD@127.0.0.1:$PGBR_PORT/bench"
    fi
    rows=$(pgbr_sql "SELECT count(*) FROM pgbench_history")
    stop_cluster "$PGBR_DIR/data"

    say "$side: restore ${PGBR_RESTORE_TUNING[*]} --archive-mode=off into $PGBR_DIR/restore"
    t=$(ts)
    pgbr "${PGBR_RESTORE_TUNING[@]}" --pg1-path="$PGBR_DIR/restore" --archive-mode=off restore \
        >"$PGBR_DIR/restore.log" 2>&1 || { cat "$PGBR_DIR/restore.log" >&2; die "pgbackrest restore failed"; }
    record "${side}"_restore_s "$(since "$t")"
    say "$side: restore took $(tail -n1 "$RESULTS" | cut -d= -f2)s; starting it until promoted"
    t=$(ts)
    as_cluster_user "$PGBIN/pg_ctl" --pgdata="$PGBR_DIR/restore" --log="$PGBR_DIR/restored.log" \
        --no-wait start >/dev/null
    CLUSTERS+=("$PGBR_DIR/restore")
    wait_promoted "$PGBR_DIR/restore" pgbr_sql "$PGBR_DIR/restored.log"
    record "${side}"_replay_s "$(since "$t")"
    say "$side: promoted $(tail -n1 "$RESULTS" | cut -d= -f2)s after start"
    restored=$(pgbr_sql "SELECT count(*) FROM pgbench_history")
    [[ $restored == "$rows" ]] || die "$side: the restore has $restored pgbench_history rows, the source had $rows"
    say "$side: the restore has all $rows pgbench_history rows of the source"
    stop_cluster "$PGBR_DIR/restore"

    info=$(python3 "$here/lib/bench_archive.py" s3-usage "bench-$side" \
        --group base=/backup/ --group wal=/archive/ --count manifests='/backup\.manifest$')
    record "${side}"_stored_bytes "$(jq_num "$info" bytes)"
    record "${side}"_stored_base_bytes "$(jq_num "$info" groups.base)"
    record "${side}"_stored_wal_bytes "$(jq_num "$info" groups.wal)"
    record "${side}"_base_backups "$(jq_num "$info" counts.manifests)"
    # ~3 GB of data directories the Wayback side need not share the disk with.
    rm -rf "$PGBR_DIR/data" "$PGBR_DIR/restore"
}

# jq_num JSON DOTTED.PATH (python, since jq may be missing).
jq_num() {
    python3 -c 'import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2].split("."):
    v = v[k]
print(v)' "$1" "$2"
}


# pgBackRest and stunnel come from Debian's packages; only this benchmark needs them.
ensure_bench_packages() {
    local missing=()
    command -v pgbackrest >/dev/null 2>&1 || missing+=(pgbackrest)
    command -v stunnel >/dev/null 2>&1 || missing+=(stunnel4)
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]}; install them by hand"
    say "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null ||
        die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}
