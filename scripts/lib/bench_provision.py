#!/usr/bin/env python3
"""Provisioning latency against a running broker: N provisions, C at a time.

Run by scripts/bench-provision, which builds and starts the broker and sets WAYBACK_BROKER_URL /
_USERNAME / _PASSWORD. Each provision is timed from the PUT until last_operation says
`succeeded` (polled every 50 ms). Prints p50, p95 and max beside the goal, then deprovisions
every instance it made. Exits 1 if any provision or deprovision failed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

# Keep the repository free of __pycache__ directories.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import osb  # noqa: E402  (scripts/osb.py)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POLL_INTERVAL = 0.05
OPERATION_TIMEOUT = 300.0
GOAL_P50 = 1.0
GOAL_P95 = 3.0


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class Bench:
    def __init__(self, client: osb.Client, service_id: str, plan_id: str):
        self.client = client
        self.ids = {"service_id": service_id, "plan_id": plan_id}
        self.org = str(uuid.uuid4())
        self.space = str(uuid.uuid4())

    def provision(self, n: int) -> tuple[str, float | None, str | None]:
        """Provisions one instance: (its id, seconds from PUT to `succeeded` or None, error)."""
        instance_id = str(uuid.uuid4())
        path = f"/v2/service_instances/{instance_id}"
        context = {"platform": "cloudfoundry", "organization_guid": self.org,
                   "space_guid": self.space, "instance_name": f"bench-{n}"}
        body = dict(self.ids, organization_guid=self.org, space_guid=self.space, context=context)
        start = time.monotonic()
        try:
            resp = self.client.put(path, body, {"accepts_incomplete": "true"})
            if resp.status == 202:
                operation = resp.body.get("operation") if isinstance(resp.body, dict) else None
                query = dict(self.ids, **({"operation": operation} if operation else {}))
                osb.poll_last_operation(self.client, f"{path}/last_operation", query,
                                        interval=POLL_INTERVAL, timeout=OPERATION_TIMEOUT)
            elif resp.status != 201:
                raise osb.OperationFailed(f"provision answered HTTP {resp.status}", resp)
        except (osb.OperationFailed, osb.OsbError) as err:
            resp = getattr(err, "response", None)
            detail = f"\n{resp.describe()}" if resp is not None else ""
            return instance_id, None, f"provision {n} ({instance_id}): {err}{detail}"
        return instance_id, time.monotonic() - start, None

    def deprovision(self, instance_id: str) -> None:
        path = f"/v2/service_instances/{instance_id}"
        resp = self.client.delete(path, dict(self.ids, accepts_incomplete="true"))
        if resp.status == 202:
            operation = resp.body.get("operation") if isinstance(resp.body, dict) else None
            query = dict(self.ids, **({"operation": operation} if operation else {}))
            osb.poll_last_operation(self.client, f"{path}/last_operation", query,
                                    interval=0.2, timeout=OPERATION_TIMEOUT, gone_ok=True)
        elif resp.status not in (200, 410):
            raise osb.OperationFailed(f"deprovision answered HTTP {resp.status}", resp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--summary", help="append one JSON line of the figures to this file")
    parser.add_argument("--label", default="local", help="the setup measured, for --summary")
    args = parser.parse_args()
    if args.count < 1 or args.concurrency < 1:
        parser.error("--count and --concurrency must be at least 1")

    service_id, plan_id = osb.catalog_ids(os.path.join(REPO, "catalog.json"), "small")
    bench = Bench(osb.Client.from_env(), service_id, plan_id)
    print(f"provisioning {args.count} instances of plan small, {args.concurrency} at a time "
          f"({os.cpu_count()} cores)", flush=True)

    made: list[str] = []
    times: list[float] = []
    failures: list[str] = []
    wall = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for future in [pool.submit(bench.provision, n) for n in range(args.count)]:
            instance_id, seconds, error = future.result()
            # A failed provision is deprovisioned too, as a platform would (orphan mitigation).
            made.append(instance_id)
            if error is not None:
                failures.append(error)
            else:
                times.append(seconds)
    wall = time.monotonic() - wall

    if times:
        times.sort()
        rows = [("p50", percentile(times, 50), GOAL_P50), ("p95", percentile(times, 95), GOAL_P95),
                ("max", times[-1], None)]
        print(f"\n{'':5}{'measured':>10}{'goal':>10}")
        for name, value, goal in rows:
            verdict = "" if goal is None else ("  ok" if value <= goal else "  MISSED")
            goal_text = "-" if goal is None else f"<= {goal:g} s"
            print(f"{name:5}{value:>8.3f} s{goal_text:>10}{verdict}")
        print(f"\n{len(times)} succeeded in {wall:.1f} s wall time "
              f"(min {times[0]:.3f} s, mean {sum(times) / len(times):.3f} s)")
        if args.summary:
            import json
            with open(args.summary, "a", encoding="utf-8") as out:
                out.write(json.dumps({"label": args.label, "p50": rows[0][1], "p95": rows[1][1],
                                      "max": rows[2][1], "wall": wall, "n": len(times)}) + "\n")

    print(f"\ndeprovisioning {len(made)} instances", flush=True)
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for instance_id, future in [(i, pool.submit(bench.deprovision, i)) for i in made]:
            try:
                future.result()
            except (osb.OperationFailed, osb.OsbError) as err:
                failures.append(f"deprovision {instance_id}: {err}")

    for line in failures:
        print(line, file=sys.stderr)
    if failures:
        print(f"{len(failures)} operation(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
