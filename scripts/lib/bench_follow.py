#!/usr/bin/env python3
"""Helpers for scripts/bench-follow. Standard library only.

    bench_follow.py run --leader-file FILE --name NAME --psql PSQL --admin-sql CMD
            --lag-seconds S --results RESULTS [--plan small] [--interval 0.25]
        Under the load the script runs on the leader (FILE: what `bench_archive.py provision`
        wrote): times a provision of "NAME-clone" with {"clone-from": NAME}, then one of
        "NAME-follow" with {"follow": NAME} (which so has more WAL to catch up on), each from its PUT to the first query answered
        through a new binding (scripts/lib/bench_osb.py); then samples the follower's
        replication lag every INTERVAL s for S s from the leader's pg_stat_replication (bytes:
        pg_current_wal_lsn() - replay_lsn; seconds: replay_lag, PostgreSQL's own measure, NULL
        when caught up = 0), read by CMD (a shell command that runs one SQL statement as the
        leader's superuser, given as its last argument). Appends follow_* lines to RESULTS.
    bench_follow.py verify --results RESULTS --leader-uri URI --psql PSQL
        After the load: waits until the follower (its binding's uri from RESULTS) has replayed
        the leader's current WAL position, then compares pgbench_history's row count on both.
    bench_follow.py report RESULTS [--write-benchmarks BENCHMARKS_MD]
        Prints the table and one machine-readable line ("bench-follow-result {json}");
        optionally rewrites the generated block of BENCHMARKS_MD's "Followers" section.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from bench_md import append, read_results, render_text, write_generated_block  # noqa: E402  (scripts/lib/bench_md.py)
from bench_osb import Failed, osb, psql, timed_provision  # noqa: E402  (scripts/lib/bench_osb.py)

SECTION = "## Followers: time to a ready follower, replication lag"
BEGIN = "<!-- bench-follow -->"
END = "<!-- /bench-follow -->"
FIRST_QUERY = "SELECT count(*) FROM pgbench_branches"


def say(msg: str) -> None:
    print(f"bench-follow: {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def sample_lag(admin_sql: list[str], follower_id: str, seconds: float, interval: float):
    """[(bytes, seconds) or None when the follower was not connected], one per tick."""
    app = "wb_follower_" + follower_id.replace("-", "")
    sql = ("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
           "coalesce(extract(epoch FROM replay_lag), 0) FROM pg_stat_replication "
           f"WHERE application_name = '{app}'")
    samples: list[tuple[int, float] | None] = []
    end = time.monotonic() + seconds
    tick = time.monotonic()
    while tick < end:
        out = subprocess.run(admin_sql + [sql], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise Failed(f"the lag query failed: {out.stderr.strip()}")
        line = out.stdout.strip().splitlines()
        if line and "|" in line[0]:
            b, s = line[0].split("|")
            samples.append((max(0, int(b or 0)), float(s or 0)))
        else:
            samples.append(None)
        tick += interval
        time.sleep(max(0.0, tick - time.monotonic()))
    return samples


def run(args: argparse.Namespace) -> int:
    client = osb.Client.from_env()
    service_id, plan_id = osb.catalog_ids(os.path.join(REPO, "catalog.json"), args.plan)
    ids = {"service_id": service_id, "plan_id": plan_id}
    leader = json.load(open(args.leader_file, encoding="utf-8"))
    org, space = leader["organization_guid"], leader["space_guid"]
    results: list[tuple[str, object]] = []
    try:
        # The clone first: the follower then starts from the same base backup with more WAL
        # written since, so the comparison does not favour it.
        for side, params in (("clone", {"clone-from": args.name}),
                             ("follow", {"follow": args.name})):
            t = timed_provision(client, ids, org, space, f"{args.name}-{side}", params,
                                args.psql, FIRST_QUERY, interval=0.1, timeout=args.timeout,
                                say=lambda m, s=side: say(f"{s}: {m}"))
            results += [(f"{side}_put_s", f"{t.put_s:.3f}"), (f"{side}_ready_s", f"{t.ready_s:.3f}"),
                        (f"{side}_bound_s", f"{t.bound_s:.3f}"),
                        (f"{side}_connect_s", f"{t.connect_s:.3f}"),
                        (f"{side}_query_s", f"{t.query_s:.3f}"),
                        (f"{side}_instance", t.instance_id),
                        (f"{side}_read_only", t.credentials.get("read_only", "")),
                        (f"{side}_uri", t.credentials["uri"])]
            if side == "follow":
                follower = t.instance_id
        say(f"sampling the follower's lag every {args.interval:g}s for {args.lag_seconds:g}s")
        samples = sample_lag(shlex.split(args.admin_sql), follower, args.lag_seconds,
                             args.interval)
    except Failed as err:
        append(args.results, results + [("follow_failed", str(err).replace("\n", " ")[:300])])
        say(f"FAILED: {err}")
        return 1
    connected = [s for s in samples if s is not None]
    results += [("lag_samples", len(samples)), ("lag_disconnected", len(samples) - len(connected))]
    if connected:
        by = [b for b, _ in connected]
        secs = [s for _, s in connected]
        results += [("lag_bytes_p50", percentile(by, 50)), ("lag_bytes_p99", percentile(by, 99)),
                    ("lag_bytes_max", max(by)), ("lag_s_p50", f"{percentile(secs, 50):.4f}"),
                    ("lag_s_p99", f"{percentile(secs, 99):.4f}"), ("lag_s_max", f"{max(secs):.4f}"),
                    ("lag_s_mean", f"{statistics.fmean(secs):.4f}")]
    append(args.results, results)
    return 0


def verify(args: argparse.Namespace) -> int:
    r = read_results(args.results)
    uri = r.get("follow_uri")
    if not uri:
        say("no follower in the results")
        return 1
    ok, target = psql(args.psql, args.leader_uri, "SELECT pg_current_wal_lsn()")
    if not ok:
        say(f"the leader's LSN: {target}")
        return 1
    deadline = time.monotonic() + 300
    while True:
        ok, caught = psql(args.psql, uri,
                          f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")
        if ok and caught == "t":
            break
        if time.monotonic() > deadline:
            say(f"the follower did not replay up to {target} in 300 s ({caught})")
            return 1
        time.sleep(0.1)
    counts = []
    for who in (args.leader_uri, uri):
        ok, n = psql(args.psql, who, "SELECT count(*) FROM pgbench_history")
        if not ok:
            say(f"count: {n}")
            return 1
        counts.append(n)
    append(args.results, [("verify_leader_history", counts[0]),
                          ("verify_follower_history", counts[1])])
    if counts[0] != counts[1]:
        say(f"the follower has {counts[1]} pgbench_history rows, the leader {counts[0]}")
        return 1
    say(f"the follower holds all {counts[0]} pgbench_history rows of the leader")
    return 0


def _f(r: dict, key: str) -> float | None:
    try:
        return float(r[key])
    except (KeyError, ValueError):
        return None


def _s(v: float | None) -> str:
    return "" if v is None else f"{v:.2f} s"


def build(r: dict) -> list[tuple[str, ...]]:
    rows = [("", "follower ({\"follow\": …})", "clone ({\"clone-from\": …}), same run")]
    for label, key in (("PUT answered (202)", "put_s"), ("last_operation succeeded", "ready_s"),
                       ("bound (201)", "bound_s"), ("first connection", "connect_s"),
                       (FIRST_QUERY + " answered", "query_s")):
        rows.append((label, _s(_f(r, f"follow_{key}")), _s(_f(r, f"clone_{key}"))))
    f, c = _f(r, "follow_query_s"), _f(r, "clone_query_s")
    if f is not None and c:
        rows.append(("follower / clone", f"{f / c:.2f}x", "(goal: ≤ 1x)"))
    lag = []
    for label, key, unit in (("lag p50", "p50", ""), ("lag p99", "p99", " (goal: < 1 s)"),
                             ("lag max", "max", "")):
        b, s = _f(r, f"lag_bytes_{key}"), _f(r, f"lag_s_{key}")
        if b is not None and s is not None:
            lag.append((label, f"{s * 1000:.0f} ms, {b / 1e3:.0f} kB{unit}", ""))
    rows += lag
    if r.get("lag_samples"):
        rows.append(("lag samples (disconnected)",
                     f"{r['lag_samples']} ({r.get('lag_disconnected', '0')})", ""))
    return rows


def report(args: argparse.Namespace) -> int:
    r = read_results(args.results)
    rows = build(r)
    print(render_text(rows))
    machine = {k: v for k, v in r.items() if not k.endswith("_uri")}
    print("bench-follow-result " + json.dumps(machine, sort_keys=True))
    if args.write_benchmarks:
        head = ("Command: `" + r.get("command", "bash scripts/bench-follow") + "`, "
                + r.get("when", "") + ". " + r.get("setting", ""))
        table = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        table += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        write_generated_block(args.write_benchmarks, SECTION, BEGIN, END,
                              head.strip() + "\n\n" + "\n".join(table))
        say(f"wrote the generated block of '{SECTION[3:]}' in {args.write_benchmarks}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--leader-file", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--plan", default="small")
    p.add_argument("--psql", required=True)
    p.add_argument("--admin-sql", required=True)
    p.add_argument("--lag-seconds", type=float, default=60)
    p.add_argument("--interval", type=float, default=0.25)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--results", required=True)
    p.set_defaults(func=run)
    p = sub.add_parser("verify")
    p.add_argument("--results", required=True)
    p.add_argument("--leader-uri", required=True)
    p.add_argument("--psql", required=True)
    p.set_defaults(func=verify)
    p = sub.add_parser("report")
    p.add_argument("results")
    p.add_argument("--write-benchmarks")
    p.set_defaults(func=report)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
