"""Rendering and sending the workflow's emails through Django's mail API (any anymail ESP)."""

import re
import threading
import time
import zoneinfo
from contextlib import suppress
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.template.loader import render_to_string
from django.utils import formats, timezone, translation
from django.utils.crypto import salted_hmac

from signup import languages, tokens
from signup.models import OutboundEmail, Signup

Kind = OutboundEmail.Kind


def link_source(email: OutboundEmail) -> str:
    """Return the `source` a link in this email credits when clicked."""
    return f"reminder-{email.sequence}" if email.kind == Kind.REMINDER else "verification"


def message_id(email: OutboundEmail) -> str:
    """Return the Message-ID of a ledger email: the same on every attempt, so a copy sent
    again after a crash (the at-least-once window) is one message to mail clients; keyed,
    so that it does not tell the ledger's sequential ids."""
    domain = _site_host() or "signup.invalid"
    mac = salted_hmac("signup.message-id", str(email.pk), algorithm="sha256").hexdigest()
    return f"<signup-{mac[:32]}@{domain}>"


def _site_host() -> str:
    return urlsplit(settings.SITE_URL).hostname or ""


def site_name() -> str:
    """What the emails and pages call the site: SIGNUP_SITE_NAME, else SITE_URL's host."""
    return settings.SIGNUP_SITE_NAME or _site_host()


def build_message(email: OutboundEmail, signup: Signup) -> EmailMultiAlternatives:
    """Return the message for one ledger row, rendered from templates/emails/<kind>.*, in the
    signup's language and with its times in the signup's time zone.

    A worker has no request to take them from, and sends days later: they are the signup's,
    never the worker's defaults.
    """
    language = languages.offered(signup.language)
    with translation.override(language), timezone.override(_zone(signup.time_zone)):
        return _render(email, signup)


def _zone(name: str):
    try:
        return zoneinfo.ZoneInfo(name) if name else timezone.get_default_timezone()
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return timezone.get_default_timezone()


def _local_time(moment) -> str:
    local = timezone.localtime(moment)
    return f"{formats.date_format(local, 'DATETIME_FORMAT')} ({local.tzname()})"


def _render(email: OutboundEmail, signup: Signup) -> EmailMultiAlternatives:
    """The verification email and the reminders go to an address nobody has verified yet:
    they carry nothing a stranger typed (no name, no username), only what the recipient can
    recognise the signup by: the site, the time, the language (docs/SECURITY.md, registration
    spam). The welcome and "you already have an account" go to a verified address."""
    sent = email.sequence if email.kind == Kind.REMINDER else signup.reminders_sent
    context = {
        "signup": signup,
        "site": site_name(),
        "site_url": settings.SITE_URL,
        "reminders_left": max(settings.SIGNUP_MAX_REMINDERS - sent, 0),
        # In the signup's language and time zone (both active here), with the zone named.
        "signed_up": _local_time(signup.created_at),
        "until": _local_time(signup.expires_at),
    }
    headers = {"Message-ID": message_id(email)}
    if email.kind in (Kind.VERIFICATION, Kind.REMINDER):
        context["verify_url"] = tokens.verification_url(signup, source=link_source(email))
        context["code"] = tokens.verification_code(signup)
        context["not_me_url"] = not_me = tokens.not_me_url(signup)
        # A mail client's "unsubscribe" (RFC 2369), in one click (RFC 8058): a POST to the
        # same "not me" action the email's link opens.
        headers["List-Unsubscribe"] = f"<{not_me}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    subject = render_to_string(f"emails/{email.kind}_subject.txt", context)
    message = EmailMultiAlternatives(
        # One line; a no-break space (French typography) stays one.
        subject=re.sub(r"[ \t\r\n]+", " ", subject).strip(),
        body=render_to_string(f"emails/{email.kind}.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[email.to_email],
        headers=headers,
    )
    message.attach_alternative(render_to_string(f"emails/{email.kind}.html", context), "text/html")
    # Read by anymail backends (ignored by others): ties provider events back to the ledger.
    message.metadata = {"signup_email_id": str(email.pk)}
    message.tags = [f"signup-{email.kind}"]
    return message


def send(email: OutboundEmail, signup: Signup) -> str:
    """Send one ledger email now and return the provider's message id (or our Message-ID)."""
    message = build_message(email, signup)
    message.connection = _connection()
    try:
        message.send(fail_silently=False)
    except BaseException:
        _drop_connection()  # whatever went wrong, the next email starts on a fresh one
        raise
    status = getattr(message, "anymail_status", None)
    if status is not None and status.message_id:
        return str(status.message_id)
    return message.extra_headers["Message-ID"]


# Each sending thread keeps its backend connection open between emails: an ESP's HTTP API is
# then one request on a kept-alive (TLS) connection, not a new session, TCP connect and
# handshake per email. One left idle this long is closed and opened again, before the far
# end (an ESP's load balancer, an SMTP server) is likely to have dropped it.
CONNECTION_IDLE_SECONDS = 20
_thread = threading.local()
# Bumped when the email settings change (tests, override_settings): every thread then opens
# a connection configured by the new ones.
_settings_version = 0


@receiver(setting_changed)
def _email_settings_changed(*, setting: str, **kwargs) -> None:
    global _settings_version
    if setting.startswith(("EMAIL_", "ANYMAIL")):
        _settings_version += 1


def _connection():
    """This thread's open connection to the configured email backend."""
    now = time.monotonic()
    kept = getattr(_thread, "connection", None)
    if kept is not None and (
        _thread.version != _settings_version or now - _thread.used > CONNECTION_IDLE_SECONDS
    ):
        _drop_connection()
        kept = None
    if kept is None:
        _thread.version = _settings_version
        kept = get_connection(fail_silently=False)
        kept.open()
        _thread.connection = kept
    _thread.used = now
    return kept


def _drop_connection() -> None:
    kept = getattr(_thread, "connection", None)
    _thread.connection = None
    if kept is not None:
        # A broken connection is being thrown away: its close may fail as well.
        with suppress(Exception):
            kept.close()
