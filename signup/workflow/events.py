"""Telling others what happened: a signal in this process and a signed webhook to every
SIGNUP_WEBHOOK_URLS endpoint for each transition (signup.started, .verified, .expired,
.cancelled, .undeliverable).

Webhooks go through a ledger like the emails': the transition adds one WebhookDelivery row
per endpoint in its own transaction, and a task on the `webhooks` queue delivers it after
commit: claimed with a lease, POSTed outside any transaction, recorded; retried with
backoff on timeouts, 5xx and 429, dead-lettered at once on another 4xx or when its attempts
run out, re-driven by an operator or, when its task was lost, by the sweeper.
"""

import copy
import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from signup import hooks, signals, tasks
from signup.logs import ids
from signup.models import Signup, WebhookDelivery
from signup.redaction import redact
from signup.workflow.common import Event, _add_event_for, _after_commit, close_if_pooled

logger = logging.getLogger("signup.workflow")

Delivery = WebhookDelivery.Status

STARTED = "signup.started"
VERIFIED = "signup.verified"
EXPIRED = "signup.expired"
CANCELLED = "signup.cancelled"
UNDELIVERABLE = "signup.undeliverable"


def _announce(signup: Signup, event_type: str) -> None:
    """Record that `signup` just went through `event_type`: a delivery row per endpoint,
    sent after commit, and the signal, sent after commit. Callers hold the signup's lock
    inside the transition's transaction."""
    event_id = f"msg_{uuid.uuid4().hex}"
    now = timezone.now()
    data = hooks.event_data(signup)
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            signup=signup,
            event_id=event_id,
            event_type=event_type,
            endpoint=endpoint,
            payload=data,
            occurred_at=now,
            enqueued_at=now,
        )
        for endpoint in settings.SIGNUP_WEBHOOK_URLS
    )
    delivery_ids = [delivery.pk for delivery in deliveries]
    snapshot = copy.copy(signup)  # as this transition left it, whatever the caller does next

    def tell() -> None:
        signal = signals.BY_EVENT_TYPE[event_type]
        for receiver, outcome in signal.send_robust(
            sender=Signup, signup=snapshot, event_id=event_id, event_type=event_type
        ):
            if isinstance(outcome, Exception):
                logger.error(
                    "%s receiver %s failed: %r",
                    event_type,
                    getattr(receiver, "__qualname__", receiver),
                    outcome,
                    extra=ids(signup_id=signup.pk),
                )
        for delivery_id in delivery_ids:
            tasks.deliver_webhook.delay(delivery_id)

    _after_commit(tell)


# --- Delivering ---------------------------------------------------------------------------


class WebhookInFlight(Exception):
    """Not now: another attempt at this delivery is with its receiver until `until` (its
    lease), or its next attempt is planned for `until`."""

    def __init__(self, delivery_id: int, until):
        super().__init__(f"webhook {delivery_id} is with its receiver until {until.isoformat()}")
        self.delivery_id = delivery_id
        self.until = until


def deliver_webhook(*, delivery_id: int) -> bool:
    """POST one delivery unless it was delivered already or dead-lettered; return whether it
    was delivered now. Receiver errors propagate to the caller (the task's retry policy)."""
    delivery = _claim(delivery_id)
    if delivery is None:
        return False
    close_if_pooled()  # the receiver may take seconds: no idle connection meanwhile
    status = hooks.post(delivery, delivery.signup)
    now = timezone.now()
    WebhookDelivery.objects.filter(pk=delivery_id, status=Delivery.SENDING).update(
        status=Delivery.SENT,
        response_status=status,
        sent_at=now,
        last_error="",
        in_flight_until=None,
        updated_at=now,
    )
    return True


def _claim(delivery_id: int) -> WebhookDelivery | None:
    now = timezone.now()
    with transaction.atomic():
        delivery = _lock_delivery(delivery_id)
        if delivery is None or delivery.status not in (Delivery.QUEUED, Delivery.SENDING):
            return None
        if delivery.in_flight_until is not None and delivery.in_flight_until > now:
            raise WebhookInFlight(delivery_id, delivery.in_flight_until)
        if delivery.enqueued_at is not None and delivery.enqueued_at > now:
            # Its next attempt is planned for later (the backoff, a Retry-After): a copy of
            # its task (redelivered, re-enqueued) waits for that time too.
            raise WebhookInFlight(delivery_id, delivery.enqueued_at)
        if delivery.attempts >= settings.SIGNUP_WEBHOOK_MAX_ATTEMPTS:
            _fail(delivery, f"gave up after {delivery.attempts} attempts")
            return None
        delivery.status = Delivery.SENDING
        delivery.attempts += 1
        delivery.in_flight_until = now + timedelta(seconds=lease_seconds())
        # The sweeper measures a lost task from the last attempt, not from the event.
        delivery.enqueued_at = now
        delivery.save(
            update_fields=["status", "attempts", "in_flight_until", "enqueued_at", "updated_at"]
        )
    return WebhookDelivery.objects.select_related("signup").filter(pk=delivery_id).first()


def lease_seconds() -> float:
    """How long an attempt may be with its receiver: SIGNUP_WEBHOOK_TIMEOUT bounds the
    connection and each wait for the answer's next bytes, so twice that, and a second."""
    return 2 * settings.SIGNUP_WEBHOOK_TIMEOUT + 1


def _lock_delivery(delivery_id: int) -> WebhookDelivery | None:
    return WebhookDelivery.objects.select_for_update(no_key=True).filter(pk=delivery_id).first()


def record_webhook_error(
    *, delivery_id: int, error: str, retry_in: float, status: int | None = None
) -> bool:
    """Note a failed attempt; return True if it is to be retried in `retry_in` seconds (False:
    its attempts ran out and it was dead-lettered, or another attempt finished it)."""
    with transaction.atomic():
        delivery = _lock_delivery(delivery_id)
        if delivery is None or delivery.status != Delivery.SENDING:
            return False
        delivery.response_status = status
        if delivery.attempts >= settings.SIGNUP_WEBHOOK_MAX_ATTEMPTS:
            _fail(delivery, f"gave up after {delivery.attempts} attempts; last error: {error}")
            return False
        delivery.last_error = redact(error)[:2000]
        delivery.enqueued_at = timezone.now() + timedelta(seconds=retry_in)
        delivery.in_flight_until = None
        delivery.save(
            update_fields=[
                "response_status",
                "last_error",
                "enqueued_at",
                "in_flight_until",
                "updated_at",
            ]
        )
    return True


def record_webhook_failure(*, delivery_id: int, error: str, status: int | None = None) -> None:
    """Dead-letter a delivery its receiver refused for good (a 4xx other than 408 and 429)."""
    with transaction.atomic():
        delivery = _lock_delivery(delivery_id)
        if delivery is not None and delivery.status in (Delivery.QUEUED, Delivery.SENDING):
            delivery.response_status = status
            _fail(delivery, error)


def _fail(delivery: WebhookDelivery, error: str) -> None:
    error = redact(error)
    delivery.status = Delivery.FAILED
    delivery.last_error = error[:2000]
    delivery.in_flight_until = None
    delivery.save(
        update_fields=["status", "response_status", "last_error", "in_flight_until", "updated_at"]
    )
    detail = f"{delivery.event_type} to {delivery.endpoint}: {error}"
    _add_event_for(delivery.signup_id, Event.WEBHOOK_FAILED, detail=detail[:500])
    logger.error(
        "webhook %s (%s to %s) failed: %s",
        delivery.pk,
        delivery.event_type,
        delivery.endpoint,
        error,
        extra=ids(signup_id=delivery.signup_id),
    )


def redrive_webhook(*, delivery_id: int) -> bool:
    """Give a dead-lettered delivery another round of attempts (an operator's re-drive); it
    keeps its webhook-id, so a receiver that did get it drops it."""
    with transaction.atomic():
        delivery = _lock_delivery(delivery_id)
        if delivery is None or delivery.status != Delivery.FAILED:
            return False
        delivery.status = Delivery.QUEUED
        delivery.attempts = 0
        delivery.enqueued_at = timezone.now()
        delivery.save(update_fields=["status", "attempts", "enqueued_at", "updated_at"])
        detail = f"{delivery.event_type} to {delivery.endpoint}: re-driven by an operator"
        _add_event_for(delivery.signup_id, Event.WEBHOOK_REDRIVEN, detail=detail[:500])
        _after_commit(lambda: tasks.deliver_webhook.delay(delivery_id))
    return True


def _unsent_webhooks(*, now, stale):
    """Deliveries still to be made whose (re-)enqueueing is older than `stale` and whose last
    attempt's lease has ended: their tasks were lost (the sweeper's business)."""
    return WebhookDelivery.objects.filter(
        Q(enqueued_at__lte=stale) | Q(enqueued_at__isnull=True),
        Q(in_flight_until__isnull=True) | Q(in_flight_until__lte=now),
        status__in=(Delivery.QUEUED, Delivery.SENDING),
    )
