"""The server-to-server JSON API: create a signup, read its status and what happens next,
verify it by token or by code, and the actions (send the next reminder now, extend, cancel,
change its address, send a new email).

Built on django-ninja: the schemas below validate the requests (types, lengths, patterns,
unknown fields) and are the OpenAPI document at /api/openapi.json, so the two cannot drift;
signup.forms adds the rules a schema can't say (reserved usernames, an address mail can
reach, control characters), as it does for the pages. Every call needs `Authorization:
Bearer $SIGNUP_API_KEY`. Every error is an RFC 9457 problem (application/problem+json) with
the request's language in `detail` (and `message`, its earlier name), and `errors` by field
where fields are at fault; bad input never gets a 500. A create or an action may carry an
`Idempotency-Key` (signup.idempotency).
"""

import functools
import json
import zoneinfo
from datetime import timedelta
from http import HTTPStatus
from typing import Annotated, Literal

from csp.constants import SELF
from csp.decorators import csp_update
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, HttpResponse
from django.utils import translation
from django.utils.translation import gettext as _
from django.utils.translation import pgettext
from ninja import Body, Header, NinjaAPI, Schema, Status, Swagger
from ninja.errors import HttpError
from ninja.errors import ValidationError as SchemaError
from ninja.parser import Parser
from ninja.security import HttpBearer
from pydantic import ConfigDict, Field, model_validator

from signup import idempotency, languages, limits, selectors, tokens, workflow
from signup.forms import (
    EMAIL_MAX_LENGTH,
    USERNAME_MIN_LENGTH,
    USERNAME_PATTERN,
    ChangeAddressForm,
    SignupForm,
    reject_control_characters,
)
from signup.models import NAME_MAX_LENGTH, USERNAME_MAX_LENGTH, Signup

MAX_BODY_BYTES = 16 * 1024
MAX_EXTENSION_SECONDS = 365 * 24 * 3600
PROBLEM = "application/problem+json"


# --- Problems (RFC 9457) ------------------------------------------------------------------------


class ApiProblem(Exception):
    """An answer other than success, raised wherever it is found and written by one handler."""

    def __init__(self, status: int, detail: str, *, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status, self.detail, self.headers, self.extra = status, detail, headers or {}, extra


def problem(status: int, detail: str, *, headers: dict | None = None, **extra) -> HttpResponse:
    document = {
        "type": "about:blank",  # the status says it all (RFC 9457 4.2.1)
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "message": detail,
        **extra,
    }
    response = HttpResponse(json.dumps(document), status=status, content_type=PROBLEM)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _fields_invalid(errors: dict[str, list[str]], **extra) -> ApiProblem:
    return ApiProblem(400, _("Some fields are not valid."), errors=errors, **extra)


def _too_large() -> ApiProblem:
    return ApiProblem(
        413, _("The body must be at most %(size)d bytes of JSON.") % {"size": MAX_BODY_BYTES}
    )


def _too_many(retry_after: int) -> ApiProblem:
    return ApiProblem(
        429,
        _("Too many requests: try again in %(seconds)d s.") % {"seconds": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


# --- Authentication, body parsing -------------------------------------------------------------


class ApiKey(HttpBearer):
    """The bearer key (SIGNUP_API_KEY), guessing slowed per client, and the key's own rate."""

    def __call__(self, request: HttpRequest):
        if not settings.SIGNUP_API_KEY:
            raise ApiProblem(403, _("The API is disabled: no SIGNUP_API_KEY is configured."))
        # Wrong keys count like invalid links: guessing is slowed down per client.
        refused, retry_after = limits.check_bearer(request, settings.SIGNUP_API_KEY)
        if refused == 401:
            raise ApiProblem(
                401,
                _("Send the API key as 'Authorization: Bearer <key>'."),
                headers={"WWW-Authenticate": 'Bearer realm="signup"'},
            )
        if refused == 403:
            raise ApiProblem(403, _("The API key is not valid."))
        if refused == 429:
            raise _too_many(retry_after)
        rate = limits.Rate.parse(settings.SIGNUP_RATE_LIMIT_API)
        retry_after = limits.hit("api", settings.SIGNUP_API_KEY, rate)
        if retry_after:
            raise _too_many(retry_after)
        # Before ninja reads the body: past DATA_UPLOAD_MAX_MEMORY_SIZE, reading it would fail.
        length = request.headers.get("Content-Length", "0")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise _too_large()
        return settings.SIGNUP_API_KEY

    def authenticate(self, request, token):  # __call__ decides
        return None


class JsonObjectParser(Parser):
    """Bodies are JSON objects sent as application/json (UTF-8), at most MAX_BODY_BYTES: a
    form post from another site (no preflight) can't reach the API."""

    def parse_body(self, request: HttpRequest):
        charset = request.content_params.get("charset", "utf-8").lower()
        if request.content_type.lower() != "application/json" or charset not in ("utf-8", "utf8"):
            raise ApiProblem(
                415, _("Send the body as JSON, with 'Content-Type: application/json'.")
            )
        length = request.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            raise _too_large()
        try:
            body = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ApiProblem(400, _("The body must be a JSON object (UTF-8).")) from exc
        except RecursionError as exc:
            raise ApiProblem(400, _("The body is nested too deeply.")) from exc
        if not isinstance(body, dict):
            raise ApiProblem(400, _("The body must be a JSON object."))
        return body


class SignupApi(NinjaAPI):
    _schemas: dict = {}

    def get_openapi_schema(self, **kwargs):
        """ninja's document, and what it can't say from the declarations alone: errors are
        application/problem+json, a 429 carries Retry-After and a 401 WWW-Authenticate, and
        the links from a created signup to what may follow (for generated clients and
        stateful tests)."""
        key = json.dumps(kwargs, sort_keys=True, default=str)
        if key not in self._schemas:  # made once per process: the page is public
            self._schemas[key] = self._completed(super().get_openapi_schema(**kwargs))
        return self._schemas[key]

    def _completed(self, schema):
        for operations in schema["paths"].values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                for code, response in responses.items():
                    if int(code) >= 400 and "application/json" in response.get("content", {}):
                        response["content"] = {PROBLEM: response["content"].pop("application/json")}
                    if str(code) in _ERROR_HEADERS:
                        response["headers"] = _ERROR_HEADERS[str(code)]
                    if operation.get("operationId") == "create_signup" and int(code) == 201:
                        response["links"] = _LINKS
        return schema


_ERROR_HEADERS = {
    "429": {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
    "401": {
        "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}},
    },
    "409": {
        "Retry-After": {
            "description": "With a repeat of an Idempotency-Key whose first request is under"
            " way: seconds to wait.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
}


api = SignupApi(
    title="Signup workflow API",
    version="1",
    description=(
        "Create signups, follow them, verify them by token or by code, and act on them. Every"
        " error is an RFC 9457 problem (`application/problem+json`). A create or an action"
        " may carry an `Idempotency-Key` (a repeat answers as the first did)."
    ),
    auth=ApiKey(),
    parser=JsonObjectParser(),
    urls_namespace="api",
    openapi_url="/openapi.json",
    docs=Swagger(settings={"persistAuthorization": False, "tryItOutEnabled": False}),
    docs_url="/docs",
    # The page loads the schema from here and Swagger UI's icons are data: URIs; nothing else
    # is allowed beyond the pages' policy.
    docs_decorator=csp_update({"connect-src": [SELF], "img-src": [SELF, "data:"]}),
)


@api.exception_handler(ApiProblem)
def _answer_problem(request, exc: ApiProblem):
    return problem(exc.status, exc.detail, headers=exc.headers, **exc.extra)


@api.exception_handler(HttpError)
def _answer_http_error(request, exc: HttpError):
    if isinstance(exc.__cause__, ApiProblem):  # ninja wraps what the parser raised
        return _answer_problem(request, exc.__cause__)
    if exc.status_code == 400:
        return problem(400, _("The body must be a JSON object (UTF-8)."))
    return problem(exc.status_code, str(exc))


@api.exception_handler(SchemaError)
def _answer_schema_error(request, exc: SchemaError):
    """A request the schemas refuse: 400 with the fields at fault, in the request's language
    (the pages' words where there are some), as the API answered before the schemas."""
    errors: dict[str, list[str]] = {}
    for error in exc.errors:
        location = [part for part in error.get("loc", ()) if isinstance(part, str)]
        names = [
            part for part in location if part not in ("body", "payload", "path", "query", "header")
        ]
        field = names[0] if names else "body"
        errors.setdefault(field, []).append(_schema_message(error, field))
    return problem(400, _("Some fields are not valid."), errors=errors)


def _schema_message(error: dict, field: str) -> str:
    kind = error.get("type", "")
    limit = (error.get("ctx") or {}).get("min_length") or (error.get("ctx") or {}).get("max_length")
    if kind == "missing":
        return _("This field is required.")
    if kind == "extra_forbidden":
        return _("Unknown field.")
    if kind == "string_type":
        return _("Must be a string.")
    if kind == "string_too_short":
        return _("Use at least %(limit_value)d characters.") % {"limit_value": limit}
    if kind == "string_too_long":
        return _("Use at most %(limit_value)d characters.") % {"limit_value": limit}
    if kind == "string_pattern_mismatch" and field == "username":
        return _("Use letters, digits, and . _ - only, starting with a letter or digit.")
    if kind == "string_pattern_mismatch":
        return _("Not in the form the schema gives.")
    if kind in ("int_type", "int_parsing", "greater_than_equal", "less_than_equal"):
        return _("A whole number in the range the schema gives.")
    if kind == "value_error":
        return str((error.get("ctx") or {}).get("error") or error.get("msg", ""))
    return _("Not a valid value.")


# --- What the API answers ------------------------------------------------------------------------

SignupStatus = Literal["pending", "verified", "expired", "cancelled", "undeliverable"]
# A time as Python's isoformat writes it (microseconds, +00:00), as the API always has.
Timestamp = Annotated[
    str, Field(json_schema_extra={"format": "date-time"}, examples=["2026-12-07T10:00:00+00:00"])
]
NOT_BLANK = r"\S"


class Problem(Schema):
    """An RFC 9457 problem; `message` repeats `detail` (its name before problems)."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(examples=["about:blank"])
    title: str = Field(examples=["Conflict"])
    status: int = Field(examples=[409])
    detail: str = Field(examples=["The username 'ada' is already taken."])
    message: str
    errors: dict[str, list[str]] | None = Field(
        None, description="By field, when fields are at fault.", examples=[{"email": ["…"]}]
    )


class SignupOut(Schema):
    username: str = Field(examples=["ada"])
    status: SignupStatus
    reminders_sent: int = Field(ge=0)
    verified_source: str | None = Field(
        description="Which email's link verified it (verification, reminder-<n>), or code, api,"
        " operator; null while it is not verified.",
        examples=[None],
    )
    created_at: Timestamp
    verified_at: Timestamp | None
    expires_at: Timestamp
    language: str = Field(examples=["en"])
    time_zone: str | None = Field(examples=["Europe/Paris"])


class NextStep(Schema):
    step: Literal["reminder", "expiry"]
    number: int | None
    at: Timestamp


class SignupDetail(SignupOut):
    next_step: NextStep | None = Field(description="What happens next if nobody acts.")
    emails: dict[str, int] = Field(description="The signup's emails by state.")
    webhooks: dict[str, int] = Field(description="Its webhook deliveries by state.")


class ActionOut(SignupDetail):
    result: str = Field(description="What the action did.", examples=["rushed"])


class VerifyOut(Schema):
    result: Literal["done", "already verified"]
    username: str


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


# The errors every call may answer, and each operation's own.
_COMMON = {401: Problem, 403: Problem, 429: Problem}
_WITH_BODY = {**_COMMON, 400: Problem, 413: Problem, 415: Problem, 422: Problem}


# --- Requests --------------------------------------------------------------------------------


class Strict(Schema):
    """A request body: JSON types as declared (no "1" for 1), no field the API doesn't know."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SignupIn(Strict):
    username: str = Field(
        min_length=USERNAME_MIN_LENGTH,
        max_length=USERNAME_MAX_LENGTH,
        pattern=USERNAME_PATTERN.pattern.replace(r"\A", "^").replace(r"\Z", "$"),
        description="Letters, digits, . _ or -; role and site names are reserved.",
        examples=["ada"],
    )
    email: str = Field(
        min_length=3, max_length=EMAIL_MAX_LENGTH, examples=["ada@example.com"],
        json_schema_extra={"format": "email"},
    )  # fmt: skip
    first_name: str = Field(
        min_length=1, max_length=NAME_MAX_LENGTH, pattern=NOT_BLANK, examples=["Ada"]
    )
    last_name: str = Field("", max_length=NAME_MAX_LENGTH, examples=["Lovelace"])
    language: str = Field(
        "",
        max_length=35,
        description="The language of its emails and pages: the offered one closest to this"
        " (fr-CA gets fr); else the request's Accept-Language, else the default.",
        examples=["en"],
    )
    time_zone: str = Field(
        "", max_length=64, description="An IANA time zone name, for its emails' times.",
        examples=["Europe/Paris"],
    )  # fmt: skip
    client_ip: str = Field(
        "",
        max_length=45,
        description="The person's IPv4 or IPv6 address, which the address budget counts by"
        " network; without it, the caller's.",
        examples=["192.0.2.1"],
    )


class VerifyIn(Strict):
    """Either `token` (and `source`) from a link, or `username` and `code` from an email:
    both, or neither, is a 400."""

    token: str | None = Field(None, min_length=1, max_length=tokens.TOKEN_MAX_LENGTH)
    source: str | None = Field(
        None,
        max_length=16,
        pattern=r"^(verification|reminder-[1-9][0-9]{0,2}|api)$",
        description="With a token: which email it came from, or api (the default).",
    )
    username: str | None = Field(None, min_length=1, max_length=USERNAME_MAX_LENGTH)
    code: str | None = Field(
        None, min_length=1, max_length=4 * tokens.CODE_LENGTH, examples=["ACDE-3467"]
    )

    # One class, not a oneOf of two: generated clients then get one typed model (a oneOf
    # of objects becomes an untyped body in most generators); the rule is the validator's.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"token": "…", "source": "api"},
                {"username": "ada", "code": "ACDE-3467"},
            ],
        },
    )

    @model_validator(mode="after")
    def one_way(self):
        by_token = self.token is not None or self.source is not None
        by_code = self.username is not None or self.code is not None
        if by_token == by_code or (by_token and self.token is None):
            raise ValueError(_("Send either token (and source) or username and code."))
        if by_code and (self.username is None or self.code is None):
            raise ValueError(_("Send both username and code."))
        return self


class RemindNowIn(Strict):
    reminder: int | None = Field(
        None, ge=1, le=1000, description="The reminder meant; refused if it is not the next."
    )


class ExtendIn(Strict):
    seconds: int = Field(ge=1, le=MAX_EXTENSION_SECONDS, examples=[86400])


class CancelIn(Strict):
    reason: str = Field(
        "", max_length=200, description="Kept on its timeline.", examples=["asked to"]
    )


class ChangeEmailIn(Strict):
    email: str = Field(
        min_length=3, max_length=EMAIL_MAX_LENGTH, examples=["ada@example.org"],
        json_schema_extra={"format": "email"},
    )  # fmt: skip


class NoFields(Strict):
    pass


IdempotencyKey = Annotated[
    str | None,
    Header(
        None,
        alias="Idempotency-Key",
        max_length=idempotency.KEY_MAX_LENGTH + 2,
        description="Repeat a request safely: a repeat with this key and the same body gets"
        " the first answer again and does nothing more; another body gets 422; a repeat while"
        " the first is under way gets 409. Kept for SIGNUP_IDEMPOTENCY_KEEP seconds.",
        examples=['"8e03978e-40d5-43e8-bc93-6894a57f9324"'],
    ),
]


# --- Operations ----------------------------------------------------------------------------------

_USERNAME_LINK = {"username": "$response.body#/username"}
_LINKS = {
    "ReadSignup": {"operationId": "read_signup", "parameters": _USERNAME_LINK},
    "RemindNow": {"operationId": "remind_now", "parameters": _USERNAME_LINK},
    "Extend": {"operationId": "extend", "parameters": _USERNAME_LINK},
    "Cancel": {"operationId": "cancel", "parameters": _USERNAME_LINK},
    "ChangeEmail": {"operationId": "change_email", "parameters": _USERNAME_LINK},
    "NewEmail": {"operationId": "new_email", "parameters": _USERNAME_LINK},
}


@api.post(
    "/signups",
    response={201: SignupOut, 409: Problem, **_WITH_BODY},
    operation_id="create_signup",
    summary="Create a signup",
    description="The answer is the same whatever the address (it is contacted after the"
    " answer, within its budget): 409 only says that a pending or verified signup holds the"
    " username.",
)
@idempotency.once
def create_signup(request, payload: SignupIn, idempotency_key: IdempotencyKey = None):
    data = payload.model_dump()
    time_zone, client_ip = data.pop("time_zone"), data.pop("client_ip")
    errors = {}
    if time_zone and time_zone not in _time_zones():
        errors["time_zone"] = [_("Use a time zone's IANA name, like Europe/Paris.")]
    if client_ip and not limits.is_ip_address(client_ip):
        errors["client_ip"] = [_("Use the person's IPv4 or IPv6 address, like 192.0.2.1.")]
    # The request's Accept-Language where the body's is not offered: no error.
    language = languages.offered(data.pop("language"), default=translation.get_language())
    form = SignupForm(data)
    errors.update(_form_errors(form) if not form.is_valid() else {})
    if errors:
        raise _fields_invalid(errors)
    # The address budget counts per network: the person's, when the caller names it, else the
    # caller's own (a backend's signups then share one network's budget).
    network = (
        limits.network_digest(limits.network_of(client_ip))
        if client_ip
        else limits.client_network(request)
    )
    try:
        signup = workflow.start_signup(
            **form.cleaned_data, language=language, time_zone=time_zone, client_network=network
        )
    except workflow.UsernameTaken as exc:
        raise ApiProblem(
            409,
            _("The username %(username)r is already taken.")
            % {"username": form.cleaned_data["username"]},
        ) from exc
    # The same for every address (docs/SECURITY.md): its address is contacted after the answer.
    return Status(201, signup_json(signup))


def _form_errors(form) -> dict[str, list[str]]:
    return {
        name: [error["message"] for error in field_errors]
        for name, field_errors in form.errors.get_json_data().items()
    }


@functools.cache
def _time_zones() -> frozenset[str]:
    """The IANA names this machine knows ("localtime", "posixrules", "right/…" are not)."""
    return frozenset(zoneinfo.available_timezones() - {"localtime", "posixrules", "Factory"})


@api.post(
    "/signups/verify",
    response={200: VerifyOut, 404: Problem, 409: Problem, 410: Problem, **_WITH_BODY},
    operation_id="verify_signup",
    summary="Verify a signup by its link's token or by its emails' code",
    description="By code, a wrong one answers 400 with `tries_left`; after"
    " SIGNUP_CODE_MAX_ATTEMPTS the code is void (409) until a new email brings a new one."
    " Invalid tokens are not counted per client here, as the links' are: the caller relays"
    " many people's; the key's own rate bounds guessing.",
)
def verify_signup(request, payload: VerifyIn):
    if payload.code is not None:
        return _verify_by_code(payload.username, payload.code)
    source = payload.source or tokens.API_SOURCE
    try:
        result = workflow.verify_signup(token=payload.token, source=source)
    except tokens.ExpiredToken as exc:
        raise ApiProblem(410, _("This verification link has expired.")) from exc
    except tokens.InvalidToken as exc:
        raise ApiProblem(
            400,
            _("This verification token is not valid."),
            errors={"token": [_("Not a valid verification token.")]},
        ) from exc
    except workflow.SignupClosed as closed:
        raise _closed(closed) from closed
    return {"result": result.message, "username": result.signup.username}


def _verify_by_code(username: str, code: str):
    if not tokens.is_code_shaped(code):
        raise _fields_invalid({"code": [_("A code is 8 letters and digits, like ACDE-3467.")]})
    signup = _signup_named(username)
    try:
        result = workflow.verify_signup_by_code(signup_id=signup.pk, code=code)
    except workflow.CodeRejected as rejected:
        if not rejected.tries_left:
            raise ApiProblem(
                409,
                _(
                    "This signup's code is void after too many wrong tries: ask for a new"
                    " email (POST /api/signups/<username>/new-email), which brings a new one."
                ),
                tries_left=0,
            ) from rejected
        raise ApiProblem(
            400,
            _("This code is not the signup's."),
            errors={"code": [_("Not the code of the signup's emails.")]},
            tries_left=rejected.tries_left,
        ) from rejected
    except workflow.SignupClosed as closed:
        raise _closed(closed) from closed
    return {"result": result.message, "username": result.signup.username}


def _closed(closed: workflow.SignupClosed) -> ApiProblem:
    return ApiProblem(
        410,
        _("This signup is %(status)s; it can no longer be verified.")
        % {"status": _status(closed.status)},
        signup_status=closed.status,
    )


def _signup_named(username: str) -> Signup:
    valid = len(username) <= USERNAME_MAX_LENGTH and USERNAME_PATTERN.match(username)
    signup = selectors.signup_by_username(username) if valid else None
    if signup is None:
        raise ApiProblem(404, _("No signup has this username."))
    return signup


@api.get(
    "/signups/{username}",
    response={200: SignupDetail, 404: Problem, **_COMMON},
    operation_id="read_signup",
    summary="Read a signup and what happens next",
    description="The signup holding the username, else its latest.",
)
def read_signup(request, username: str):
    return signup_json(_signup_named(username), described=True)


_ACTION = {200: ActionOut, 202: ActionOut, 404: Problem, 409: Problem, **_WITH_BODY}


@api.post(
    "/signups/{username}/remind-now",
    response=_ACTION,
    operation_id="remind_now",
    summary="Send the next reminder now",
    description="202 rushed; 200 already due; 409 with `result` not_pending, no_reminder,"
    " not_next or too_soon. The chain goes on one SIGNUP_REMINDER_INTERVAL later.",
)
@idempotency.once
def remind_now(
    request, username: str, payload: Annotated[RemindNowIn, Body(...)],
    idempotency_key: IdempotencyKey = None,
):  # fmt: skip
    signup = _signup_named(username)
    number = payload.reminder
    outcome = workflow.rush_next_reminder(signup_id=signup.pk, operator="api", number=number)
    signup.refresh_from_db()
    if outcome in (workflow.RUSHED, workflow.ALREADY_DUE):
        status = 202 if outcome == workflow.RUSHED else 200
        return Status(status, {"result": outcome, **signup_json(signup, described=True)})
    reasons = {
        workflow.NOT_PENDING: _("This signup is %(status)s: it gets no reminder.")
        % {"status": _status(signup.status)},
        workflow.NO_REMINDER: _("No reminder is planned for this signup."),
        workflow.NOT_NEXT: _("Reminder %(number)s is not the next one.") % {"number": number},
        workflow.TOO_SOON: _("A reminder was sent moments ago; the next one can't follow yet."),
    }
    raise ApiProblem(
        409, reasons[outcome], result=outcome, signup=signup_json(signup, described=True)
    )


@api.post(
    "/signups/{username}/extend",
    response=_ACTION,
    operation_id="extend",
    summary="Keep a pending signup open longer",
    description="Pending until `seconds` from now (never earlier than it already would, never"
    " later than SIGNUP_MAX_EXTENSION past its first expiry); its links keep working.",
)
@idempotency.once
def extend(
    request, username: str, payload: Annotated[ExtendIn, Body(...)],
    idempotency_key: IdempotencyKey = None,
):  # fmt: skip
    signup = _signup_named(username)
    expires_at = workflow.extend_expiry(
        signup_id=signup.pk, by=timedelta(seconds=payload.seconds), operator="api"
    )
    signup.refresh_from_db()
    if expires_at is None:
        raise ApiProblem(
            409,
            _("This signup is %(status)s: it has no expiry to extend.")
            % {"status": _status(signup.status)},
        )
    return Status(200, {"result": "extended", **signup_json(signup, described=True)})


@api.post(
    "/signups/{username}/cancel",
    response=_ACTION,
    operation_id="cancel",
    summary="Cancel a pending signup",
    description="Its username is free again; the reason goes on its timeline. Again: the same"
    " answer, nothing more.",
)
@idempotency.once
def cancel(
    request, username: str, payload: Annotated[CancelIn, Body(...)],
    idempotency_key: IdempotencyKey = None,
):  # fmt: skip
    signup = _signup_named(username)
    if not _is_plain_text(payload.reason):
        raise _fields_invalid({"reason": [_("Remove the control or invisible characters.")]})
    reason = payload.reason.strip()
    cancelled = workflow.cancel_signup(
        signup_id=signup.pk, reason=f"by api: {reason}" if reason else "by api", by=workflow.BY_API
    )
    signup.refresh_from_db()
    if not cancelled and signup.status != Signup.Status.CANCELLED:
        raise ApiProblem(
            409,
            _("This signup is %(status)s: it can't be cancelled.")
            % {"status": _status(signup.status)},
        )
    return Status(200, {"result": "cancelled", **signup_json(signup, described=True)})


def _is_plain_text(value: str) -> bool:
    """Text a timeline can hold: no control or invisible characters (NUL included), no lone
    surrogates."""
    try:
        reject_control_characters(value)
    except DjangoValidationError:
        return False
    return True


@api.post(
    "/signups/{username}/change-email",
    response=_ACTION,
    operation_id="change_email",
    summary="Fix a pending signup's mistyped address",
    description="The old address gets nothing more and its links and codes stop working;"
    " the new one is contacted as a new signup's (its own budget; the answer is the same"
    " whether or not it has an account); at most SIGNUP_MAX_ADDRESS_CHANGES times.",
)
@idempotency.once
def change_email(
    request, username: str, payload: Annotated[ChangeEmailIn, Body(...)],
    idempotency_key: IdempotencyKey = None,
):  # fmt: skip
    signup = _signup_named(username)
    form = ChangeAddressForm({"email": payload.email})
    if not form.is_valid():
        raise _fields_invalid(_form_errors(form))
    outcome = workflow.change_address(signup_id=signup.pk, email=form.cleaned_data["email"])
    signup.refresh_from_db()
    if outcome == workflow.NOT_PENDING:
        raise ApiProblem(
            409,
            _("This signup is %(status)s: its address can't be changed.")
            % {"status": _status(signup.status)},
        )
    if outcome == workflow.NO_CHANGES_LEFT:
        raise ApiProblem(
            409,
            _("This signup's address was changed %(count)d times already: no more changes.")
            % {"count": signup.address_changes},
        )
    status = 202 if outcome == workflow.CHANGED else 200
    return Status(status, {"result": outcome, **signup_json(signup, described=True)})


@api.post(
    "/signups/{username}/new-email",
    response=_ACTION,
    operation_id="new_email",
    summary="Send another verification email",
    description="With a new code if the last was void; within the address's budget (429 with"
    " Retry-After while it holds the email back).",
)
@idempotency.once
def new_email(
    request, username: str, payload: Annotated[NoFields, Body(...)],
    idempotency_key: IdempotencyKey = None,
):  # fmt: skip
    signup = _signup_named(username)
    outcome = workflow.request_new_code(signup_id=signup.pk)
    signup.refresh_from_db()
    if outcome == workflow.NOT_PENDING:
        raise ApiProblem(
            409,
            _("This signup is %(status)s: it gets no more emails.")
            % {"status": _status(signup.status)},
        )
    if outcome == workflow.HELD:
        raise ApiProblem(
            429,
            _("The address was sent an email moments ago, or its daily share: not now."),
            headers={"Retry-After": str(settings.SIGNUP_ADDRESS_COOLDOWN)},
        )
    return Status(202, {"result": outcome, **signup_json(signup, described=True)})
