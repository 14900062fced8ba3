#!/usr/bin/env python3
"""The report of scripts/bench-ha-engines. Standard library only.

    bench_ha_report.py RESULTS... [--write-docs DOCS_MD]
        Prints the table (one column per setting: median and spread of the runs) and one
        machine-readable line ("bench-ha-engines-result {json}") from RESULTS (JSON lines written
        by bench_ha.py); optionally rewrites the generated block of DOCS_MD
        (docs/ha-engines.md). With several RESULTS files (a setting run again with
        `--settings`), a setting's figures come from the last file that has it, and the block
        names every run.
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


def load_all(paths):
    """Every file's meta, and the rows of each setting from the last file that has it (that
    file's meta lists it in settings_used)."""
    metas, by_setting, source = [], {}, {}
    for n, path in enumerate(paths):
        meta, rows = load(path)
        metas.append(meta)
        for setting in dict.fromkeys(r["setting"] for r in rows):
            by_setting[setting] = [r for r in rows if r["setting"] == setting]
            source[setting] = n
    for n, meta in enumerate(metas):
        meta["settings_used"] = [s for s in by_setting if source[s] == n]
    return metas, [r for rows in by_setting.values() for r in rows]


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
             lambda s, m=mode: spread(r.get("rto_s") for r in pick(s, "crash", mode=m)))
        line(f"crash write gap, {mode} (last write before → first after)",
             lambda s, m=mode: spread(r.get("gap_s") for r in pick(s, "crash", mode=m)))
        line(f"acknowledged inserts lost, {mode} (per run)",
             lambda s, m=mode: ", ".join(f"{r['lost']} of {r['acked']}" if "lost" in r
                                         else f"— ({r.get('note', 'no figure')})"
                                         for r in pick(s, "crash", mode=m)) or "—")
    line("switchover gap (last write before → first after)",
         lambda s: spread((r.get("gap_s") for r in pick(s, "switchover")), digits=2))
    line("switchover command time",
         lambda s: spread(r.get("command_s") for r in pick(s, "switchover")))
    line("rejoin of the killed member (start → standby streaming)",
         lambda s: spread(r.get("rejoin_s") for r in pick(s, "crash")))
    line("rejoin by", lambda s: ", ".join(sorted({r["rejoin_how"] for r in pick(s, "crash") if "rejoin_how" in r})) or "—")

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
    errors = [r["message"] if r["message"].startswith(r["setting"] + ":")
              else f"{r['setting']}: {r['message']}" for r in rows if r["measure"] == "error"]
    return table, errors


def describe(meta) -> str:
    return (f"`{meta.get('command', 'bash scripts/bench-ha-engines')}` on {meta.get('date', '?')} "
            f"(wayback {meta.get('wayback_version', '?')}; load average "
            f"{meta.get('loadavg_before', '?')} before, {meta.get('loadavg_after', '?')} after)")


def render_markdown(table, errors, metas) -> str:
    runs = "; ".join(describe(m) + (f" for {' / '.join(TITLES.get(s, s) for s in m['settings_used'])}"
                                    if len(metas) > 1 else "")
                     for m in metas if m.get("settings_used"))
    first = metas[0]
    out = [f"Generated by {runs}. {first.get('versions', '?')}; {first.get('cpus', '?')} CPUs "
           "shared with other work. Median of the runs, (min–max, n) when there was more than "
           "one.", "",
           "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    out += ["| " + " | ".join(row) + " |" for row in table[1:]]
    if errors:
        out += ["", "Errors (the measurements after them in that setting are missing):", ""]
        out += [f"- {e}" for e in errors]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--write-docs")
    args = ap.parse_args()
    metas, rows = load_all(args.results)
    table, errors = build(rows)
    # The text table is long: one block per setting reads better in a terminal.
    for col in range(1, len(table[0])):
        print(f"\n{table[0][col]}")
        print(render_text([("", "")] + [(row[0], row[col]) for row in table[1:]]))
    for e in errors:
        print(f"error: {e}")
    for meta in metas:
        print(f"\n{describe(meta)}; {meta.get('versions', '?')}")
    print("bench-ha-engines-result " + json.dumps({"meta": metas, "rows": rows}, sort_keys=True))
    if args.write_docs:
        write_generated_block(args.write_docs, SECTION, BEGIN, END,
                              render_markdown(table, errors, metas))
        print(f"bench-ha-engines: wrote the generated block of '{SECTION[3:]}' in "
              f"{args.write_docs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
