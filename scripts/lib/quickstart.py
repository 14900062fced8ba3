#!/usr/bin/env python3
"""The platform's side of one service instance's life, step by step, against a running broker.

Run by scripts/quickstart once the broker answers /health; reads the broker's address and
credentials from WAYBACK_BROKER_URL / _USERNAME / _PASSWORD. Prints each step and its result;
on the first failure prints the broker's response and exits 1.

    catalog -> provision -> poll -> bind -> poll -> credentials -> psql -> unbind -> poll
            -> old credentials refused -> deprovision -> poll (succeeded, or 410 from older brokers)
            -> undo: provision with clone-from the deleted instance's name -> poll (progress)
            -> bind the clone -> psql: the row is back -> unbind -> deprovision the clone
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid

# Keep the repository free of __pycache__ directories.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import osb  # noqa: E402  (scripts/osb.py)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTANCE_NAME = "quickstart-db"
# Seconds an asynchronous operation may take before the walkthrough gives up.
OPERATION_TIMEOUT = float(os.environ.get("WAYBACK_QUICKSTART_TIMEOUT", "300"))


class StepFailed(Exception):
    def __init__(self, message: str, response: osb.Response | None = None):
        super().__init__(message)
        self.response = response


STEP = 0


def step(title: str) -> None:
    global STEP
    STEP += 1
    print(f"\n[{STEP}] {title}", flush=True)


def result(text: str) -> None:
    print(f"    {text}", flush=True)


def expect(resp: osb.Response, *statuses: int) -> osb.Response:
    result(f"HTTP {resp.status}")
    if resp.status not in statuses:
        want = " or ".join(str(s) for s in statuses)
        raise StepFailed(f"expected HTTP {want}", resp)
    return resp


def wait(client: osb.Client, path: str, query: dict[str, str], gone_ok: bool = False) -> None:
    def progress(state: str, description: str) -> None:
        result(f"{state}: {description}" if description else state)

    try:
        state, _ = osb.poll_last_operation(client, path, query, interval=0.5,
                                           timeout=OPERATION_TIMEOUT, gone_ok=gone_ok,
                                           on_progress=progress)
    except osb.OperationFailed as err:
        raise StepFailed(str(err), err.response) from err
    if state == "gone":
        result("HTTP 410 Gone: finished")


def psql(creds: dict, sql: str) -> subprocess.CompletedProcess[str]:
    """psql with the binding's uri, as an app connects: the uri asks for sslmode=verify-full,
    and libpq reads the CA only from a file, so the credentials' ca_certificate is written to
    one and named by PGSSLROOTCERT (README "TLS to every cluster")."""
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    with tempfile.TemporaryDirectory() as tmp:
        if creds.get("ca_certificate"):
            ca = os.path.join(tmp, "ca.crt")
            with open(ca, "w", encoding="utf-8") as f:
                f.write(creds["ca_certificate"])
            env["PGSSLROOTCERT"] = ca
        return subprocess.run(["psql", "--no-psqlrc", "--set=ON_ERROR_STOP=1", "--quiet",
                               "--no-align", "--tuples-only", "--dbname", creds["uri"],
                               "--command", sql],
                              env=env, text=True, capture_output=True, stdin=subprocess.DEVNULL)


def walk(client: osb.Client) -> None:
    service_id, plan_id = osb.catalog_ids(os.path.join(REPO, "catalog.json"), "small")
    ids = {"service_id": service_id, "plan_id": plan_id}
    org, space, app = (str(uuid.uuid4()) for _ in range(3))
    instance_id, binding_id = str(uuid.uuid4()), str(uuid.uuid4())
    instance = f"/v2/service_instances/{instance_id}"
    binding = f"{instance}/service_bindings/{binding_id}"
    context = {"platform": "cloudfoundry", "organization_guid": org, "space_guid": space,
               "instance_name": INSTANCE_NAME}

    step("GET /v2/catalog")
    resp = expect(client.get("/v2/catalog"), 200)
    for service in resp.body.get("services", []):
        plans = ", ".join(p["name"] for p in service.get("plans", []))
        result(f"service {service['name']} ({service['id']}), plans: {plans}")

    step(f"PUT {instance}?accepts_incomplete=true  (plan small, name {INSTANCE_NAME})")
    body = dict(ids, organization_guid=org, space_guid=space, context=context)
    resp = expect(client.put(instance, body, {"accepts_incomplete": "true"}), 201, 202)
    operation = resp.body.get("operation") if isinstance(resp.body, dict) else None
    if resp.status == 202:
        result(f"operation: {operation}")
        step(f"GET {instance}/last_operation until it ends")
        query = dict(ids, **({"operation": operation} if operation else {}))
        wait(client, f"{instance}/last_operation", query)

    step(f"PUT {binding}?accepts_incomplete=true")
    body = dict(ids, bind_resource={"app_guid": app}, context=context)
    resp = expect(client.put(binding, body, {"accepts_incomplete": "true"}), 200, 201, 202)
    if resp.status == 202:
        operation = resp.body.get("operation") if isinstance(resp.body, dict) else None
        step(f"GET {binding}/last_operation until it ends")
        query = dict(ids, **({"operation": operation} if operation else {}))
        wait(client, f"{binding}/last_operation", query)

    step(f"GET {binding}  (credentials)")
    resp = expect(client.get(binding, ids), 200)
    creds = osb.lookup(resp.body, "credentials") or {}
    missing = [k for k in ("uri", "jdbcUrl", "host", "port", "name", "database", "username",
                           "password") if k not in creds]
    if missing:
        raise StepFailed(f"credentials lack {', '.join(missing)}", resp)
    result(f"username {creds['username']}, password {str(creds['password'])[:3]}..., "
           f"host {creds['host']}:{creds['port']}, database {creds['database']}")
    result(f"uri ...?sslmode={creds.get('sslmode', '(none)')}, CA certificate "
           f"{'given' if creds.get('ca_certificate') else 'not given'}")

    step("psql: CREATE TABLE, INSERT, SELECT with the binding's uri and CA (verify-full)")
    sql = ("CREATE TABLE quickstart (id serial PRIMARY KEY, note text NOT NULL, "
           "at timestamptz NOT NULL DEFAULT now()); "
           "INSERT INTO quickstart (note) VALUES ('hello from the Wayback quick start'); "
           "SELECT id || ' | ' || note FROM quickstart;")
    done = psql(creds, sql)
    if done.returncode != 0:
        raise StepFailed(f"psql failed ({done.returncode}): {done.stderr.strip()}")
    rows_before = done.stdout.strip().splitlines()
    for line in rows_before:
        result(f"row: {line}")

    step(f"DELETE {binding}?accepts_incomplete=true")
    resp = expect(client.delete(binding, dict(ids, accepts_incomplete="true")), 200, 202)
    if resp.status == 202:
        operation = resp.body.get("operation") if isinstance(resp.body, dict) else None
        step(f"GET {binding}/last_operation until it ends")
        query = dict(ids, **({"operation": operation} if operation else {}))
        wait(client, f"{binding}/last_operation", query, gone_ok=True)

    step("psql with the deleted binding's credentials (must be refused)")
    done = psql(creds, "SELECT 1")
    if done.returncode == 0:
        raise StepFailed("the old credentials still connect after unbind")
    refusal = done.stderr.strip().splitlines()
    result(f"refused: {refusal[-1] if refusal else 'psql exit ' + str(done.returncode)}")

    step(f"DELETE {instance}?accepts_incomplete=true")
    resp = expect(client.delete(instance, dict(ids, accepts_incomplete="true")), 200, 202, 410)
    if resp.status == 202:
        operation = resp.body.get("operation") if isinstance(resp.body, dict) else None
        step(f"GET {instance}/last_operation until it ends (succeeded; 410 Gone also counts as done)")
        query = dict(ids, **({"operation": operation} if operation else {}))
        wait(client, f"{instance}/last_operation", query, gone_ok=True)

    undo(client, ids, org, space, app, rows_before)


def undo(client: osb.Client, ids: dict[str, str], org: str, space: str, app: str,
         rows_before: list[str]) -> None:
    """Brings the deleted instance back by its name, as `cf create-service ... -c
    '{"clone-from": "quickstart-db"}'` would, shows it has the row, and removes it again."""
    instance_id, binding_id = str(uuid.uuid4()), str(uuid.uuid4())
    instance = f"/v2/service_instances/{instance_id}"
    binding = f"{instance}/service_bindings/{binding_id}"
    context = {"platform": "cloudfoundry", "organization_guid": org, "space_guid": space,
               "instance_name": INSTANCE_NAME}
    parameters = {"clone-from": INSTANCE_NAME}

    step(f"PUT {instance}?accepts_incomplete=true  (undo: parameters {json.dumps(parameters)})")
    body = dict(ids, organization_guid=org, space_guid=space, context=context,
                parameters=parameters)
    resp = expect(client.put(instance, body, {"accepts_incomplete": "true"}), 202)
    operation = resp.body.get("operation") if isinstance(resp.body, dict) else None
    result(f"operation: {operation}")
    step(f"GET {instance}/last_operation until it ends (restore, WAL replay, promotion)")
    query = dict(ids, **({"operation": operation} if operation else {}))
    wait(client, f"{instance}/last_operation", query)

    step(f"PUT {binding}?accepts_incomplete=true  (the clone's own credentials)")
    body = dict(ids, bind_resource={"app_guid": app}, context=context)
    resp = expect(client.put(binding, body, {"accepts_incomplete": "true"}), 200, 201, 202)
    if resp.status == 202:
        operation = resp.body.get("operation") if isinstance(resp.body, dict) else None
        query = dict(ids, **({"operation": operation} if operation else {}))
        wait(client, f"{binding}/last_operation", query)
    resp = expect(client.get(binding, ids), 200)
    creds = osb.lookup(resp.body, "credentials") or {}
    result(f"username {creds['username']}, host {creds['host']}:{creds['port']}")

    step("psql on the clone: the row written before the delete is back")
    done = psql(creds, "SELECT id || ' | ' || note FROM quickstart ORDER BY id;")
    if done.returncode != 0:
        raise StepFailed(f"psql failed ({done.returncode}): {done.stderr.strip()}")
    rows = done.stdout.strip().splitlines()
    for line in rows:
        result(f"row: {line}")
    if rows != rows_before:
        raise StepFailed(f"the clone has {rows}, the deleted instance had {rows_before}")

    step(f"DELETE {binding} and {instance} (clean up the clone)")
    resp = expect(client.delete(binding, dict(ids, accepts_incomplete="true")), 200, 202)
    if resp.status == 202:
        operation = resp.body.get("operation") if isinstance(resp.body, dict) else None
        query = dict(ids, **({"operation": operation} if operation else {}))
        wait(client, f"{binding}/last_operation", query, gone_ok=True)
    resp = expect(client.delete(instance, dict(ids, accepts_incomplete="true")), 200, 202, 410)
    if resp.status == 202:
        operation = resp.body.get("operation") if isinstance(resp.body, dict) else None
        query = dict(ids, **({"operation": operation} if operation else {}))
        wait(client, f"{instance}/last_operation", query, gone_ok=True)


def main() -> int:
    client = osb.Client.from_env()
    try:
        walk(client)
    except StepFailed as err:
        print(f"\nFAILED at step {STEP}: {err}", file=sys.stderr)
        if err.response is not None:
            print(err.response.describe(), file=sys.stderr)
        return 1
    except (osb.OsbError, KeyError, ValueError, OSError) as err:
        print(f"\nFAILED at step {STEP}: {err}", file=sys.stderr)
        return 1
    print("\nDone: provisioned, bound, used, unbound and deprovisioned one instance, then brought\n"
          "it back by name with clone-from and removed the clone.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
