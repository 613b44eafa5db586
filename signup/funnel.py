"""The funnel: of the signups started in a date range, how many were sent their verification
email, how many verified and after which email, how many expired, bounced or were cancelled,
and how long verifying took; and its page in the admin, with a CSV download.

Two queries over one covering index (signup_funnel_idx: created_at with the columns counted),
so that a range of signups is counted without reading the table: the counts grouped by
status, converting email and reminders received, and the time-to-verify percentiles (from a
sample when the range holds more than PERCENTILE_SAMPLE verified signups).
"""

import csv
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import PermissionDenied
from django.db.models import Aggregate, Count, DurationField, F
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from signup.models import Signup

Status = Signup.Status
_REMINDER_SOURCE = re.compile(r"^reminder-(\d+)$")
# Up to this many verified signups, the times to verify are exact; past it, estimated from a
# systematic sample of about this many (every n-th by id: ids don't follow time to verify).
PERCENTILE_SAMPLE = 50_000


class _Percentiles(Aggregate):
    """PostgreSQL's percentile_cont at several fractions at once (one sort)."""

    function = "percentile_cont"
    template = "%(function)s(%(fractions)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression, fractions: tuple[float, ...]):
        array = "ARRAY[" + ", ".join(str(float(f)) for f in fractions) + "]::float8[]"
        super().__init__(expression, fractions=array, output_field=ArrayField(DurationField()))


@dataclass(frozen=True)
class Step:
    """One row of the funnel: a stage, its count, and its share of the signups started."""

    key: str
    label: str
    count: int
    of_started: float | None
    level: int  # 1: a part of the stage above it

    @property
    def percent(self) -> float | None:
        return None if self.of_started is None else 100 * self.of_started


@dataclass(frozen=True)
class ReminderStep:
    """What reminder n did: how many signups got it, and how many verified by its link."""

    number: int
    reached: int
    verified: int

    @property
    def percent(self) -> float | None:
        """The share of the signups it reached that verified by its link."""
        return 100 * self.verified / self.reached if self.reached else None


@dataclass
class Funnel:
    start: date
    end: date  # inclusive
    language: str = ""  # only the signups made in it; "": all
    started: int = 0
    verification_sent: int = 0
    verified: int = 0
    verified_by: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    expired: int = 0
    cancelled: int = 0
    cancelled_by: dict[str, int] = field(default_factory=dict)
    undeliverable: int = 0
    reminders: list[ReminderStep] = field(default_factory=list)
    median_to_verify: timedelta | None = None
    p90_to_verify: timedelta | None = None
    sampled_every: int = 1  # >1: the percentiles come from every n-th verified signup

    def share(self, count: int) -> float | None:
        return count / self.started if self.started else None

    @property
    def steps(self) -> list[Step]:
        """The funnel top to bottom, each converting email under "verified"."""
        rows = [
            ("started", "Signed up", self.started, 0),
            ("verification_sent", "Verification email sent", self.verification_sent, 0),
            ("verified", "Verified", self.verified, 0),
            *(
                (f"verified:{source}", _source_label(source), count, 1)
                for source, count in self.verified_by.items()
            ),
            ("pending", "Still pending", self.pending, 0),
            ("expired", "Expired", self.expired, 0),
            ("undeliverable", "Undeliverable (bounced)", self.undeliverable, 0),
            ("cancelled", "Cancelled", self.cancelled, 0),
            *(
                (f"cancelled:{by}", _cancelled_label(by), count, 1)
                for by, count in sorted(self.cancelled_by.items())
            ),
        ]
        return [Step(key, label, n, self.share(n), level) for key, label, n, level in rows]


def _source_label(source: str) -> str:
    if source == "verification":
        return "by the verification email"
    if match := _REMINDER_SOURCE.match(source):
        return f"by reminder {match.group(1)}"
    if source == "operator":
        return "by an operator"
    if source == "api":
        return "through the API"
    if source == "code":
        return "by the code in an email"
    return f"by {source or 'an unknown source'}"


def _cancelled_label(by: str) -> str:
    return {
        "recipient": 'by the address\'s recipient ("not me")',
        "operator": "by an operator",
        "api": "through the API",
    }.get(by, "before who cancelled was recorded")


def _source_order(source: str) -> tuple[int, int, str]:
    if source == "verification":
        return (0, 0, source)
    if match := _REMINDER_SOURCE.match(source):
        return (1, int(match.group(1)), source)
    return (2, 0, source)


def day_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """The range of instants from the start of `start` to the end of `end`, in the site's
    time zone."""
    zone = timezone.get_current_timezone()
    return (
        datetime.combine(start, time.min, tzinfo=zone),
        datetime.combine(end + timedelta(days=1), time.min, tzinfo=zone),
    )


def funnel(start: date, end: date, *, language: str = "") -> Funnel:
    """Count the funnel of the signups started from `start` to `end` (both days included),
    in one language if given."""
    since, until = day_bounds(start, end)
    in_range = Signup.objects.filter(created_at__gte=since, created_at__lt=until)
    if language:
        in_range = in_range.filter(language=language)
    result = Funnel(start=start, end=end, language=language)
    reached: dict[int, int] = {}  # reminders received -> signups
    by_reminder: dict[int, int] = {}  # verified by reminder n's link -> signups
    groups = (
        in_range.order_by()
        .values_list("status", "verified_source", "closed_by", "reminders_sent")
        .annotate(n=Count("*"), sent=Count("verification_sent_at"))
    )
    for status, source, closed_by, reminders, count, sent in groups:
        result.started += count
        result.verification_sent += sent
        reached[reminders] = reached.get(reminders, 0) + count
        if status == Status.VERIFIED:
            result.verified += count
            result.verified_by[source] = result.verified_by.get(source, 0) + count
            if match := _REMINDER_SOURCE.match(source):
                by_reminder[int(match.group(1))] = by_reminder.get(int(match.group(1)), 0) + count
        else:
            setattr(result, status, getattr(result, status) + count)
            if status == Status.CANCELLED:
                result.cancelled_by[closed_by] = result.cancelled_by.get(closed_by, 0) + count
    result.verified_by = dict(sorted(result.verified_by.items(), key=lambda i: _source_order(i[0])))
    # Reminder n reached every signup that received n reminders or more.
    for number in range(1, max(reached, default=0) + 1):
        got = sum(count for sent, count in reached.items() if sent >= number)
        result.reminders.append(ReminderStep(number, got, by_reminder.get(number, 0)))
    if result.verified:
        verified = in_range.filter(status=Status.VERIFIED)
        # Sorting every time to verify costs more than all the counting above: past
        # PERCENTILE_SAMPLE verified signups, every n-th by id stands for them all.
        result.sampled_every = math.ceil(result.verified / PERCENTILE_SAMPLE)
        if result.sampled_every > 1:
            verified = verified.alias(slot=F("id") % result.sampled_every).filter(slot=0)
        percentiles = verified.aggregate(
            p=_Percentiles(F("verified_at") - F("created_at"), (0.5, 0.9))
        )["p"]
        result.median_to_verify, result.p90_to_verify = percentiles or (None, None)
    return result


# --- The page: /admin/signup/funnel/ ----------------------------------------------------------

FUNNEL_DAYS = 30  # the range the page opens on: the last 30 days, today included


class FunnelRangeForm(forms.Form):
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    language = forms.ChoiceField(required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["language"].choices = [("", "every language"), *settings.LANGUAGES]

    def clean(self):
        data = super().clean()
        today = timezone.localdate()
        data["end"] = data.get("end") or today
        data["start"] = data.get("start") or data["end"] - timedelta(days=FUNNEL_DAYS - 1)
        if data["start"] > data["end"]:
            raise forms.ValidationError("The first day comes after the last one.")
        return data


def funnel_view(request: HttpRequest) -> HttpResponse:
    """GET /admin/signup/funnel/[?start=YYYY-MM-DD&end=YYYY-MM-DD][&format=csv]"""
    if not request.user.has_perm("signup.view_signup"):
        raise PermissionDenied
    form = FunnelRangeForm(request.GET)
    context = {
        **admin.site.each_context(request),
        "title": "Signup funnel",
        "opts": Signup._meta,
        "form": form,
    }
    if not form.is_valid():
        return TemplateResponse(request, "admin/signup/funnel.html", context, status=400)
    language = form.cleaned_data["language"]
    counted = funnel(form.cleaned_data["start"], form.cleaned_data["end"], language=language)
    if request.GET.get("format") == "csv":
        return _funnel_csv(counted)
    context.update(
        # The range shown, defaults filled in, in the inputs.
        form=FunnelRangeForm(
            initial={"start": counted.start, "end": counted.end, "language": language}
        ),
        funnel=counted,
        median=_duration(counted.median_to_verify),
        p90=_duration(counted.p90_to_verify),
        csv_query=urlencode(
            {"start": counted.start, "end": counted.end, "language": language, "format": "csv"}
        ),
        chart_height=26 * len(counted.steps) + 4,
        time_zone=timezone.get_current_timezone_name(),
    )
    return TemplateResponse(request, "admin/signup/funnel.html", context)


def _funnel_csv(counted: Funnel) -> HttpResponse:
    scope = f"-{counted.language}" if counted.language else ""
    name = f"signup-funnel-{counted.start}-{counted.end}{scope}.csv"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    out = csv.writer(response)
    out.writerow(["stage", "signups", "share_of_started"])
    for step in counted.steps:
        share = "" if step.of_started is None else f"{step.of_started:.4f}"
        out.writerow([step.key, step.count, share])
    for reminder in counted.reminders:
        out.writerow([f"reminder:{reminder.number}:reached", reminder.reached, ""])
        out.writerow([f"reminder:{reminder.number}:verified", reminder.verified, ""])
    for key, value in (("median", counted.median_to_verify), ("p90", counted.p90_to_verify)):
        seconds = "" if value is None else f"{value.total_seconds():.0f}"
        out.writerow([f"seconds_to_verify:{key}", seconds, ""])
    return response


def _duration(value: timedelta | None) -> str:
    """A time to verify as an operator reads it: 45 s, 12 min, 3 h 20 min, 2 d 5 h."""
    if value is None:
        return "none verified"
    seconds = int(value.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if minutes < 60:
        return f"{minutes} min"
    if hours < 24:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


# Mounted before the admin's own URLs (config/urls.py), beside the signups' pages.
urlpatterns = [
    path("admin/signup/funnel/", admin.site.admin_view(funnel_view), name="signup_funnel"),
]
