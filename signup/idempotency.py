"""Safe retries of the API's writes: the `Idempotency-Key` header (the IETF httpapi draft,
draft-ietf-httpapi-idempotency-key-header).

A create or an action that carries a key is recorded, per API key, before it runs; its
answer (status, headers that matter, body) is stored once it has one. A repeat with the same
key and the same request (method, path and body) gets that answer again and does nothing
more; the same key with another request gets 422; a repeat while the first is still under
way gets 409 (the draft's answer), so concurrent repeats make one signup. A first request
that ended in a server error, or was told to wait (408, 429), leaves no record, so it may be
tried again. (A failure after the workflow committed and before the answer was kept, which
no test has caused, would let such a retry do the work again: the window of the ledger's
"sent but not recorded", and as narrow.) Records are kept
for SIGNUP_IDEMPOTENCY_KEEP seconds (24 h), then deleted hourly (forget_expired).
"""

import functools
import hashlib
import json
import re
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpResponse
from django.utils import timezone
from django.utils.translation import gettext as _

from signup.models import IdempotencyRecord

KEY_MAX_LENGTH = 255
# An sf-string (RFC 8941), as the draft has it: printable ASCII in double quotes, with \" and
# \\ escaped; a bare value of printable ASCII without spaces or quotes is taken as well, as
# many clients send one ("abc" and abc are then one key).
_SF_STRING = re.compile(r'\A"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])+)"\Z')
_BARE = re.compile(r"\A[\x21\x23-\x5b\x5d-\x7e]+\Z")
_ESCAPED = re.compile(r'\\(["\\])')
# A record whose first request never finished (its process died) is taken over after this.
_ABANDONED_AFTER = timedelta(minutes=2)
# What a replay repeats besides the body.
_KEPT_HEADERS = ("Retry-After", "Location", "Content-Language")
# Answers that say "not now" rather than what happened: not kept, so a retry with the key,
# once the wait is over, is carried out (5xx are not kept either).
_NOT_KEPT = (408, 429)


def once(view):
    """Decorate an API operation whose keyword `idempotency_key` is the header's value."""

    @functools.wraps(view)
    def wrapper(request, *args, idempotency_key=None, **kwargs):
        if idempotency_key is None:
            return view(request, *args, **kwargs)
        from signup.api import ApiProblem

        key = _key(idempotency_key)
        if key is None:
            raise ApiProblem(
                400,
                _(
                    "An Idempotency-Key is 1 to 255 printable ASCII characters without spaces,"
                    " in double quotes or not."
                ),
                errors={"Idempotency-Key": [_("Not a valid key.")]},
            )
        client = hashlib.sha256(str(request.auth).encode()).hexdigest()
        record, replay = _claim(client, key, _fingerprint(request))
        if replay is not None:
            return replay
        # Only this request's claim: one taken over meanwhile (see _claim) is the new owner's.
        mine = IdempotencyRecord.objects.filter(pk=record.pk, created_at=record.created_at)
        try:
            response = _answer(view, request, *args, **kwargs)
        except BaseException:
            mine.delete()
            raise
        if response.status_code >= 500 or response.status_code in _NOT_KEPT:
            mine.delete()
        else:
            mine.update(
                status=response.status_code,
                content_type=response.get("Content-Type", ""),
                body=response.content.decode("utf-8"),
                headers={name: response[name] for name in _KEPT_HEADERS if name in response},
            )
        return response

    return wrapper


def _key(header: str) -> str | None:
    """The key an Idempotency-Key header carries, or None if it is not one."""
    if len(header) > KEY_MAX_LENGTH + 2:
        return None
    if match := _SF_STRING.match(header):
        return _ESCAPED.sub(r"\1", match.group(1))
    return header if _BARE.match(header) and len(header) <= KEY_MAX_LENGTH else None


def _answer(view, request, *args, **kwargs) -> HttpResponse:
    """The view's answer as a response, whether it returned one, data, or raised a problem."""
    from ninja import Status

    from signup.api import ApiProblem, api

    try:
        result = view(request, *args, **kwargs)
    except ApiProblem as problem:
        return api.on_exception(request, problem)
    status, data = (
        (result.status_code, result.value) if isinstance(result, Status) else (200, result)
    )
    if isinstance(data, HttpResponse):
        return data
    return HttpResponse(
        json.dumps(data), status=status, content_type="application/json; charset=utf-8"
    )


def _fingerprint(request) -> str:
    try:
        body = json.dumps(json.loads(request.body or b"{}"), sort_keys=True)
    except ValueError:
        body = request.body.decode("utf-8", "replace")
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def _claim(client: str, key: str, fingerprint: str):
    """Record the key for this request and return (record, None), or return (None, the answer
    to give instead): the first answer, 422 or 409."""
    from signup.api import ApiProblem

    now = timezone.now()
    try:
        with transaction.atomic():
            return (
                IdempotencyRecord.objects.create(
                    client=client, key=key, fingerprint=fingerprint, created_at=now
                ),
                None,
            )
    except IntegrityError:
        pass
    # The key was seen: its record decides (a concurrent first request has committed it).
    with transaction.atomic():
        record = (
            IdempotencyRecord.objects.select_for_update().filter(client=client, key=key).first()
        )
        if record is None:  # deleted meanwhile (expired, or its first request failed)
            return _claim(client, key, fingerprint)
        if record.fingerprint != fingerprint:
            raise ApiProblem(
                422,
                _("This Idempotency-Key was used for another request: use a new key."),
            )
        if record.status is None:
            if now - record.created_at < _ABANDONED_AFTER:
                raise ApiProblem(
                    409,
                    _("A request with this Idempotency-Key is under way: retry in a moment."),
                    headers={"Retry-After": "1"},
                )
            record.created_at = now  # its first request died: this one takes it over
            record.save(update_fields=["created_at"])
            return record, None
    response = HttpResponse(record.body, status=record.status, content_type=record.content_type)
    for name, value in record.headers.items():
        response[name] = value
    response["Idempotent-Replayed"] = "true"
    return None, response


def forget_expired() -> int:
    """Delete the records older than SIGNUP_IDEMPOTENCY_KEEP; return how many."""
    cutoff = timezone.now() - timedelta(seconds=settings.SIGNUP_IDEMPOTENCY_KEEP)
    deleted, _by_model = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
