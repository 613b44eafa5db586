"""Is the service well: the checks behind GET /readyz and `manage.py signup_doctor`.

Each check answers None when its part is well, else a sentence saying what is wrong. They
only read: a probe that runs every few seconds must not change anything. /readyz is public:
its answer is kept for READY_CACHE_SECONDS, the broker is reached on one kept connection per
process, and each client gets SIGNUP_RATE_LIMIT_PROBES, so that calling it in a loop costs
the database and the broker next to nothing.
"""

import logging
import threading
import time

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from signup import limits, workflow

logger = logging.getLogger(__name__)

# How long a check may wait for the database or the broker before it says it is down.
CHECK_TIMEOUT = 2.0
# How long /readyz answers from its last look (a probe every second or more sees it fresh).
READY_CACHE_SECONDS = 1.0
# The sweeper is late once its last completed run is this many intervals old.
SWEEP_INTERVALS_LATE = 3


def check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure means "not ready"
        return _down(exc)
    return None


_broker_lock = threading.Lock()
_brokers = {}  # broker URL -> this process's kept connection for the check
_TIMEOUTS = ("socket_timeout", "socket_connect_timeout", "read_timeout", "write_timeout")


def check_broker() -> str | None:
    """The broker answers a round trip on this process's kept connection: the declaration of
    the default queue, which every publish makes too. A connection that failed is dropped,
    and the next check opens another."""
    from config.celery import app

    def declare(channel):
        app.amqp.queues[settings.CELERY_TASK_DEFAULT_QUEUE](channel).declare()

    try:
        _on_kept_broker(declare)
    except Exception as exc:  # as above
        return _down(exc)
    return None


def queue_depths() -> dict[str, int]:
    """How many messages wait in each of the broker's queues (not the ones workers hold:
    running, or waiting for their countdown); {} if the broker does not answer."""
    from config.celery import app

    def count(channel):
        # Declared as every publish declares them (a passive declaration fails on a Redis
        # queue that is empty, and so does not exist there).
        return {
            name: queue(channel).queue_declare().message_count
            for name, queue in app.amqp.queues.items()
        }

    try:
        return _on_kept_broker(count)
    except Exception:  # /readyz says why; the gauges only go without this one
        return {}


def _on_kept_broker(use):
    """`use(channel)` on this process's kept broker connection; one that failed is dropped
    (and the exception raised), and the next call opens another."""
    from config.celery import app

    # The URL the settings hold, read each time (the app's own copy is fixed at start).
    url = settings.CELERY_BROKER_URL
    with _broker_lock:
        broker = _brokers.get(url)
        if broker is None:
            broker = _brokers[url] = app.connection_for_write(
                url=url,
                connect_timeout=CHECK_TIMEOUT,
                transport_options={
                    **app.conf.broker_transport_options,
                    **{name: CHECK_TIMEOUT for name in _TIMEOUTS},
                },
            )
        try:
            broker.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)
            return use(broker.default_channel)
        except Exception:
            del _brokers[url]
            broker.collect()
            raise


def check_sweeper() -> str | None:
    """The last completed sweep is recent: beat is running and a worker runs its sweeps."""
    try:
        last = workflow.last_sweep_at()
    except Exception as exc:  # the database check says why
        return f"unknown: the database did not answer ({type(exc).__name__})"
    limit = SWEEP_INTERVALS_LATE * settings.SIGNUP_SWEEP_INTERVAL
    if last is None:
        return "no sweep has completed yet: is beat running?"
    age = (timezone.now() - last).total_seconds()
    if age > limit:
        return (
            f"the last sweep completed {age:.0f} s ago (more than {SWEEP_INTERVALS_LATE} x"
            f" SIGNUP_SWEEP_INTERVAL = {limit} s): is beat running, and a worker on the"
            " default queue?"
        )
    return None


CHECKS = {"database": check_database, "broker": check_broker, "sweeper": check_sweeper}


def readiness() -> dict[str, str]:
    """Each part, "ok" or what is wrong with it."""
    return {name: check() or "ok" for name, check in CHECKS.items()}


_last_answer: tuple[float, dict[str, str]] | None = None


def recent_readiness() -> dict[str, str]:
    """readiness(), looked at again once READY_CACHE_SECONDS have passed since the last look
    of this process."""
    global _last_answer
    now = time.monotonic()
    if _last_answer is None or now - _last_answer[0] >= READY_CACHE_SECONDS:
        _last_answer = (now, readiness())
    return _last_answer[1]


def forget_readiness() -> None:
    """Look again at the next call (the tests change what readiness sees)."""
    global _last_answer
    _last_answer = None


def _down(exc: Exception) -> str:
    # The kind of error only: /readyz is public, and a driver's message names hosts and ports.
    return f"not answering ({type(exc).__name__})"


# --- The probes ----------------------------------------------------------------------------


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the web process answers. Touches nothing, so a database or broker outage
    does not make an orchestrator restart healthy web processes."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 with every part "ok", else 503 naming the part that is not and why; 429
    past SIGNUP_RATE_LIMIT_PROBES calls of one client."""
    try:
        rate = limits.Rate.parse(settings.SIGNUP_RATE_LIMIT_PROBES)
        retry_after = limits.hit("probe", limits.client_key(request), rate)
    except (redis.RedisError, OSError) as exc:  # the limits' cache is down: answer anyway
        logger.warning("readyz: the rate limit's cache is unreachable (%s)", type(exc).__name__)
        retry_after = 0
    if retry_after:
        return limits.too_many_json(retry_after)
    parts = recent_readiness()
    well = all(answer == "ok" for answer in parts.values())
    return JsonResponse(parts, status=200 if well else 503)


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
]
