#!/usr/bin/env python3
"""A tiny Open Service Broker API v2.17 client: the platform's side of the conversation.

Used by scripts/quickstart and scripts/bench-provision, and by hand. Standard library only.

Library:

    import osb
    client = osb.Client.from_env()        # WAYBACK_BROKER_URL / _USERNAME / _PASSWORD
    resp = client.put("/v2/service_instances/ID", body, query={"accepts_incomplete": "true"})
    resp.status, resp.body                # body: parsed JSON, or text when not JSON
    state, description = osb.poll_last_operation(client, "/v2/service_instances/ID/last_operation",
                                                  query={...})

    osb.get / osb.put / osb.patch / osb.delete do the same with a client made from the environment.

Command line (prints the response body; exits 1 when the status is not one of --expect):

    osb.py catalog
    osb.py get    PATH [--query k=v ...] [--expect 200] [--field credentials.uri]
    osb.py put    PATH --data JSON [--query k=v ...] [--expect 201,202]
    osb.py patch  PATH --data JSON [--query k=v ...]
    osb.py delete PATH [--query k=v ...]
    osb.py poll   PATH [--query k=v ...] [--interval 0.5] [--timeout 300] [--gone-ok]
    osb.py ids    [CATALOG_JSON] [--plan small]    prints "SERVICE_ID PLAN_ID"

The password is read from the environment only, never from the command line, so that it does
not show in `ps`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

API_VERSION = "2.17"
DEFAULT_URL = "http://127.0.0.1:8080"
# Seconds one HTTP request may take; the broker answers OSB calls synchronously and quickly.
REQUEST_TIMEOUT = 30.0


class OsbError(Exception):
    """The broker could not be reached, or answered something this client cannot use."""


@dataclass
class Response:
    method: str
    url: str
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """The request line, status and body, for a person reading a failure."""
        body = self.body if isinstance(self.body, str) else json.dumps(self.body, indent=2)
        return f"{self.method} {self.url} -> HTTP {self.status}\n{body}"


class Client:
    def __init__(self, url: str, username: str, password: str, timeout: float = REQUEST_TIMEOUT):
        self.url = url.rstrip("/")
        self.timeout = timeout
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._auth = f"Basic {token}"

    @classmethod
    def from_env(cls) -> "Client":
        return cls(
            os.environ.get("WAYBACK_BROKER_URL", DEFAULT_URL),
            os.environ.get("WAYBACK_BROKER_USERNAME", "admin"),
            os.environ.get("WAYBACK_BROKER_PASSWORD", ""),
        )

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, str] | None = None) -> Response:
        url = self.url + path
        if query:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(query)
        headers = {
            "Authorization": self._auth,
            "X-Broker-API-Version": API_VERSION,
            "X-Broker-API-Request-Identity": str(uuid.uuid4()),
            "Accept": "application/json",
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return _response(method, url, resp.status, resp.read(), resp.headers)
        except urllib.error.HTTPError as err:
            # 4xx/5xx are answers, not transport failures: hand them to the caller.
            return _response(method, url, err.code, err.read(), err.headers)
        except (urllib.error.URLError, OSError) as err:
            raise OsbError(f"{method} {url}: {err}") from err

    def get(self, path: str, query: dict[str, str] | None = None) -> Response:
        return self.request("GET", path, query=query)

    def put(self, path: str, body: Any, query: dict[str, str] | None = None) -> Response:
        return self.request("PUT", path, body=body, query=query)

    def patch(self, path: str, body: Any, query: dict[str, str] | None = None) -> Response:
        return self.request("PATCH", path, body=body, query=query)

    def delete(self, path: str, query: dict[str, str] | None = None) -> Response:
        return self.request("DELETE", path, query=query)


def _response(method: str, url: str, status: int, raw: bytes, headers: Any) -> Response:
    text = raw.decode("utf-8", errors="replace")
    try:
        body: Any = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        body = text
    return Response(method, url, status, body, dict(headers.items()) if headers else {})


def get(path: str, query: dict[str, str] | None = None) -> Response:
    return Client.from_env().get(path, query)


def put(path: str, body: Any, query: dict[str, str] | None = None) -> Response:
    return Client.from_env().put(path, body, query)


def patch(path: str, body: Any, query: dict[str, str] | None = None) -> Response:
    return Client.from_env().patch(path, body, query)


def delete(path: str, query: dict[str, str] | None = None) -> Response:
    return Client.from_env().delete(path, query)


class OperationFailed(Exception):
    """last_operation said `failed`, answered an unexpected status, or did not finish in time."""

    def __init__(self, message: str, response: Response | None = None):
        super().__init__(message)
        self.response = response


def poll_last_operation(client: Client, path: str, query: dict[str, str] | None = None,
                        interval: float = 0.5, timeout: float = 300.0, gone_ok: bool = False,
                        on_progress: Callable[[str, str], None] | None = None) -> tuple[str, str]:
    """Polls a last_operation endpoint until the operation ends.

    Returns ("succeeded", description), or ("gone", "") when gone_ok and the broker answers 410.
    A finished deprovision or unbind is ("succeeded", description) from Wayback, which keeps the
    operation as a tombstone, and 410 from older brokers: a caller following a delete passes
    gone_ok=True and treats both as done. Raises OperationFailed on `failed`, on any other status,
    and when `timeout` seconds pass. on_progress(state, description) is called whenever the
    description changes.
    """
    deadline = time.monotonic() + timeout
    seen: str | None = None
    while True:
        resp = client.get(path, query)
        if resp.status == 410 and gone_ok:
            return "gone", ""
        if resp.status != 200 or not isinstance(resp.body, dict):
            raise OperationFailed(f"last_operation answered HTTP {resp.status}", resp)
        state = resp.body.get("state", "")
        description = resp.body.get("description", "") or ""
        if on_progress and description != seen:
            on_progress(state, description)
        seen = description
        if state == "succeeded":
            return state, description
        if state == "failed":
            raise OperationFailed(f"operation failed: {description}", resp)
        if state != "in progress":
            raise OperationFailed(f"unknown state {state!r}", resp)
        if time.monotonic() >= deadline:
            raise OperationFailed(f"still in progress after {timeout:g}s: {description}", resp)
        time.sleep(interval)


def catalog_ids(catalog_path: str, plan_name: str = "small") -> tuple[str, str]:
    """(service id, plan id) from a catalog.json: the first service and its plan by name."""
    with open(catalog_path, encoding="utf-8") as f:
        service = json.load(f)["services"][0]
    for plan in service["plans"]:
        if plan["name"] == plan_name:
            return service["id"], plan["id"]
    names = ", ".join(p["name"] for p in service["plans"])
    raise KeyError(f"no plan named {plan_name!r} in {catalog_path} (plans: {names})")


def lookup(value: Any, dotted: str) -> Any:
    """value["a"][0]["b"] for "a.0.b"; None when any step is missing."""
    for key in dotted.split("."):
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            return None
    return value


def _query(pairs: list[str]) -> dict[str, str]:
    query = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"osb.py: --query wants key=value, got {pair!r}")
        query[key] = value
    return query


def _print_body(resp: Response, dotted: str | None) -> None:
    value = lookup(resp.body, dotted) if dotted else resp.body
    if value is None:
        return
    print(value if isinstance(value, str) else json.dumps(value, indent=2))


def main(argv: list[str] | None = None) -> int:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description="A tiny OSB v2.17 client (see the module doc).")
    parser.add_argument("--url", default=os.environ.get("WAYBACK_BROKER_URL", DEFAULT_URL))
    parser.add_argument("--username", default=os.environ.get("WAYBACK_BROKER_USERNAME", "admin"))
    parser.add_argument("--password-env", default="WAYBACK_BROKER_PASSWORD",
                        help="environment variable holding the password")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("catalog", help="GET /v2/catalog")
    for name in ("get", "put", "patch", "delete"):
        p = sub.add_parser(name, help=f"{name.upper()} PATH")
        p.add_argument("path")
        p.add_argument("--query", action="append", default=[], metavar="K=V")
        p.add_argument("--expect", default=None,
                       help="comma-separated acceptable statuses (default: any 2xx)")
        p.add_argument("--field", default=None, help="print only this dotted field of the body")
        if name in ("put", "patch"):
            p.add_argument("--data", required=True, help="JSON body")
    p = sub.add_parser("poll", help="poll a last_operation PATH until it ends")
    p.add_argument("path")
    p.add_argument("--query", action="append", default=[], metavar="K=V")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--gone-ok", action="store_true", help="treat HTTP 410 as success (a finished delete on an older broker)")
    p = sub.add_parser("ids", help="print the service id and a plan id from catalog.json")
    p.add_argument("catalog", nargs="?", default=os.path.join(repo, "catalog.json"))
    p.add_argument("--plan", default="small")
    args = parser.parse_args(argv)

    if args.command == "ids":
        print(*catalog_ids(args.catalog, args.plan))
        return 0

    client = Client(args.url, args.username, os.environ.get(args.password_env, ""))
    try:
        if args.command == "poll":
            def progress(state: str, description: str) -> None:
                print(f"{state}: {description}", file=sys.stderr)
            state, _ = poll_last_operation(client, args.path, _query(args.query), args.interval,
                                           args.timeout, args.gone_ok, progress)
            print(state)
            return 0
        if args.command == "catalog":
            resp, expect, dotted = client.get("/v2/catalog"), {200}, None
        else:
            body = json.loads(args.data) if args.command in ("put", "patch") else None
            resp = client.request(args.command.upper(), args.path, body, _query(args.query))
            expect = {int(s) for s in args.expect.split(",")} if args.expect else None
            dotted = args.field
    except OperationFailed as err:
        print(f"osb.py: {err}", file=sys.stderr)
        if err.response is not None:
            print(err.response.describe(), file=sys.stderr)
        return 1
    except OsbError as err:
        print(f"osb.py: {err}", file=sys.stderr)
        return 1

    ok = resp.status in expect if expect else 200 <= resp.status < 300
    if not ok:
        print(resp.describe(), file=sys.stderr)
        return 1
    _print_body(resp, dotted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
