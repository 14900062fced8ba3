#!/usr/bin/env python3
"""Helpers for scripts/bench-undo (issue 16's benchmark). Standard library only.

    bench_undo.py run --source-file FILE --name NAME --scale N --psql PSQL --state-db DB
            --results RESULTS [--plan small] [--timeout 3600]
        On the loaded and backed-up instance of FILE (what `bench_archive.py provision` wrote),
        each timed from the PUT to the first query answered through a new binding
        (scripts/lib/bench_osb.py):
          1. fork:    {"clone-from": NAME} while NAME is live ("NAME-fork");
          2. deletes NAME as `cf delete-service` does (unbind, deprovision, polled);
          3. trash:   {"clone-from": NAME} of the deleted NAME ("NAME-trash");
          4. archive: {"clone-from": NAME} again ("NAME-archive"), the kept copy being taken.
        Between them (untimed) waits until the new clone's first base backup is in the archive,
        so no background backup runs under the next measurement. Each clone's path is read from
        its last operation's description ("restored from the copy kept at delete time",
        "restored from the archive: …", or whatever else main says) and its rows are checked
        against the source's. Appends fork_*, trash_*, archive_* lines to RESULTS; exits 1
        after a loud message when anything fails.
    bench_undo.py report RESULTS... [--write BENCHMARKS_MD]
        RESULTS: the run's file (command, date, versions) then one file per scale. Prints the
        table and one machine-readable line ("bench-undo-result {json}"); optionally rewrites
        the generated block of BENCHMARKS_MD's "Undo" section.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from bench_md import append, read_results, render_text, write_generated_block  # noqa: E402  (scripts/lib/bench_md.py)
from bench_osb import Failed, deprovision, osb, psql, timed_provision  # noqa: E402

SECTION = "## Undo: the kept copy, the archive, a live fork"
BEGIN = "<!-- bench-undo -->"
END = "<!-- /bench-undo -->"
# A query the clock stops at that costs the same at every size (a count of pgbench_accounts
# would scan the whole database and time the disk, not the undo).
FIRST_QUERY = "SELECT count(*) FROM pgbench_branches"
# Issue 16's goals.
GOAL_TRASH_S = 1.0
GOAL_ARCHIVE_VS_PGBR = 0.6
GOAL_FORK_VS_ARCHIVE = 0.5


def say(msg: str) -> None:
    print(f"bench-undo: {msg}", file=sys.stderr, flush=True)


def path_of(description: str) -> str:
    """Which path a clone's success description names."""
    d = description.lower()
    if "copy kept at delete time" in d and "not used" not in d:
        return "trash"
    if "restored from the archive" in d:
        return "archive"
    if "fork" in d or "pg_basebackup" in d or "running source" in d or "snapshot" in d:
        return "fork"
    return "unknown"


def wait_first_backup(db: str, instance: str, timeout: float) -> str:
    """Until the instance has a base backup recorded and no unfinished backup job; returns the
    reasons recorded, or raises Failed."""
    deadline = time.monotonic() + timeout
    while True:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            busy = con.execute(
                "SELECT count(*) FROM jobs WHERE kind = 'backup' AND instance_id = ? "
                "AND state NOT IN ('done', 'failed')", (instance,)).fetchone()[0]
            reasons = [r[0] for r in con.execute(
                "SELECT reason FROM backups WHERE instance_id = ? ORDER BY recorded_at",
                (instance,))]
        finally:
            con.close()
        if reasons and busy == 0:
            return ", ".join(reasons)
        if time.monotonic() >= deadline:
            raise Failed(f"{instance} has no finished base backup after {timeout:g}s "
                         f"({busy} backup job(s) unfinished)")
        time.sleep(0.5)


def run(args: argparse.Namespace) -> int:
    client = osb.Client.from_env()
    service_id, plan_id = osb.catalog_ids(os.path.join(REPO, "catalog.json"), args.plan)
    ids = {"service_id": service_id, "plan_id": plan_id}
    src = json.load(open(args.source_file, encoding="utf-8"))
    org, space, source_uri = src["organization_guid"], src["space_guid"], src["credentials"]["uri"]
    results: list[tuple[str, object]] = []

    def fail(msg: str) -> int:
        bar = "!" * 78
        print(f"\n{bar}\nBENCH-UNDO FAILED: {msg}\n{bar}\n", file=sys.stderr, flush=True)
        append(args.results, results + [("failed", msg.replace("\n", " ")[:300])])
        return 1

    expected = {}
    for table in ("pgbench_accounts", "pgbench_history"):
        ok, n = psql(args.psql, source_uri, f"SELECT count(*) FROM {table}")
        if not ok:
            return fail(f"counting the source's {table}: {n}")
        expected[table] = n
    if expected["pgbench_accounts"] != str(args.scale * 100000):
        return fail(f"the source has {expected['pgbench_accounts']} pgbench_accounts rows, "
                    f"expected {args.scale * 100000}")

    def clone(side: str) -> int:
        try:
            t = timed_provision(client, ids, org, space, f"{args.name}-{side}",
                                {"clone-from": args.name}, args.psql, FIRST_QUERY,
                                interval=0.1, timeout=args.timeout,
                                say=lambda m: say(f"{side}: {m}"))
        except Failed as err:
            return fail(f"{side}: {err}")
        final = t.timeline[-1][1] if t.timeline else ""
        fallback = next((d for _, d in t.timeline if "is not used" in d), "")
        results.extend([
            (f"{side}_put_s", f"{t.put_s:.3f}"), (f"{side}_ready_s", f"{t.ready_s:.3f}"),
            (f"{side}_bound_s", f"{t.bound_s:.3f}"), (f"{side}_connect_s", f"{t.connect_s:.3f}"),
            (f"{side}_query_s", f"{t.query_s:.3f}"), (f"{side}_instance", t.instance_id),
            (f"{side}_path", path_of(final)),
            (f"{side}_description", final.replace("\n", " ")),
            (f"{side}_fallback", fallback.replace("\n", " ")),
            (f"{side}_timeline", json.dumps([[round(s, 2), d] for s, d in t.timeline]))])
        say(f"{side}: the description names the {path_of(final)} path: {final!r}")
        # Untimed: every row is there, and the clone's first base backup is done.
        for table, n in expected.items():
            ok, got = psql(args.psql, t.credentials["uri"], f"SELECT count(*) FROM {table}",
                           timeout=args.timeout)
            if not ok or got != n:
                return fail(f"{side}: the clone has {got!r} {table} rows, the source had {n}")
        say(f"{side}: the clone holds every row of the source; waiting for its first base "
            f"backup (untimed)")
        try:
            reasons = wait_first_backup(args.state_db, t.instance_id, args.timeout)
        except Failed as err:
            return fail(f"{side}: {err}")
        results.append((f"{side}_backups", reasons))
        return 0

    if clone("fork"):
        return 1
    say(f"deleting {args.name} as cf delete-service does (unbind, deprovision)")
    try:
        state, secs = deprovision(client, ids, src["instance_id"], src["binding_id"],
                                  timeout=args.timeout)
    except Failed as err:
        return fail(str(err))
    results.append(("deprovision_s", f"{secs:.3f}"))
    say(f"deprovision {state} after {secs:.1f}s")
    if clone("trash") or clone("archive"):
        return 1
    append(args.results, results + [("ok", 1)])
    return 0


# --- the report -----------------------------------------------------------------------------

def _f(r: dict, key: str) -> float | None:
    try:
        return float(r[key])
    except (KeyError, ValueError):
        return None


def _s(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f} s"


def _x(a: float | None, b: float | None) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}x"


def scale_rows(r: dict) -> list[tuple[str, ...]]:
    size = _f(r, "wb_db_bytes") or _f(r, "pgbre_db_bytes")
    label = f"{r.get('scale', '?')} ({size / 2**30:.2f} GiB)" if size else r.get("scale", "?")
    restore, replay = _f(r, "pgbre_restore_s"), _f(r, "pgbre_replay_s")
    pgbr = restore + replay if restore is not None and replay is not None else None
    trash, archive, fork = (_f(r, f"{s}_query_s") for s in ("trash", "archive", "fork"))
    if r.get("failed", "").startswith("refused"):
        return [(label, "not run", "", r["failed"], "", "")]
    rows = [
        (label, "undo via the kept copy", r.get("trash_path", "—"), _s(trash), _x(trash, pgbr),
         f"≤ {GOAL_TRASH_S:g} s"),
        ("", "undo via the archive (second undo)", r.get("archive_path", "—"), _s(archive),
         _x(archive, pgbr), f"≤ {GOAL_ARCHIVE_VS_PGBR:g}x pgBackRest"),
        ("", "fork of the live instance", r.get("fork_path", "—"), _s(fork), _x(fork, pgbr), ""),
        ("", "pgBackRest restore + replay", "anchor", _s(pgbr), "1.00x" if pgbr else "—",
         f"({_s(restore)} + {_s(replay)})"),
        ("", "fork / archive", "", _x(fork, archive), "",
         f"≤ {GOAL_FORK_VS_ARCHIVE:g}x"),
    ]
    drill = _f(r, "drill_s")
    if drill is not None:
        rows.append(("", "restore drill of the source (`wayback drill`)",
                     r.get("drill_result", "?"), _s(drill), _x(drill, pgbr),
                     f"≤ the archive undo ({_x(drill, archive)} of it; issue 18)"))
    if r.get("failed"):
        rows.append(("", "FAILED", "", r["failed"][:200], "", ""))
    return rows


# Each progress text of a clone (the part after "… as of …: "), in the report's words; the
# first match wins, anything else is shown as the broker wrote it (cut at 40 characters).
PHASES = [("queued", "queued"), ("copy kept at delete time", "kept copy taken and readied"),
          ("choosing a base backup", "choosing a backup"),
          ("restoring base backup", "download + unpack"), ("replaying WAL", "WAL replay"),
          ("promoting", "promotion"), ("restarting with the plan", "restart, plan settings"),
          ("starting PostgreSQL", "start"), ("rotating every password", "password rotation"),
          ("first WAL", "first WAL archived")]


def phases(r: dict, side: str) -> str:
    """Where a clone's time went: each progress text's span, then bind + connect + query."""
    try:
        timeline = json.loads(r.get(f"{side}_timeline", ""))
    except ValueError:
        return ""
    spans: list[list] = []
    for (at, text), (end, _) in zip(timeline, timeline[1:]):
        tail = text.rsplit(": ", 1)[-1]
        name = next((n for key, n in PHASES if key in tail), tail[:40])
        if spans and spans[-1][0] == name:
            spans[-1][1] += end - at
        else:
            spans.append([name, end - at])
    ready, query = _f(r, f"{side}_ready_s"), _f(r, f"{side}_query_s")
    if ready is not None and query is not None:
        spans.append(["bind + connect + first query", query - ready])
    return ", ".join(f"{n} {t:.2f} s" for n, t in spans)


HEADER = ("scale (database)", "what", "path the description names", "PUT → first query",
          "÷ pgBackRest", "goal (issue 16)")


def report(args: argparse.Namespace) -> int:
    run_info = read_results(args.results[0])
    scales = [read_results(p) for p in args.results[1:]]
    rows = [HEADER]
    for r in scales:
        rows += scale_rows(r)
    print(render_text(rows))
    notes = []
    for r in scales:
        for side in ("trash", "archive", "fork"):
            if r.get(f"{side}_description"):
                notes.append(f"scale {r.get('scale')}, {side}: \"{r[f'{side}_description']}\"")
            if r.get(f"{side}_timeline"):
                notes.append(f"scale {r.get('scale')}, {side}, where the time went: "
                             f"{phases(r, side)}")
            if r.get(f"{side}_fallback"):
                notes.append(f"scale {r.get('scale')}, {side} fell back: "
                             f"\"{r[f'{side}_fallback']}\"")
    for n in notes:
        print("  " + n)
    machine = dict(run_info, scales=[{k: v for k, v in r.items()
                                      if not k.endswith(("_timeline", "_uri"))} for r in scales])
    print("bench-undo-result " + json.dumps(machine, sort_keys=True))
    if args.write:
        head = (f"Command: `{run_info.get('command', 'bash scripts/bench-undo')}`, "
                f"{run_info.get('date', '')}, commit {run_info.get('commit', '?')}, load average "
                f"{run_info.get('loadavg_start', '?')} at the start and "
                f"{run_info.get('loadavg_end', '?')} at the end, {run_info.get('cores', '?')} "
                f"cores. {run_info.get('versions', '')}. {run_info.get('setting', '')}")
        table = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        table += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows[1:]]
        text = (head.strip() + "\n\n" + "\n".join(table) + "\n\nWhat each clone's last operation "
                "said:\n\n" + "\n".join(f"- {n}" for n in notes))
        write_generated_block(args.write, SECTION, BEGIN, END, text)
        say(f"wrote the generated block of '{SECTION[3:]}' in {args.write}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--source-file", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("--psql", required=True)
    p.add_argument("--state-db", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--plan", default="small")
    p.add_argument("--timeout", type=float, default=3600)
    p.set_defaults(func=run)
    p = sub.add_parser("report")
    p.add_argument("results", nargs="+")
    p.add_argument("--write")
    p.set_defaults(func=report)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
