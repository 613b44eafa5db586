"""Rendering and sending the workflow's emails through Django's mail API (any anymail ESP)."""

from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string

from signup import tokens
from signup.models import OutboundEmail, Signup

Kind = OutboundEmail.Kind


def link_source(email: OutboundEmail) -> str:
    """Return the `source` a link in this email credits when clicked."""
    return f"reminder-{email.sequence}" if email.kind == Kind.REMINDER else "verification"


def message_id(email: OutboundEmail) -> str:
    """Return the Message-ID of a ledger email: the same on every attempt, so a copy sent
    again after a crash (the at-least-once window) is one message to mail clients."""
    domain = urlsplit(settings.SITE_URL).hostname or "signup.invalid"
    return f"<signup-email-{email.pk}.{email.kind}.{email.sequence}@{domain}>"


def build_message(email: OutboundEmail, signup: Signup) -> EmailMultiAlternatives:
    """Return the message for one ledger row, rendered from templates/emails/<kind>.*."""
    context = {
        "signup": signup,
        "email": email,
        "site_url": settings.SITE_URL,
        "reminders_left": max(settings.SIGNUP_MAX_REMINDERS - email.sequence, 0),
        "expires_at": signup.expires_at,
    }
    if email.kind in (Kind.VERIFICATION, Kind.REMINDER):
        context["verify_url"] = tokens.verification_url(signup, source=link_source(email))
    subject = render_to_string(f"emails/{email.kind}_subject.txt", context)
    message = EmailMultiAlternatives(
        subject=" ".join(subject.split()),
        body=render_to_string(f"emails/{email.kind}.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[email.to_email],
        headers={"Message-ID": message_id(email)},
    )
    message.attach_alternative(render_to_string(f"emails/{email.kind}.html", context), "text/html")
    # Read by anymail backends (ignored by others): ties provider events back to the ledger.
    message.metadata = {"signup_email_id": str(email.pk)}
    message.tags = [f"signup-{email.kind}"]
    return message


def send(email: OutboundEmail, signup: Signup) -> str:
    """Send one ledger email now and return the provider's message id (or our Message-ID)."""
    message = build_message(email, signup)
    message.send(fail_silently=False)
    status = getattr(message, "anymail_status", None)
    if status is not None and status.message_id:
        return str(status.message_id)
    return message.extra_headers["Message-ID"]
