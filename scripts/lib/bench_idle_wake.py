"""Idle stop and wake (issue 17 points 1-2), the density and cold-start phase of scripts/bench-idle.

    bench_idle_wake.py catalog SRC OUT --stop-after S
        Copies catalog.json with plan `dev`'s metadata.wayback.idle.stop_after_secs set to S.
    bench_idle_wake.py preflight --catalog C --dir DIR --count N
        Refuses to start (exit 1, says why and what to do) when DIR's filesystem cannot hold N
        `dev` instances: a data directory without WAL (about 31 MiB), three WAL segments (the
        plan's min_wal_size when smaller) and 8 MiB of archive each.
    bench_idle_wake.py wait-stopped STATE_DB IDS [--timeout 3600] [--first-within S] [--results R]
        Waits until every instance of IDS has `instances.stopped_at` set (gives up early when
        none has after S seconds).
    bench_idle_wake.py memory --clusters DIR [--broker PID] --results R --prefix P
        Sums the PSS (/proc/<pid>/smaps_rollup) of the broker's process tree and of every
        running postmaster under DIR with all its children; appends P_broker_pss_kib,
        P_clusters_pss_kib, P_running, P_processes and P_mem_available_kib to R.
    bench_idle_wake.py wakes --creds FILE --db STATE_DB --count W --psql BIN --results R
        For each of the first W bound instances, once it is stopped: psql `select 1` timed from
        the start of psql to its answer (a cold start through the broker's listener), then the
        same again at once (warm). Appends both series and their p50/p95 to R.
    bench_idle_wake.py awake --creds FILE --count A --psql BIN --clusters DIR [--broker PID]
                             --results R [--settle 5] [--stop-wait 300]
        Wakes the first A bound instances and holds one session open on each (`pg_sleep`, so
        none is idle), waits (--stop-wait) until no other cluster runs, then measures memory as
        `memory --prefix awake`, then ends the sessions.
    bench_idle_wake.py disk --dir DATA_DIR --archive DIR --count N --results R
        The clusters' and the archive's size on disk per instance (after provisioning).
    bench_idle_wake.py metrics --results R
        The broker's wayback_instances_stopped and wayback_wake_seconds (GET /metrics), a cross-
        check of the state database and of the client-side timings.

Bindings come from bench_idle.py provision --bind (bind() here): credentials kept in a 0600 file,
the password handed to psql through PGPASSWORD, never on a command line. report() is the
phase's part of `bench_idle.py report`. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import bench_md  # noqa: E402
import osb  # noqa: E402  (scripts/osb.py)

MIB = 1024 * 1024


def say(text: str) -> None:
    print(f"bench-idle: {text}", file=sys.stderr, flush=True)


# --- the catalog and the disk ----------------------------------------------------------------

def dev_plan(catalog: dict) -> dict:
    for service in catalog.get("services", []):
        for plan in service.get("plans", []):
            if plan.get("name") == "dev":
                return plan
    raise SystemExit("bench-idle: the catalog has no plan `dev` (issue 17 adds it with "
                     "metadata.wayback.idle.stop_after_secs); build a Wayback that has it")


def make_catalog(args: argparse.Namespace) -> int:
    with open(args.src, encoding="utf-8") as f:
        catalog = json.load(f)
    wayback = dev_plan(catalog).setdefault("metadata", {}).setdefault("wayback", {})
    wayback.setdefault("idle", {})["stop_after_secs"] = args.stop_after
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(catalog, f, indent=2)
        f.write("\n")
    return 0


def size_mib(value: str) -> float:
    """A PostgreSQL size setting ("80MB", "1GB", "512kB", a bare number of MB) in MiB."""
    units = {"kb": 1 / 1024, "mb": 1, "gb": 1024, "tb": 1024 * 1024}
    v = value.strip().lower()
    for unit, factor in units.items():
        if v.endswith(unit):
            return float(v[:-len(unit)]) * factor
    return float(v)


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def preflight(args: argparse.Namespace) -> int:
    with open(args.catalog, encoding="utf-8") as f:
        settings = dev_plan(json.load(f)).get("metadata", {}).get("postgresql", {}).get(
            "settings", {})
    # PostgreSQL recycles old segments rather than removing them while pg_wal is below
    # min_wal_size, and every stop switches a segment: after a provision, its first backup and
    # one stop a cluster holds three (74 MiB per cluster measured at 20 instances); a wake and
    # stop more adds one, up to min_wal_size.
    wal = min(48.0, max(16.0, size_mib(str(settings.get("min_wal_size", "80MB")))))
    template = os.path.join(args.dir, "template")
    if os.path.isdir(template):
        data = (dir_bytes(template) - dir_bytes(os.path.join(template, "pg_wal"))) / MIB
    else:
        data = 23.0  # a PostgreSQL 15 initdb without pg_wal
    data += 8  # the instance's database, a copy of template1
    each = data + wal + 8
    need = args.count * each / 1024 + 2
    st = os.statvfs(args.dir)
    have = st.f_bavail * st.f_frsize / 1024 ** 3
    say(f"disk: {args.count} dev instances need up to {need:.0f} GiB ({each:.0f} MiB each: "
        f"{data:.0f} data directory, {wal:.0f} WAL, 8 archive; plus 2 GiB); "
        f"{have:.0f} GiB free under {args.dir}")
    if need > have:
        say(f"error: not enough disk for {args.count} dev instances; about "
            f"{max(0, int((have - 2) * 1024 / each))} fit: pass a smaller --dev-instances, set "
            f"TMPDIR to a larger filesystem")
        return 1
    return 0


def disk(args: argparse.Namespace) -> int:
    clusters = dir_bytes(os.path.join(args.dir, "clusters")) / MIB / args.count
    archive = dir_bytes(args.archive) / MIB / args.count
    bench_md.append(args.results, [("disk_cluster_mib", f"{clusters:.1f}"),
                                   ("disk_archive_mib", f"{archive:.1f}")])
    say(f"disk per instance: {clusters:.1f} MiB cluster, {archive:.1f} MiB archive")
    return 0


# --- bindings and the state database ---------------------------------------------------------

def bind(client: "osb.Client", ids: dict, instance_id: str, context: dict) -> dict:
    """Binds the instance (async allowed) and returns the binding's credentials."""
    binding = f"/v2/service_instances/{instance_id}/service_bindings/{uuid.uuid4()}"
    body = dict(ids, bind_resource={"app_guid": str(uuid.uuid4())}, context=context)
    resp = client.put(binding, body, {"accepts_incomplete": "true"})
    if resp.status == 202:
        op = resp.body.get("operation") if isinstance(resp.body, dict) else None
        osb.poll_last_operation(client, f"{binding}/last_operation",
                                dict(ids, **({"operation": op} if op else {})),
                                interval=0.2, timeout=900)
        resp = client.get(binding, ids)
    if resp.status not in (200, 201):
        raise osb.OperationFailed(f"bind {instance_id}: HTTP {resp.status}", resp)
    creds = osb.lookup(resp.body, "credentials") or {}
    if not creds.get("port") or not creds.get("password"):
        raise osb.OperationFailed(f"bind {instance_id}: no port or password in credentials", resp)
    return dict(creds, instance_id=instance_id)


def read_creds(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stopped(db: str, ids: list[str]) -> set[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT id FROM instances WHERE stopped_at IS NOT NULL").fetchall()
    except sqlite3.OperationalError as err:
        raise SystemExit(f"bench-idle: the state database has no instances.stopped_at ({err}): "
                         "this Wayback does not stop idle instances yet") from err
    finally:
        con.close()
    return {r[0] for r in rows} & set(ids)


def wait_stopped(args: argparse.Namespace) -> int:
    ids = [line.strip() for line in open(args.ids, encoding="utf-8") if line.strip()]
    t0 = time.monotonic()
    last = 0.0
    while True:
        done = len(stopped(args.db, ids))
        if done == len(ids):
            say(f"all {done} instances stopped ({time.monotonic() - t0:.0f} s)")
            if args.results:
                bench_md.append(args.results, [("all_stopped_s", f"{time.monotonic() - t0:.0f}")])
            return 0
        if time.monotonic() - t0 >= args.timeout:
            say(f"only {done}/{len(ids)} instances stopped after {args.timeout:g} s")
            return 1
        if done == 0 and args.first_within and time.monotonic() - t0 >= args.first_within:
            say(f"no instance stopped within {args.first_within:g} s: does this broker stop idle "
                "instances (a warning 'cannot count the cluster's sessions' in its log says it "
                "cannot)?")
            return 1
        if time.monotonic() - last >= 30:
            say(f"{done}/{len(ids)} stopped ({time.monotonic() - t0:.0f} s)")
            last = time.monotonic()
        time.sleep(1)


# --- memory ---------------------------------------------------------------------------------

def parents() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as f:
                    out[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def tree(ppids: dict[int, int], roots: set[int], exclude: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), [r for r in roots if r in ppids]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(c for c in children.get(pid, []) if c not in exclude)
    return seen


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def mem_available_kib() -> int:
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def running_postmasters(clusters: str) -> set[int]:
    """Live postmasters of the clusters under DIR (a stopped cluster has no postmaster.pid)."""
    pids = set()
    for name in os.listdir(clusters):
        try:
            with open(os.path.join(clusters, name, "pgdata", "postmaster.pid"),
                      encoding="utf-8") as f:
                pid = int(f.readline().strip())
            with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
                if f.read().strip() == "postgres":
                    pids.add(pid)
        except (OSError, ValueError):
            continue
    return pids


def measure(clusters: str, broker: int | None, results: str, prefix: str) -> dict[str, int]:
    pms = running_postmasters(clusters)
    ppids = parents()
    cluster_pids = tree(ppids, pms, set())
    broker_pids = tree(ppids, {broker} if broker else set(), pms)
    out = {"broker_pss_kib": sum(pss_kib(p) for p in broker_pids),
           "clusters_pss_kib": sum(pss_kib(p) for p in cluster_pids),
           "running": len(pms), "processes": len(cluster_pids | broker_pids),
           "mem_available_kib": mem_available_kib()}
    bench_md.append(results, [(f"{prefix}_{k}", v) for k, v in out.items()])
    say(f"{prefix}: {out['running']} clusters running, PSS clusters "
        f"{out['clusters_pss_kib'] / 1024:.1f} MiB + broker {out['broker_pss_kib'] / 1024:.1f} "
        f"MiB over {out['processes']} processes; MemAvailable "
        f"{out['mem_available_kib'] / 1024 ** 2:.2f} GiB")
    return out


def memory(args: argparse.Namespace) -> int:
    measure(args.clusters, args.broker, args.results, args.prefix)
    return 0


# --- cold and warm connects -----------------------------------------------------------------

def psql_env(creds: dict, ca_file: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=str(creds.get("host") or creds.get("hostname") or "127.0.0.1"),
               PGPORT=str(creds["port"]), PGUSER=str(creds["username"]),
               PGDATABASE=str(creds.get("name") or creds.get("database")),
               PGPASSWORD=str(creds["password"]), PGCONNECT_TIMEOUT="30",
               PGSSLMODE=str(creds.get("sslmode") or "prefer"))
    if creds.get("ca_certificate"):
        with open(ca_file, "w", encoding="utf-8") as f:
            f.write(creds["ca_certificate"])
        env["PGSSLROOTCERT"] = ca_file
    return env


def timed_select(psql: str, env: dict[str, str]) -> tuple[float, str]:
    """Milliseconds from starting psql to its `select 1` answer, and the error ("" if none)."""
    t0 = time.monotonic()
    out = subprocess.run([psql, "-X", "-q", "-At", "-c", "select 1"], env=env,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    ms = (time.monotonic() - t0) * 1000
    if out.returncode != 0 or out.stdout.strip() != "1":
        return ms, (out.stderr or out.stdout).strip() or f"exit {out.returncode}"
    return ms, ""


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def wakes(args: argparse.Namespace) -> int:
    creds = read_creds(args.creds)[:args.count]
    cold, warm, errors = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n, c in enumerate(creds, 1):
            deadline = time.monotonic() + args.timeout
            while c["instance_id"] not in stopped(args.db, [c["instance_id"]]):
                if time.monotonic() >= deadline:
                    raise SystemExit(f"bench-idle: instance {c['instance_id']} not stopped "
                                     f"within {args.timeout:g} s")
                time.sleep(0.5)
            env = psql_env(c, os.path.join(tmp, "ca.pem"))
            ms, err = timed_select(args.psql, env)
            if err:
                errors.append(f"{c['instance_id']} cold: {err}")
                continue
            cold.append(ms)
            ms_warm, err = timed_select(args.psql, env)
            if err:
                errors.append(f"{c['instance_id']} warm: {err}")
            else:
                warm.append(ms_warm)
            if n % 10 == 0 or n == len(creds):
                say(f"{n}/{len(creds)} wakes (last: cold {ms:.0f} ms, warm {ms_warm:.0f} ms)")
    for e in errors:
        say(f"failed: {e}")
    pairs: list[tuple[str, object]] = [("wakes", len(creds)), ("wake_errors", len(errors))]
    for name, series in (("cold", cold), ("warm", warm)):
        pairs.append((f"{name}_ms", ",".join(f"{v:.1f}" for v in series)))
        if series:
            pairs += [(f"{name}_p50_ms", f"{percentile(series, 50):.1f}"),
                      (f"{name}_p95_ms", f"{percentile(series, 95):.1f}"),
                      (f"{name}_max_ms", f"{max(series):.1f}")]
    bench_md.append(args.results, pairs)
    return 1 if not cold else 0


def awake(args: argparse.Namespace) -> int:
    creds = read_creds(args.creds)[:args.count]
    sessions: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for n, c in enumerate(creds):
                env = psql_env(c, os.path.join(tmp, f"ca-{n}.pem"))
                _, err = timed_select(args.psql, env)
                if err:
                    raise SystemExit(f"bench-idle: waking {c['instance_id']}: {err}")
                sessions.append(subprocess.Popen(
                    [args.psql, "-X", "-q", "-At", "-c",
                     f"select pg_sleep({args.settle + args.stop_wait + 60:.0f})"],
                    env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL))
            time.sleep(args.settle)
            # Instances woken earlier (the cold starts beyond these) stop on their own first.
            deadline = time.monotonic() + args.stop_wait
            while (extra := len(running_postmasters(args.clusters)) - len(creds)) > 0:
                if time.monotonic() >= deadline:
                    say(f"{extra} more clusters than the {len(creds)} held are still running "
                        f"after {args.stop_wait:g} s; measuring them too")
                    break
                time.sleep(1)
            gone = [s for s in sessions if s.poll() is not None]
            if gone:
                say(f"{len(gone)} of the held sessions ended early (exit {gone[0].returncode})")
            measure(args.clusters, args.broker, args.results, "awake")
            bench_md.append(args.results, [("awake", len(creds))])
        finally:
            for s in sessions:
                s.terminate()
            for s in sessions:
                try:
                    s.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    s.kill()
    return 0


def metrics(args: argparse.Namespace) -> int:
    url = os.environ["WAYBACK_BROKER_URL"].rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode("utf-8", "replace")
    except OSError as err:
        say(f"GET /metrics failed ({err}); no cross-check")
        return 0
    wanted = {"wayback_instances_stopped": "metric_instances_stopped",
              "wayback_wake_seconds_sum": "metric_wake_seconds_sum",
              "wayback_wake_seconds_count": "metric_wake_seconds_count"}
    pairs = []
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted and not line.startswith("#"):
            pairs.append((wanted[name], line.rsplit(" ", 1)[1]))
    bench_md.append(args.results, pairs)
    say("metrics: " + (", ".join(f"{k}={v}" for k, v in pairs) or "none of "
                       + ", ".join(wanted) + " found"))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("catalog")
    a.add_argument("src")
    a.add_argument("out")
    a.add_argument("--stop-after", type=int, required=True)
    a = sub.add_parser("preflight")
    a.add_argument("--catalog", required=True)
    a.add_argument("--dir", required=True)
    a.add_argument("--count", type=int, required=True)
    a = sub.add_parser("wait-stopped")
    a.add_argument("db")
    a.add_argument("ids")
    a.add_argument("--timeout", type=float, default=3600)
    a.add_argument("--results", help="append all_stopped_s (seconds from the call) here")
    a.add_argument("--first-within", type=float,
                   help="give up when not one instance has stopped after this many seconds")
    a = sub.add_parser("memory")
    a.add_argument("--clusters", required=True)
    a.add_argument("--broker", type=int)
    a.add_argument("--results", required=True)
    a.add_argument("--prefix", required=True)
    a = sub.add_parser("wakes")
    a.add_argument("--creds", required=True)
    a.add_argument("--db", required=True)
    a.add_argument("--count", type=int, required=True)
    a.add_argument("--psql", required=True)
    a.add_argument("--results", required=True)
    a.add_argument("--timeout", type=float, default=600,
                   help="seconds to wait for each instance to be stopped before its wake")
    a = sub.add_parser("awake")
    a.add_argument("--creds", required=True)
    a.add_argument("--count", type=int, required=True)
    a.add_argument("--psql", required=True)
    a.add_argument("--clusters", required=True)
    a.add_argument("--broker", type=int)
    a.add_argument("--results", required=True)
    a.add_argument("--settle", type=float, default=5)
    a.add_argument("--stop-wait", type=float, default=300,
                   help="seconds to wait for clusters not held to stop before measuring")
    a = sub.add_parser("disk")
    a.add_argument("--dir", required=True)
    a.add_argument("--archive", required=True)
    a.add_argument("--count", type=int, required=True)
    a.add_argument("--results", required=True)
    a = sub.add_parser("metrics")
    a.add_argument("--results", required=True)
    args = p.parse_args()
    return {"catalog": make_catalog, "preflight": preflight, "wait-stopped": wait_stopped,
            "memory": memory, "wakes": wakes, "awake": awake, "disk": disk,
            "metrics": metrics}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
