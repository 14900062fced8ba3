"""What the benchmarks that drive the broker share: a provision timed from its PUT to the first
query answered through a new binding, as an app sees it, and a deprovision as Cloud Foundry does
it (`cf delete-service`: the binding, then the instance). Standard library only; the broker is
reached through scripts/osb.py (WAYBACK_BROKER_URL, _USERNAME, _PASSWORD)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import osb  # noqa: E402  (scripts/osb.py)


class Failed(Exception):
    """The timed provision did not get to its first answered query; the message says where."""


def psql(psql_bin: str, uri: str, sql: str, timeout: float = 60) -> tuple[bool, str]:
    """(ok, output or error) of one statement run by psql with `uri`."""
    try:
        out = subprocess.run([psql_bin, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", uri,
                              "-c", sql], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"psql timed out after {timeout:g}s"
    if out.returncode != 0:
        return False, (out.stderr or out.stdout).strip()
    return True, out.stdout.strip()


@dataclass
class Timed:
    """One timed provision; every time is in seconds from the PUT."""
    instance_id: str
    binding_id: str
    put_s: float = 0.0
    ready_s: float = 0.0
    bound_s: float = 0.0
    connect_s: float = 0.0
    query_s: float = 0.0
    attempts: int = 0
    first_error: str = ""
    # (seconds from the PUT, last_operation description), one entry per new description.
    timeline: list[tuple[float, str]] = field(default_factory=list)
    credentials: dict = field(default_factory=dict)
    answer: str = ""


def timed_provision(client: "osb.Client", ids: dict, org: str, space: str, name: str,
                    parameters: dict, psql_bin: str, query: str, *, interval: float = 0.1,
                    timeout: float = 900, say: Callable[[str], None] = print) -> Timed:
    """PUT an instance named `name` with `parameters` (202 expected), polls last_operation every
    `interval` s (each new description passed to `say` with its time), binds it synchronously,
    connects with the new credentials (SELECT 1, retried every 0.1 s) and runs `query`, whose
    answer the clock stops at. Raises Failed."""
    instance_id, binding_id, app = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    out = Timed(instance_id=instance_id, binding_id=binding_id)
    path = f"/v2/service_instances/{instance_id}"
    context = {"platform": "cloudfoundry", "organization_guid": org, "space_guid": space,
               "instance_name": name}
    body = dict(ids, organization_guid=org, space_guid=space, context=context,
                parameters=parameters)
    say(f"PUT {path} {parameters}")
    t0 = time.monotonic()
    resp = client.put(path, body, {"accepts_incomplete": "true"})
    out.put_s = time.monotonic() - t0
    if resp.status != 202:
        raise Failed(f"the PUT: {resp.describe()}")
    op = resp.body.get("operation") if isinstance(resp.body, dict) else None
    poll = dict(ids, **({"operation": op} if op else {}))
    seen = None
    deadline = t0 + timeout
    while True:
        r = client.get(f"{path}/last_operation", poll)
        now = time.monotonic() - t0
        if r.status != 200 or not isinstance(r.body, dict):
            raise Failed(f"last_operation: {r.describe()}")
        state, description = r.body.get("state", ""), r.body.get("description", "") or ""
        if description != seen:
            out.timeline.append((now, description))
            say(f"+{now:6.2f}s {state}: {description}")
            seen = description
        if state == "succeeded":
            out.ready_s = now
            break
        if state == "failed":
            raise Failed(f"the provision failed after {now:.1f}s: {description}")
        if time.monotonic() >= deadline:
            raise Failed(f"still in progress after {timeout:g}s: {description}")
        time.sleep(interval)

    bind_path = f"{path}/service_bindings/{binding_id}"
    bind_body = dict(ids, bind_resource={"app_guid": app}, context=context)
    resp = client.put(bind_path, bind_body, {"accepts_incomplete": "false"})
    if resp.status not in (200, 201):
        raise Failed(f"binding: {resp.describe()}")
    out.bound_s = time.monotonic() - t0
    out.credentials = osb.lookup(resp.body, "credentials") or {}
    uri = out.credentials.get("uri")
    if not uri:
        raise Failed(f"the binding has no credentials.uri: {resp.describe()}")
    while True:
        out.attempts += 1
        ok, text = psql(psql_bin, uri, "SELECT 1", timeout=30)
        if ok:
            out.connect_s = time.monotonic() - t0
            break
        out.first_error = out.first_error or text
        if time.monotonic() >= deadline:
            raise Failed(f"no connection succeeded in {timeout:g}s: {out.first_error}")
        time.sleep(0.1)
    ok, text = psql(psql_bin, uri, query, timeout=timeout)
    if not ok:
        raise Failed(f"{query}: {text}")
    out.query_s = time.monotonic() - t0
    out.answer = text
    attempts = f"{out.attempts} attempt{'s' if out.attempts > 1 else ''}"
    error = f"; first error: {out.first_error}" if out.first_error else ""
    say(f"+{out.ready_s:6.2f}s succeeded; +{out.bound_s:6.2f}s bound (201); "
        f"+{out.connect_s:6.2f}s first connection ({attempts}{error}); "
        f"+{out.query_s:6.2f}s {query} answered")
    return out


def deprovision(client: "osb.Client", ids: dict, instance_id: str, binding_id: str | None, *,
                interval: float = 0.1, timeout: float = 900) -> tuple[str, float]:
    """Unbinds (when `binding_id`) and deprovisions the instance as the platform does (cf
    delete-service refuses a bound instance): both async, polled until they succeeded (410 Gone
    from an older broker counts as done too). Returns ("succeeded" or "gone", seconds taken).
    Raises Failed."""
    t0 = time.monotonic()
    if binding_id:
        binding = f"/v2/service_instances/{instance_id}/service_bindings/{binding_id}"
        resp = client.delete(binding, dict(ids, accepts_incomplete="true"))
        if resp.status == 202:
            try:
                osb.poll_last_operation(client, f"{binding}/last_operation", ids,
                                        interval=interval, timeout=timeout, gone_ok=True)
            except osb.OperationFailed as err:
                raise Failed(f"unbind: {err}") from err
        elif resp.status not in (200, 410):
            raise Failed(f"unbind: {resp.describe()}")
    instance = f"/v2/service_instances/{instance_id}"
    resp = client.delete(instance, dict(ids, accepts_incomplete="true"))
    if resp.status != 202:
        raise Failed(f"deprovision: {resp.describe()}")
    op = resp.body.get("operation") if isinstance(resp.body, dict) else None
    try:
        state, _ = osb.poll_last_operation(
            client, f"{instance}/last_operation", dict(ids, **({"operation": op} if op else {})),
            interval=interval, timeout=timeout, gone_ok=True)
    except osb.OperationFailed as err:
        raise Failed(f"deprovision: {err}") from err
    if state not in ("succeeded", "gone"):
        raise Failed(f"deprovision ended {state!r}, not succeeded or 410 Gone")
    return state, time.monotonic() - t0
