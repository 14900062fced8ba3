#!/usr/bin/env python3
"""The report of scripts/bench-ha-engines. Standard library only.

    bench_ha_report.py RESULTS [--write-docs DOCS_MD]
        Prints the table (one column per setting: median and spread of the runs) and one
        machine-readable line ("bench-ha-engines-result {json}") from RESULTS (JSON lines written
        by bench_ha.py); optionally rewrites the generated block of DOCS_MD
        (docs/ha-engines.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_md import render_text, write_generated_block  # noqa: E402  (scripts/lib/bench_md.py)

SECTION = "## Measured here"
BEGIN = "<!-- bench-ha-engines -->"
END = "<!-- /bench-ha-engines -->"
TITLES = {"patroni-default": "Patroni, defaults", "patroni-tuned": "Patroni, tuned",
          "paf-default": "pg_auto_failover, defaults", "paf-tuned": "pg_auto_failover, tuned"}


def load(path: str):
    meta, rows = {}, []
    for line in open(path, encoding="utf-8"):
        row = json.loads(line)
        if row["measure"] == "meta":
            meta.update({k: v for k, v in row.items() if k != "measure"})
        else:
            rows.append(row)
    return meta, rows


def spread(values, unit="s", digits=1) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:.{digits}f} {unit}"
    return f"{med:.{digits}f} {unit} ({min(vals):.{digits}f}–{max(vals):.{digits}f}, n={len(vals)})"


def mib(kib) -> str:
    return f"{kib / 1024:.1f} MiB"


def down_cell(r) -> str:
    if r is None:
        return "—"
    if r.get("demoted_after_s") is not None:
        what = f"primary demoted after {r['demoted_after_s']} s"
    else:
        what = f"primary kept serving (longest write gap {r['longest_gap_s']} s)"
    what += ", promoted: " + (", ".join(r["promoted"]) if r["promoted"] else "none")
    what += f", primaries at once ≤ {r['max_primaries']}"
    if r.get("writes_back_s") is not None and r.get("demoted_after_s") is not None:
        what += f"; writes back {r['writes_back_s']} s after its return"
    settled = r.get("settled_after_return_s")
    what += (f"; healthy {settled} s after its return" if settled is not None
             else "; NOT healthy again within 180 s")
    return what


def build(rows):
    settings = [s for s in TITLES if any(r["setting"] == s for r in rows)]

    def pick(setting, measure, **match):
        return [r for r in rows if r["setting"] == setting and r["measure"] == measure
                and all(r.get(k) == v for k, v in match.items())]

    table = [("",) + tuple(TITLES[s] for s in settings)]

    def line(title, fn):
        table.append((title,) + tuple(fn(s) for s in settings))

    line("settings", lambda s: next((r["settings"] for r in pick(s, "setup")), "—"))
    for mode in ("async", "sync"):
        line(f"crash RTO, {mode} (kill -9 → first write on the new primary)",
             lambda s, m=mode: spread(r["rto_s"] for r in pick(s, "crash", mode=m)))
        line(f"crash write gap, {mode} (last write before → first after)",
             lambda s, m=mode: spread(r["gap_s"] for r in pick(s, "crash", mode=m)))
        line(f"acknowledged inserts lost, {mode} (per run)",
             lambda s, m=mode: ", ".join(f"{r['lost']} of {r['acked']}"
                                         for r in pick(s, "crash", mode=m)) or "—")
    line("switchover gap (last write before → first after)",
         lambda s: spread((r["gap_s"] for r in pick(s, "switchover")), digits=2))
    line("switchover command time",
         lambda s: spread(r["command_s"] for r in pick(s, "switchover")))
    line("rejoin of the killed member (start → standby streaming)",
         lambda s: spread(r["rejoin_s"] for r in pick(s, "crash")))
    line("rejoin by", lambda s: ", ".join(sorted({r["rejoin_how"] for r in pick(s, "crash")})) or "—")

    def mem(s, key):
        m = pick(s, "memory")
        if not m:
            return "—"
        vals = [v[key] for v in m[0]["members"].values()]
        return " / ".join(mib(v) for v in vals)

    line("engine PSS per member (member 1 / member 2)", lambda s: mem(s, "engine_kib"))
    line("PostgreSQL PSS per member, for scale", lambda s: mem(s, "postgres_kib"))
    line("coordinator PSS, once",
         lambda s: next((f"{mib(r['coordinator_kib'])} ({r['coordinator']})"
                         for r in pick(s, "memory")), "—"))
    for variant in ("default", "failsafe_mode"):
        if any(pick(s, "coordinator_down", variant=variant) for s in settings):
            label = "coordinator down" + (" (failsafe_mode: true)" if variant != "default" else "")
            line(label, lambda s, v=variant: down_cell(next(iter(pick(s, "coordinator_down", variant=v)), None)))
    errors = [f"{r['setting']}: {r['message']}" for r in rows if r["measure"] == "error"]
    return table, errors


def render_markdown(table, errors, meta) -> str:
    out = [f"Generated by `{meta.get('command', 'bash scripts/bench-ha-engines')}` on "
           f"{meta.get('date', '?')}; wayback {meta.get('wayback_version', '?')}; "
           f"{meta.get('versions', '?')}; {meta.get('cpus', '?')} CPUs shared with other work, "
           f"load average {meta.get('loadavg_before', '?')} before and "
           f"{meta.get('loadavg_after', '?')} after the run. Median of the runs, (min–max, n) "
           "when there was more than one.", "",
           "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    out += ["| " + " | ".join(row) + " |" for row in table[1:]]
    if errors:
        out += ["", "Errors (the measurements after them in that setting are missing):", ""]
        out += [f"- {e}" for e in errors]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--write-docs")
    args = ap.parse_args()
    meta, rows = load(args.results)
    table, errors = build(rows)
    # The text table is long: one block per setting reads better in a terminal.
    for col in range(1, len(table[0])):
        print(f"\n{table[0][col]}")
        print(render_text([("", "")] + [(row[0], row[col]) for row in table[1:]]))
    for e in errors:
        print(f"error: {e}")
    print(f"\nload average {meta.get('loadavg_before', '?')} before, "
          f"{meta.get('loadavg_after', '?')} after; {meta.get('versions', '?')}")
    print("bench-ha-engines-result " + json.dumps({"meta": meta, "rows": rows}, sort_keys=True))
    if args.write_docs:
        write_generated_block(args.write_docs, SECTION, BEGIN, END,
                              render_markdown(table, errors, meta))
        print(f"bench-ha-engines: wrote the generated block of '{SECTION[3:]}' in "
              f"{args.write_docs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
