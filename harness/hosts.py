"""Several hosts on this machine: each a Linux network namespace of its own with one address on
a private network (a bridge in a namespace of its own, 10.77.N.0/24), so that the service's
processes reach each other only as they would across machines, and a test can break the
network between them: a link down, packets to one host dropped (nftables), a share of every
packet lost (nftables), latency (a delaying relay in front of the data host's servers,
harness.relay: this kernel has no netem), a clock that is wrong (libfaketime).

The machine itself is one more host on that network (the outside, at .254): the tests, the
stand-in email provider and the load come from there, as they come from the internet. Nothing
else is reached: every address here is one of these hosts'. Needs root and iproute2; the
faults need nftables and faketime (`make test` and `make faults-hosts` install them).
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from harness.processes import ROOT

SUBNET = "10.77"
OUTSIDE = 254  # the machine's own address on the hosts' network
FAKETIME_LIBRARY = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


class HostsError(RuntimeError):
    pass


def available() -> str:
    """Why hosts cannot be made here, or "" if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for program in ("ip", "tc"):
        if shutil.which(program) is None:
            return f"{program} (iproute2) is not installed"
    return ""


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise HostsError(f"{' '.join(command)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


@dataclass
class Host:
    """One machine of the network: a namespace, its address, its link to the bridge."""

    network: "Network"
    name: str
    number: int
    cuts: list[str] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return f"{self.network.prefix}-{self.name}"

    @property
    def address(self) -> str:
        return f"{self.network.subnet}.{self.number}"

    @property
    def port_name(self) -> str:
        """Its link's end on the bridge."""
        return f"p{self.number}"

    def wrap(self, command: list[str]) -> list[str]:
        """`command` run on this host (`ip netns exec` execs it: the process is the command)."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(*self.wrap(list(command)), check=check)

    # --- Faults ---------------------------------------------------------------------------

    def link(self, up: bool) -> None:
        """Plug the host's cable in or pull it: every connection to it stalls, none is closed."""
        _run("ip", "-n", self.network.switch, "link", "set", self.port_name, "up" if up else "down")

    def cut_from(self, other: "Host", *, port: int | None = None) -> None:
        """Drop every packet between this host and `other` (only those of `other`'s TCP `port`
        if given), both ways and silently, as a broken switch or a firewall does."""
        match = f"ip daddr {other.address}" + (f" tcp dport {port}" if port else "")
        back = f"ip saddr {other.address}" + (f" tcp sport {port}" if port else "")
        if not self.cuts:
            self.run("nft", "add", "table", "inet", "cut")
            for chain, hook in (("out", "output"), ("in", "input")):
                self.run(
                    "nft", "add", "chain", "inet", "cut", chain,
                    f"{{ type filter hook {hook} priority 0 ; }}",
                )  # fmt: skip
        self.run("nft", "add", "rule", "inet", "cut", "out", *match.split(), "drop")
        self.run("nft", "add", "rule", "inet", "cut", "in", *back.split(), "drop")
        self.cuts.append(match)

    def heal(self) -> None:
        """Take every cut away."""
        if self.cuts:
            self.run("nft", "delete", "table", "inet", "cut")
            self.cuts.clear()

    def drop_randomly(self, percent: float) -> None:
        """Lose `percent` % of the packets this host sends, at random (nftables' numgen):
        between two hosts each direction loses its sender's share, and TCP retransmits."""
        per_mille = round(percent * 10)
        self.run("nft", "add", "table", "inet", "chaos")
        self.run(
            "nft", "add", "chain", "inet", "chaos", "out",
            "{ type filter hook output priority 0 ; }",
        )  # fmt: skip
        self.run(
            "nft", "add", "rule", "inet", "chaos", "out", "oifname", "eth0",
            "numgen", "random", "mod", "1000", "<", str(per_mille), "drop",
        )  # fmt: skip

    def pids(self) -> list[int]:
        done = _run("ip", "netns", "pids", self.namespace, check=False)
        return [int(pid) for pid in done.stdout.split()]

    def kill_everything(self) -> int:
        """SIGKILL to every process on the host, as a power cut does; return how many."""
        pids = self.pids()
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)


def clock_env(offset_seconds: float) -> dict[str, str]:
    """The environment that makes a process's clock `offset_seconds` wrong (libfaketime). Its
    monotonic clock moves by the same offset, which changes no interval measured on it
    (and libfaketime 0.9.10 fails Python's sleep with EINVAL when told to leave it alone)."""
    if not FAKETIME_LIBRARY.exists():
        raise HostsError(f"{FAKETIME_LIBRARY} is missing: install Debian's faketime")
    return {
        "LD_PRELOAD": str(FAKETIME_LIBRARY),
        "FAKETIME": f"{offset_seconds:+.0f}",
    }


class Network:
    """The bridge and the hosts on it; close() kills every process on them and removes all."""

    def __init__(self):
        self.prefix = f"sg{secrets.token_hex(2)}"
        self.subnet = f"{SUBNET}.{self._free_subnet()}"
        self.switch = f"{self.prefix}-switch"
        self.outside = f"{self.prefix}o"  # the machine's end of its link
        self.hosts: dict[str, Host] = {}

    @staticmethod
    def _free_subnet() -> int:
        taken = _run("ip", "-o", "-4", "addr").stdout
        for _ in range(100):
            number = secrets.randbelow(250) + 1
            if f"{SUBNET}.{number}." not in taken:
                return number
        raise HostsError(f"no free {SUBNET}.N.0/24 network")

    def open(self) -> "Network":
        if why := available():
            raise HostsError(why)
        _run("ip", "netns", "add", self.switch)
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        _run(
            "ip", "link", "add", self.outside, "type", "veth",
            "peer", "name", "p0", "netns", self.switch,
        )  # fmt: skip
        _run("ip", "-n", self.switch, "link", "set", "p0", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.subnet}.{OUTSIDE}/24", "dev", self.outside)
        _run("ip", "link", "set", self.outside, "up")
        return self

    @property
    def outside_address(self) -> str:
        return f"{self.subnet}.{OUTSIDE}"

    def add(self, name: str) -> Host:
        host = Host(self, name, len(self.hosts) + 1)
        _run("ip", "netns", "add", host.namespace)
        _run(
            "ip", "-n", host.namespace, "link", "add", "eth0", "type", "veth",
            "peer", "name", host.port_name, "netns", self.switch,
        )  # fmt: skip
        _run("ip", "-n", self.switch, "link", "set", host.port_name, "master", "br0", "up")
        _run("ip", "-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _run("ip", "-n", host.namespace, "link", "set", "eth0", "up")
        _run("ip", "-n", host.namespace, "link", "set", "lo", "up")
        self.hosts[name] = host
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            host.kill_everything()
        time.sleep(0.2)
        for host in self.hosts.values():
            _run("ip", "netns", "del", host.namespace, check=False)
        _run("ip", "link", "del", self.outside, check=False)
        _run("ip", "netns", "del", self.switch, check=False)

    @contextmanager
    def running(self):
        self.open()
        try:
            yield self
        finally:
            self.close()


# --- The data host: PostgreSQL and Redis of its own ---------------------------------------------


class DataHost:
    """A PostgreSQL cluster made with initdb (run as the postgres user, as the server refuses
    root) and a redis-server without persistence, both listening on the host's address."""

    PG_PORT = 5432
    REDIS_PORT = 6379
    STARTUP_TIMEOUT = 60

    def __init__(
        self,
        host: Host,
        *,
        max_connections: int = 400,
        latency: tuple[float, float] | None = None,
    ):
        self.host = host
        self.max_connections = max_connections
        # (delay, jitter) in ms: the servers listen on the host's loopback, behind relays
        # (harness.relay) on its address that delay every byte both ways.
        self.latency = latency
        # Under /tmp, not a test's tmp_path: the postgres user must reach it.
        self.directory = Path(tempfile.mkdtemp(prefix=f"{host.namespace}-"))
        self.processes: list[subprocess.Popen] = []

    def database_url(self, name: str = "signup") -> str:
        return f"postgres://postgres@{self.host.address}:{self.PG_PORT}/{name}"

    def broker_url(self, db: int = 0) -> str:
        return f"redis://{self.host.address}:{self.REDIS_PORT}/{db}"

    def start(self) -> None:
        data = self.directory / "pg"
        shutil.chown(self.directory, "postgres", "postgres")
        as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        initdb = [*as_postgres, "initdb", "-D", str(data), "-U", "postgres", "--auth=trust"]
        done = subprocess.run(initdb, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise HostsError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.host.network.subnet}.0/24 trust\n")
        # The machine's data dies with the test: fsync buys nothing here and costs the disk.
        listen = "127.0.0.1" if self.latency else self.host.address
        postgres = [
            *as_postgres, "postgres", "-D", str(data),
            "-c", f"listen_addresses={listen}",
            "-c", f"unix_socket_directories={self.directory}",
            "-c", f"max_connections={self.max_connections}",
            "-c", "fsync=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        self._start(postgres, self.directory / "postgres.log")
        redis_server = [
            "redis-server", "--bind", listen, "--port", str(self.REDIS_PORT),
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            "--protected-mode", "no",
        ]  # fmt: skip
        self._start(redis_server, self.directory / "redis.log")
        if self.latency:
            delay, jitter = self.latency
            for port in (self.PG_PORT, self.REDIS_PORT):
                relay = [
                    sys.executable, "-m", "harness.relay",
                    f"{self.host.address}:{port}", f"127.0.0.1:{port}",
                    "--delay-ms", str(delay), "--jitter-ms", str(jitter),
                ]  # fmt: skip
                self._start(relay, self.directory / f"relay-{port}.log")
        deadline = time.monotonic() + self.STARTUP_TIMEOUT
        while not self._answers():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                logs = "\n".join(
                    (self.directory / f).read_text(errors="replace")
                    for f in ("postgres.log", "redis.log")
                    if (self.directory / f).exists()
                )
                raise HostsError(f"the data host did not start:\n{logs[-5000:]}")
            time.sleep(0.1)

    def _start(self, command: list[str], log: Path) -> None:
        with log.open("wb") as out:
            self.processes.append(
                subprocess.Popen(
                    self.host.wrap(command),
                    cwd=ROOT,  # harness.relay is run from the repository
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def _answers(self) -> bool:
        try:
            with psycopg.connect(self.database_url("postgres"), connect_timeout=2) as connection:
                connection.execute("SELECT 1")
            with redis.Redis(host=self.host.address, port=self.REDIS_PORT, socket_timeout=2) as r:
                return r.ping()
        except (psycopg.OperationalError, redis.ConnectionError, redis.TimeoutError):
            return False

    def create_database(self, name: str, *, copy_of: str | None = None) -> str:
        """Create database `name`; with `copy_of` (a database URL elsewhere), a copy of that
        database's schema and rows (pg_dump | psql). Return its URL."""
        with psycopg.connect(self.database_url("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = self.database_url(name)
        if copy_of:
            dump = subprocess.run(
                ["pg_dump", "--no-owner", "--no-privileges", copy_of],
                capture_output=True,
                timeout=120,
                check=True,
            )
            load = subprocess.run(
                ["psql", "-q", "-v", "ON_ERROR_STOP=1", url],
                input=dump.stdout,
                capture_output=True,
                timeout=120,
            )
            if load.returncode != 0:
                raise HostsError(f"loading {name} failed: {load.stderr.decode()[-2000:]}")
        return url

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(self.directory, ignore_errors=True)

    @contextmanager
    def running(self):
        try:
            self.start()
            yield self
        finally:
            self.stop()
