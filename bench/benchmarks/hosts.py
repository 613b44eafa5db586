"""18. Several hosts: the service spread over hosts of its own (harness.cluster: network
namespaces on a bridge, a data host with PostgreSQL and Redis, a web host, worker hosts
running the Procfile's worker lines each), on this machine's shared cores.

- Scale-out: the email pipeline (a backlog of verification emails to the stand-in provider,
  answering at once) with 1, 2 and 3 worker hosts. The hosts share the machine's two cores,
  so the figure is how close N hosts come to one host's rate: a shared bottleneck other than
  the CPU (the database, the broker, a lock) would make more hosts slower. Beside it, each
  host's connections to the database and the broker at their peak, against the budget of
  docs/OPERATIONS.md.
- The network: 50 ms ± 20 ms latency each way between the data host and every other host
  (all the traffic between the service's hosts) and 1% of every host's packets lost, against
  the same run without: the email pipeline's rate and the reminders' lateness. This kernel
  has no netem, so the latency is a delaying relay in front of PostgreSQL and Redis
  (harness.relay) and the loss nftables' random drop, which TCP really retransmits.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis
import requests

from bench.benchmarks.common import Sizes, ms, percentile, summary, times
from bench.report import Result, Row
from bench.stack import POSTMARK_TOKEN, Stack
from harness.cluster import Cluster
from harness.provider import FakePostmark

LATENCY_MS, JITTER_MS, LOSS_PERCENT = 50, 20, 1
# The Procfile's worker lines, per host: the budget of docs/OPERATIONS.md#database-connections.
BUDGET_PER_WORKER_HOST = 2 + 2 * 32 + 8  # worker (prefork 2), email and email2, webhooks
SIGNUP_CLIENTS = 16
# A sync gunicorn worker waits out every round trip to the database: over the slow network
# a signup takes about a second, so the web host runs more of them than the harness's 2.
WEB_WORKERS = 8
TIMER_INTERVAL = 20


def hosts(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    del stack, earlier  # the hosts run a deployment of their own
    tmp = Path(f"/tmp/bench-hosts-{int(time.time())}")
    emails, reminders = sizes.hosts_email_count, sizes.hosts_timer_count
    scale: dict[int, dict] = {}
    with deployment(tmp / "scale", worker_hosts=3) as (cluster, provider):
        for count in (1, 2, 3):
            scale[count] = email_pipeline(cluster, provider, emails, worker_hosts=count)
    network: dict[str, dict] = {}
    for label, slow in (("plain", False), ("slow", True)):
        latency = (LATENCY_MS, JITTER_MS) if slow else None
        with deployment(tmp / label, worker_hosts=2, latency=latency) as (cluster, provider):
            if slow:
                for host in cluster.network.hosts.values():
                    host.drop_randomly(LOSS_PERCENT)
            network[label] = {
                "pipeline": email_pipeline(cluster, provider, emails, worker_hosts=2),
                "timer": timer(cluster, reminders),
            }
    one = scale[1]["rate"]
    figures = {"scale_out": scale, "network": network}
    rows = [
        Row(
            label=f"Email pipeline, {n} worker host{'s' if n > 1 else ''} (emails/s)",
            figure=f"{scale[n]['rate']:.0f}/s",
            floor=f"{one:.0f}/s (1 host)",
            ratio=times(scale[n]["rate"] / one),
            target=f"≥ {times(0.8)} (no shared bottleneck but the CPU)",
            met=scale[n]["rate"] >= 0.8 * one,
        )
        for n in (2, 3)
    ]
    plain, slow = network["plain"], network["slow"]
    network_text = f"{LATENCY_MS}±{JITTER_MS} ms each way and {LOSS_PERCENT}% loss between hosts"

    def slow_row(label: str, figure, show) -> Row:
        """A figure of the slow network beside the same run on the bridge alone."""
        return Row(
            label=label,
            figure=show(figure(slow)),
            floor=f"{show(figure(plain))} (the bridge alone)",
            ratio=times(figure(slow) / max(figure(plain), 1e-3)),
            target="",
            met=None,
        )

    rows += [
        slow_row(
            f"Email pipeline, {network_text} (emails/s)",
            lambda run: run["pipeline"]["rate"],
            lambda rate: f"{rate:.0f}/s",
        ),
        slow_row(
            f"Signups through the API, {SIGNUP_CLIENTS} clients, {WEB_WORKERS} gunicorn"
            " workers, slow network (signups/s)",
            lambda run: run["pipeline"]["signups_per_s"],
            lambda rate: f"{rate:.0f}/s",
        ),
        slow_row(
            f"Reminder lateness p99, {network_text}",
            lambda run: run["timer"]["p99"],
            ms,
        ),
    ]
    peak = {n: scale[n]["database_connections"] for n in scale}
    notes = [
        f"{emails} verification emails per run through the anymail Postmark backend to the"
        " stand-in provider (answering at once) on the outside address; each worker host runs"
        " the Procfile's worker lines (worker, email, email2, webhooks) with their defaults;"
        " PostgreSQL 15 (initdb, fsync off) and Redis on the data host.",
        "Database connections at their peak, by host: "
        + "; ".join(f"{n} worker host(s): {peak[n]}" for n in peak)
        + f". The budget per worker host (docs/OPERATIONS.md) is {BUDGET_PER_WORKER_HOST}.",
        "Broker connections at their peak, by host: "
        + "; ".join(f"{n} worker host(s): {scale[n]['broker_connections']}" for n in scale)
        + ".",
        f"The timer: {reminders} signups through the API, reminder 1 due {TIMER_INTERVAL} s"
        " after each; lateness is its send against its due time, by the database's clock.",
        f"The slow network: {LATENCY_MS} ms ± {JITTER_MS} ms (normal) each way between the"
        " data host and each other host, by a relay in front of PostgreSQL and Redis (this"
        f" kernel has no netem), and {LOSS_PERCENT}% of every host's packets dropped"
        " (nftables); the relay is one more Python process on the shared cores.",
    ]
    return Result(
        name="hosts",
        number=18,
        title="Several hosts: scale-out over worker hosts, and a slow, lossy network",
        figures=figures,
        floor={"one_worker_host_emails_per_s": one},
        ratio={f"{n}_hosts": scale[n]["rate"] / one for n in (2, 3)},
        target={"scale_out_ratio": 0.8},
        met=all(row.met for row in rows if row.met is not None),
        parameters={
            "emails": emails,
            "reminders": reminders,
            "latency_ms": LATENCY_MS,
            "jitter_ms": JITTER_MS,
            "loss_percent": LOSS_PERCENT,
        },
        rows=rows,
        notes=notes,
    )


@contextmanager
def deployment(tmp: Path, *, worker_hosts: int, latency: tuple[float, float] | None = None):
    """A cluster with one web host and beat, worker hosts made but not started, and the
    stand-in provider on the outside address."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        "SIGNUP_RATE_LIMIT_API": "10000000/m",
        "SIGNUP_REMINDER_INTERVAL": str(TIMER_INTERVAL),
        "SIGNUP_MAX_REMINDERS": "1",
        "SIGNUP_SWEEP_INTERVAL": "5",
        "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
        "ANYMAIL_POSTMARK_SERVER_TOKEN": POSTMARK_TOKEN,
    }
    with Cluster(
        tmp, web_hosts=1, worker_hosts=0, env=env, latency=latency, web_workers=WEB_WORKERS
    ) as cluster:
        provider = FakePostmark(
            token=POSTMARK_TOKEN, host=cluster.network.outside_address, keep_bodies=False
        )
        provider.start()
        cluster.extra_env["ANYMAIL_POSTMARK_API_URL"] = provider.url
        for number in range(1, worker_hosts + 1):
            cluster.network.add(f"worker{number}")
        try:
            cluster.start()
            yield cluster, provider
        finally:
            provider.stop()


def sign_up(cluster: Cluster, prefix: str, count: int) -> float:
    """`count` signups through the web host's API, SIGNUP_CLIENTS at a time; return how
    many were answered per second."""
    web = cluster.web()
    local = threading.local()

    def one(number: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        body = {
            "username": f"{prefix}{number}",
            "email": f"{prefix}{number}@example.com",
            "first_name": "Bench",
        }
        answer = session.post(
            f"{web.url}/api/signups",
            json=body,
            headers={"Authorization": f"Bearer {cluster.api_key}"},
            timeout=60,
        )
        assert answer.status_code == 201, answer.text[:300]

    started = time.monotonic()
    with ThreadPoolExecutor(SIGNUP_CLIENTS) as pool:
        list(pool.map(one, range(count)))
    return count / (time.monotonic() - started)


def reset(cluster: Cluster, provider: FakePostmark | None = None) -> None:
    """Empty the tables and the broker's queues (no worker host runs)."""
    with psycopg.connect(cluster.database_url, autocommit=True) as connection:
        connection.execute("TRUNCATE signup_signup, signup_address, signup_queueprobe CASCADE")
    broker = redis.Redis.from_url(cluster.broker_url)
    broker.delete("celery", "email", "webhooks", "unacked", "unacked_index")
    broker.close()
    if provider is not None:
        provider.reset()


def email_pipeline(cluster: Cluster, provider: FakePostmark, count: int, *, worker_hosts: int):
    """`worker_hosts` worker hosts started and ready, then `count` signups through the API
    (faster than the pipeline: a backlog builds): the verification emails' rate from the
    first to the last, the signups' rate, and each host's connections at their peak."""
    reset(cluster, provider)
    names = [f"worker{n}" for n in range(1, worker_hosts + 1)]
    cluster.start_worker_hosts(names)
    signups_per_s = sign_up(cluster, f"p{worker_hosts}x", count)
    database, broker = {}, {}
    sent = (
        "SELECT count(*) FROM signup_outboundemail WHERE kind = 'verification' AND status = 'sent'"
    )
    deadline = time.monotonic() + 120 + count / 5
    while cluster.query(sent)[0][0] < count:
        for peak, now in (
            (database, cluster.connections()),
            (broker, cluster.broker_connections()),
        ):
            for host, number in now.items():
                peak[host] = max(peak.get(host, 0), number)
        assert time.monotonic() < deadline, f"the pipeline did not drain:\n{cluster.logs()}"
        time.sleep(0.5)
    moments = sorted(
        float(at)
        for (at,) in cluster.query(
            "SELECT extract(epoch FROM sent_at) FROM signup_outboundemail"
            " WHERE kind = 'verification'"
        )
    )
    for name in names:
        cluster.services.pop(name).stop()
    return {
        "rate": (len(moments) - 1) / (moments[-1] - moments[0]),
        "signups_per_s": signups_per_s,
        "database_connections": {h: database.get(h, 0) for h in [*names, "web1", "beat"]},
        "broker_connections": {h: broker.get(h, 0) for h in [*names, "web1", "beat"]},
    }


def timer(cluster: Cluster, count: int) -> dict:
    """`count` signups through the API with both worker hosts up; reminder 1's lateness."""
    reset(cluster)
    cluster.start_worker_hosts(["worker1", "worker2"])
    sign_up(cluster, "timer", count)
    done = "SELECT count(*) FROM signup_outboundemail WHERE kind = 'reminder' AND status = 'sent'"
    deadline = time.monotonic() + TIMER_INTERVAL + 120
    while cluster.query(done)[0][0] < count:
        assert time.monotonic() < deadline, f"the reminders did not go:\n{cluster.logs()}"
        time.sleep(0.5)
    lateness = [
        float(late)
        for (late,) in cluster.query(
            "SELECT extract(epoch FROM e.sent_at - s.contacted_at) - %s"
            " FROM signup_outboundemail e JOIN signup_signup s ON s.id = e.signup_id"
            " WHERE e.kind = 'reminder'",
            [TIMER_INTERVAL],
        )
    ]
    for name in ("worker1", "worker2"):
        cluster.services.pop(name).stop()
    return summary(lateness) | {"p99": percentile(lateness, 99)}
