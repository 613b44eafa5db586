"""The server-to-server JSON API: create a signup, read its status and what happens next,
verify by token, and the operator actions (send the next reminder now, extend, cancel).

Every call needs `Authorization: Bearer $SIGNUP_API_KEY`. Errors are JSON with a message
(and field errors where a field is at fault); bad input never gets a 500.
"""

import functools
import json
import zoneinfo
from datetime import timedelta
from functools import wraps

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.urls import path
from django.utils import translation
from django.utils.translation import gettext as _
from django.utils.translation import pgettext
from django.views.decorators.csrf import csrf_exempt

from signup import languages, limits, selectors, tokens, workflow
from signup.forms import (
    USERNAME_PATTERN,
    ChangeAddressForm,
    SignupForm,
    reject_control_characters,
)
from signup.models import USERNAME_MAX_LENGTH, Signup

MAX_BODY_BYTES = 16 * 1024


def _error(http_status: int, message: str, **extra) -> JsonResponse:
    return JsonResponse({"message": message, **extra}, status=http_status)


def api_view(*methods: str):
    """Wrap a view with bearer-key auth, the allowed methods and JSON body parsing."""

    def decorate(view):
        @csrf_exempt
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not settings.SIGNUP_API_KEY:
                return _error(403, _("The API is disabled: no SIGNUP_API_KEY is configured."))
            # Wrong keys count like invalid links: guessing is slowed down per client.
            refused, retry_after = limits.check_bearer(request, settings.SIGNUP_API_KEY)
            if refused == 401:
                response = _error(401, _("Send the API key as 'Authorization: Bearer <key>'."))
                response["WWW-Authenticate"] = 'Bearer realm="signup"'
                return response
            if refused == 403:
                return _error(403, _("The API key is not valid."))
            if refused == 429:
                return limits.too_many_json(retry_after)
            retry_after = limits.hit(
                "api", settings.SIGNUP_API_KEY, limits.Rate.parse(settings.SIGNUP_RATE_LIMIT_API)
            )
            if retry_after:
                return limits.too_many_json(retry_after)
            if request.method not in methods:
                response = _error(405, _("Use %(methods)s.") % {"methods": " or ".join(methods)})
                response["Allow"] = ", ".join(methods)
                return response
            if request.method == "POST":
                body = _json_body(request)
                if isinstance(body, JsonResponse):
                    return body
                kwargs["body"] = body
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def _json_body(request) -> dict | JsonResponse:
    charset = request.content_params.get("charset", "utf-8").lower()
    if request.content_type.lower() != "application/json" or charset not in ("utf-8", "utf8"):
        return _error(415, _("Send the body as JSON, with 'Content-Type: application/json'."))
    length = request.headers.get("Content-Length", "0")
    if not length.isdigit() or int(length) > MAX_BODY_BYTES:
        return _error(
            413, _("The body must be at most %(size)d bytes of JSON.") % {"size": MAX_BODY_BYTES}
        )
    try:
        body = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return _error(400, _("The body must be a JSON object (UTF-8)."))
    except RecursionError:
        return _error(400, _("The body is nested too deeply."))
    if not isinstance(body, dict):
        return _error(400, _("The body must be a JSON object."))
    return body


def _field_errors(body: dict, allowed: set[str]) -> dict[str, list[str]]:
    errors = {name: [_("Unknown field.")] for name in body if name not in allowed}
    for name, value in body.items():
        if name in allowed and not isinstance(value, str):
            errors[name] = [_("Must be a string.")]
    return errors


def signup_json(signup: Signup, *, described: bool = False) -> dict:
    document = {
        "username": signup.username,
        "status": signup.status,
        "reminders_sent": signup.reminders_sent,
        "verified_source": signup.verified_source or None,
        "created_at": signup.created_at.isoformat(),
        "verified_at": signup.verified_at.isoformat() if signup.verified_at else None,
        "expires_at": signup.expires_at.isoformat(),
        "language": signup.language,
        "time_zone": signup.time_zone or None,
    }
    if described:
        step = selectors.next_step(signup)
        document["next_step"] = step and {**step, "at": step["at"].isoformat()}
        document["emails"] = selectors.email_counts(signup)
        document["webhooks"] = selectors.webhook_counts(signup)
    return document


@api_view("POST")
def create_signup(request, body):
    errors = _field_errors(body, {*SignupForm.base_fields, "language", "time_zone", "client_ip"})
    time_zone = body.pop("time_zone", "")
    if "time_zone" not in errors and not _is_time_zone(time_zone):
        errors["time_zone"] = [_("Use a time zone's IANA name, like Europe/Paris.")]
    client_ip = body.pop("client_ip", "")
    if "client_ip" not in errors and client_ip and not limits.is_ip_address(client_ip):
        errors["client_ip"] = [_("Use the person's IPv4 or IPv6 address, like 192.0.2.1.")]
    if errors:
        return _error(400, _("Some fields are not valid."), errors=errors)
    # The request's Accept-Language where the body's is not offered: no error.
    language = languages.offered(body.pop("language", ""), default=translation.get_language())
    form = SignupForm(body)
    if not form.is_valid():
        errors = {
            name: [error["message"] for error in field_errors]
            for name, field_errors in form.errors.get_json_data().items()
        }
        return _error(400, _("Some fields are not valid."), errors=errors)
    try:
        # The address budget counts per network: the person's, when the caller names it,
        # else the caller's own (a backend's signups then share one network's budget).
        network = (
            limits.network_digest(limits.network_of(client_ip))
            if client_ip
            else limits.client_network(request)
        )
        signup = workflow.start_signup(
            **form.cleaned_data,
            language=language,
            time_zone=time_zone,
            client_network=network,
        )
    except workflow.UsernameTaken:
        return _error(
            409,
            _("The username %(username)r is already taken.")
            % {"username": form.cleaned_data["username"]},
        )
    # The same for every address (docs/SECURITY.md): its address is contacted after the answer.
    return JsonResponse(signup_json(signup), status=201)


def _status(status: str) -> str:
    """A status as the sentences "This signup is …" say it, in the request's language."""
    words = {
        Signup.Status.PENDING: pgettext("signup status", "pending"),
        Signup.Status.VERIFIED: pgettext("signup status", "verified"),
        Signup.Status.EXPIRED: pgettext("signup status", "expired"),
        Signup.Status.CANCELLED: pgettext("signup status", "cancelled"),
        Signup.Status.UNDELIVERABLE: pgettext("signup status", "undeliverable"),
    }
    return words.get(status, status)


def _is_time_zone(name: str) -> bool:
    if not name:
        return True  # not known: the site's
    return name in _time_zones()


@functools.cache
def _time_zones() -> frozenset[str]:
    """The IANA names this machine knows ("localtime", "posixrules", "right/…" are not)."""
    return frozenset(zoneinfo.available_timezones() - {"localtime", "posixrules", "Factory"})


@api_view("GET")
def read_signup(request, username):
    valid = len(username) <= USERNAME_MAX_LENGTH and USERNAME_PATTERN.match(username)
    signup = selectors.signup_by_username(username) if valid else None
    if signup is None:
        return _error(404, _("No signup has this username."))
    return JsonResponse(signup_json(signup, described=True))


# The operator actions: POST /api/signups/<username>/<action> with a JSON object body.
MAX_EXTENSION_SECONDS = 365 * 24 * 3600


@api_view("POST")
def act_on_signup(request, username, action, body):
    valid = len(username) <= USERNAME_MAX_LENGTH and USERNAME_PATTERN.match(username)
    signup = selectors.signup_by_username(username) if valid else None
    if action not in _ACTIONS:
        return _error(
            404,
            _("No action %(action)r: use %(actions)s.")
            % {"action": action, "actions": ", ".join(_ACTIONS)},
        )
    if signup is None:
        return _error(404, _("No signup has this username."))
    return _ACTIONS[action](signup, body)


def _remind_now(signup: Signup, body: dict) -> JsonResponse:
    number = body.get("reminder")
    unknown = {name: [_("Unknown field.")] for name in body if name != "reminder"}
    if unknown or (number is not None and (type(number) is not int or number < 1)):
        errors = unknown or {"reminder": [_("The number of the reminder meant: 1 or more.")]}
        return _error(400, _("Some fields are not valid."), errors=errors)
    outcome = workflow.rush_next_reminder(signup_id=signup.pk, operator="api", number=number)
    signup.refresh_from_db()
    if outcome in (workflow.RUSHED, workflow.ALREADY_DUE):
        status = 202 if outcome == workflow.RUSHED else 200
        return JsonResponse(
            {"result": outcome, **signup_json(signup, described=True)}, status=status
        )
    reasons = {
        workflow.NOT_PENDING: _("This signup is %(status)s: it gets no reminder.")
        % {"status": _status(signup.status)},
        workflow.NO_REMINDER: _("No reminder is planned for this signup."),
        workflow.NOT_NEXT: _("Reminder %(number)s is not the next one.") % {"number": number},
        workflow.TOO_SOON: _("A reminder was sent moments ago; the next one can't follow yet."),
    }
    return _error(409, reasons[outcome], result=outcome, **signup_json(signup, described=True))


def _extend(signup: Signup, body: dict) -> JsonResponse:
    seconds = body.get("seconds")
    unknown = {name: [_("Unknown field.")] for name in body if name != "seconds"}
    if unknown or type(seconds) is not int or not 0 < seconds <= MAX_EXTENSION_SECONDS:
        errors = unknown or {"seconds": [_("How long from now, in seconds: 1 or more.")]}
        return _error(400, _("Some fields are not valid."), errors=errors)
    expires_at = workflow.extend_expiry(
        signup_id=signup.pk, by=timedelta(seconds=seconds), operator="api"
    )
    signup.refresh_from_db()
    if expires_at is None:
        return _error(
            409,
            _("This signup is %(status)s: it has no expiry to extend.")
            % {"status": _status(signup.status)},
        )
    return JsonResponse(signup_json(signup, described=True))


def _cancel(signup: Signup, body: dict) -> JsonResponse:
    errors = _field_errors(body, {"reason"})
    reason = body.get("reason", "")
    if not errors and not _is_plain_text(reason):
        errors["reason"] = [_("Remove the control or invisible characters.")]
    if errors:
        return _error(400, _("Some fields are not valid."), errors=errors)
    reason = reason.strip()[:200]
    cancelled = workflow.cancel_signup(
        signup_id=signup.pk, reason=f"by api: {reason}" if reason else "by api", by=workflow.BY_API
    )
    signup.refresh_from_db()
    if not cancelled and signup.status != Signup.Status.CANCELLED:
        return _error(
            409,
            _("This signup is %(status)s: it can't be cancelled.")
            % {"status": _status(signup.status)},
        )
    return JsonResponse(signup_json(signup, described=True))


def _is_plain_text(value: str) -> bool:
    """Text a timeline can hold: no control or invisible characters (NUL included), no lone
    surrogates."""
    try:
        reject_control_characters(value)
    except ValidationError:
        return False
    return True


def _change_email(signup: Signup, body: dict) -> JsonResponse:
    """{email}: the signup's address was mistyped. The old one gets nothing more, the new one
    a verification email within its own budget (the answer is the same whether or not it has
    an account); at most SIGNUP_MAX_ADDRESS_CHANGES times."""
    errors = _field_errors(body, {"email"})
    errors.update({name: [_("This field is required.")] for name in ("email",) if name not in body})
    if errors:
        return _error(400, _("Some fields are not valid."), errors=errors)
    form = ChangeAddressForm(body)
    if not form.is_valid():
        errors = {
            name: [error["message"] for error in field_errors]
            for name, field_errors in form.errors.get_json_data().items()
        }
        return _error(400, _("Some fields are not valid."), errors=errors)
    outcome = workflow.change_address(signup_id=signup.pk, email=form.cleaned_data["email"])
    signup.refresh_from_db()
    if outcome == workflow.NOT_PENDING:
        return _error(
            409,
            _("This signup is %(status)s: its address can't be changed.")
            % {"status": _status(signup.status)},
        )
    if outcome == workflow.NO_CHANGES_LEFT:
        return _error(
            409,
            _("This signup's address was changed %(count)d times already: no more changes.")
            % {"count": signup.address_changes},
        )
    status = 202 if outcome == workflow.CHANGED else 200
    return JsonResponse({"result": outcome, **signup_json(signup, described=True)}, status=status)


def _new_email(signup: Signup, body: dict) -> JsonResponse:
    """{}: another verification email (with a new code, if the last was void), within the
    address's budget: 202 if one is on its way, 429 with Retry-After if the budget holds it
    back for now."""
    errors = _field_errors(body, set())
    if errors:
        return _error(400, _("Some fields are not valid."), errors=errors)
    # Counted for the network the signup was made from: the person's, as the caller named it.
    outcome = workflow.request_new_code(signup_id=signup.pk, network=signup.client_network)
    signup.refresh_from_db()
    if outcome == workflow.NOT_PENDING:
        return _error(
            409,
            _("This signup is %(status)s: it gets no more emails.")
            % {"status": _status(signup.status)},
        )
    if outcome == workflow.HELD:
        response = _error(
            429, _("The address was sent an email moments ago, or its daily share: not now.")
        )
        response["Retry-After"] = str(settings.SIGNUP_ADDRESS_COOLDOWN)
        return response
    return JsonResponse({"result": outcome, **signup_json(signup, described=True)}, status=202)


_ACTIONS = {
    "remind-now": _remind_now,
    "extend": _extend,
    "cancel": _cancel,
    "change-email": _change_email,
    "new-email": _new_email,
}


@api_view("POST")
def verify_signup(request, body):
    # Invalid tokens are not counted per client address here, as the link's are: the caller
    # is a backend relaying many people's tokens from one address, and a few mistyped ones
    # must not lock all of them out. The key's own limit (SIGNUP_RATE_LIMIT_API) bounds
    # guessing, which forging the tokens' HMAC makes hopeless anyway.
    if "code" in body or "username" in body:
        return _verify_by_code(body)
    errors = _field_errors(body, {"token", "source"})
    errors.update({name: [_("This field is required.")] for name in ("token",) if name not in body})
    if errors:
        return _error(400, _("Some fields are not valid."), errors=errors)
    source = body.get("source", tokens.API_SOURCE)
    if not tokens.is_token_source(source):
        return _error(
            400,
            _("Some fields are not valid."),
            errors={"source": [_("Use verification, reminder-<n> or api.")]},
        )
    try:
        result = workflow.verify_signup(token=body["token"], source=source)
    except tokens.ExpiredToken:
        return _error(410, _("This verification link has expired."))
    except tokens.InvalidToken:
        return _error(
            400,
            _("This verification token is not valid."),
            errors={"token": [_("Not a valid verification token.")]},
        )
    except workflow.SignupClosed as closed:
        return _error(
            410,
            _("This signup is %(status)s; it can no longer be verified.")
            % {"status": _status(closed.status)},
            status=closed.status,
        )
    return JsonResponse({"result": result.message, "username": result.signup.username})


def _verify_by_code(body: dict) -> JsonResponse:
    """{username, code}: the code of the signup's emails, as a person typed it into the
    caller's own page. Wrong codes count against the signup's tries (a 400 says how many are
    left); a void code answers 409 until a new email brings a new one."""
    errors = _field_errors(body, {"username", "code"})
    errors.update(
        {name: [_("This field is required.")] for name in ("username", "code") if name not in body}
    )
    if not errors and not tokens.is_code_shaped(body["code"]):
        errors["code"] = [_("A code is 8 letters and digits, like ACDE-3467.")]
    if errors:
        return _error(400, _("Some fields are not valid."), errors=errors)
    username = body["username"]
    valid = len(username) <= USERNAME_MAX_LENGTH and USERNAME_PATTERN.match(username)
    signup = selectors.signup_by_username(username) if valid else None
    if signup is None:
        return _error(404, _("No signup has this username."))
    try:
        result = workflow.verify_signup_by_code(signup_id=signup.pk, code=body["code"])
    except workflow.CodeRejected as rejected:
        if not rejected.tries_left:
            return _error(
                409,
                _(
                    "This signup's code is void after too many wrong tries: ask for a new"
                    " email (POST /api/signups/<username>/new-email), which brings a new one."
                ),
                tries_left=0,
            )
        return _error(
            400,
            _("This code is not the signup's."),
            errors={"code": [_("Not the code of the signup's emails.")]},
            tries_left=rejected.tries_left,
        )
    except workflow.SignupClosed as closed:
        return _error(
            410,
            _("This signup is %(status)s; it can no longer be verified.")
            % {"status": _status(closed.status)},
            status=closed.status,
        )
    return JsonResponse({"result": result.message, "username": result.signup.username})


urlpatterns = [
    path("signups", create_signup, name="api-signup-create"),
    path("signups/verify", verify_signup, name="api-signup-verify"),
    path("signups/<str:username>", read_signup, name="api-signup-read"),
    path("signups/<str:username>/<str:action>", act_on_signup, name="api-signup-act"),
]
