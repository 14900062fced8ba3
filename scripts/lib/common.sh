# shellcheck shell=bash
# Helpers shared by the scripts in scripts/: messages, privilege, ports, secrets, and the one
# place that knows how to find and stop stray PostgreSQL clusters.
#
# Sourced, never run. Callers have `set -euo pipefail`.

# The OS user that owns per-instance PostgreSQL clusters when the broker runs as root
# (initdb and postgres refuse to run as root).
WAYBACK_PG_OS_USER=${WAYBACK_PG_OS_USER:-wayback}
WAYBACK_PG_BIN=${WAYBACK_PG_BIN:-/usr/lib/postgresql/15/bin}

# Prefix of every message; callers set it to their own name.
WAYBACK_LOG_TAG=${WAYBACK_LOG_TAG:-$(basename "$0")}

say() { printf '%s: %s\n' "$WAYBACK_LOG_TAG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$WAYBACK_LOG_TAG" "$*" >&2; exit 1; }

is_root() { [[ $(id -u) -eq 0 ]]; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for '$*' and sudo is not installed; rerun as root"
    fi
}

# Runs a command as the user that owns PostgreSQL clusters: WAYBACK_PG_OS_USER when we are root,
# else ourselves (a normal user can run initdb and postgres as itself).
as_cluster_user() {
    if is_root; then
        runuser -u "$WAYBACK_PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

# Name of the user that owns clusters in this run (see as_cluster_user).
cluster_user_name() {
    if is_root; then printf '%s\n' "$WAYBACK_PG_OS_USER"; else id -un; fi
}

# cargo installs into $CARGO_HOME/bin, which a non-login shell (CI, sudo) may not have on PATH.
cargo_bin_dir() { printf '%s\n' "${CARGO_HOME:-$HOME/.cargo}/bin"; }

ensure_cargo_on_path() {
    local dir
    dir=$(cargo_bin_dir)
    if ! command -v cargo >/dev/null 2>&1 && [[ -x $dir/cargo ]]; then
        PATH="$dir:$PATH"
        export PATH
    fi
    command -v cargo >/dev/null 2>&1
}

# Prints a TCP port on 127.0.0.1 that is free right now (the kernel picks it).
free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Prints N random bytes as lowercase hex (URL-safe, shell-safe).
random_hex() {
    od -An -N"${1:-16}" -tx1 /dev/urandom | tr -d ' \n'
}

# Seconds since the epoch, as an integer; used for deadlines.
now() { date +%s; }

# True while process $1 runs; a zombie (exited, not yet reaped) counts as gone.
pid_alive() {
    local stat state
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    # The state follows the command name, which is in parentheses and may hold spaces.
    state=${stat##*) }
    state=${state%% *}
    [[ -n $state && $state != Z && $state != X ]]
}

# Lists "pid<TAB>datadir" for every running postmaster owned by uid $1 whose data directory lies
# under one of the given roots. A postmaster is recognised by the first line of the
# postmaster.pid in its working directory (postgres chdirs into its data directory) being its
# own pid; backends and auxiliary processes never pass that test, and neither does anything
# that is not PostgreSQL. The uid filter keeps the system's PostgreSQL (user postgres) out.
postmasters_under() {
    local uid=$1
    shift
    local proc pid cwd root first owner
    for proc in /proc/[0-9]*; do
        pid=${proc#/proc/}
        [[ -r $proc/comm && $(cat "$proc/comm" 2>/dev/null) == postgres ]] || continue
        owner=$(stat -c %u "$proc" 2>/dev/null) || continue
        [[ $owner == "$uid" ]] || continue
        cwd=$(readlink "$proc/cwd" 2>/dev/null) || continue
        [[ -r $cwd/postmaster.pid ]] || continue
        first=$(head -n1 "$cwd/postmaster.pid" 2>/dev/null) || continue
        [[ $first == "$pid" ]] || continue
        for root in "$@"; do
            [[ -n $root ]] || continue
                        # A root ending in '-' is a name prefix (e.g. /tmp/wbt-: the tests' own roots).
            [[ $root == *- ]] || root=${root%/}/
            if [[ $cwd == "$root"* ]]; then
                printf '%s\t%s\n' "$pid" "$cwd"
                break
            fi
        done
    done
}

# Stops every postmaster of uid $1 whose data directory is under one of the roots: SIGQUIT
# (immediate shutdown), and SIGKILL for any still alive after a 10 s deadline. The postmaster
# takes its children with it. Prints one line per cluster stopped.
stop_postmasters_under() {
    local uid=$1
    shift
    local pid dir pids=() deadline
    while IFS=$'\t' read -r pid dir; do
        say "stopping leftover PostgreSQL (pid $pid, data $dir)"
        kill -QUIT "$pid" 2>/dev/null || true
        pids+=("$pid")
    done < <(postmasters_under "$uid" "$@")
    ((${#pids[@]})) || return 0
    deadline=$(($(now) + 10))
    for pid in "${pids[@]}"; do
        while pid_alive "$pid" && (($(now) < deadline)); do
            sleep 0.1
        done
        if pid_alive "$pid"; then
            say "PostgreSQL pid $pid ignored SIGQUIT; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}
