"""The service spread over hosts (harness.hosts) as a site that outgrew one machine runs it: a
data host (PostgreSQL and Redis), web hosts (gunicorn as the image runs it), worker hosts (the
Procfile's worker lines each) and a beat host, every process started by harness.service on its
own host, with a directory of its own (HOME, TMPDIR, SIGNUP_VAR_DIR, the metrics directory):
nothing is shared but the network."""

import itertools
import secrets
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

import psycopg
import redis
import requests

from harness.hosts import DataHost, Host, Network, clock_env
from harness.processes import SmtpSink, migrated_template, pg_url
from harness.service import Service, ServiceError

OBSERVER = "hosts-test-observer"


class Cluster:
    """Hosts named data, web1.., worker1.., beat; `env` goes to every process (the workflow's
    knobs, the email backend unless `mail` is given: an SmtpSink on the outside address)."""

    def __init__(
        self,
        tmp: Path,
        *,
        web_hosts: int = 2,
        worker_hosts: int = 2,
        env: dict[str, str] | None = None,
        mail: SmtpSink | None = None,
        startup_timeout: float = 90,
        latency: tuple[float, float] | None = None,
        web_workers: int = 2,
    ):
        self.tmp = tmp
        self.web_count, self.worker_count = web_hosts, worker_hosts
        self.extra_env = env or {}
        self.mail = mail
        self.startup_timeout = startup_timeout
        self.latency = latency  # (delay, jitter) ms between the data host and the others
        self.web_workers = web_workers  # gunicorn's --workers on each web host
        self.network = Network()
        self.data: DataHost | None = None
        self.database_url = ""
        self.broker_url = ""
        self.api_key = secrets.token_urlsafe(24)
        self.secret_key = secrets.token_urlsafe(50)
        self.services: dict[str, Service] = {}  # by host name
        self._next_web = itertools.cycle(range(web_hosts))

    # --- Building it ----------------------------------------------------------------------------

    def open(self) -> "Cluster":
        self.network.open()
        try:
            self.data = DataHost(self.network.add("data"), latency=self.latency)
            self.data.start()
            # The migrated template of the machine's own server, copied over: no migration run.
            self.database_url = self.data.create_database(
                "signup", copy_of=pg_url(migrated_template())
            )
            self.broker_url = self.data.broker_url()
            for number in range(1, self.web_count + 1):
                self.network.add(f"web{number}")
            for number in range(1, self.worker_count + 1):
                self.network.add(f"worker{number}")
            self.network.add("beat")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for service in self.services.values():
            # The host may be dead already: the network's close() kills what is left.
            with suppress(Exception):
                service.stop()
        if self.data is not None:
            self.data.stop()
        self.network.close()

    def __enter__(self) -> "Cluster":
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def web_hosts(self) -> list[Host]:
        return [self.network.hosts[f"web{n}"] for n in range(1, self.web_count + 1)]

    @property
    def env(self) -> dict[str, str]:
        """What every process of every host gets."""
        webs = self.web_hosts
        env = {
            "SECRET_KEY": self.secret_key,
            "SITE_URL": f"http://{webs[0].address}:8000",
            "ALLOWED_HOSTS": ",".join(host.address for host in webs),
            "CONN_MAX_AGE": "60",  # the production default
        }
        if self.mail is not None:
            env["EMAIL_URL"] = f"smtp://{self.mail.hostname}:{self.mail.port}"
            env["EMAIL_BACKEND"] = ""
        return env | self.extra_env

    def service(self, host_name: str, *, env: dict[str, str] | None = None) -> Service:
        """The service's processes on host `host_name` (made on the network if new)."""
        host = self.network.hosts.get(host_name) or self.network.add(host_name)
        if host_name not in self.services:
            directory = self.tmp / host_name
            directory.mkdir(parents=True, exist_ok=True)
            self.services[host_name] = Service(
                tmp=directory,
                database_url=self.database_url,
                broker_url=self.broker_url,
                api_key=self.api_key,
                startup_timeout=self.startup_timeout,
                web_workers=self.web_workers,
                host=host,
                env={**self.env, **(env or {})},
            )
        return self.services[host_name]

    def start(self, *, beat: bool = True) -> None:
        """Web on every web host, the Procfile's workers on every worker host, beat."""
        for host in self.web_hosts:
            self.service(host.name).start_web(wait=False)
        worker_hosts = [f"worker{number}" for number in range(1, self.worker_count + 1)]
        for name in worker_hosts:
            self.start_worker_host(name, wait=False)
        for host in self.web_hosts:
            service = self.services[host.name]
            service.wait_for(service.web_answers, timeout=self.startup_timeout, what="web")
        self.wait_until_ready(worker_hosts)
        if beat:
            self.service("beat").start_beat()

    def start_worker_host(
        self, name: str, *, clock_offset: float = 0, wait: bool = True
    ) -> Service:
        """The Procfile's workers and the metrics server on host `name`, its clock
        `clock_offset` seconds wrong; `wait`: until each worker is ready."""
        host = self.network.hosts.get(name) or self.network.add(name)
        env = {"ALLOWED_HOSTS": host.address}  # its /metrics is asked for at its address
        service = self.service(name, env=env | (clock_env(clock_offset) if clock_offset else {}))
        service.start_host_metrics()
        service.start_workers(wait=wait)
        return service

    def start_worker_hosts(self, names: list[str]) -> None:
        """Start these worker hosts at once, then wait until every worker of each is ready."""
        for name in names:
            self.start_worker_host(name, wait=False)
        self.wait_until_ready(names)

    def wait_until_ready(self, names: list[str]) -> None:
        for name in names:
            service = self.services[name]
            for worker in service.workers.values():
                service.wait_until_ready(worker)

    def kill_host(self, name: str) -> int:
        """The host dies whole: its link goes down and every process on it is killed."""
        host = self.network.hosts[name]
        host.link(up=False)
        killed = host.kill_everything()
        service = self.services.pop(name, None)
        if service is not None:
            for process in service.processes:
                process.popen.wait(timeout=30)
        return killed

    # --- Talking to it --------------------------------------------------------------------------

    def web(self) -> Service:
        """The next web host's service, in turn, as a load balancer hands requests out."""
        return self.services[f"web{next(self._next_web) + 1}"]

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.web().api(method, path, **kwargs)

    def query(self, statement: str, params: Iterable = ()) -> list[tuple]:
        with psycopg.connect(
            self.database_url, autocommit=True, application_name=OBSERVER, connect_timeout=10
        ) as connection:
            return connection.execute(statement, tuple(params)).fetchall()

    def connections(self) -> dict[str, int]:
        """The database's connections by the host they come from, and the broker's."""
        names = {host.address: host.name for host in self.network.hosts.values()}
        rows = self.query(
            "SELECT host(client_addr), count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name <> %s GROUP BY 1",
            [OBSERVER],
        )
        return {names.get(address, address): count for address, count in rows}

    def broker_connections(self) -> dict[str, int]:
        names = {host.address: host.name for host in self.network.hosts.values()}
        names[self.network.outside_address] = "outside"
        client = redis.Redis.from_url(self.broker_url, socket_timeout=10)
        counts: dict[str, int] = {}
        for entry in client.client_list():
            address = entry["addr"].rsplit(":", 1)[0]
            name = names.get(address, address)
            counts[name] = counts.get(name, 0) + 1
        client.close()
        return counts

    def logs(self) -> str:
        return "\n".join(
            f"===== {name} =====\n{service.logs(tail=6000)}"
            for name, service in self.services.items()
        )

    def wait_for(self, check, *, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not (value := check()):
            if time.monotonic() > deadline:
                raise ServiceError(f"{timeout:.0f}s passed before {what}\n{self.logs()}")
            time.sleep(0.1)
        return value
