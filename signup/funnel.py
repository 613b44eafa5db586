"""The funnel: of the signups started in a date range, how many were sent their verification
email, how many verified and after which email, how many expired, bounced or were cancelled,
and how long verifying took. Read for the admin's funnel page and its CSV.

Two queries over one covering index (signup_funnel_idx: created_at with the columns counted),
so that a range of signups is counted without reading the table: the counts grouped by
status, converting email and reminders received, and the time-to-verify percentiles (from a
sample when the range holds more than PERCENTILE_SAMPLE verified signups).
"""

import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from django.contrib.postgres.fields import ArrayField
from django.db.models import Aggregate, Count, DurationField, F
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
    return f"by {source or 'an unknown source'}"


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
        .values_list("status", "verified_source", "reminders_sent")
        .annotate(n=Count("*"), sent=Count("verification_sent_at"))
    )
    for status, source, reminders, count, sent in groups:
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
