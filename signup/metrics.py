"""Prometheus metrics at GET /metrics: the workflow's state, counted in the database at each
scrape, and what the processes measured as they worked.

The database holds every signup, email and sweep, so the gauges read from it at scrape time
are the same whichever web process answers and survive restarts. Latencies and attempts are
only seen by the process that made them: the counters and histograms below are kept by
prometheus-client, in multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set (a directory
every web and worker process of a host shares, emptied when the service starts), so that
one scrape adds up the gunicorn workers and the Celery pool processes of that host. A host
that runs workers and no web answers for its own processes through config.metrics_wsgi.
Without the directory each process answers for itself only, which is right for the
quickstart's single web process.

Every name starts with `signup_`. The endpoint wants `Authorization: Bearer
$SIGNUP_METRICS_TOKEN`, and does not exist (404) while that setting is empty.
"""

import itertools
import os
import time

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import path
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from signup import limits
from signup.models import OutboundEmail, Signup, WebhookDelivery
from signup.selectors import WEBHOOK_STATES, count_by

# --- Measured in the processes ----------------------------------------------------------------

# This process's own figures (used when there is no multiprocess directory).
_PROCESS = CollectorRegistry(auto_describe=True)

# From a fast provider's tens of milliseconds to a timeout (EMAIL_TIMEOUT, 10 s by default).
_PROVIDER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# From a timer that fires on time to one an hour late (a sweeper that stopped for an hour).
_LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

email_attempts = Counter(
    "signup_email_attempts",
    "Ledger email attempts by kind and result: sent, retried (a temporary error, tried again"
    " later), failed (dead-lettered), skipped (the signup had moved on), held (the provider"
    " was out: no attempt used).",
    ["kind", "result"],
    registry=_PROCESS,
)
provider_call = Histogram(
    "signup_provider_call_seconds",
    "How long the email provider took to accept (ok) or refuse (error) an email.",
    ["outcome"],
    buckets=_PROVIDER_BUCKETS,
    registry=_PROCESS,
)
reminder_lateness = Histogram(
    "signup_reminder_lateness_seconds",
    "How late a reminder was taken for sending: the time it was taken minus the time it was"
    " planned for.",
    buckets=_LATENESS_BUCKETS,
    registry=_PROCESS,
)
verify_to_welcome = Histogram(
    "signup_verify_to_welcome_seconds",
    "From a verification to the provider's acceptance of its welcome email.",
    buckets=_LATENESS_BUCKETS,
    registry=_PROCESS,
)
sweep_duration = Histogram(
    "signup_sweep_duration_seconds",
    "How long each completed sweep took (its count is the number of sweeps).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=_PROCESS,
)
sweep_repairs = Counter(
    "signup_sweep_repairs",
    "Lost work the sweeper put back in the broker: a first contact or a reminder whose task was"
    " lost, an email or a webhook delivery left unsent.",
    ["kind"],
    registry=_PROCESS,
)


# --- Counted in the database at each scrape ---------------------------------------------------


class SignupCollector(Collector):
    """The workflow's state, counted in the database at each scrape."""

    def collect(self):
        # The workflow records into this module's metrics, and health reads the workflow.
        from signup import health, workflow

        emails = count_by(OutboundEmail.objects, "kind", "status")
        yield _family(
            "signups",
            "Signups by status (started = the sum).",
            {"status": Signup.Status.values},
            count_by(Signup.objects, "status"),
        )
        verified = count_by(Signup.objects.filter(status=Signup.Status.VERIFIED), "verified_source")
        yield _family(
            "verified",
            "Verified signups by the link or actor that verified them (verification,"
            " reminder-N, operator, api).",
            {"source": [source or "unknown" for source in verified]},
            {source or "unknown": number for source, number in verified.items()},
        )
        yield _family(
            "emails",
            "Ledger emails by kind and status (queued, sending, sent, failed, skipped).",
            {"kind": OutboundEmail.Kind.values, "status": OutboundEmail.Status.values},
            emails,
        )
        yield _family(
            "webhook_deliveries",
            "Webhook deliveries (one per event and receiver) by status (queued, sending, sent,"
            " failed: dead letters).",
            {"status": WEBHOOK_STATES},
            count_by(WebhookDelivery.objects, "status"),
        )
        waiting = sum(n for (_, status), n in emails.items() if status in ("queued", "sending"))
        yield _family(
            "emails_waiting",
            "Emails not sent yet (queued or with the provider).",
            {},
            {(): waiting},
        )
        yield _family(
            "emails_held",
            "Emails held while the provider is out (part of emails_waiting): they go when it"
            " is back.",
            {},
            {(): workflow.held_emails().count()},
        )
        stuck = workflow.stuck_work()
        for name, key, description in _STUCK:
            yield _family(name, description, {}, {(): stuck[key]})
        depths = health.queue_depths()
        if depths:
            yield _family(
                "queue_messages",
                "Messages waiting in each broker queue (not the ones workers hold: running, or"
                " waiting for their countdown). Absent while the broker does not answer.",
                {"queue": list(depths)},
                depths,
            )
        ages = workflow.oldest_waiting()
        yield _family(
            "queue_oldest_message_seconds",
            "How long the oldest message waiting in each queue has waited, as the sweeper's"
            " probes through the queue tell (to within a sweep interval).",
            {"queue": list(ages)},
            ages,
        )
        yield _family(
            "queue_age_alert_seconds",
            "SIGNUP_QUEUE_AGE_ALERT: the age of a queue's oldest message that the"
            " SignupQueueBacklog alert fires at.",
            {},
            {(): settings.SIGNUP_QUEUE_AGE_ALERT},
        )
        last = workflow.last_sweep_at()
        since = (timezone.now() - last).total_seconds() if last else float("inf")
        yield _family(
            "seconds_since_last_sweep",
            "Seconds since the sweeper last completed a run (+Inf: never).",
            {},
            {(): since},
        )


class ClockCollector(Collector):
    """How far this host's clock is from the database's, read at each scrape.

    Every decision the workflow makes in time (a reminder's due time, a lease, an expiry,
    a countdown's ETA) is made on the clock of the host that makes it, and Celery fires an
    ETA on the clock of the worker that holds it: a host whose clock is off moves the
    reminders it plans or fires by as much (docs/OPERATIONS.md#several-hosts). The
    database is the one clock every host talks to, so it is the yardstick: the midpoint of
    the query's round trip is compared with the database's clock_timestamp().
    """

    def collect(self):
        from signup import workflow

        before = time.time()
        database = workflow.database_now().timestamp()
        after = time.time()
        yield _family(
            "clock_offset_seconds",
            "This host's clock minus the database's (positive: ahead), measured at the"
            " scrape to within half its round trip.",
            {},
            {(): (before + after) / 2 - database},
        )


_STUCK = (
    ("dead_letters", "dead_letters", "Failed emails, waiting for an operator to re-drive them."),
    (
        "stuck_contacts",
        "contacts_overdue",
        "Pending signups not contacted yet, the grace and two sweeps after they were made.",
    ),
    (
        "stuck_reminders",
        "reminders_overdue",
        "Pending signups whose next reminder is overdue past the grace and two sweeps.",
    ),
    ("stuck_emails", "emails_unsent", "Emails unsent past SIGNUP_REDRIVE_AFTER and two sweeps."),
    (
        "stuck_webhooks",
        "webhooks_unsent",
        "Webhook deliveries unsent past SIGNUP_REDRIVE_AFTER and two sweeps.",
    ),
)


def _family(name: str, description: str, labels: dict, counts: dict) -> GaugeMetricFamily:
    """A gauge `signup_<name>` with a sample for every combination of the labels' values (0
    where `counts` has none)."""
    family = GaugeMetricFamily(f"signup_{name}", description, labels=list(labels))
    for values in itertools.product(*labels.values()):
        key = values if len(values) != 1 else values[0]
        family.add_metric(list(values), counts.get(key, 0))
    return family


# --- The endpoint ----------------------------------------------------------------------------


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The workflow's state and what this host's processes measured."""
    return _answer(request, workflow=True)


@never_cache
@require_GET
def host_metrics(request: HttpRequest) -> HttpResponse:
    """What this host's processes measured, without the workflow's state: served on a host
    that runs workers and no web (config.metrics_wsgi), whose figures no web process can see
    (each host has its own PROMETHEUS_MULTIPROC_DIR). The state is the same from every web
    process; a worker host that answered it too would only count it twice."""
    return _answer(request, workflow=False)


def _answer(request: HttpRequest, *, workflow: bool) -> HttpResponse:
    token = settings.SIGNUP_METRICS_TOKEN
    if not token:
        raise Http404("metrics are off: no SIGNUP_METRICS_TOKEN is configured")
    refused, retry_after = limits.check_bearer(request, token)
    if refused == 401:
        response = HttpResponse("Send 'Authorization: Bearer <token>'.\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="signup-metrics"'
        return response
    if refused == 403:
        return HttpResponse("The token is not valid.\n", status=403)
    if refused == 429:
        response = HttpResponse("Too many wrong tokens: wait.\n", status=429)
        response["Retry-After"] = str(retry_after)
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClockCollector())
    if workflow:
        registry.register(SignupCollector())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # every process's files, this one's included
    else:
        registry.register(_PROCESS)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


urlpatterns = [path("metrics", metrics, name="metrics")]
# The only URL of config.metrics_wsgi.
host_urlpatterns = [path("metrics", host_metrics, name="host-metrics")]
