#!/usr/bin/env python3
"""The driver of scripts/bench-ha-engines: builds each engine's two-member cluster in turn and
measures it under a steady write load. Standard library only.

    bench_ha.py --root DIR --user NAME --results FILE [--runs 3] [--down-seconds 60]
                [--settings patroni-default,patroni-tuned,paf-default,paf-tuned]

Per setting, on one cluster: memory (PSS); RUNS graceful switchovers and RUNS crashes (kill -9 of
every process of the primary member, then the member started again and timed until its standby
streams) in async mode; RUNS crashes in sync mode; the coordinator stopped for --down-seconds
(Patroni's tuned setting also with failsafe_mode on). Each figure is one JSON line in FILE;
bench_ha_report.py turns them into the table."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_ha_procs as procs  # noqa: E402
from bench_ha_engines import Patroni, PgAutoFailover  # noqa: E402

SETTINGS = {
    "patroni-default": (Patroni, False), "patroni-tuned": (Patroni, True),
    "paf-default": (PgAutoFailover, False), "paf-tuned": (PgAutoFailover, True),
}
SETTLE_TIMEOUT = 180


def log(msg: str) -> None:
    print(f"bench-ha-engines: {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Bench:
    def __init__(self, engine, setting: str, results: str):
        self.e, self.setting, self.results = engine, setting, results
        self.user = engine.user
        self.serial = 0

    def record(self, measure: str, **fields) -> None:
        row = {"setting": self.setting, "engine": self.e.name, "measure": measure, **fields}
        with open(self.results, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        log(f"{self.setting} {measure}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))

    def settle(self, what: str) -> None:
        if procs.wait_for(self.e.settled, SETTLE_TIMEOUT, step=0.5) is None:
            raise RuntimeError(f"{self.setting}: not settled {SETTLE_TIMEOUT} s after {what}")

    def writer(self) -> procs.Writer:
        self.serial += 1
        w = procs.Writer(self.user, self.e.uri(), f"{self.setting}-{self.serial}")
        w.start()
        return w

    def lost(self, w: procs.Writer) -> int:
        acked = sorted({seq for seq, _, _ in w.acks})
        p = self.e.wait_primary()
        ids = ",".join(map(str, acked)) or "0"
        out = procs.psql(self.user, p.pgport, "SELECT count(DISTINCT seq) FROM bench "
                         f"WHERE run = '{w.run_id}' AND seq IN ({ids})", timeout=60)
        return len(acked) - int(out)

    def memory(self) -> None:
        w = self.writer()
        time.sleep(5)
        members = {m.name: {"engine_kib": procs.pss_kib(self.e.engine_pids(m)),
                            "engine_processes": len(self.e.engine_pids(m)),
                            "postgres_kib": procs.pss_kib(self.e.postgres_pids(m))}
                   for m in self.e.members}
        w.stop()
        self.record("memory", members=members, coordinator=self.e.coordinator_name(),
                    coordinator_kib=procs.pss_kib(self.e.coordinator_pids()))

    def switchover(self, run: int) -> None:
        w = self.writer()
        time.sleep(3)
        before = self.e.wait_primary().name
        t0 = time.monotonic()
        self.e.switchover()
        t1 = time.monotonic()
        self.settle("a switchover")
        time.sleep(1)
        w.stop()
        gap = w.longest_gap(t0, t1)
        self.record("switchover", run=run, gap_s=round(gap, 2), command_s=round(t1 - t0, 2),
                    old=before, new=self.e.wait_primary().name, failed_writes=w.failures)

    def crash(self, run: int, mode: str) -> None:
        w = self.writer()
        time.sleep(3)
        victim = self.e.wait_primary()
        pids = self.e.kill_pids(victim)
        t_kill = time.monotonic()
        procs.kill9(pids)
        if victim.proc is not None:
            victim.proc.wait(30)
        if procs.wait_for(lambda: w.first_ack_after(t_kill) is not None, 240) is None:
            w.stop()
            self.record("crash", run=run, mode=mode, rto_s=None, note="no write in 240 s")
            raise RuntimeError(f"{self.setting}: no successful write within 240 s of the kill")
        time.sleep(2)
        w.stop()
        first, last = w.first_ack_after(t_kill), w.last_ack_before(t_kill)
        lost = self.lost(w)
        new = self.e.wait_primary().name
        offset = os.path.getsize(victim.log)
        t_start = time.monotonic()
        self.e.restart(victim)
        rejoin = procs.wait_for(self.e.settled, SETTLE_TIMEOUT, step=0.25)
        self.record("crash", run=run, mode=mode, killed=victim.name, processes=len(pids),
                    rto_s=round(first - t_kill, 2),
                    gap_s=round(first - last, 2) if last else None, new=new,
                    acked=len(w.acks), lost=lost,
                    rejoin_s=round(rejoin, 2) if rejoin is not None else None,
                    rejoin_how=self.e.rejoin_method(victim, offset))
        if rejoin is None:
            raise RuntimeError(f"{self.setting}: {victim.name} did not rejoin in {SETTLE_TIMEOUT} s")

    def coordinator_down(self, seconds: int, label: str) -> None:
        w = self.writer()
        time.sleep(3)
        before = self.e.primaries()
        samples: list[tuple[float, list[str]]] = []
        done = threading.Event()

        def watch():
            while not done.is_set():
                samples.append((time.monotonic(), self.e.primaries()))
                done.wait(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        t0 = time.monotonic()
        self.e.coordinator_stop()
        watcher.start()
        time.sleep(seconds)
        t1 = time.monotonic()
        self.e.coordinator_start()
        recover = procs.wait_for(self.e.settled, SETTLE_TIMEOUT, step=0.5)
        time.sleep(2)
        done.set()
        watcher.join()
        w.stop()
        down = [(t, p) for t, p in samples if t <= t1]
        no_primary = [t for t, p in down if not p]
        promoted = sorted({n for _, p in samples for n in p} - set(before))
        acks_down = sum(1 for _, _, at in w.acks if t0 <= at <= t1)
        self.record("coordinator_down", variant=label, seconds=seconds, primary_before=before,
                    acks_while_down=acks_down,
                    longest_gap_s=round(w.longest_gap(t0, t1) or 0, 2),
                    demoted_after_s=round(no_primary[0] - t0, 1) if no_primary else None,
                    promoted=promoted, max_primaries=max((len(p) for _, p in samples), default=0),
                    writes_back_s=(round(w.first_ack_after(t1) - t1, 2)
                                   if w.first_ack_after(t1) else None),
                    settled_after_return_s=round(recover, 1) if recover is not None else None)


def run_setting(setting: str, args, user: procs.ClusterUser) -> None:
    cls, tuned = SETTINGS[setting]
    root = os.path.join(args.root, setting)
    engine = cls(user, root, free_ports(8), tuned)
    b = Bench(engine, setting, args.results)
    log(f"{setting}: starting ({engine.settings()})")
    t = time.monotonic()
    try:
        engine.start()
        b.record("setup", seconds=round(time.monotonic() - t, 1), settings=engine.settings())
        if procs.psql(user, engine.wait_primary().pgport,
                      "CREATE TABLE bench (run text, seq int, at timestamptz DEFAULT now())") is None:
            raise RuntimeError("could not create the bench table")
        b.settle("start")
        b.memory()
        for mode in ("async", "sync"):
            engine.set_sync(mode == "sync")
            b.settle(f"set_sync {mode}")
            for run in range(1, args.runs + 1):
                if mode == "async":
                    b.switchover(run)
                b.crash(run, mode)
        engine.set_sync(False)
        b.settle("set_sync async")
        if args.down_seconds:
            b.coordinator_down(args.down_seconds, "default")
            if engine.name == "patroni" and tuned:
                engine.set_failsafe(True)
                time.sleep(engine.dcs["loop_wait"] + 1)
                b.settle("failsafe_mode on")
                b.coordinator_down(args.down_seconds, "failsafe_mode")
    except Exception as err:  # noqa: BLE001  (recorded, the next setting still runs)
        b.record("error", message=str(err)[-1500:])
    finally:
        procs.stop_all()
        for m in engine.members:
            pid = procs.postmaster_pid(m.pgdata)
            if pid:
                os.kill(pid, 3)
        procs.STARTED.clear()
        log(f"{setting}: stopped")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--down-seconds", type=int, default=60)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    args = ap.parse_args()
    # The bash script's cleanup sends SIGTERM: stop the clusters on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    user = procs.ClusterUser(args.user, args.root)
    user.mkdir(os.path.join(args.root, "home", "run"))
    try:
        for setting in args.settings.split(","):
            if setting not in SETTINGS:
                raise SystemExit(f"unknown setting '{setting}' (one of {', '.join(SETTINGS)})")
            run_setting(setting, args, user)
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
