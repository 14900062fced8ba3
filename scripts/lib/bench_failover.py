#!/usr/bin/env python3
"""The driver of scripts/bench-failover: crash RTO and switchover gap of a Wayback HA instance
(plan ha-small, sync, through the binding's credentials) beside Patroni with its packaged
defaults (the anchor: ttl 30, loop_wait 10, retry_timeout 10) on the same machine, in one run.
Standard library only.

    bench_failover.py run --root DIR --user NAME --results FILE --psql PSQL [--runs 3]
                          [--plan ha-small] [--sides anchor,wayback]
        The broker is reached through scripts/osb.py (WAYBACK_BROKER_URL, _USERNAME,
        _PASSWORD); WAYBACK_BROKER_DATA_DIR is its data directory (to find the members'
        processes); WAYBACK_BIN runs `wayback switchover`. Each figure is one JSON line in FILE.
    bench_failover.py report FILE [--write-benchmarks BENCHMARKS_MD]

The load and the measures are bench-ha-engines' (bench_ha.Bench): one INSERT every 50 ms over a
new connection to the multi-host URI; crash = SIGKILL of every process of the primary member
(Patroni and PostgreSQL), RTO = kill to the first acknowledged write that started after it;
lost = acknowledged inserts missing afterwards; switchover gap = the longest interval between
acknowledged writes around the switchover. Wayback's killed member is brought back by Wayback
itself (its supervisor restarts the member's Patroni), the anchor's by the driver."""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "scripts"))
import bench_ha_procs as procs  # noqa: E402
import osb  # noqa: E402  (scripts/osb.py)
from bench_ha import Bench, free_ports  # noqa: E402
from bench_ha_engines import Member, Patroni  # noqa: E402
from bench_md import render_text, write_generated_block  # noqa: E402
from bench_osb import psql  # noqa: E402

SECTION = "## High availability: crash RTO and switchover gap"
BEGIN = "<!-- bench-failover -->"
END = "<!-- /bench-failover -->"


def log(msg: str) -> None:
    print(f"bench-failover: {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


class Wayback:
    """One Wayback HA instance behind bench_ha's engine interface, driven through OSB."""

    name = "wayback"

    def __init__(self, user: procs.ClusterUser, root: str, plan: str, psql_bin: str):
        self.user, self.root, self.plan, self.psql = user, root, plan, psql_bin
        self.client = osb.Client.from_env()
        service_id, plan_id = osb.catalog_ids(os.path.join(REPO, "catalog.json"), plan)
        self.ids = {"service_id": service_id, "plan_id": plan_id}
        self.data_dir = os.environ["WAYBACK_BROKER_DATA_DIR"]
        self.instance_id = str(uuid.uuid4())
        self.creds: dict = {}
        self.members: list[Member] = []
        self.sync = True

    def settings(self) -> str:
        """The plan, and the DCS timings a member's Patroni runs with (read from its
        configuration, which Wayback renders as JSON) once a member exists."""
        for conf in sorted(glob.glob(os.path.join(self.data_dir, "clusters", "*", "patroni",
                                                  "patroni.yml"))):
            try:
                dcs = json.load(open(conf))["bootstrap"]["dcs"]
                return (f"plan {self.plan} (Wayback's Patroni settings: ttl {dcs['ttl']}, "
                        f"loop_wait {dcs['loop_wait']}, retry_timeout {dcs['retry_timeout']})")
            except (OSError, ValueError, KeyError):
                continue
        return f"plan {self.plan}"

    # --- OSB -------------------------------------------------------------------------------

    def _wait(self, resp, path: str, *ok) -> None:
        if resp.status not in ok:
            raise RuntimeError(resp.describe())
        if resp.status == 202:
            op = resp.body.get("operation") if isinstance(resp.body, dict) else None
            query = dict(self.ids, **({"operation": op} if op else {}))
            osb.poll_last_operation(self.client, f"{path}/last_operation", query,
                                    interval=0.2, timeout=900)

    def start(self) -> None:
        org, space, app = (str(uuid.uuid4()) for _ in range(3))
        context = {"platform": "cloudfoundry", "organization_guid": org, "space_guid": space,
                   "instance_name": "bench-failover"}
        path = f"/v2/service_instances/{self.instance_id}"
        body = dict(self.ids, organization_guid=org, space_guid=space, context=context)
        self._wait(self.client.put(path, body, {"accepts_incomplete": "true"}), path, 201, 202)
        binding = f"{path}/service_bindings/{uuid.uuid4()}"
        body = dict(self.ids, bind_resource={"app_guid": app}, context=context)
        self._wait(self.client.put(binding, body, {"accepts_incomplete": "true"}), binding,
                   200, 201, 202)
        resp = self.client.get(binding, self.ids)
        if resp.status != 200:
            raise RuntimeError(resp.describe())
        self.creds = osb.lookup(resp.body, "credentials") or {}
        if self.creds.get("ca_certificate"):
            ca = os.path.join(self.root, "ca.pem")
            with open(ca, "w") as f:
                f.write(self.creds["ca_certificate"])
            os.chmod(ca, 0o644)
            self.ca = ca
        else:
            self.ca = None
        self.members = [Member(m["name"], int(m["port"]), "", os.devnull)
                        for m in self.ha()["members"]]
        for m in self.members:
            m.pgdata, m.log = self._member_dirs(m.pgport)
        if not self.members or any(not m.pgdata for m in self.members):
            raise RuntimeError(f"cannot find the members' data directories: {self.ha()}")
        ok, out = psql(self.psql, self.uri(),
                       "CREATE TABLE bench (run text, seq int, at timestamptz DEFAULT now())")
        if not ok:
            raise RuntimeError(f"could not create the bench table: {out}")

    def ha(self) -> dict:
        resp = self.client.get(f"/v2/service_instances/{self.instance_id}", self.ids)
        if resp.status != 200 or not isinstance(resp.body, dict):
            return {"members": []}
        return resp.body.get("ha") or {"members": []}

    def _member_dirs(self, port: int) -> tuple[str, str]:
        """(pgdata, Patroni's log) of the member listening on `port` on this machine."""
        for pidfile in glob.glob(os.path.join(self.data_dir, "clusters", "*", "pgdata",
                                              "postmaster.pid")):
            try:
                lines = open(pidfile).read().splitlines()
            except OSError:
                continue
            if len(lines) > 3 and lines[3].strip() == str(port):
                pgdata = os.path.dirname(pidfile)
                return pgdata, os.path.join(os.path.dirname(pgdata), "patroni", "patroni.log")
        return "", os.devnull

    # --- the engine interface bench_ha.Bench uses ----------------------------------------------

    def _with(self, params: dict, host: str | None = None) -> str:
        u = urllib.parse.urlsplit(self.creds["uri"])
        q = dict(urllib.parse.parse_qsl(u.query))
        q.update(params)
        if self.ca:
            q["sslrootcert"] = self.ca
        netloc = u.netloc
        if host is not None:
            netloc = netloc.rsplit("@", 1)[0] + "@" + host
        return urllib.parse.urlunsplit((u.scheme, netloc, u.path, urllib.parse.urlencode(q), ""))

    def uri(self) -> str:
        """The binding's own uri (every member, target_session_attrs=read-write), with the
        anchor's connect_timeout so both sides retry alike."""
        return self._with({"connect_timeout": "2"})

    def member_uri(self, port: int) -> str:
        q = {"connect_timeout": "2"}
        return self._with(q, host=f"127.0.0.1:{port}")

    def _is_primary(self, port: int):
        ok, out = psql(self.psql, self.member_uri(port), "SELECT pg_is_in_recovery()", timeout=4)
        return (out == "f") if ok else None

    def primary(self):
        found = [m for m in self.members if self._is_primary(m.pgport)]
        return found[0] if len(found) == 1 else None

    def wait_primary(self, timeout: float = 60) -> Member:
        found = []
        if procs.wait_for(lambda: found.append(self.primary()) or found[-1] is not None,
                          timeout, step=0.25) is None:
            raise RuntimeError(f"no single primary among {self.primaries()} for {timeout} s")
        return found[-1]

    def primaries(self) -> list[str]:
        return [m.name for m in self.members if self._is_primary(m.pgport)]

    def settled(self) -> bool:
        # Roles only, as the tests read the fetch: Patroni 3.0.2 names a replica's state
        # "running" or "streaming" depending on how it got there.
        members = self.ha().get("members", [])
        roles = sorted(m.get("role") or "" for m in members)
        want = "sync_standby" if self.sync else "replica"
        return len(members) >= 2 and roles == sorted(["leader"] + [want] * (len(members) - 1))

    def kill_pids(self, m: Member) -> list[int]:
        """The member's Patroni (its pid file beside its log) and its server's process tree.
        Never walked up from the postmaster: Patroni starts the server through a short-lived
        child, so the postmaster's parent is init (or a subreaper), never Patroni."""
        pids = set()
        pid = procs.postmaster_pid(m.pgdata)
        if pid:
            pids.update(procs.tree(pid))
        try:
            pids.add(int(open(os.path.join(os.path.dirname(m.log), "patroni.pid")).read().strip()))
        except (OSError, ValueError):
            pass
        own = {os.getpid(), os.getppid()}
        return sorted(p for p in pids if p > 1 and p not in own)

    def restart(self, m: Member) -> None:
        """Nothing: Wayback's supervisor starts the member's Patroni again by itself."""

    def switchover(self) -> None:
        subprocess.run([os.environ.get("WAYBACK_BIN", "wayback"), "switchover", self.instance_id],
                       check=True, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, WAYBACK_DATA_DIR=self.data_dir))

    def rejoin_method(self, m: Member, offset: int) -> str:
        return Patroni.rejoin_method(self, m, offset)  # the same log lines: Wayback runs Patroni


class WaybackBench(Bench):
    def lost(self, w: procs.Writer) -> int:
        acked = sorted({seq for seq, _, _ in w.acks})
        p = self.e.wait_primary()
        ids = ",".join(map(str, acked)) or "0"
        ok, out = psql(self.e.psql, self.e.member_uri(p.pgport),
                       "SELECT count(DISTINCT seq) FROM bench "
                       f"WHERE run = '{w.run_id}' AND seq IN ({ids})", timeout=60)
        if not ok:
            raise RuntimeError(f"counting the acknowledged rows: {out}")
        return len(acked) - int(out)


def run_side(side: str, args, user: procs.ClusterUser) -> None:
    root = os.path.join(args.root, side)
    user.mkdir(root)
    if side == "anchor":
        engine = Patroni(user, root, free_ports(8), False)
        b = Bench(engine, "anchor", args.results)
    else:
        engine = Wayback(user, root, args.plan, args.psql)
        b = WaybackBench(engine, "wayback", args.results)
    log(f"{side}: starting ({engine.settings()})")
    t = time.monotonic()
    try:
        engine.start()
        if side == "anchor":
            if procs.psql(user, engine.wait_primary().pgport, "CREATE TABLE bench "
                          "(run text, seq int, at timestamptz DEFAULT now())") is None:
                raise RuntimeError("could not create the bench table")
            engine.set_sync(True)
        b.record("setup", seconds=round(time.monotonic() - t, 1), settings=engine.settings())
        b.settle("start")
        for run in range(1, args.runs + 1):
            b.switchover(run)
            b.settle("the switchover")
            b.crash(run, "sync")
            b.settle("the rejoin")
    except Exception as err:  # noqa: BLE001  (recorded, the other side still runs)
        b.record("error", message=str(err)[-1500:])
    finally:
        if side == "anchor":
            procs.stop_all()
            for m in engine.members:
                pid = procs.postmaster_pid(m.pgdata)
                if pid:
                    os.kill(pid, signal.SIGQUIT)
            procs.STARTED.clear()
        log(f"{side}: done")


def run(args) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    user = procs.ClusterUser(args.user, args.root)
    user.mkdir(os.path.join(args.root, "home", "run"))
    try:
        for side in args.sides.split(","):
            if side not in ("anchor", "wayback"):
                raise SystemExit(f"unknown side '{side}' (anchor, wayback)")
            run_side(side, args, user)
    finally:
        procs.stop_all()
    return 0


# --- the report ---------------------------------------------------------------------------------

def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.strip()]


def _stat(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f} s"
    return f"{statistics.median(values):.1f} s (max {max(values):.1f})"


def build(rows: list[dict]) -> list[tuple[str, ...]]:
    def of(setting: str, measure: str) -> list[dict]:
        return [r for r in rows if r.get("setting") == setting and r.get("measure") == measure]

    table = [("", "Wayback (ha-small, sync)", "Patroni packaged defaults (sync), same run")]

    def line(label: str, fn) -> None:
        table.append((label, fn("wayback"), fn("anchor")))

    line("crash RTO: kill -9 → first write (goal ≤ 20 s)",
         lambda s: _stat([r["rto_s"] for r in of(s, "crash") if r.get("rto_s") is not None]))
    line("crash: last write before → first after",
         lambda s: _stat([r["gap_s"] for r in of(s, "crash") if r.get("gap_s") is not None]))
    line("acknowledged writes lost (goal 0)",
         lambda s: (f"{sum(r.get('lost', 0) for r in of(s, 'crash'))} of "
                    f"{sum(r.get('acked', 0) for r in of(s, 'crash'))}") if of(s, "crash") else "–")
    line("killed member back as standby",
         lambda s: _stat([r["rejoin_s"] for r in of(s, "crash") if r.get("rejoin_s") is not None])
         + "".join(sorted({f", {r['rejoin_how']}" for r in of(s, "crash") if r.get("rejoin_how")})))
    line("switchover gap (goal ≤ 2 s)",
         lambda s: _stat([r["gap_s"] for r in of(s, "switchover") if r.get("gap_s") is not None]))
    line("runs", lambda s: f"{len(of(s, 'crash'))} crashes, {len(of(s, 'switchover'))} switchovers")
    errors = [f"{r['setting']}: {r['message'][:200]}" for r in rows if r.get("measure") == "error"]
    for e in errors:
        table.append(("error", e, ""))
    return table


def report(args) -> int:
    rows = _rows(args.results)
    meta = {k: v for r in rows if r.get("measure") == "meta" for k, v in r.items() if k != "measure"}
    table = build(rows)
    print(render_text(table))
    if args.write_benchmarks:
        head = (f"Command: `{meta.get('command', 'bash scripts/bench-failover')}`, "
                f"{meta.get('date', '')} on {meta.get('cpus', '?')} cores, load "
                f"{meta.get('loadavg_before', '?')}; {meta.get('versions', '')}.")
        md = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
        md += ["| " + " | ".join(r) + " |" for r in table[1:]]
        write_generated_block(args.write_benchmarks, SECTION, BEGIN, END,
                              head + "\n\n" + "\n".join(md))
        log(f"wrote the generated block of '{SECTION[3:]}' in {args.write_benchmarks}")
    return 1 if any(r.get("measure") == "error" for r in rows) else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--root", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--psql", required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--plan", default="ha-small")
    p.add_argument("--sides", default="anchor,wayback")
    p.set_defaults(func=run)
    p = sub.add_parser("report")
    p.add_argument("results")
    p.add_argument("--write-benchmarks")
    p.set_defaults(func=report)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
