"""Is the service well: the checks behind GET /readyz and `manage.py signup_doctor`.

Each check answers None when its part is well, else a sentence saying what is wrong. They
only read: a probe that runs every few seconds must not change anything.
"""

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from signup import workflow

# How long a check may wait for the database or the broker before it says it is down.
CHECK_TIMEOUT = 2.0
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


def check_broker() -> str | None:
    from config.celery import app

    try:
        # The URL the settings hold, read each time (the app's own copy is fixed at start).
        with app.connection_for_write(url=settings.CELERY_BROKER_URL) as broker:
            broker.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)
    except Exception as exc:  # as above
        return _down(exc)
    return None


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
    """Readiness: 200 with every part "ok", else 503 naming the part that is not and why."""
    parts = readiness()
    well = all(answer == "ok" for answer in parts.values())
    return JsonResponse(parts, status=200 if well else 503)


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
]
