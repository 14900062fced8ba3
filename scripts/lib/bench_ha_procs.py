"""What scripts/bench-ha-engines needs from the operating system and from PostgreSQL: processes
started as the cluster user, their trees, PSS, SIGKILL of a whole member, psql calls, and the
steady write load. Standard library only; imports nothing of the engines (bench_ha_engines.py
builds on this module, never the reverse).

Every process started here is remembered in STARTED, and stop_all() ends what is left of them
(the driver calls it on every exit path; the bash script sweeps the temporary root after it)."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import threading
import time

PGBIN = os.environ.get("WAYBACK_PG_BIN", "/usr/lib/postgresql/15/bin")
STARTED: list[subprocess.Popen] = []


class ClusterUser:
    """The unprivileged user every server of the benchmark runs as (see common.sh)."""

    def __init__(self, name: str, root: str):
        self.name = name
        self.pw = pwd.getpwnam(name)
        self.root = root

    def env(self, extra: dict | None = None) -> dict:
        env = {
            "PATH": f"{PGBIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": os.path.join(self.root, "home"),
            "USER": self.name,
            "LOGNAME": self.name,
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
            "XDG_CONFIG_HOME": os.path.join(self.root, "home", ".config"),
            "XDG_DATA_HOME": os.path.join(self.root, "home", ".local", "share"),
            "XDG_RUNTIME_DIR": os.path.join(self.root, "home", "run"),
            "PGHOST": "127.0.0.1",
            "PGCONNECT_TIMEOUT": "2",
        }
        env.update(extra or {})
        return env

    def mkdir(self, path: str) -> None:
        """Creates `path` (and missing parents under the root) owned by the cluster user."""
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for d in reversed(missing):
            os.mkdir(d, 0o755)
            if os.getuid() == 0:
                os.chown(d, self.pw.pw_uid, self.pw.pw_gid)

    def _ids(self) -> dict:
        if os.getuid() != 0:
            return {}
        return {"user": self.pw.pw_uid, "group": self.pw.pw_gid, "extra_groups": []}

    def start(self, argv: list[str], log: str, extra_env: dict | None = None) -> subprocess.Popen:
        """Starts a long-running server in a session of its own, output appended to `log`."""
        out = open(log, "ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=self.env(extra_env), cwd=self.root, start_new_session=True,
                                **self._ids())
        out.close()
        STARTED.append(proc)
        return proc

    def run(self, argv: list[str], timeout: float = 120, extra_env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Runs a command to completion; a failure carries its command line and output."""
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                             env=self.env(extra_env), cwd=self.root, timeout=timeout, **self._ids())
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: "
                               f"{(res.stderr or res.stdout).strip()[-2000:]}")
        return res


def psql(user: ClusterUser, port: int, sql: str, db: str = "postgres", timeout: float = 10):
    """One statement through psql on 127.0.0.1:port; its output, or None when it failed."""
    try:
        res = user.run([f"{PGBIN}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                        "-h", "127.0.0.1", "-p", str(port), "-U", user.name, "-d", db, "-c", sql],
                       timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def is_primary(user: ClusterUser, port: int):
    """True / False for a running member, None when it does not answer."""
    out = psql(user, port, "SELECT pg_is_in_recovery()", timeout=4)
    return None if out is None else out == "f"


def streaming_standbys(user: ClusterUser, port: int) -> int:
    out = psql(user, port, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
               timeout=4)
    return int(out) if out and out.isdigit() else 0


def wait_for(cond, timeout: float, step: float = 0.1):
    """Seconds until cond() was true, or None after `timeout` seconds."""
    start = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(step)


def _ppid_map() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = open(f"/proc/{name}/stat").read()
        except OSError:
            continue
        out[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def comm(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return ""


def tree(root_pid: int) -> list[int]:
    """root_pid and every live descendant."""
    ppids = _ppid_map()
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        if pid in ppids:
            out.append(pid)
            todo.extend(child for child, parent in ppids.items() if parent == pid)
    return out


def postmaster_pid(pgdata: str):
    try:
        pid = int(open(os.path.join(pgdata, "postmaster.pid")).readline())
    except (OSError, ValueError):
        return None
    return pid if os.path.exists(f"/proc/{pid}") and comm(pid) == "postgres" else None


def pss_kib(pids) -> int:
    """Sum of Pss over /proc/PID/smaps_rollup (what each process costs, shared pages split)."""
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total


def kill9(pids) -> None:
    """SIGSTOP all first so none of them reacts to another's death, then SIGKILL all. Never
    init, this driver or its parent, whatever a caller computed."""
    pids = [p for p in pids if p > 1 and p not in (os.getpid(), os.getppid())]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def reap() -> None:
    for proc in STARTED:
        proc.poll()


def stop_all() -> None:
    """SIGTERM to every started session, SIGKILL to what is left after 15 s."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        for proc in STARTED:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in STARTED):
            time.sleep(0.2)


class Writer(threading.Thread):
    """The steady write load: one INSERT every `interval` seconds, each through a new psql
    connection to the multi-host URI with target_session_attrs=read-write (so the first
    successful write after a failover is the first on the new primary). Every acknowledged
    insert is kept with the monotonic times its attempt started and psql returned success: an
    insert the old primary committed just before a kill may return just after it, so "the first
    write after t" is the first acknowledged attempt that *started* after t."""

    def __init__(self, user: ClusterUser, uri: str, run: str, interval: float = 0.05):
        super().__init__(daemon=True)
        self.user, self.uri, self.run_id, self.interval = user, uri, run, interval
        self.acks: list[tuple[int, float, float]] = []
        self.failures = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        seq = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            seq += 1
            sql = f"INSERT INTO bench (run, seq) VALUES ('{self.run_id}', {seq})"
            try:
                res = self.user.run([f"{PGBIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                     "-d", self.uri, "-c", sql], timeout=10, check=False)
                ok = res.returncode == 0
            except subprocess.TimeoutExpired:
                ok = False
            if ok:
                self.acks.append((seq, started, time.monotonic()))
            else:
                self.failures += 1
            rest = self.interval - (time.monotonic() - started)
            if rest > 0:
                self.stopping.wait(rest)

    def stop(self) -> None:
        self.stopping.set()
        self.join(15)

    def first_ack_after(self, t: float):
        return next((at for _, began, at in self.acks if began > t), None)

    def last_ack_before(self, t: float):
        before = [at for _, _, at in self.acks if at <= t]
        return before[-1] if before else None

    def longest_gap(self, since: float, until: float):
        """Largest interval between consecutive acks that overlaps [since, until]."""
        times = [at for _, _, at in self.acks]
        gaps = [b - a for a, b in zip(times, times[1:]) if b >= since and a <= until]
        return max(gaps) if gaps else None
