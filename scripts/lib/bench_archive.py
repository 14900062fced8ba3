#!/usr/bin/env python3
"""Helpers for scripts/bench-archive. Standard library only.

    bench_archive.py s3-usage BUCKET [--group NAME=SUBSTRING ...] [--count NAME=REGEX ...]
        Lists BUCKET with signed ListObjectsV2 requests (SigV4; endpoint, region and keys from
        BENCH_S3_ENDPOINT, BENCH_S3_REGION, BENCH_S3_ACCESS_KEY, BENCH_S3_SECRET_KEY) and prints
        {"bytes": N, "objects": N, "groups": {NAME: bytes}, "counts": {NAME: objects}} where an
        object counts in the first group whose SUBSTRING its key contains ("other" if none);
        each --count adds counts[NAME], the number of keys REGEX matches.
    bench_archive.py provision [--name bench-archive] --plan small --out FILE
        Provisions and binds one instance named NAME through the broker (WAYBACK_BROKER_URL, _USERNAME,
        _PASSWORD) and writes {"instance_id", "space_guid", "organization_guid", "binding_id",
        "credentials"} to FILE (mode 0600).
    bench_archive.py json-num FILE KEY_REGEX ...
        Prints the first number in the JSON document FILE (the last JSON value in it if it holds
        several lines) whose dotted key path matches one of the regexes, tried in order; prints
        nothing and exits 1 when none does.
    bench_archive.py backup-summary FILE
        One line about the JSON report of `wayback backup --json` (reason, sizes, timings).
    bench_archive.py wait-backups STATE_DB INSTANCE [--timeout 900]
        Waits until the broker's SQLite state database has no unfinished backup job of INSTANCE;
        prints the reasons of the backups taken so far.
    bench_archive.py undo --instance-file FILE --scale N --psql PSQL --state-db DB
            --results RESULTS [--name bench-archive] [--broker-log LOG] [--interval 0.1]
        Unbinds and deprovisions the instance of FILE (what `provision` wrote) as Cloud Foundry
        would, polling until done (succeeded, or 410 from an older broker); then, timed from
        the PUT, provisions "NAME-undo" with {"clone-from": NAME}, polls last_operation every
        INTERVAL s (each new description
        printed with its time), binds it and runs `SELECT count(*) FROM pgbench_accounts` with
        the new credentials until it answers. Checks the clone's rows against the source's and
        appends undo_* lines to RESULTS; exits 1 (after a loud message) when anything fails.
    bench_archive.py report RESULTS [--write-benchmarks BENCHMARKS_MD]
        Prints the side-by-side table and one machine-readable line ("bench-archive-result
        {json}") from RESULTS (key=value lines); optionally rewrites the generated block of the
        "Archive: backup, restore, replay" section of BENCHMARKS_MD.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import textwrap
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# pgBackRest 2.45 on Garage, measured before this script existed (issue 3): tuned
# (--compress-type=lz4 --process-max=2) and defaults (gz, one process).
ANCHOR_TUNED = {"backup_s": 7.9, "restore_s": 7.1, "replay_s": 8.4}
ANCHOR_DEFAULTS = {"backup_s": 28.0, "restore_s": 13.0, "replay_s": 6.0}

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_md import render_text, write_generated_block  # noqa: E402  (scripts/lib/bench_md.py)
from bench_osb import Failed, deprovision, psql, timed_provision  # noqa: E402  (scripts/lib/bench_osb.py)

SECTION = "## Archive: backup, restore, replay"
BEGIN = "<!-- bench-archive -->"
END = "<!-- /bench-archive -->"


# --- S3 listing -----------------------------------------------------------------------------

def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _quote(s: str) -> str:
    return urllib.parse.quote(s, safe="-_.~")


def s3_get(endpoint: str, region: str, access: str, secret: str, path: str,
           query: dict[str, str]) -> bytes:
    parsed = urllib.parse.urlsplit(endpoint)
    host = parsed.netloc
    now = dt.datetime.now(dt.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    canonical_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical_headers = "".join(f"{k}:{headers[k]}\n" for k in sorted(headers))
    canonical_path = urllib.parse.quote(path, safe="/-_.~")
    request = "\n".join(["GET", canonical_path, canonical_query, canonical_headers, signed, payload])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(request.encode()).hexdigest()])
    key = _sign(_sign(_sign(_sign(("AWS4" + secret).encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    auth = (f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, "
            f"Signature={signature}")
    url = f"{parsed.scheme}://{host}{canonical_path}?{canonical_query}"
    req = urllib.request.Request(url, headers={
        "x-amz-content-sha256": payload, "x-amz-date": amz_date, "Authorization": auth})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read()


def s3_usage(args: argparse.Namespace) -> int:
    env = os.environ
    endpoint, region = env["BENCH_S3_ENDPOINT"], env["BENCH_S3_REGION"]
    access, secret = env["BENCH_S3_ACCESS_KEY"], env["BENCH_S3_SECRET_KEY"]
    groups = []
    for spec in args.group:
        name, _, sub = spec.partition("=")
        groups.append((name, sub))
    total = objects = 0
    by_group = {name: 0 for name, _ in groups}
    counts = {name: 0 for name, _ in groups}
    by_group["other"] = counts["other"] = 0
    extra = []
    for spec in args.count:
        name, _, rx = spec.partition("=")
        extra.append((name, re.compile(rx)))
        counts[name] = 0
    token = None
    while True:
        query = {"list-type": "2", "max-keys": "1000"}
        if token:
            query["continuation-token"] = token
        body = s3_get(endpoint, region, access, secret, "/" + args.bucket, query)
        root = ET.fromstring(body)
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        for item in root.findall(f"{ns}Contents"):
            key = item.findtext(f"{ns}Key") or ""
            size = int(item.findtext(f"{ns}Size") or 0)
            total += size
            objects += 1
            for name, rx in extra:
                if rx.search(key):
                    counts[name] += 1
            for name, sub in groups:
                if sub in key:
                    by_group[name] += size
                    counts[name] += 1
                    break
            else:
                by_group["other"] += size
                counts["other"] += 1
        truncated = (root.findtext(f"{ns}IsTruncated") or "false").lower() == "true"
        token = root.findtext(f"{ns}NextContinuationToken")
        if not truncated or not token:
            break
    print(json.dumps({"bytes": total, "objects": objects, "groups": by_group, "counts": counts}))
    return 0


# --- provisioning ---------------------------------------------------------------------------

def provision(args: argparse.Namespace) -> int:
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import osb  # noqa: E402  (scripts/osb.py)

    client = osb.Client.from_env()
    service_id, plan_id = osb.catalog_ids(os.path.join(REPO, "catalog.json"), args.plan)
    ids = {"service_id": service_id, "plan_id": plan_id}
    org, space, app = (str(uuid.uuid4()) for _ in range(3))
    instance_id, binding_id = str(uuid.uuid4()), str(uuid.uuid4())
    instance = f"/v2/service_instances/{instance_id}"
    binding = f"{instance}/service_bindings/{binding_id}"
    context = {"platform": "cloudfoundry", "organization_guid": org, "space_guid": space,
               "instance_name": args.name}

    def run(resp, path, *ok):
        if resp.status not in ok:
            raise SystemExit(f"bench_archive: {resp.describe()}")
        if resp.status == 202:
            op = resp.body.get("operation") if isinstance(resp.body, dict) else None
            query = dict(ids, **({"operation": op} if op else {}))
            try:
                osb.poll_last_operation(client, f"{path}/last_operation", query, interval=0.2,
                                        timeout=600)
            except osb.OperationFailed as err:
                raise SystemExit(f"bench_archive: {path}: {err}") from err

    body = dict(ids, organization_guid=org, space_guid=space, context=context)
    run(client.put(instance, body, {"accepts_incomplete": "true"}), instance, 201, 202)
    body = dict(ids, bind_resource={"app_guid": app}, context=context)
    run(client.put(binding, body, {"accepts_incomplete": "true"}), binding, 200, 201, 202)
    resp = client.get(binding, ids)
    if resp.status != 200:
        raise SystemExit(f"bench_archive: {resp.describe()}")
    creds = osb.lookup(resp.body, "credentials") or {}
    out = {"instance_id": instance_id, "space_guid": space, "organization_guid": org,
           "binding_id": binding_id, "credentials": creds}
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(out, f)
    return 0


# --- undo: deprovision, then clone-from the deleted instance --------------------------------

# What each last_operation text of a clone is, in the report's words (matched on the part after
# "Cloning from "NAME" (GUID, deleted at …) as of …: "); the first match wins, anything else is
# shown as the broker wrote it.
UNDO_PHASES = [
    (r"queued|allocating a port", "queued, port"),
    (r"\(fork\)", "fork (live source only)"),
    # The step's own text, shown until the restore's progress (polled every 0.5 s) replaces it.
    (r"choosing a base backup|restoring the source's base backup$",
     "restore starts (choosing a backup)"),
    (r"restoring base backup of", "download + unpack"),
    (r"replaying WAL", "WAL replay"),
    (r"promoting", "promotion"),
    (r"initialising the database cluster|setting up continuous WAL archiving",
     "plan settings, own archive"),
    (r"restarting|starting PostgreSQL", "restart"),
    (r"rotating every password", "password rotation"),
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _undo_phase(description: str) -> str:
    tail = description
    m = re.match(r'Cloning from ".*?" \(.*?\) as of .*?: (.*)$', description)
    if m:
        tail = m.group(1)
    for rx, name in UNDO_PHASES:
        if re.search(rx, tail):
            return name
    return re.sub(r"\([0-9.]+ [kMGT]?B of [0-9.]+ [kMGT]?B\)", "", tail).strip()


_psql = psql


def _newest_backup(db: str, instance: str):
    import sqlite3
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(
            "SELECT backup_id, reason, stop_lsn FROM backups WHERE instance_id = ? "
            "ORDER BY recorded_at DESC LIMIT 1", (instance,)).fetchone()
    finally:
        con.close()


def _restore_log(path: str | None) -> dict[str, float]:
    """The clone's restore engine figures from the broker's log (plain or JSON lines)."""
    found: dict[str, float] = {}
    if not path or not os.path.exists(path):
        return found
    for raw in open(path, encoding="utf-8", errors="replace"):
        line = ANSI.sub("", raw)
        for marker, key, field in (("base backup unpacked", "log_unpack_s", "secs"),
                                   ("restored cluster promoted", "log_promoted_s", "secs"),
                                   ("restoring", "log_wal_segments", "wal_segments"),
                                   ("clone restored", "log_restore_total_s", "secs")):
            if marker in line:
                m = re.search(rf'\b{field}"?\s*[=:]\s*"?([0-9.]+)', line)
                if m:
                    found[key] = float(m.group(1))
    return found


def undo(args: argparse.Namespace) -> int:
    """Deprovisions the benchmark's instance as Cloud Foundry would (unbind, then delete, polling
    until done), then times a clone-from provision of it: PUT → last_operation succeeded → bind →
    first successful query. Prints the timeline; writes key=value lines to --results."""
    import time
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import osb  # noqa: E402  (scripts/osb.py)

    client = osb.Client.from_env()
    service_id, plan_id = osb.catalog_ids(os.path.join(REPO, "catalog.json"), args.plan)
    ids = {"service_id": service_id, "plan_id": plan_id}
    src = json.load(open(args.instance_file, encoding="utf-8"))
    source_id, org, space = src["instance_id"], src["organization_guid"], src["space_guid"]
    source_uri = src["credentials"]["uri"]
    results: list[tuple[str, object]] = []

    def say(msg: str) -> None:
        print(f"undo: {msg}", file=sys.stderr, flush=True)

    def fail(msg: str) -> int:
        bar = "!" * 78
        print(f"\n{bar}\nUNDO FAILED: {msg}\n{bar}\n", file=sys.stderr, flush=True)
        results.append(("undo_failed", msg.replace("\n", " ")[:300]))
        write_results()
        return 1

    def write_results() -> None:
        with open(args.results, "a", encoding="utf-8") as f:
            for k, v in results:
                f.write(f"{k}={v}\n")

    # The source's state, before it goes: what the clone must hold.
    expected_accounts = args.scale * 100000
    t = time.monotonic()
    ok, accounts = _psql(args.psql, source_uri, "SELECT count(*) FROM pgbench_accounts")
    results.append(("undo_source_count_s", f"{time.monotonic() - t:.3f}"))
    if not ok or int(accounts) != expected_accounts:
        return fail(f"the source has {accounts!r} pgbench_accounts rows, expected {expected_accounts}")
    ok, history = _psql(args.psql, source_uri, "SELECT count(*) FROM pgbench_history")
    if not ok:
        return fail(f"cannot count the source's pgbench_history: {history}")
    newest = _newest_backup(args.state_db, source_id)
    if newest:
        ok, wal_after = _psql(args.psql, source_uri,
                              f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{newest[2]}')::bigint")
        after = "? MB"
        if ok:
            results.append(("undo_wal_after_backup_bytes", wal_after))
            after = f"{int(wal_after) / 1e6:.0f} MB"
        results.append(("undo_newest_backup_reason", newest[1]))
        say(f"source {source_id}: {accounts} accounts, {history} history rows; newest base "
            f"backup {newest[0]} ({newest[1]}), {after} of WAL after it")

    # Deprovision as the platform does (scripts/lib/bench_osb.py).
    try:
        state, deprovision_s = deprovision(client, ids, source_id, src["binding_id"],
                                           timeout=args.timeout)
    except Failed as err:
        return fail(str(err))
    results.append(("undo_deprovision_s", f"{deprovision_s:.3f}"))
    ended = "410 Gone" if state == "gone" else "succeeded"
    say(f"unbind + deprovision of {source_id}: {ended} after {deprovision_s:.1f}s")

    # The undo, timed from the PUT.
    try:
        timed = timed_provision(client, ids, org, space, f"{args.name}-undo",
                                {"clone-from": args.name}, args.psql,
                                "SELECT count(*) FROM pgbench_accounts",
                                interval=args.interval, timeout=args.timeout, say=say)
    except Failed as err:
        return fail(f"the clone: {err}")
    timeline, uri, out = timed.timeline, timed.credentials["uri"], timed.answer
    put_s, ready_s, bound_s = timed.put_s, timed.ready_s, timed.bound_s
    connect_s, query_s, attempts = timed.connect_s, timed.query_s, timed.attempts
    t = time.monotonic()
    ok2, again = _psql(args.psql, uri, "SELECT count(*) FROM pgbench_accounts")
    if ok2:
        results.append(("undo_second_count_s", f"{time.monotonic() - t:.3f}"))

    # Phases: from each one's first description to the next one's (the last to succeeded).
    phases: list[list] = []
    for i, (at, description) in enumerate(timeline):
        if i == len(timeline) - 1:
            break  # the success text
        end = timeline[i + 1][0]
        name = _undo_phase(description)
        if phases and phases[-1][0] == name:
            phases[-1][1] += end - at
        else:
            phases.append([name, end - at])
    phases.append(["bind (synchronous PUT)", bound_s - ready_s])
    phases.append(["first connection (SELECT 1)", connect_s - bound_s])
    phases.append(["SELECT count(*) FROM pgbench_accounts", query_s - connect_s])
    results += [("undo_put_s", f"{put_s:.3f}"), ("undo_ready_s", f"{ready_s:.3f}"),
                ("undo_bound_s", f"{bound_s:.3f}"), ("undo_connect_s", f"{connect_s:.3f}"),
                ("undo_query_s", f"{query_s:.3f}"),
                ("undo_query_attempts", attempts),
                ("undo_phases", json.dumps([[n, round(s, 2)] for n, s in phases]))]
    for k, v in _restore_log(args.broker_log).items():
        results.append((f"undo_{k}", v))
    base = next((m.group(1) for _, d in timeline
                 for m in [re.search(r"restoring base backup of (.*?) \(", d)] if m), "")
    results.append(("undo_base_backup_time", base))
    say("phases: " + "; ".join(f"{n} {s:.1f}s" for n, s in phases))

    # The clone's data (untimed): every account, every history row of the source.
    accounts_clone = out
    ok, history_clone = _psql(args.psql, uri, "SELECT count(*) FROM pgbench_history")
    results += [("undo_accounts_rows", accounts_clone), ("undo_expected_accounts", expected_accounts),
                ("undo_history_rows", history_clone if ok else "?"),
                ("undo_source_history_rows", history)]
    if accounts_clone != str(expected_accounts):
        return fail(f"the clone has {accounts_clone} pgbench_accounts rows, the source had "
                    f"{expected_accounts}")
    if not ok or history_clone != history:
        return fail(f"the clone has {history_clone} pgbench_history rows, the source had {history}")
    say(f"the clone holds all {accounts_clone} accounts and {history} history rows of the source")
    results.append(("undo_ok", 1))
    write_results()
    return 0


# --- JSON reports of the wayback CLI --------------------------------------------------------

def _flatten(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}.{i}")
    else:
        yield prefix, value


def load_json(path: str):
    text = open(path, encoding="utf-8").read().strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # Several JSON lines (progress, then the report): take the last that parses.
        for line in reversed(text.splitlines()):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise SystemExit(f"bench_archive: no JSON in {path}")


def json_num(args: argparse.Namespace) -> int:
    flat = [(k, v) for k, v in _flatten(load_json(args.file))
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for pattern in args.keys:
        rx = re.compile(pattern)
        for k, v in flat:
            if rx.search(k):
                print(v)
                return 0
    return 1


def backup_summary(args: argparse.Namespace) -> int:
    doc = load_json(args.file)
    m, t = doc.get("manifest", {}), doc.get("timings", {})
    print(f"reason {m.get('reason')}, {m.get('raw_bytes', 0) / 1e6:.0f} MB raw, "
          f"{m.get('stored_bytes', 0) / 1e6:.0f} MB stored in {len(m.get('parts', []))} parts; "
          f"job {t.get('backup_ms')} ms = stream {t.get('stream_ms')} ms + archive wait "
          f"{t.get('archive_wait_ms')} ms; command {t.get('command_ms')} ms")
    return 0


def wait_backups(args: argparse.Namespace) -> int:
    """Waits until the broker has no unfinished backup job of the instance (an automatic one,
    e.g. `wal-volume` after a large load), so a timed backup never overlaps or joins one."""
    import sqlite3
    import time
    deadline = time.monotonic() + args.timeout
    while True:
        con = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True, timeout=10)
        try:
            busy = con.execute(
                "SELECT count(*) FROM jobs WHERE kind = 'backup' AND instance_id = ? "
                "AND state NOT IN ('done', 'failed')", (args.instance,)).fetchone()[0]
            reasons = [r[0] for r in con.execute(
                "SELECT reason FROM backups WHERE instance_id = ? ORDER BY recorded_at",
                (args.instance,))]
        finally:
            con.close()
        if busy == 0:
            print(", ".join(reasons) if reasons else "none")
            return 0
        if time.monotonic() >= deadline:
            print(f"bench_archive: {busy} backup job(s) of {args.instance} still unfinished "
                  f"after {args.timeout:g}s", file=sys.stderr)
            return 1
        time.sleep(0.2)


# --- the report -----------------------------------------------------------------------------

def _num(r: dict, key: str):
    v = r.get(key, "")
    try:
        return float(v)
    except ValueError:
        return None


def _secs(v) -> str:
    return "—" if v is None else f"{v:.1f} s"


def _mb(v) -> str:
    return "—" if v is None else f"{v / 1e6:,.0f} MB"


def _sum(*vals):
    return None if any(v is None for v in vals) else round(sum(vals), 3)


SIDE_TITLES = {
    "pgbr": "pgBackRest {settings}",
    "pgbre": "pgBackRest {settings}, aes-256-cbc",
    "wb": "Wayback",
    "wbe": "Wayback, archive encrypted",
}
SIDE_NAMES = {"pgbr": "pgbackrest", "pgbre": "pgbackrest_aes256cbc", "wb": "wayback",
              "wbe": "wayback_encrypted"}
FIGURES = ("backup_s", "restore_s", "replay_s", "restore_total_s", "catchup_s", "backlog_end",
           "backlog_max", "wal_bytes", "tps", "stored_bytes", "stored_base_bytes",
           "stored_wal_bytes", "base_backups", "db_bytes")


def _pct(new, old) -> str:
    if new is None or old is None or old == 0:
        return "—"
    return f"{(new - old) / old * 100:+.0f} %"


def build(r: dict) -> tuple[list[tuple[str, ...]], dict]:
    # Results written before --encrypt existed have no "sides": pgBackRest and Wayback in clear.
    sides = [x for x in r.get("sides", "pgbr,wb").split(",") if x in SIDE_TITLES]
    tools = {}
    for side in sides:
        t = {k: _num(r, f"{side}_{k}") for k in FIGURES}
        t["restore_replay_s"] = _sum(t["restore_s"], t["replay_s"])
        t["all_s"] = _sum(t["backup_s"], t["restore_s"], t["replay_s"])
        tools[side] = t
    anchor = dict(ANCHOR_TUNED)
    anchor["restore_replay_s"] = round(anchor["restore_s"] + anchor["replay_s"], 3)
    anchor["all_s"] = round(anchor["backup_s"] + anchor["restore_replay_s"], 3)

    def stored(t):
        if t["stored_bytes"] is None:
            return "—"
        return (f"{_mb(t['stored_bytes'])} ({_mb(t['stored_base_bytes'])} base + "
                f"{_mb(t['stored_wal_bytes'])} WAL)")

    def count(v):
        return "—" if v is None else f"{v:.0f}"

    def row(label, cell, anchor_cell=""):
        return (label, *(cell(tools[x]) for x in sides), anchor_cell)

    title = []
    for side in sides:
        t = SIDE_TITLES[side].format(settings=r.get("pgbr_settings", "")).replace("  ", " ")
        if r.get(f"{side}_not_encrypted") == "1":
            t += " (NOT encrypted: no key.json in its bucket)"
        title.append(t)
    rows = [
        ("", *title, "anchor: pgBackRest tuned, Garage"),
        row("base backup", lambda t: _secs(t["backup_s"]), _secs(anchor["backup_s"])),
        row("restore (download + unpack)", lambda t: _secs(t["restore_s"]),
            _secs(anchor["restore_s"])),
        row("start → promoted (WAL replay)", lambda t: _secs(t["replay_s"]),
            _secs(anchor["replay_s"])),
        row("restore + replay", lambda t: _secs(t["restore_replay_s"]),
            _secs(anchor["restore_replay_s"])),
        row("backup + restore + replay", lambda t: _secs(t["all_s"]), _secs(anchor["all_s"])),
        row("archive catch-up after load", lambda t: _secs(t["catchup_s"])),
        row("archive backlog at end of load / max (segments)",
            lambda t: f"{count(t['backlog_end'])} / {count(t['backlog_max'])}"),
        row("bytes stored", stored),
        row("base backups in the bucket", lambda t: count(t["base_backups"])),
        row("database size", lambda t: _mb(t["db_bytes"])),
        row("WAL written by the load", lambda t: _mb(t["wal_bytes"])),
        row("load tps", lambda t: count(t["tps"])),
    ]
    # What encryption costs each tool, when the run measured it both ways.
    for clear, enc in (("pgbr", "pgbre"), ("wb", "wbe")):
        if clear in tools and enc in tools:
            c, e = tools[clear], tools[enc]
            cells = {enc: " / ".join(_pct(e[k], c[k]) for k in (
                "backup_s", "restore_s", "replay_s", "restore_replay_s", "stored_bytes"))}
            rows.append(("encryption's cost: backup / restore / replay / restore + replay / "
                         "bytes stored", *(cells.get(x, "") for x in sides), ""))
    undo = undo_figures(r)
    undo_side = r.get("undo_side", "wb")
    pgbr_side = ("pgbre" if undo_side == "wbe" and "pgbre" in tools else
                 "pgbr" if "pgbr" in tools else next(iter([x for x in sides if x.startswith("pgbr")]), None))
    rows += undo_rows(undo, tools.get(pgbr_side), anchor, sides, undo_side, pgbr_side)
    machine = {k: v for k, v in r.items()
               if not k.startswith(tuple(f"{x}_" for x in SIDE_TITLES) + ("undo_",))}
    if undo:
        machine["undo"] = undo
    machine["pgbr_settings"] = r.get("pgbr_settings", "")
    for side in sides:
        extra = {k[len(side) + 1:]: _num(r, k) for k in r
                 if k.startswith(side + "_") and k[len(side) + 1:] not in tools[side]
                 and _num(r, k) is not None}
        machine[SIDE_NAMES[side]] = dict(tools[side], **extra)
    machine["anchor_pgbackrest_tuned_garage"] = anchor
    return rows, machine


def undo_figures(r: dict) -> dict:
    """The undo_* results: numbers as numbers, the phases as [[name, secs], ...]."""
    undo = {}
    for k, v in r.items():
        if not k.startswith("undo_") or k == "undo_side":
            continue
        key = k[len("undo_"):]
        if key == "phases":
            try:
                undo[key] = json.loads(v)
            except json.JSONDecodeError:
                undo[key] = []
        else:
            n = _num(r, k)
            undo[key] = v if n is None else n
    return undo


def undo_rows(u: dict, p: dict | None, anchor: dict, sides: list, wb_side: str,
              pgbr_side: str | None) -> list[tuple[str, ...]]:
    """Rows of the undo: PUT clone-from of the deleted instance → first query on a new binding,
    in the column of the Wayback side it ran on, next to the restore + start-to-promoted of the
    matching pgBackRest side of the same run and the anchor."""
    if not u:
        return []

    def row(label, wb, pg="", anch=""):
        cells = {wb_side: wb}
        if pgbr_side:
            cells[pgbr_side] = pg
        return (label, *(cells.get(x, "") for x in sides), anch)

    if "failed" in u:
        return [row("undo: PUT → clone accepts queries", f"FAILED: {u['failed']}")]
    restore_replay = None if p is None else p["restore_replay_s"]
    rows = [
        row("undo: unbind + deprovision (→ done, untimed)", _secs(u.get("deprovision_s"))),
        row("undo: PUT → last_operation succeeded", _secs(u.get("ready_s"))),
        row("undo: PUT → first connection through a new binding", _secs(u.get("connect_s"))),
        row("undo: PUT → clone accepts queries (1 GiB + WAL)", _secs(u.get("query_s")),
            "—" if restore_replay is None else f"{_secs(restore_replay)} (restore + replay)",
            _secs(anchor["restore_replay_s"])),
    ]
    for name, secs in u.get("phases", []):
        rows.append(row(f"  undo phase: {name}", _secs(secs)))
    if isinstance(u.get("source_count_s"), float) and isinstance(u.get("second_count_s"), float):
        rows.append(row("  (the same count(*): on the source before / on the clone after)",
                        f"{_secs(u['source_count_s'])} / {_secs(u['second_count_s'])}"))
    wal = u.get("wal_after_backup_bytes")
    if isinstance(wal, float):
        reason = u.get("newest_backup_reason", "")
        rows.append(row("undo: WAL after the base backup it restores",
                        f"{_mb(wal)}" + (f" (backup: {reason})" if reason else ""),
                        "—" if p is None or p["wal_bytes"] is None
                        else _mb(p["wal_bytes"]) + " (the load)"))
    if u.get("ok") != 1.0:
        rows.append(row("undo: rows checked", "NOT VERIFIED"))
    return rows


def render_markdown(rows, r: dict) -> str:
    intro = (f"Generated by `{r.get('command', 'bash scripts/bench-archive')}` on "
             f"{r.get('date', '?')}. S3 server: {r.get('s3_server', '?')}; "
             f"{r.get('pgbackrest_version', 'pgBackRest')} ({r.get('pgbr_settings', '')}); "
             f"wayback {r.get('wayback_version', '?')}. Data: `pgbench -i -s {r.get('scale', '?')}`, "
             f"then `{r.get('load', '?')}`. Load average before the run: {r.get('loadavg', '?')}.")
    # Keep `code spans` on one line: wrap with their spaces hidden.
    intro = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", "\0"), intro)
    lines = textwrap.wrap(intro, width=98, break_on_hyphens=False, break_long_words=False)
    out = [line.replace("\0", " ") for line in lines] + [
           "",
           "| " + " | ".join(rows[0]) + " |",
           "|" + "---|" * len(rows[0])]
    for row in rows[1:]:
        out.append("| " + " | ".join(c if c else "" for c in row) + " |")
    return "\n".join(out)


def write_benchmarks(path: str, block: str) -> None:
    write_generated_block(path, SECTION, BEGIN, END, block)


def report(args: argparse.Namespace) -> int:
    r = {}
    for line in open(args.results, encoding="utf-8"):
        line = line.rstrip("\n")
        if "=" in line:
            k, _, v = line.partition("=")
            r[k] = v
    rows, machine = build(r)
    print(render_text(rows))
    print("bench-archive-result " + json.dumps(machine, sort_keys=True))
    if args.write_benchmarks:
        write_benchmarks(args.write_benchmarks, render_markdown(rows, r))
        print(f"bench-archive: wrote the generated block of '{SECTION[3:]}' in "
              f"{args.write_benchmarks}", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("s3-usage")
    p.add_argument("bucket")
    p.add_argument("--group", action="append", default=[])
    p.add_argument("--count", action="append", default=[])
    p.set_defaults(func=s3_usage)
    p = sub.add_parser("provision")
    p.add_argument("--name", default="bench-archive")
    p.add_argument("--plan", default="small")
    p.add_argument("--out", required=True)
    p.set_defaults(func=provision)
    p = sub.add_parser("json-num")
    p.add_argument("file")
    p.add_argument("keys", nargs="+")
    p.set_defaults(func=json_num)
    p = sub.add_parser("backup-summary")
    p.add_argument("file")
    p.set_defaults(func=backup_summary)
    p = sub.add_parser("wait-backups")
    p.add_argument("db")
    p.add_argument("instance")
    p.add_argument("--timeout", type=float, default=900)
    p.set_defaults(func=wait_backups)
    p = sub.add_parser("undo")
    p.add_argument("--instance-file", required=True)
    p.add_argument("--name", default="bench-archive")
    p.add_argument("--plan", default="small")
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("--psql", required=True)
    p.add_argument("--state-db", required=True)
    p.add_argument("--broker-log")
    p.add_argument("--results", required=True)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--timeout", type=float, default=900)
    p.set_defaults(func=undo)
    p = sub.add_parser("report")
    p.add_argument("results")
    p.add_argument("--write-benchmarks")
    p.set_defaults(func=report)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
