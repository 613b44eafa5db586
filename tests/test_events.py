"""Other services learn what happened: signals after commit, and signed webhooks (Standard
Webhooks) to a real HTTP receiver on localhost, delivered by a real worker through their
ledger: retried with the same webhook-id, dead-lettered on a 4xx, re-driven from the admin."""

import base64
import json
import secrets
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from signup import signals, tokens, webhooks_out, workflow
from signup.models import Signup, SignupEvent, WebhookDelivery
from tests.helpers import emailed, probes_taken, send_reminder, signed_up, signup_data, wait_for
from tests.receiver import Receiver

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def receiver(settings):
    running = Receiver().start()
    settings.SIGNUP_WEBHOOK_URLS = [running.url]
    settings.SIGNUP_WEBHOOK_SECRET = SECRET
    settings.SIGNUP_WEBHOOK_RETRY_DELAY = 0.2
    settings.SIGNUP_WEBHOOK_RETRY_MAX_DELAY = 1.0
    settings.SIGNUP_WEBHOOK_TIMEOUT = 5
    yield running
    running.stop()


def verified(received) -> dict:
    """The event, once its signature checks out (standardwebhooks raises otherwise)."""
    return Webhook(SECRET).verify(received.body, received.headers)


def delivered(receiver: Receiver, event_type: str, count: int = 1, timeout: float = 15):
    return wait_for(
        lambda: len(found := receiver.of_type(event_type)) >= count and found,
        timeout=timeout,
        message=f"{count} {event_type} event(s) at the receiver",
    )


def test_a_verified_signup_sends_one_signed_verified_event(receiver, worker, settings):
    signup = emailed(**signup_data())
    assert send_reminder(signup_id=signup.pk, number=1)
    workflow.verify_signup(token=tokens.make_token(signup), source="reminder-1")
    (started,) = delivered(receiver, "signup.started")
    (event,) = delivered(receiver, "signup.verified")
    document = verified(event)
    assert document["type"] == "signup.verified"
    assert document["data"]["username"] == signup.username
    assert document["data"]["status"] == "verified"
    assert document["data"]["verified_source"] == "reminder-1"
    assert document["data"]["verified_at"]
    assert "email" not in document["data"] and "first_name" not in document["data"]
    assert "alice@example.com" not in event.body
    assert event.headers["webhook-id"].startswith("msg_")
    assert event.headers["webhook-id"] != started.headers["webhook-id"]
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(event.body, event.headers)
    wait_for(lambda: WebhookDelivery.objects.filter(status="sent").count() == 2)
    assert len(receiver.received) == 2  # one of each, nothing twice

    settings.SIGNUP_WEBHOOK_INCLUDE_PII = True
    other = signed_up(**signup_data(username="bob", email="bob@example.com"))
    (with_pii,) = [r for r in delivered(receiver, "signup.started", 2) if "bob" in r.body]
    assert verified(with_pii)["data"]["email"] == "bob@example.com"
    assert verified(with_pii)["data"]["username"] == other.username


def test_a_receiver_that_fails_then_recovers_gets_each_event_once_under_one_id(receiver, worker):
    receiver.statuses = [503, 500, 429]
    signup = signed_up(**signup_data())
    attempts = delivered(receiver, "signup.started", 4)
    assert len({a.headers["webhook-id"] for a in attempts}) == 1
    assert all(verified(a)["data"]["username"] == signup.username for a in attempts)
    wait_for(lambda: WebhookDelivery.objects.filter(status="sent").exists())
    delivery = WebhookDelivery.objects.get()
    assert (delivery.attempts, delivery.response_status) == (4, 200)


def test_a_receiver_down_for_a_while_loses_nothing(receiver, worker, settings):
    port = receiver.port
    receiver.stop()
    signups = [
        signed_up(**signup_data(username=f"u{n}", email=f"u{n}@example.com")) for n in range(3)
    ]
    workflow.verify_signup_by_operator(signup_id=signups[0].pk)
    wait_for(
        lambda: WebhookDelivery.objects.filter(attempts__gte=3).count() == 4,
        message="every delivery tried three times against the closed port",
    )
    assert WebhookDelivery.objects.exclude(status__in=["queued", "sending"]).count() == 0
    back = Receiver(port).start()
    try:
        delivered(back, "signup.started", 3)
        delivered(back, "signup.verified", 1)
        wait_for(lambda: WebhookDelivery.objects.filter(status="sent").count() == 4)
        ids = [r.headers["webhook-id"] for r in back.received]
        assert len(ids) == len(set(ids)) == 4
    finally:
        back.stop()


def test_a_4xx_dead_letters_at_once_and_an_operator_redrives_it(receiver, worker, admin_client):
    receiver.status = 400
    signup = signed_up(**signup_data())
    wait_for(lambda: WebhookDelivery.objects.filter(status="failed").exists())
    delivery = WebhookDelivery.objects.get()
    assert (delivery.attempts, delivery.response_status) == (1, 400)
    assert "answered 400" in delivery.last_error
    failed = SignupEvent.objects.get(signup=signup, kind="webhook_failed")
    assert "signup.started" in failed.detail
    listed = admin_client.get("/admin/signup/webhookdelivery/?status__exact=failed")
    assert listed.context["cl"].result_count == 1

    receiver.status = 200
    answer = admin_client.post(
        "/admin/signup/webhookdelivery/",
        {"action": "redrive", "_selected_action": [delivery.pk]},
        follow=True,
    )
    assert "1 of 1 delivery(ies) re-driven" in answer.content.decode()
    wait_for(lambda: WebhookDelivery.objects.filter(status="sent").exists())
    first, second = receiver.of_type("signup.started")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert SignupEvent.objects.filter(signup=signup, kind="webhook_redriven").count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_sweeper_redelivers_an_event_whose_task_was_lost(receiver, settings, broker):
    signup = signed_up(**signup_data())  # no worker: its task waits in the broker
    broker.flushdb()  # and is lost
    WebhookDelivery.objects.update(enqueued_at=timezone.now() - timedelta(hours=1))
    probes_taken(ago=settings.SIGNUP_REDRIVE_AFTER + 1)  # the workers came back since
    assert workflow.sweep()["webhooks_requeued"] == 1
    assert SignupEvent.objects.filter(signup=signup, kind="webhook_redriven").count() == 1
    assert workflow.sweep()["webhooks_requeued"] == 0  # once, not at every sweep


# --- Signals ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_signals_are_sent_after_commit_and_never_for_a_rollback(broker):
    heard = []

    def listener(sender, signup, event_id, event_type, **kwargs):
        heard.append((event_type, signup.username, signup.status, event_id))

    for signal in signals.BY_EVENT_TYPE.values():
        signal.connect(listener, weak=False)
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            signed_up(**signup_data(username="ghost", email="ghost@example.com"))
            assert heard == []  # not before the commit
            raise RuntimeError("rolled back")
        assert heard == []

        alice = signed_up(**signup_data())
        workflow.verify_signup_by_operator(signup_id=alice.pk)
        bob = signed_up(**signup_data(username="bob", email="bob@example.com"))
        workflow.cancel_signup(signup_id=bob.pk, reason="asked to")
        carol = signed_up(**signup_data(username="carol", email="carol@example.com"))
        workflow.mark_undeliverable(signup_id=carol.pk, reason="hard bounce")
        dave = signed_up(**signup_data(username="dave", email="dave@example.com"))
        Signup.objects.filter(pk=dave.pk).update(expires_at=timezone.now())
        workflow.expire_signup(signup_id=dave.pk)
    finally:
        for signal in signals.BY_EVENT_TYPE.values():
            signal.disconnect(listener)
    assert [(kind, name, status) for kind, name, status, _ in heard] == [
        ("signup.started", "alice", "pending"),
        ("signup.verified", "alice", "verified"),
        ("signup.started", "bob", "pending"),
        ("signup.cancelled", "bob", "cancelled"),
        ("signup.started", "carol", "pending"),
        ("signup.undeliverable", "carol", "undeliverable"),
        ("signup.started", "dave", "pending"),
        ("signup.expired", "dave", "expired"),
    ]
    assert len({event_id for *_, event_id in heard}) == 8


def test_a_failing_listener_undoes_nothing_and_stops_nothing(receiver, worker):
    heard = []

    def broken(**kwargs):
        raise ValueError("listener bug")

    def after_it(signup, **kwargs):
        heard.append(signup.username)

    signals.signup_verified.connect(broken, weak=False)
    signals.signup_verified.connect(after_it, weak=False)
    try:
        alice = signed_up(**signup_data())
        workflow.verify_signup_by_operator(signup_id=alice.pk)
    finally:
        signals.signup_verified.disconnect(broken)
        signals.signup_verified.disconnect(after_it)
    alice.refresh_from_db()
    assert alice.status == "verified"
    assert heard == ["alice"]  # the listener after the broken one ran
    delivered(receiver, "signup.verified")  # and the webhook went out


def test_the_event_body_is_the_documented_shape(receiver, worker):
    signed_up(**signup_data())
    (event,) = delivered(receiver, "signup.started")
    document = json.loads(event.body)
    assert set(document) == {"type", "timestamp", "data"}
    assert set(document["data"]) == {
        "id",
        "username",
        "status",
        "verified_source",
        "reminders_sent",
        "created_at",
        "verified_at",
        "expires_at",
        "closed_at",
        "closed_by",
    }
    assert event.headers["Content-Type"] == "application/json"
    assert abs(int(event.headers["webhook-timestamp"]) - timezone.now().timestamp()) < 30


@pytest.mark.django_db(transaction=True)
def test_a_copy_of_a_task_waits_for_the_planned_retry(receiver, broker, settings):
    receiver.status = 503
    settings.SIGNUP_WEBHOOK_RETRY_DELAY = settings.SIGNUP_WEBHOOK_RETRY_MAX_DELAY = 1800.0
    signed_up(**signup_data())
    delivery = WebhookDelivery.objects.get()
    then = workflow.attempt(workflow.WEBHOOK, delivery.pk)  # the receiver said 503: try again later
    assert isinstance(then.error, webhooks_out.ReceiverRefused) and then.countdown >= 900
    assert WebhookDelivery.objects.get().response_status == 503
    # A redelivered or re-enqueued copy of the task: it may not post before the backoff says.
    with pytest.raises(workflow.InFlight) as later:
        workflow.deliver(workflow.WEBHOOK, delivery.pk)
    assert (later.value.until - timezone.now()).total_seconds() > 800
    assert len(receiver.received) == 1
    assert WebhookDelivery.objects.get().attempts == 1


@pytest.mark.django_db(transaction=True)
def test_the_ledger_keeps_no_username_and_sends_the_anonymised_one(receiver, broker):
    alice = signed_up(**signup_data())
    workflow.erase_personal_data(signup_id=alice.pk, operator="op")
    assert all("alice" not in json.dumps(d.payload) for d in WebhookDelivery.objects.all())
    for delivery in WebhookDelivery.objects.order_by("id"):
        workflow.deliver(workflow.WEBHOOK, delivery.pk)
    assert [verified(r)["type"] for r in receiver.received] == [
        "signup.started",
        "signup.cancelled",
    ]
    for received in receiver.received:
        data = verified(received)["data"]
        assert data["id"] == alice.pk and data["username"] != "alice"
        assert "alice" not in received.body
