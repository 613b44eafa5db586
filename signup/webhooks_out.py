"""Signed webhooks out (Standard Webhooks): the body of an event, its headers and the POST.

The workflow decides what is sent and when (its webhook ledger, signup.workflow.delivery);
this module only speaks HTTP. Every attempt at a delivery carries the delivery's
stable `webhook-id`, a fresh `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256
of "id.timestamp.body">` under SIGNUP_WEBHOOK_SECRET, signed by the `standardwebhooks`
package, so that a receiver verifies it with the same package and drops duplicates by id.
"""

import json
import threading
from datetime import UTC, datetime

import requests
from django.conf import settings
from standardwebhooks.webhooks import Webhook

from signup.models import Signup, WebhookDelivery

# Sent only with SIGNUP_WEBHOOK_INCLUDE_PII, and only while the signup still holds them.
_PERSONAL = ("email", "first_name", "last_name")


class ReceiverRefused(Exception):
    """The receiver answered with a status other than 2xx."""

    def __init__(self, status: int, retry_after: str = ""):
        super().__init__(f"the receiver answered {status}")
        self.status = status
        self.retry_after = retry_after


def event_data(signup: Signup) -> dict:
    """The event's "data" as it is stored in the ledger: the signup's state, no personal data
    (the username is added when it is sent, as the signup has it then: anonymised, a
    placeholder; `id` stays, for a receiver to find what it made of the signup)."""
    return {
        "id": signup.pk,
        "status": signup.status,
        "verified_source": signup.verified_source or None,
        "reminders_sent": signup.reminders_sent,
        "created_at": signup.created_at.isoformat(),
        "verified_at": signup.verified_at.isoformat() if signup.verified_at else None,
        "expires_at": signup.expires_at.isoformat(),
        "closed_at": signup.closed_at.isoformat() if signup.closed_at else None,
        # Who cancelled it: "operator", "api" or "recipient" ("not me"); null otherwise.
        "closed_by": signup.closed_by or None,
    }


def body(delivery: WebhookDelivery, signup: Signup) -> str:
    """The JSON body of a delivery: {"type", "timestamp", "data"}, with the signup's username
    as it is now, and its address and names only with SIGNUP_WEBHOOK_INCLUDE_PII (and only
    while the signup still has them)."""
    data = {**delivery.payload, "username": signup.username}
    if settings.SIGNUP_WEBHOOK_INCLUDE_PII and signup.anonymised_at is None:
        data.update({field: getattr(signup, field) for field in _PERSONAL})
    document = {
        "type": delivery.event_type,
        "timestamp": delivery.occurred_at.isoformat(),
        "data": data,
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def headers(delivery: WebhookDelivery, payload: str, *, now: datetime) -> dict[str, str]:
    signer = Webhook(settings.SIGNUP_WEBHOOK_SECRET)
    return {
        "Content-Type": "application/json",
        "User-Agent": "signup-workflow-webhooks",
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign(delivery.event_id, now, payload),
    }


_local = threading.local()


def _session() -> requests.Session:
    """One kept HTTP session per sending thread (keep-alive to each receiver)."""
    if getattr(_local, "session", None) is None:
        _local.session = requests.Session()
    return _local.session


def post(delivery: WebhookDelivery, signup: Signup) -> int:
    """POST the delivery to its endpoint; return the 2xx status, raise ReceiverRefused for
    any other, or requests' errors for a timeout or a connection that failed."""
    payload = body(delivery, signup)
    sent = headers(delivery, payload, now=datetime.now(UTC))
    answer = _session().post(
        delivery.endpoint,
        data=payload.encode(),
        headers=sent,
        timeout=settings.SIGNUP_WEBHOOK_TIMEOUT,
        allow_redirects=False,
    )
    answer.close()
    if not 200 <= answer.status_code < 300:
        raise ReceiverRefused(answer.status_code, answer.headers.get("Retry-After", ""))
    return answer.status_code
