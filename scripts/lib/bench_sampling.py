"""What sampling running instances costs (issue 19 point 1), for scripts/bench-sampling.

    bench_sampling.py catalog SRC OUT
        OUT: SRC with plan `dev` made never to stop when idle (a small plan that keeps running).
    bench_sampling.py phase --mode idle|busy|poll --creds FILE --psql PSQL --clusters DIR
                            --broker PID --seconds S --results R --prefix P
        idle: no client session. busy: one session `idle in transaction` on every instance of
        FILE (what makes the sampler run its SQL each second). poll: busy, plus a naive poller:
        one persistent psql session per instance fed the sampler's 1 s statement every second.
        After a 5 s settle, CPU-seconds over S seconds of the broker (its tree, postmasters
        excluded), of every cluster (postmasters with their backends) and of the poller (this
        process and its psql children), and of two kinds of the clusters' backends, told by
        their process titles: the sampler's session (the superuser in template1 over the unix
        socket) and the benchmark's clients (over TCP); appends P_broker_cpu_s,
        P_clusters_cpu_s, P_poller_cpu_s, P_sampler_backends_cpu_s, P_client_backends_cpu_s,
        P_seconds, P_instances.
    bench_sampling.py quiet --clusters DIR --broker PID --results R [--window 30] [--limit 900]
        Waits until the machine's part under test has stopped settling: CPU-seconds of the
        broker's tree and every cluster over successive --window second windows, until three
        in a row are each no more than 15 % below the one before (at most --limit seconds);
        appends quiet_after_s and quiet_window_cpu_s (the last window, per second).
    bench_sampling.py scrape --url URL --count N --results R
        Times N `GET /metrics` one after another; appends scrape_p50_ms, scrape_max_ms,
        scrape_instances (instances with a wayback_max_connections sample), scrape_bytes.
    bench_sampling.py report RESULTS
        The figures side by side.

CPU is read from /proc/<pid>/stat (utime + stime + cutime + cstime), as bench_idle.py does.
Standard library only; psql is the only client.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_idle  # noqa: E402
import bench_idle_wake  # noqa: E402
import bench_md  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")

# The sampler's 1 s statement (crates/wayback/src/pg/activity.rs, SAMPLE with statement text).
SAMPLE_SQL = """\
WITH a AS (
  SELECT pid, state, xact_start, state_change, query_id, datname, usename
    FROM pg_stat_activity
   WHERE backend_type = 'client backend' AND usename IS DISTINCT FROM 'wayback_admin'
     AND pid <> pg_backend_pid()),
w AS (
  SELECT a.pid, a.datname, a.usename, a.query_id, l.locktype, l.mode, l.relation, l.waitstart
    FROM a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted)
SELECT
  (SELECT coalesce(json_object_agg(coalesce(state, ''), n), '{}')
     FROM (SELECT state, count(*) AS n FROM a GROUP BY state) s)::text,
  extract(epoch FROM now() - (SELECT min(xact_start) FROM a))::float8,
  extract(epoch FROM now() - (SELECT min(state_change) FROM a
                               WHERE state LIKE 'idle in transaction%'))::float8,
  (SELECT coalesce(json_agg(json_build_object(
      'pid', w.pid, 'blocked_by', pg_blocking_pids(w.pid), 'lock_type', w.locktype,
      'mode', w.mode, 'relation', w.relation::int8, 'database', w.datname, 'user', w.usename,
      'waiting_secs', coalesce(extract(epoch FROM now() - w.waitstart)::float8, 0),
      'held', (SELECT array_agg(g.relation::int8 ORDER BY g.locktype = 'tuple' DESC, g.relation)
                 FROM pg_locks g
                WHERE g.pid = w.pid AND g.granted AND g.relation IS NOT NULL),
      'query', NULL::text) ORDER BY w.pid), '[]') FROM w)::text;
"""


def catalog(args: argparse.Namespace) -> int:
    doc = json.load(open(args.src, encoding="utf-8"))
    for service in doc["services"]:
        for plan in service["plans"]:
            if plan["name"] == "dev":
                plan["metadata"]["wayback"].pop("idle", None)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    return 0


def psql(path: str, c: dict) -> subprocess.Popen:
    """A psql session on the instance of credentials `c` (password in the environment, never
    on the command line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=str(c.get("host") or c.get("hostname") or "127.0.0.1"),
               PGPORT=str(c["port"]), PGUSER=str(c["username"]),
               PGDATABASE=str(c.get("name") or c.get("database")),
               PGPASSWORD=str(c["password"]), PGSSLMODE="prefer", PGCONNECT_TIMEOUT="30")
    return subprocess.Popen(
        [path, "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        text=True, env=env)


def backend_ticks(procs: dict[int, tuple[int, int]], pms: set[int], marker: str) -> dict[int, int]:
    """pid -> CPU ticks of the clusters' backends whose process title holds `marker`."""
    out = {}
    for pid, (ppid, ticks) in procs.items():
        if ppid not in pms:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in title:
            out[pid] = ticks
    return out


def backends_cpu(before: dict[int, int], after: dict[int, int]) -> int:
    """Ticks the backends spent between two looks (one born in between: all of its own)."""
    return sum(t - before.get(pid, 0) for pid, t in after.items())


# Process titles: the sampler's session is the superuser's in the admin database over the unix
# socket; the benchmark's own clients (holders and pollers) come over TCP.
SAMPLER_TITLE = "wayback_admin template1 [local]"
CLIENT_TITLE = " 127.0.0.1("


def phase(args: argparse.Namespace) -> int:
    creds = bench_idle_wake.read_creds(args.creds)
    holders, pollers = [], []
    try:
        if args.mode in ("busy", "poll"):
            for c in creds:
                p = psql(args.psql, c)
                p.stdin.write("BEGIN; SELECT 1;\n")
                p.stdin.flush()
                holders.append(p)
        if args.mode == "poll":
            pollers = [psql(args.psql, c) for c in creds]
        # Let sessions start (and the sampler's first connects and facts pass).
        time.sleep(5)
        pms = bench_idle.postmasters(args.clusters)
        me = {os.getpid()}
        before = bench_idle.processes()
        sampler_before = backend_ticks(before, pms, SAMPLER_TITLE)
        clients_before = backend_ticks(before, pms, CLIENT_TITLE)
        t0 = time.monotonic()
        next_poll = t0
        while time.monotonic() - t0 < args.seconds:
            if pollers:
                for p in pollers:
                    p.stdin.write(SAMPLE_SQL)
                    p.stdin.flush()
            next_poll += 1.0
            time.sleep(max(0.0, next_poll - time.monotonic()))
        after = bench_idle.processes()
        seconds = time.monotonic() - t0
        sampler_sql = backends_cpu(sampler_before, backend_ticks(after, pms, SAMPLER_TITLE))
        clients_sql = backends_cpu(clients_before, backend_ticks(after, pms, CLIENT_TITLE))
        broker = {args.broker}
        brk = bench_idle.tree_ticks(after, broker, pms) - bench_idle.tree_ticks(before, broker, pms)
        clusters = bench_idle.tree_ticks(after, pms, set()) - bench_idle.tree_ticks(before, pms, set())
        # Only the pollers' own processes (the holders idle), and this process.
        poll_pids = {p.pid for p in pollers} | me
        poller = sum(after.get(p, (0, 0))[1] - before.get(p, (0, 0))[1] for p in poll_pids)
        dead = [p for p in holders + pollers if p.poll() is not None]
        if dead:
            print(f"bench-sampling: {len(dead)} psql sessions ended early", file=sys.stderr)
            return 1
    finally:
        for p in holders + pollers:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    bench_md.append(args.results, [
        (f"{args.prefix}_broker_cpu_s", f"{brk / TICK:.2f}"),
        (f"{args.prefix}_clusters_cpu_s", f"{clusters / TICK:.2f}"),
        (f"{args.prefix}_poller_cpu_s", f"{poller / TICK:.2f}"),
        (f"{args.prefix}_sampler_backends_cpu_s", f"{sampler_sql / TICK:.2f}"),
        (f"{args.prefix}_client_backends_cpu_s", f"{clients_sql / TICK:.2f}"),
        (f"{args.prefix}_seconds", f"{seconds:.1f}"),
        (f"{args.prefix}_instances", len(creds)),
    ])
    print(f"bench-sampling: {args.prefix}: broker {brk / TICK:.2f} CPU-s, clusters "
          f"{clusters / TICK:.2f} CPU-s (the sampler's backends {sampler_sql / TICK:.2f}, the "
          f"clients' {clients_sql / TICK:.2f}), poller {poller / TICK:.2f} CPU-s over "
          f"{seconds:.0f} s", file=sys.stderr)
    return 0


def quiet(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    pms = bench_idle.postmasters(args.clusters)
    broker = {args.broker}

    def ticks() -> int:
        procs = bench_idle.processes()
        return (bench_idle.tree_ticks(procs, broker, pms)
                + bench_idle.tree_ticks(procs, pms, set()))

    windows: list[float] = []
    while True:
        start = ticks()
        time.sleep(args.window)
        cpu = (ticks() - start) / TICK
        windows.append(cpu)
        waited = time.monotonic() - t0
        print(f"bench-sampling: settling: {cpu / args.window:.3f} CPU-s/s over the last "
              f"{args.window:.0f} s ({waited:.0f} s in)", file=sys.stderr)
        # Flat: the last three windows each no more than 15 % below the one before.
        last = windows[-4:]
        flat = len(last) == 4 and all(b >= 0.85 * a for a, b in zip(last, last[1:]))
        if flat or waited >= args.limit:
            break
    bench_md.append(args.results, [
        ("quiet_after_s", f"{waited:.0f}"),
        ("quiet_window_cpu_s", f"{cpu / args.window:.3f}"),
    ])
    return 0


def scrape(args: argparse.Namespace) -> int:
    user = os.environ.get("WAYBACK_BROKER_USERNAME", "")
    password = os.environ.get("WAYBACK_BROKER_PASSWORD", "")
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    times, text = [], ""
    for _ in range(args.count):
        req = urllib.request.Request(f"{args.url}/metrics",
                                     headers={"Authorization": f"Basic {auth}"})
        t0 = time.monotonic()
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
        times.append((time.monotonic() - t0) * 1000)
    times.sort()
    instances = sum(1 for line in text.splitlines()
                    if line.startswith("wayback_max_connections{"))
    bench_md.append(args.results, [
        ("scrape_p50_ms", f"{times[len(times) // 2]:.0f}"),
        ("scrape_max_ms", f"{times[-1]:.0f}"),
        ("scrape_instances", instances),
        ("scrape_bytes", len(text)),
    ])
    return 0


def report(args: argparse.Namespace) -> int:
    r = bench_md.read_results(args.results)

    def f(key: str) -> float:
        return float(r.get(key, "nan"))

    n = int(r.get("idle_on_instances", "0")) or 1
    secs = f("idle_on_seconds")

    def share(cpu_s: float, seconds: float) -> str:
        """Share of one core, per 100 instances."""
        return f"{100 * cpu_s / seconds * 100 / n:.2f} %"

    def baseline(mode: str, part: str) -> float:
        """The mean of the baselines taken before and after the sampled phases."""
        first = f(f"{mode}_off_{part}_cpu_s")
        second = f"{mode}_off2_{part}_cpu_s"
        return (first + f(second)) / 2 if second in r else first

    # The clusters' side is what the measured sessions' own backends spent: the clusters as a
    # whole swing by several CPU-seconds a minute with their timed checkpoints (every 5 min,
    # all at about the same time here), far more than one statement a second costs.
    rows = []
    for mode in ("idle", "busy"):
        on = f"{mode}_on"
        broker = f(f"{on}_broker_cpu_s") - baseline(mode, "broker")
        sql = f(f"{on}_sampler_backends_cpu_s") - baseline(mode, "sampler_backends")
        rows.append((f"sampler, clients {mode}", broker, sql, broker + sql))
    poll_client = f("poll_off_poller_cpu_s")
    poll_sql = f("poll_off_client_backends_cpu_s") - f("busy_off_client_backends_cpu_s")
    rows.append(("naive poller (psql, same SQL)", poll_client, poll_sql, poll_client + poll_sql))
    print(f"Sampling cost, {n} running instances ({r.get('plan', '?')}), {secs:.0f} s each, "
          f"build {r.get('build', '?')}:")
    if "quiet_after_s" in r:
        print(f"(measured once broker and clusters had settled: {r['quiet_after_s']} s after "
              f"the first base backups, at {r['quiet_window_cpu_s']} CPU-s/s)")
    print(f"{'':34} {'client CPU-s':>13} {'its SQL CPU-s':>14} {'total':>8} "
          f"{'% of a core / 100 inst.':>24}")
    for name, client, sql, total in rows:
        print(f"{name:34} {client:13.2f} {sql:14.2f} {total:8.2f} {share(total, secs):>24}")
    for suffix, when in (("off", "before"), ("off2", "after")):
        if f"idle_{suffix}_broker_cpu_s" not in r:
            continue
        print(f"baseline (sampling off, {when}): broker "
              f"{f(f'idle_{suffix}_broker_cpu_s'):.2f} CPU-s idle, "
              f"{f(f'busy_{suffix}_broker_cpu_s'):.2f} busy")
    print("the clusters as a whole (CPU-s, every process), by phase: " + ", ".join(
        f"{k[:-len('_clusters_cpu_s')]} {r[k]}" for k in r if k.endswith("_clusters_cpu_s")))
    if "scrape_p50_ms" in r:
        print(f"/metrics scrape with {r['scrape_instances']} sampled instances: "
              f"p50 {r['scrape_p50_ms']} ms, max {r['scrape_max_ms']} ms "
              f"({int(r['scrape_bytes']) // 1024} KiB)")
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("catalog")
    a.add_argument("src")
    a.add_argument("out")
    a = sub.add_parser("phase")
    a.add_argument("--mode", choices=["idle", "busy", "poll"], required=True)
    a.add_argument("--creds", required=True)
    a.add_argument("--psql", required=True)
    a.add_argument("--clusters", required=True)
    a.add_argument("--broker", type=int, required=True)
    a.add_argument("--seconds", type=float, required=True)
    a.add_argument("--results", required=True)
    a.add_argument("--prefix", required=True)
    a = sub.add_parser("quiet")
    a.add_argument("--clusters", required=True)
    a.add_argument("--broker", type=int, required=True)
    a.add_argument("--results", required=True)
    a.add_argument("--window", type=float, default=30.0)
    a.add_argument("--limit", type=float, default=900.0)
    a = sub.add_parser("scrape")
    a.add_argument("--url", required=True)
    a.add_argument("--count", type=int, default=20)
    a.add_argument("--results", required=True)
    a = sub.add_parser("report")
    a.add_argument("results")
    args = p.parse_args()
    return {"catalog": catalog, "phase": phase, "quiet": quiet, "scrape": scrape,
            "report": report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
