"""Which clock says a timer is due: the database's.

Every host plans and fires timers on its own clock, and Celery fires a countdown when the
clock of the worker holding it reaches its ETA: a worker host whose clock is ahead would send
reminders early, one behind late, and a host that plans the next reminder on a clock that is
off moves the whole rest of the chain. The database is the one clock every host talks to, so
the reminders are planned on it (the step that takes a reminder or makes the first contact
reads it in its transaction; the sweeper's hand-overs and repairs, and the probes it reads,
are on it too), and a reminder task that arrives before its due time by it
(its worker's clock is ahead) is put back for the time left: never early. Late is another
matter: an ETA is read on the clock of whichever worker holds it, so a worker whose clock is
behind fires late by its lag, and one that takes a put-back task from a worker ahead of it
by the two clocks' difference. The rest of the workflow (leases, expiry stamps, an operator's
steering) reads the host's own clock: the operator keeps every
host on NTP, and signup_clock_offset_seconds (signup.metrics) shows each host's offset
from the database's clock, SignupClockSkew alerting past 10 s.
"""

from datetime import datetime

from django.db import connection
from django.utils import timezone

from signup.models import Signup

# Less early than this is on time: the round trip and the timer's own jitter.
ON_TIME = 1.0


def database_now() -> datetime:
    """The database's clock (PostgreSQL's statement_timestamp(): the time this statement
    started). SQLite, the quickstart's, is a file on this host: its clock is this one."""
    if connection.vendor != "postgresql":
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        return cursor.fetchone()[0]


def reminder_early_by(signup_id: int) -> float:
    """How long before its next reminder's due time it still is by the database's clock, if
    more than ON_TIME; else 0 (due, none planned, or no such signup)."""
    due = (
        Signup.objects.filter(pk=signup_id, next_reminder_at__isnull=False)
        .values_list("next_reminder_at", flat=True)
        .first()
    )
    if due is None:
        return 0.0
    early = (due - database_now()).total_seconds()
    return early if early > ON_TIME else 0.0
