"""The two HA engines of scripts/bench-ha-engines behind one small interface: Patroni 3.0.2 on a
one-node etcd 3.4 (v3 API), and pg_auto_failover 2.0 with its monitor. Each builds the same
two-member PostgreSQL 15 cluster on 127.0.0.1 under the benchmark's temporary root, as the
cluster user. Standard library only; imports bench_ha_procs, never bench_ha (the driver).

Interface: start(), members (name, pgport, pgdata), primary(), engine_pids(m), postgres_pids(m),
kill(m), restart(m), switchover(), set_sync(bool), settled(), coordinator_stop()/_start(),
coordinator_pids(), set_failsafe(bool) (Patroni only), rejoin_method(m, log_offset)."""

from __future__ import annotations

import json
import os
import signal

from bench_ha_procs import (PGBIN, ClusterUser, is_primary, postmaster_pid, psql,
                            streaming_standbys, tree, comm, wait_for)


class Member:
    def __init__(self, name: str, pgport: int, pgdata: str, log: str):
        self.name, self.pgport, self.pgdata, self.log = name, pgport, pgdata, log
        self.proc = None


class Engine:
    members: list[Member]

    def __init__(self, user: ClusterUser, root: str, ports, tuned: bool):
        self.user, self.root, self.tuned = user, root, tuned
        self.ports = ports
        user.mkdir(root)

    def uri(self) -> str:
        hosts = ",".join(f"127.0.0.1:{m.pgport}" for m in self.members)
        return (f"postgresql://{self.user.name}@{hosts}/postgres"
                "?target_session_attrs=read-write&connect_timeout=2")

    def primary(self):
        found = [m for m in self.members if is_primary(self.user, m.pgport)]
        return found[0] if len(found) == 1 else None

    def wait_primary(self, timeout: float = 60) -> Member:
        """The one primary, waiting up to `timeout` s for there to be exactly one."""
        found = []
        if wait_for(lambda: found.append(self.primary()) or found[-1] is not None, timeout,
                    step=0.25) is None:
            raise RuntimeError(f"no single primary among {self.primaries()} for {timeout} s")
        return found[-1]

    def primaries(self) -> list[str]:
        return [m.name for m in self.members if is_primary(self.user, m.pgport)]

    def postgres_pids(self, m: Member) -> list[int]:
        pid = postmaster_pid(m.pgdata)
        return tree(pid) if pid else []

    def engine_pids(self, m: Member) -> list[int]:
        if m.proc is None or m.proc.poll() is not None:
            return []
        return [p for p in tree(m.proc.pid) if comm(p) != "postgres"]

    def kill_pids(self, m: Member) -> list[int]:
        return sorted(set(self.engine_pids(m)) | set(self.postgres_pids(m)))

    def streaming(self) -> bool:
        p = self.primary()
        return p is not None and streaming_standbys(self.user, p.pgport) >= 1

    def rejoin_method(self, m: Member, offset: int) -> str:
        """How the member came back, from what its engine logged since `offset`: a clone when
        a base backup was taken or a rewind failed (both engines fall back to a clone), else
        pg_rewind when it ran ("no rewind required" counts: pg_rewind decided), else a plain
        restart as standby. Only lines the engines log for what they did count, not a plan
        ("First, try to rewind. If that fails, do a pg_basebackup")."""
        text = open(m.log, errors="replace").read()[offset:].lower()
        if any(s in text for s in ("base backup completed", "replica has been created using",
                                   "failed to rewind", "pg_rewind exit code=1")):
            return "re-clone"
        if "running pg_rewind" in text or "pg_rewind --target-pgdata" in text:
            return "pg_rewind"
        return "restart as standby"


class Patroni(Engine):
    """Patroni 3.0.2 + etcd 3.4 (one node, v3 API through Patroni's etcd3 section)."""

    name = "patroni"

    def __init__(self, user, root, ports, tuned):
        super().__init__(user, root, ports, tuned)
        self.etcd_client, self.etcd_peer = ports.pop(), ports.pop()
        self.members = [Member(f"m{i}", ports.pop(), os.path.join(root, f"m{i}", "data"),
                               os.path.join(root, f"m{i}.log")) for i in (1, 2)]
        self.rest = {m.name: ports.pop() for m in self.members}
        self.etcd = None
        self.sync = False
        self.dcs = ({"ttl": 20, "loop_wait": 2, "retry_timeout": 5} if tuned
                    else {"ttl": 30, "loop_wait": 10, "retry_timeout": 10})

    def settings(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.dcs.items())

    def _etcd_start(self):
        self.etcd = self.user.start([
            "etcd", "--name", "e1", "--data-dir", os.path.join(self.root, "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_client}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_client}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer}",
            "--initial-cluster", f"e1=http://127.0.0.1:{self.etcd_peer}",
            "--initial-cluster-state", "new"], os.path.join(self.root, "etcd.log"))
        if wait_for(lambda: self.user.run(
                ["etcdctl", f"--endpoints=127.0.0.1:{self.etcd_client}", "endpoint", "health"],
                check=False, timeout=10).returncode == 0, 30) is None:
            raise RuntimeError("etcd did not become healthy in 30 s")

    def config_path(self, m: Member) -> str:
        return os.path.join(self.root, f"{m.name}.yml")

    def _write_config(self, m: Member):
        rest = self.rest[m.name]
        conf = {
            "scope": "bench", "name": m.name,
            "log": {"level": "INFO"},
            "restapi": {"listen": f"127.0.0.1:{rest}", "connect_address": f"127.0.0.1:{rest}"},
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_client}"]},
            "bootstrap": {
                "dcs": dict(self.dcs, maximum_lag_on_failover=1048576,
                            postgresql={"use_pg_rewind": True, "use_slots": True,
                                        "parameters": {"wal_log_hints": "on"}}),
                "initdb": [{"encoding": "UTF8"}, "data-checksums"],
                "pg_hba": ["local all all trust", "host all all 127.0.0.1/32 trust",
                           "host replication all 127.0.0.1/32 trust"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{m.pgport}", "connect_address": f"127.0.0.1:{m.pgport}",
                "data_dir": m.pgdata, "bin_dir": PGBIN,
                "pgpass": os.path.join(self.root, f"{m.name}.pgpass"),
                "authentication": {
                    "superuser": {"username": self.user.name, "password": "bench"},
                    "replication": {"username": "replicator", "password": "bench"},
                    "rewind": {"username": self.user.name, "password": "bench"}},
                "parameters": {"unix_socket_directories": self.root},
                "remove_data_directory_on_rewind_failure": True,
                "remove_data_directory_on_diverged_timelines": True,
            },
        }
        # JSON is YAML: Patroni reads it as its configuration file.
        with open(self.config_path(m), "w") as f:
            json.dump(conf, f, indent=1)

    def _member_start(self, m: Member):
        m.proc = self.user.start(["patroni", self.config_path(m)], m.log)

    def start(self):
        self._etcd_start()
        for m in self.members:
            self.user.mkdir(os.path.dirname(m.pgdata))
            self._write_config(m)
        self._member_start(self.members[0])
        if wait_for(lambda: is_primary(self.user, self.members[0].pgport), 90) is None:
            raise RuntimeError(f"patroni m1 did not bootstrap a primary in 90 s (see {self.members[0].log})")
        self._member_start(self.members[1])
        if wait_for(self.streaming, 120) is None:
            raise RuntimeError("patroni m2 did not stream in 120 s")

    def restart(self, m: Member):
        self._member_start(m)

    def ctl(self, *args, timeout=90):
        return self.user.run(["patronictl", "-c", self.config_path(self.members[0]), *args],
                             timeout=timeout)

    def switchover(self):
        self.ctl("switchover", "--force", "bench")

    def set_sync(self, on: bool):
        self.ctl("edit-config", "--force", "-s", f"synchronous_mode={'true' if on else 'false'}",
                 "bench")
        self.sync = on

    def set_failsafe(self, on: bool):
        self.ctl("edit-config", "--force", "-s", f"failsafe_mode={'true' if on else 'false'}",
                 "bench")

    def settled(self) -> bool:
        try:
            rows = json.loads(self.ctl("list", "-f", "json", "bench", timeout=20).stdout)
        except Exception:  # noqa: BLE001  (a failed or hung patronictl means: not yet)
            return False
        states = sorted((r.get("Role"), r.get("State")) for r in rows)
        # In synchronous_mode only the standby named in the /sync key may be promoted, and the
        # leader names a rejoined standby only on its next loop: until then a crash of the
        # primary is not failed over (by design: nothing acknowledged may be lost).
        want = {"Leader", "Sync Standby"} if self.sync else {"Leader", "Replica"}
        return (len(rows) == 2 and {r for r, _ in states} == want
                and all(s in ("running", "streaming") for _, s in states)
                and self.streaming())

    def coordinator_pids(self):
        return tree(self.etcd.pid) if self.etcd and self.etcd.poll() is None else []

    def coordinator_name(self) -> str:
        return "etcd"

    def coordinator_stop(self):
        self.etcd.terminate()
        self.etcd.wait(30)

    def coordinator_start(self):
        self._etcd_start()


class PgAutoFailover(Engine):
    """pg_auto_failover 2.0: a monitor (a PostgreSQL with the pgautofailover extension and its
    pg_autoctl) and two data nodes, each a pg_autoctl keeper supervising its PostgreSQL."""

    name = "pg_auto_failover"
    TUNED = {"health_check_period": 1000, "health_check_timeout": 1000,
             "health_check_max_retries": 1, "health_check_retry_delay": 500,
             "node_considered_unhealthy_timeout": 5000, "primary_demote_timeout": 10000}
    # The monitor waits primary_demote_timeout for an unreachable primary to demote itself
    # before it promotes the standby; the keeper demotes itself network_partition_timeout after
    # it lost both the monitor and its standby. The second must stay below the first, or the
    # fencing the wait stands for is gone.
    KEEPER_TUNED = {"timeout.network_partition_timeout": 5}

    def __init__(self, user, root, ports, tuned):
        super().__init__(user, root, ports, tuned)
        self.monitor_port = ports.pop()
        self.monitor_data = os.path.join(root, "monitor")
        self.monitor = None
        self.members = [Member(f"n{i}", ports.pop(), os.path.join(root, f"n{i}"),
                               os.path.join(root, f"n{i}.log")) for i in (1, 2)]

    def settings(self) -> str:
        if not self.tuned:
            return "packaged defaults"
        return ", ".join([f"pgautofailover.{k} {v} ms" if k != "health_check_max_retries"
                          else f"pgautofailover.{k} {v}" for k, v in self.TUNED.items()]
                         + [f"keeper {k} {v} s" for k, v in self.KEEPER_TUNED.items()])

    def monitor_uri(self) -> str:
        return f"postgres://autoctl_node@127.0.0.1:{self.monitor_port}/pg_auto_failover?sslmode=disable"

    def monitor_sql(self, sql: str):
        return psql(self.user, self.monitor_port, sql, db="pg_auto_failover")

    def _initdb(self, pgdata: str):
        """pg_autoctl would initdb itself, but its PostgreSQL would then put its socket in the
        compiled-in /var/run/postgresql (not the cluster user's to write) and listen on '*': an
        existing cluster whose postgresql.conf says where is used as it is."""
        self.user.run([f"{PGBIN}/initdb", "-D", pgdata, "--auth=trust", "--data-checksums",
                       "-U", self.user.name], timeout=120)
        with open(os.path.join(pgdata, "postgresql.conf"), "a") as f:
            f.write(f"unix_socket_directories = '{self.root}'\nlisten_addresses = '127.0.0.1'\n")

    def _autoctl(self, argv, log):
        return self.user.start(argv, log, {"PGHOST": self.root})

    def _monitor_start(self, create: bool):
        if create:
            self._initdb(self.monitor_data)
        argv = (["pg_autoctl", "create", "monitor", "--pgdata", self.monitor_data,
                 "--pgport", str(self.monitor_port), "--hostname", "127.0.0.1", "--listen",
                 "127.0.0.1", "--auth", "trust", "--no-ssl", "--pgctl", f"{PGBIN}/pg_ctl", "--run"]
                if create else ["pg_autoctl", "run", "--pgdata", self.monitor_data])
        self.monitor = self._autoctl(argv, os.path.join(self.root, "monitor.log"))
        if wait_for(lambda: self.monitor_sql("SELECT count(*) FROM pgautofailover.formation") is not None,
                    90) is None:
            raise RuntimeError("the pg_auto_failover monitor did not answer in 90 s")

    def _node_start(self, m: Member, create: bool):
        # The first node starts from a cluster of ours (see _initdb); the second one is cloned
        # from it by pg_autoctl (pg_basebackup), postgresql.conf included.
        if create and m is self.members[0]:
            self._initdb(m.pgdata)
        argv = (["pg_autoctl", "create", "postgres", "--pgdata", m.pgdata, "--pgport", str(m.pgport),
                 "--hostname", "127.0.0.1", "--listen", "127.0.0.1", "--name", m.name,
                 "--monitor", self.monitor_uri(), "--auth", "trust", "--no-ssl",
                 "--pgctl", f"{PGBIN}/pg_ctl", "--run"] if create
                else ["pg_autoctl", "run", "--pgdata", m.pgdata])
        m.proc = self._autoctl(argv, m.log)

    def states(self):
        out = self.monitor_sql("SELECT nodename || ':' || reportedstate || ':' || goalstate "
                               "FROM pgautofailover.node ORDER BY nodeid")
        return [] if not out else out.splitlines()

    def settled(self) -> bool:
        st = self.states()
        roles = sorted(s.split(":")[1] for s in st)
        return (len(st) == 2 and all(s.split(":")[1] == s.split(":")[2] for s in st)
                and roles == ["primary", "secondary"] and self.streaming())

    def start(self):
        self._monitor_start(create=True)
        if self.tuned:
            for k, v in self.TUNED.items():
                self.monitor_sql(f"ALTER SYSTEM SET pgautofailover.{k} TO {v}")
            self.monitor_sql("SELECT pg_reload_conf()")
        self._node_start(self.members[0], create=True)
        if wait_for(lambda: is_primary(self.user, self.members[0].pgport)
                    and any(s.endswith(":single:single") for s in self.states()), 120) is None:
            raise RuntimeError(f"pg_autoctl n1 did not become primary in 120 s (see {self.members[0].log})")
        self._node_start(self.members[1], create=True)
        if wait_for(self.settled, 180) is None:
            raise RuntimeError(f"pg_autoctl n2 did not reach secondary in 180 s: {self.states()}")
        if self.tuned:
            for m in self.members:
                for k, v in self.KEEPER_TUNED.items():
                    self.user.run(["pg_autoctl", "config", "set", "--pgdata", m.pgdata, k, str(v)],
                                  extra_env={"PGHOST": self.root})
                os.kill(m.proc.pid, signal.SIGHUP)

    def restart(self, m: Member):
        self._node_start(m, create=False)

    def engine_pids(self, m: Member) -> list[int]:
        # The keeper's supervisor starts PostgreSQL as its own child: keep only pg_autoctl.
        return [p for p in super().engine_pids(m) if comm(p) == "pg_autoctl"]

    def switchover(self):
        self.user.run(["pg_autoctl", "perform", "switchover", "--pgdata", self.members[0].pgdata,
                       "--wait", "120"], timeout=150, extra_env={"PGHOST": self.root})

    def set_sync(self, on: bool):
        for m in self.members:
            self.user.run(["pg_autoctl", "set", "node", "replication-quorum",
                           "true" if on else "false", "--pgdata", m.pgdata], timeout=60,
                          extra_env={"PGHOST": self.root})

    def set_failsafe(self, on: bool):
        raise NotImplementedError("pg_auto_failover has no failsafe mode")

    def coordinator_pids(self):
        if not self.monitor or self.monitor.poll() is not None:
            return []
        pids = set(tree(self.monitor.pid))
        pm = postmaster_pid(self.monitor_data)
        if pm:
            pids |= set(tree(pm))
        return sorted(pids)

    def coordinator_name(self) -> str:
        return "monitor"

    def coordinator_stop(self):
        os.killpg(self.monitor.pid, 15)
        self.monitor.wait(60)
        wait_for(lambda: postmaster_pid(self.monitor_data) is None, 30)

    def coordinator_start(self):
        self._monitor_start(create=False)
