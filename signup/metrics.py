"""Prometheus metrics at GET /metrics, read from the database when scraped.

The database holds every signup, email and sweep, so figures read from it at scrape time are
the same whichever web process answers, survive restarts, and need no shared state between
processes. Every name starts with `signup_`. The endpoint wants `Authorization: Bearer
$SIGNUP_METRICS_TOKEN`, and does not exist (404) while that setting is empty.
"""

from django.conf import settings
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import path
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from signup import workflow
from signup.models import OutboundEmail, Signup


class SignupCollector(Collector):
    """The workflow's state, counted in the database at each scrape."""

    def collect(self):
        signups = GaugeMetricFamily(
            "signup_signups", "Signups by status (started = the sum).", labels=["status"]
        )
        counted = dict(
            Signup.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n")
        )
        for status in Signup.Status.values:
            signups.add_metric([status], counted.get(status, 0))
        yield signups

        verified = GaugeMetricFamily(
            "signup_verified",
            "Verified signups by the link or actor that verified them (verification,"
            " reminder-N, operator, api).",
            labels=["source"],
        )
        for source, number in (
            Signup.objects.filter(status=Signup.Status.VERIFIED)
            .values_list("verified_source")
            .annotate(n=Count("id"))
            .values_list("verified_source", "n")
        ):
            verified.add_metric([source or "unknown"], number)
        yield verified

        emails = GaugeMetricFamily(
            "signup_emails",
            "Ledger emails by kind and status (queued, sending, sent, failed, skipped).",
            labels=["kind", "status"],
        )
        by_kind = {
            (kind, status): number
            for kind, status, number in OutboundEmail.objects.values_list("kind", "status")
            .annotate(n=Count("id"))
            .values_list("kind", "status", "n")
        }
        for kind in OutboundEmail.Kind.values:
            for status in OutboundEmail.Status.values:
                emails.add_metric([kind, status], by_kind.get((kind, status), 0))
        yield emails

        waiting = sum(
            number
            for (_, status), number in by_kind.items()
            if status in (OutboundEmail.Status.QUEUED, OutboundEmail.Status.SENDING)
        )
        yield GaugeMetricFamily(
            "signup_emails_waiting", "Emails not sent yet (queued or with the provider).", waiting
        )
        stuck = workflow.stuck_work()
        yield GaugeMetricFamily(
            "signup_dead_letters",
            "Failed emails, waiting for an operator to re-drive them.",
            stuck["dead_letters"],
        )
        yield GaugeMetricFamily(
            "signup_stuck_reminders",
            "Pending signups whose next reminder is overdue past the grace and two sweeps.",
            stuck["reminders_overdue"],
        )
        yield GaugeMetricFamily(
            "signup_stuck_emails",
            "Emails unsent past SIGNUP_EMAIL_REDRIVE_AFTER and two sweeps.",
            stuck["emails_unsent"],
        )

        last = workflow.last_sweep_at()
        since = (timezone.now() - last).total_seconds() if last else float("inf")
        yield GaugeMetricFamily(
            "signup_seconds_since_last_sweep",
            "Seconds since the sweeper last completed a run (+Inf: never).",
            since,
        )


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.SIGNUP_METRICS_TOKEN
    if not token:
        raise Http404("metrics are off: no SIGNUP_METRICS_TOKEN is configured")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        response = HttpResponse("Send 'Authorization: Bearer <token>'.\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="signup-metrics"'
        return response
    if not constant_time_compare(given.strip(), token):
        return HttpResponse("The token is not valid.\n", status=403)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SignupCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


urlpatterns = [path("metrics", metrics, name="metrics")]
