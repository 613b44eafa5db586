"""Telling others what happened: a signal in this process and a signed webhook to every
SIGNUP_WEBHOOK_URLS endpoint for each transition, both after commit. The webhooks go
through their ledger (internal.ledger's WEBHOOK channel): a row per endpoint, written in the
transition's transaction."""

import copy
import logging
import uuid

from django.conf import settings
from django.utils import timezone

from signup import signals, tasks, webhooks_out
from signup.logs import ids
from signup.models import Signup, WebhookDelivery
from signup.workflow.internal.rows import after_commit

logger = logging.getLogger("signup.workflow")

STARTED = "signup.started"
VERIFIED = "signup.verified"
EXPIRED = "signup.expired"
CANCELLED = "signup.cancelled"
UNDELIVERABLE = "signup.undeliverable"
ADDRESS_CHANGED = "signup.address_changed"


def announce(signup: Signup, event_type: str) -> None:
    """Record that `signup` just went through `event_type`: a delivery row per endpoint and
    the signal, both sent after commit. Callers hold the signup's lock inside the
    transition's transaction."""
    event_id = f"msg_{uuid.uuid4().hex}"
    now = timezone.now()
    data = webhooks_out.event_data(signup)
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

    after_commit(tell)
