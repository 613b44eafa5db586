"""The timers of a pending signup live in its row (next_reminder_at, expires_at); the broker
holds only what is due within SIGNUP_SCHEDULE_AHEAD, and the sweeper hands over the rest as
it comes within reach."""

from datetime import timedelta

from django.conf import settings

from signup import tasks
from signup.models import Signup
from signup.workflow.internal.rows import after_commit

# The fields plan_reminder sets.
PLAN_FIELDS = ["next_reminder_at", "reminder_enqueued_at"]


def horizon(now):
    """How far ahead the broker holds timers."""
    return now + timedelta(seconds=settings.SIGNUP_SCHEDULE_AHEAD)


def plan_next_step(signup: Signup, *, now) -> None:
    """Plan the reminder after the one just sent (or the first): SIGNUP_REMINDER_INTERVAL
    from now.

    This is the self-rescheduling chain: each reminder plans the next. The broker holds only
    what is due soon, so its memory and the workers' do not grow with the number of pending
    signups; the sweeper hands over each later step as it comes within reach, and repairs a
    chain whose task was lost.
    """
    plan_reminder(signup, at=now + timedelta(seconds=settings.SIGNUP_REMINDER_INTERVAL), now=now)


def plan_reminder(signup: Signup, *, at, now) -> None:
    """Set when the next reminder is due (None if there is no next one before the signup
    expires), and whether its task goes to the broker now: only one due within
    SIGNUP_SCHEDULE_AHEAD does."""
    if (
        at is not None
        and signup.reminders_sent < settings.SIGNUP_MAX_REMINDERS
        and at < signup.expires_at
    ):
        signup.next_reminder_at = at
    else:
        signup.next_reminder_at = None
    within_reach = signup.next_reminder_at is not None and signup.next_reminder_at <= horizon(now)
    signup.reminder_enqueued_at = now if within_reach else None


def schedule_next_step(signup: Signup, *, now) -> None:
    """After commit, enqueue the task plan_next_step planned: the next reminder if it is
    within reach, else the expiry if that is; the sweeper takes care of later ones."""
    signup_id = signup.pk
    if signup.reminder_enqueued_at is not None:
        number, due = signup.reminders_sent + 1, signup.next_reminder_at
        after_commit(lambda: tasks.send_reminder.apply_async((signup_id, number), eta=due))
    elif signup.next_reminder_at is None and signup.expires_at <= horizon(now):
        due = signup.expires_at
        after_commit(lambda: tasks.expire_signup.apply_async((signup_id,), eta=due))


def mute(signup: Signup) -> None:
    """Plan no reminder for this signup; it is still pending and its links still work."""
    signup.next_reminder_at = signup.reminder_enqueued_at = None
