"""The sweeper tells a lost task from one waiting its turn (workflow.internal.queues): a task is
repaired once its queue's workers took a probe sent after it, a grace ago, and never while it
only waits, however long. So a repair is one per loss, whatever the backlog."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from signup import workflow
from signup.models import QueueProbe, Signup, SignupEvent
from tests.helpers import (
    probes_taken,
    sent_to,
    signed_up,
    signup_data,
    swept_after_probes,
    wait_for,
    wait_for_emails,
)

pytestmark = pytest.mark.django_db(transaction=True)


def repairs(signup, kind: str) -> int:
    return SignupEvent.objects.filter(signup=signup, kind=kind).count()


def probes_answered() -> bool:
    return not QueueProbe.objects.filter(taken_at__isnull=True).exists()


def test_a_task_waiting_its_turn_is_not_repaired_however_long_it_waits(broker, worker_factory):
    # No worker takes from the queues yet: the first contact waits, as behind a backlog.
    signup = workflow.start_signup(**signup_data())
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Signup.objects.filter(pk=signup.pk).update(updated_at=an_hour_ago, created_at=an_hour_ago)
    for _ in range(3):
        assert workflow.sweep()["contacts_requeued"] == 0
        time.sleep(0.6)
    # Waiting is not stuck; the queue's age says it waits.
    assert workflow.stuck_work()["contacts_overdue"] == 0
    ages = workflow.oldest_waiting()
    assert set(ages) == {"celery", "email"}  # no webhook receiver: that queue is not probed
    assert all(age >= 1 for age in ages.values()), ages

    with worker_factory():
        wait_for_emails("alice@example.com", "Verify")
        wait_for(probes_answered, message="the worker to take the probes")
        time.sleep(1.1)  # past the grace: the probes passed the first contact
        assert workflow.sweep()["contacts_requeued"] == 0
        assert all(age < 1 for age in workflow.oldest_waiting().values())  # its own probes
    assert repairs(signup, "contact_repaired") == 0
    assert len(sent_to("alice@example.com", "Verify")) == 1


def test_a_task_enqueued_after_the_newest_probe_taken_is_never_repaired(broker):
    probes_taken(ago=3600)  # the workers passed everything enqueued up to an hour ago
    signup = workflow.start_signup(**signup_data())  # and this came after: it waits its turn
    for _ in range(3):
        assert workflow.sweep()["contacts_requeued"] == 0
    time.sleep(1.5)
    probes_taken(ago=1.2)  # now they passed it too, a grace ago, and it is not done: lost
    assert workflow.sweep()["contacts_requeued"] == 1
    assert repairs(signup, "contact_repaired") == 1


def test_a_lost_task_is_repaired_once_when_the_workers_have_passed_it(broker, worker_factory):
    signup = workflow.start_signup(**signup_data())
    broker.flushdb()  # its first-contact task is lost
    with worker_factory():
        assert swept_after_probes()["contacts_requeued"] == 1
        wait_for_emails("alice@example.com", "Verify")
        for _ in range(3):  # and never again
            time.sleep(0.6)
            assert workflow.sweep()["contacts_requeued"] == 0
    assert repairs(signup, "contact_repaired") == 1
    assert len(sent_to("alice@example.com", "Verify")) == 1


def test_a_reminder_is_lost_only_if_it_was_due_before_a_probe_the_workers_took(settings):
    settings.SIGNUP_LOST_TASK_GRACE = 1
    signup = signed_up(**signup_data())
    # Handed to the broker an hour ago and due 30 s ago: a worker holds it, and may be
    # running late with it behind a backlog.
    Signup.objects.filter(pk=signup.pk).update(
        reminder_enqueued_at=timezone.now() - timedelta(hours=1),
        next_reminder_at=timezone.now() - timedelta(seconds=30),
    )
    probes_taken(ago=60)  # passed before it was due: it may still come
    assert workflow.sweep()["reminders_requeued"] == 0
    probes_taken(ago=20)  # passed after it was due, 20 s ago: it was lost
    assert workflow.sweep()["reminders_requeued"] == 1
    assert repairs(signup, "chain_repaired") == 1
    # Re-enqueued now: after every probe taken so far.
    assert workflow.sweep()["reminders_requeued"] == 0


def test_the_sweeper_keeps_only_the_probes_an_answer_needs(settings):
    settings.SIGNUP_LOST_TASK_GRACE, settings.SIGNUP_REDRIVE_AFTER = 1, 5
    settings.SIGNUP_SWEEP_INTERVAL = 1
    for ago in (3600, 600, 60, 30):
        probes_taken(ago=ago)
    workflow.sweep()
    # The newest taken more than 5 + 2 s ago, and everything after it (this sweep's own).
    email = QueueProbe.objects.filter(queue="email").order_by("sent_at")
    kept = list(email.values_list("taken_at", flat=True))
    assert len(kept) == 2 and kept[-1] is None
    assert 29 < (timezone.now() - kept[0]).total_seconds() < 35
