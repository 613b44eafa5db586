"""Email-provider events (bounces, complaints, deliveries, opens), posted to anymail's
tracking webhooks, matched to the ledger and handed to the workflow, which decides what each
means (workflow.record_provider_event).

Only anymail's tracking endpoints are mounted. They answer 404 while ANYMAIL_WEBHOOK_SECRET
is unset, and so does the endpoint of a provider whose own settings are missing (a signing
key, a package); once it is set, anymail checks HTTP basic auth on every post. Posts that
fail auth (counted per client like wrong API keys: past the limit, 429) or can't be read get
a 4xx, change nothing and log one line.
"""

import logging
from functools import wraps

from anymail import urls as anymail_urls
from anymail.exceptions import AnymailWebhookValidationFailure
from anymail.signals import tracking
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.dispatch import receiver
from django.http import JsonResponse
from django.urls import path

from signup import limits, workflow
from signup.models import OutboundEmail

logger = logging.getLogger(__name__)


class EventNotRecorded(Exception):
    """Recording a genuine event failed: answer 5xx so the provider posts it again."""


@receiver(tracking)
def record_tracking_event(sender, event, esp_name: str, **kwargs) -> None:
    email_id = _ledger_id(event)
    if email_id is None:
        logger.info("%s %s event for a message not in the ledger", esp_name, event.event_type)
        return
    try:
        esp_event = event.esp_event if isinstance(event.esp_event, dict) else {}
        workflow.record_provider_event(
            email_id=email_id,
            event_type=event.event_type,
            bounce_type=str(esp_event.get("Type") or ""),
            description=str(event.description or event.mta_response or "")[:200],
        )
    except Exception as exc:
        raise EventNotRecorded(f"{esp_name} {event.event_type} for email {email_id}") from exc


def _ledger_id(event) -> int | None:
    """Find the ledger row an event is about: our metadata first, then the provider's id."""
    metadata = event.metadata if isinstance(event.metadata, dict) else {}
    raw_id = metadata.get("signup_email_id")
    if isinstance(raw_id, str | int) and str(raw_id).isdigit() and len(str(raw_id)) < 19:
        email_id = int(raw_id)
    elif isinstance(event.message_id, str) and 0 < len(event.message_id) <= 255:
        email_id = (
            OutboundEmail.objects.filter(provider_message_id=event.message_id)
            .values_list("id", flat=True)
            .first()
        )
    else:
        return None
    recipient = event.recipient if isinstance(event.recipient, str) else ""
    matches = OutboundEmail.objects.filter(pk=email_id, to_email__iexact=recipient.strip())
    return email_id if email_id is not None and matches.exists() else None


def refuse_malformed(view):
    """Answer 404 while webhooks are off or the provider is not configured, 403 (429 past the
    limit) to wrong credentials, and 400 (not 500) to a post that can't be read: each logged
    in one line by django.request, as every 4xx is, without a traceback."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not settings.ANYMAIL.get("WEBHOOK_SECRET"):
            return JsonResponse({"message": "Webhooks are not configured."}, status=404)
        if not _configured(view):
            message = "This provider's webhook is not configured."
            return JsonResponse({"message": message}, status=404)
        try:
            return view(request, *args, **kwargs)
        except EventNotRecorded:
            raise
        except AnymailWebhookValidationFailure:
            status, retry_after = limits.refuse_bad_credentials(request)
            response = JsonResponse({"message": "The credentials are not valid."}, status=status)
            if retry_after:
                response["Retry-After"] = str(retry_after)
            return response
        except (ValueError, TypeError, KeyError, AttributeError, ImproperlyConfigured):
            # ImproperlyConfigured: anymail's word for a post meant for another endpoint (an
            # inbound message posted to the tracking URL).
            return JsonResponse({"message": "The event could not be read."}, status=400)

    return wrapper


def _configured(view) -> bool:
    """Whether a provider's webhook view has the settings and packages it needs (a signing
    key, boto3): anymail checks them when the view is made, on every request."""
    try:
        view.view_class(**view.view_initkwargs)
    except ImproperlyConfigured:  # AnymailConfigurationError, AnymailImproperlyInstalled
        return False
    return True


urlpatterns = [
    path(str(pattern.pattern), refuse_malformed(pattern.callback), name=pattern.name)
    for pattern in anymail_urls.urlpatterns
    if pattern.name and pattern.name.endswith("_tracking_webhook")
]
