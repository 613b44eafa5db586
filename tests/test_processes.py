"""The service as an operator deploys it: gunicorn, and the Celery worker(s) and beat the Procfile
names, as separate processes on their own PostgreSQL database, a real broker and an SMTP server,
used over HTTP like a person."""

import base64
import html
import math
import os
import re
import secrets
import shutil
import subprocess
import time
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from itertools import pairwise
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg
import pytest
import redis
import requests
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import ReceivedEmail, SmtpSink, fresh_database
from harness.service import BEAT_SWEPT, Service
from tests.helpers import LOAD, hidden_fields, wait_for
from tests.receiver import Receiver

pytestmark = [pytest.mark.processes, pytest.mark.postgres]

API_KEY = "e2e-api-key-0123456789"
METRICS_TOKEN = "e2e-metrics-token-0123456789"
REMINDER_INTERVAL = 2  # seconds, in every deployment here
LASTING = 3600  # SIGNUP_EXPIRES_AFTER for tests that must not see a signup expire
EXPIRING = 8  # and for the one that must: reminders at 2, 4 and 6 s, expiry at 8 s
# Reminder n is sent only if it falls due before the signup expires.
REMINDERS_BEFORE_EXPIRY = math.ceil(EXPIRING / REMINDER_INTERVAL) - 1
STARTUP_TIMEOUT = 30
HTTP_TIMEOUT = 10


def _process_redis_url() -> str:
    """The database below the suite's own broker's on its Redis (TEST_BROKER_URL's server;
    15 and 14 by default): these deployments flush it."""
    suite = urlsplit(os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15"))
    return urlunsplit(suite._replace(path=f"/{int(suite.path.strip('/')) - 1}"))


BROKER_URLS = {
    "redis": _process_redis_url(),
    # The default vhost and queue: the deployment empties the "celery" queue before it starts.
    "rabbitmq": os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}


# --- The broker ---------------------------------------------------------------------------


def empty_broker(url: str) -> None:
    """Drop every message left on the broker, so no earlier run's task reaches this one."""
    if url.startswith("redis://"):
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()
        return
    with Connection(url, connect_timeout=5) as connection:
        try:
            connection.connect()  # once: kombu would otherwise retry forever
        except OSError as exc:
            pytest.fail(f"RabbitMQ is not reachable at {url}: {exc}")
        for queue in ("celery", "email"):
            # A queue that was never declared has nothing to drop (and closes the channel).
            with connection.channel() as channel, suppress(*connection.channel_errors):
                channel.queue_purge(queue)


@contextmanager
def own_vhost(url: str):
    """A RabbitMQ virtual host of the deployment's own on a local server (rabbitmqctl, as
    root), dropped afterwards: no other deployment's workers or beat, alive at the same time
    or left behind, can take its tasks or send it theirs. Another server is used as given."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost") or not shutil.which("rabbitmqctl"):
        yield url
        return
    vhost = f"signup-test-{secrets.token_hex(4)}"

    def rabbitmqctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)

    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
        yield urlunsplit(parts._replace(path=f"/{vhost}"))
    finally:
        rabbitmqctl("delete_vhost", vhost)


# --- The deployment: web, worker(s) and beat processes, as the Procfile starts them -------


@dataclass(frozen=True)
class Deployment:
    broker: str  # a key of BROKER_URLS
    expires_after: int
    # With the abuse limits a public deployment has; else the form's per-client limit is
    # raised, so that the flow tests, all from one address, don't meet it.
    public: bool = False


@dataclass
class Deployed:
    """The running service (harness.service) and the SMTP server its emails go to."""

    running: Service
    mail: SmtpSink

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def processes(self):
        return self.running.processes

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.running.api(method, path, **kwargs)

    def signup(self, username: str) -> dict:
        response = self.api("GET", f"/api/signups/{username}")
        assert response.status_code == 200, response.text
        return response.json()

    def emails(self, address: str, subject_word: str = "") -> list[ReceivedEmail]:
        return [
            received
            for received in list(self.mail.received)
            if address in received.recipients and subject_word in received.subject
        ]

    def wait_for_emails(self, address: str, subject_word: str, count: int = 1):
        return wait_for(
            lambda: len(found := self.emails(address, subject_word)) >= count and found,
            timeout=15 * LOAD,
            message=f"{count} email(s) with {subject_word!r} to {address}",
        )

    def logs(self, since: dict[str, int] | None = None) -> str:
        return self.running.logs(since, tail=20_000)

    def log_sizes(self) -> dict[str, int]:
        return self.running.log_sizes()


WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"e2e-webhook-secret-0123456789abcdef").decode()


@pytest.fixture(scope="module")
def hook_receiver():
    """Where every deployment here sends its webhooks (answering at once unless told)."""
    running = Receiver().start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def service(request, tmp_path_factory, hook_receiver):
    """The whole service deployed on fresh resources for one Deployment (the param)."""
    deployment: Deployment = request.param
    tmp = tmp_path_factory.mktemp(f"{deployment.broker}-{deployment.expires_after}s")
    # Public: behind one trusted proxy, so that a test can name clients in X-Forwarded-For.
    limits = (
        {"SIGNUP_TRUSTED_PROXIES": "1"}
        if deployment.public
        else {"SIGNUP_RATE_LIMIT_PAGES": "100000/m"}
    )
    broker_url = BROKER_URLS[deployment.broker]
    with ExitStack() as cleanup:
        if deployment.broker == "rabbitmq":
            broker_url = cleanup.enter_context(own_vhost(broker_url))
        database_url = cleanup.enter_context(fresh_database(migrated=True))
        mail = cleanup.enter_context(SmtpSink().running())
        empty_broker(broker_url)
        cleanup.callback(empty_broker, broker_url)
        running = Service(
            tmp=tmp,
            database_url=database_url,
            broker_url=broker_url,
            api_key=API_KEY,
            startup_timeout=STARTUP_TIMEOUT,
            env={
                "EMAIL_URL": f"smtp://127.0.0.1:{mail.port}",
                # Set, even empty, these win over a developer's .env (settings read it as
                # defaults).
                "EMAIL_BACKEND": "",
                "SIGNUP_MAX_REMINDERS": "6",  # more than fit before EXPIRING: expiry ends them
                "SIGNUP_REMINDER_INTERVAL": str(REMINDER_INTERVAL),
                "SIGNUP_EXPIRES_AFTER": str(deployment.expires_after),
                "SIGNUP_SWEEP_INTERVAL": "1",
                "CONN_MAX_AGE": "0",
                "WORKER_CONCURRENCY": "1",
                "SIGNUP_METRICS_TOKEN": METRICS_TOKEN,
                "SIGNUP_WEBHOOK_URLS": hook_receiver.url,
                "SIGNUP_WEBHOOK_SECRET": WEBHOOK_SECRET,
                **limits,
            },
        )
        cleanup.callback(running.stop)
        running.start(beat_ready=BEAT_SWEPT)
        yield Deployed(running, mail)


@pytest.fixture(autouse=True)
def _watch_processes(request, service):
    """Fail a test during which a process died or logged a traceback; show the logs on failure."""
    failures_before = request.session.testsfailed
    sizes_before = service.log_sizes()
    yield
    new_output = service.logs(since=sizes_before)
    exited = [p.name for p in service.processes if p.popen.poll() is not None]
    if request.session.testsfailed > failures_before or exited or "Traceback" in new_output:
        print(new_output)  # pytest shows it under "Captured stdout teardown"
    assert not exited, f"{', '.join(exited)} exited during the test"
    assert "Traceback" not in new_output, "a process logged a traceback during the test"


def deployed(*, expires_after: int, brokers=tuple(BROKER_URLS), public: bool = False):
    """Run the test against each broker, on a service whose signups expire after this long."""
    return pytest.mark.parametrize(
        "service",
        [
            pytest.param(
                Deployment(broker, expires_after, public),
                id=f"{broker}-public" if public else broker,
                marks=getattr(pytest.mark, broker),
            )
            for broker in brokers
        ],
        indirect=True,
    )


# --- What a person does: pages, forms and links ------------------------------------------


def heading(page: requests.Response) -> str:
    return html.unescape(re.search(r"<h1[^>]*>(.*?)</h1>", page.text, re.S).group(1))


def error_fields(page: requests.Response) -> set[str]:
    """The fields the page shows an inline error next to."""
    return set(re.findall(r'class="error" id="id_(\w+)_error"', page.text))


def fill_in_signup_form(
    service: Deployed, browser: requests.Session, *, headers: dict | None = None, **fields
) -> requests.Response:
    form = browser.get(f"{service.url}/signup/", headers=headers, timeout=HTTP_TIMEOUT)
    assert form.status_code == 200
    return browser.post(
        f"{service.url}/signup/",
        data={**hidden_fields(form), **fields},
        # As a browser sends it with a form.
        headers={"Origin": service.url, **(headers or {})},
        timeout=HTTP_TIMEOUT,
    )


@dataclass(frozen=True)
class Link:
    url: str
    source: str


def verify_link(service: Deployed, received: ReceivedEmail) -> Link:
    """The verification link in an email's text part; it must point at SITE_URL."""
    match = re.search(rf"{re.escape(service.url)}/signup/verify/[^/\s]+/\?\S+", received.text)
    assert match, f"no link to {service.url} in:\n{received.text}"
    (source,) = parse_qs(urlsplit(match.group(0)).query)["source"]
    return Link(match.group(0), source)


# --- The flows ----------------------------------------------------------------------------


@deployed(expires_after=LASTING)
def test_a_new_user_signs_up_verifies_by_email_and_is_welcomed(service):
    browser = requests.Session()
    sent = fill_in_signup_form(
        service,
        browser,
        username="ada",
        email="ada@example.com",
        first_name="Ada",
        last_name="Lovelace",
    )
    assert sent.status_code == 200
    assert sent.url == f"{service.url}/signup/sent/"
    assert heading(sent) == "Check your email"
    # The browser that signed up is told where the email went (its signed cookie names the
    # signup); another browser is not.
    assert "<strong>ada@example.com</strong>" in sent.text
    assert "ada@example.com" not in requests.get(sent.url, timeout=HTTP_TIMEOUT).text

    (verification,) = service.wait_for_emails("ada@example.com", "Verify")
    # Named by its site, never by what the person typed: nobody has verified the address yet.
    assert verification.subject == f"Verify your email address for {urlsplit(service.url).hostname}"
    prose = re.sub(r"https?://\S+", "", verification.text)  # the link's token is random
    assert "ada" not in verification.subject and "Ada" not in prose
    link = verify_link(service, verification)
    assert link.source == "verification"

    confirm = browser.get(link.url, timeout=HTTP_TIMEOUT)
    assert confirm.status_code == 200
    assert heading(confirm) == "Confirm your account"
    assert "Verify my account</button>" in confirm.text
    # Opening the link (as a mail scanner would) verifies nothing: pressing the button does.
    assert service.signup("ada")["status"] == "pending"

    verified = browser.post(
        link.url, data=hidden_fields(confirm), headers={"Origin": service.url}, timeout=HTTP_TIMEOUT
    )
    verified_at = time.monotonic()
    assert verified.status_code == 200
    assert heading(verified) == "You're verified"
    answer = service.signup("ada")
    assert (answer["status"], answer["verified_source"]) == ("verified", "verification")

    (welcome,) = service.wait_for_emails("ada@example.com", "Welcome")
    assert welcome.subject == "Welcome, Ada! Your account ada is ready"
    assert f"{service.url}/" in welcome.text
    assert heading(browser.get(link.url, timeout=HTTP_TIMEOUT)) == "Already verified"

    # Reminders were planned at signup; after verifying, one more interval passes in silence.
    time.sleep(max(verified_at + REMINDER_INTERVAL + 1 - time.monotonic(), 0))
    # (The welcome may arrive before the POST's answer does: it is left out of the count.)
    late = [e.subject for e in service.emails("ada@example.com") if e.received_at > verified_at]
    assert [subject for subject in late if subject != welcome.subject] == []
    assert len(service.emails("ada@example.com", "Welcome")) == 1


@deployed(expires_after=EXPIRING)
def test_an_unverified_signup_is_reminded_until_it_expires(service):
    browser = requests.Session()
    sent = fill_in_signup_form(
        service, browser, username="bob", email="bob@example.com", first_name="Bob"
    )
    submitted_at = time.monotonic()
    assert heading(sent) == "Check your email"
    service.wait_for_emails("bob@example.com", "Verify")

    wait_for(
        lambda: service.signup("bob")["status"] == "expired",
        timeout=EXPIRING + 5,
        message="bob's signup to expire",
    )
    expired_at = time.monotonic()

    reminders = service.emails("bob@example.com", "Reminder")
    assert [verify_link(service, reminder).source for reminder in reminders] == [
        f"reminder-{n}" for n in range(1, REMINDERS_BEFORE_EXPIRY + 1)
    ]
    gaps = [b - a for a, b in pairwise([submitted_at, *(r.received_at for r in reminders)])]
    # Each reminder is due one interval after the one before; a loaded machine (LOAD) makes it
    # late, and a reminder late to the sink makes the next gap look a little short.
    assert all(
        REMINDER_INTERVAL - 0.5 * LOAD < gap < REMINDER_INTERVAL + 2 * LOAD for gap in gaps
    ), gaps

    # The last reminder's link now tells the user what happened.
    too_late = browser.get(verify_link(service, reminders[-1]).url, timeout=HTTP_TIMEOUT)
    assert too_late.status_code == 410
    assert heading(too_late) == "This signup has expired"

    # Another reminder would have arrived within an interval: none does.
    time.sleep(max(expired_at + REMINDER_INTERVAL + 1 - time.monotonic(), 0))
    late = [e.subject for e in service.emails("bob@example.com") if e.received_at > expired_at]
    assert late == []

    # The username is free again.
    again = fill_in_signup_form(
        service, browser, username="bob", email="bob2@example.com", first_name="Bob"
    )
    assert heading(again) == "Check your email"


# --- Bad input: always a 4xx with a clear answer, never a 5xx -----------------------------


VALID_FORM = {"username": "carol", "email": "carol@example.com", "first_name": "Carol"}


@deployed(expires_after=LASTING)
@pytest.mark.parametrize(
    ("fields", "fields_in_error"),
    [
        pytest.param(
            {"username": "", "email": "", "first_name": ""},
            {"username", "email", "first_name"},
            id="empty",
        ),
        pytest.param(
            {"username": "no spaces", "email": "not-an-email"},
            {"username", "email"},
            id="malformed",
        ),
        pytest.param({"username": "ab"}, {"username"}, id="too-short"),
        pytest.param(
            {"username": "u" * 31, "first_name": "n" * 101},
            {"username", "first_name"},
            id="too-long",
        ),
        pytest.param({"username": "Admin"}, {"username"}, id="reserved"),
        pytest.param({"first_name": "<script>alert(1)</script>"}, {"first_name"}, id="symbols"),
        pytest.param(
            {"username": "bell\x07", "last_name": "Lovelace\u202e"},
            {"username", "last_name"},
            id="control-characters",
        ),
        pytest.param(
            {"username": "nul\x00", "email": "nul\x00@example.com"},
            {"username", "email"},
            id="nul-bytes",
        ),
    ],
)
def test_the_form_shows_bad_input_inline(service, fields, fields_in_error):
    page = fill_in_signup_form(service, requests.Session(), **{**VALID_FORM, **fields})
    assert page.status_code == 400
    assert "Please correct the fields marked below." in page.text
    assert error_fields(page) == fields_in_error


@deployed(expires_after=LASTING)
def test_a_form_post_without_a_valid_csrf_token_is_forbidden(service):
    no_cookie = requests.post(f"{service.url}/signup/", data=VALID_FORM, timeout=HTTP_TIMEOUT)
    assert no_cookie.status_code == 403

    browser = requests.Session()
    csrf_field = hidden_fields(browser.get(f"{service.url}/signup/", timeout=HTTP_TIMEOUT))
    for data, origin in [
        ({**VALID_FORM, "csrfmiddlewaretoken": "x" * 64}, service.url),  # a forged token
        ({**VALID_FORM, **csrf_field}, "https://evil.example"),  # a real one, sent cross-site
    ]:
        refused = browser.post(
            f"{service.url}/signup/", data=data, headers={"Origin": origin}, timeout=HTTP_TIMEOUT
        )
        assert refused.status_code == 403
    assert service.api("GET", f"/api/signups/{VALID_FORM['username']}").status_code == 404


@deployed(expires_after=LASTING)
def test_the_resend_page_shows_a_bad_address_inline(service):
    browser = requests.Session()
    resend = browser.get(f"{service.url}/signup/resend/", timeout=HTTP_TIMEOUT)
    answer = browser.post(
        resend.url,
        data={**hidden_fields(resend), "email": "not-an-email"},
        headers={"Origin": service.url},
        timeout=HTTP_TIMEOUT,
    )
    assert answer.status_code == 400
    assert error_fields(answer) == {"email"}


@deployed(expires_after=LASTING)
@pytest.mark.parametrize(
    ("method", "path", "request_args", "status"),
    [
        pytest.param("PUT", "/signup/", {}, 405, id="form-put"),
        pytest.param("PUT", "/signup/sent/", {}, 405, id="sent-page-put"),
        pytest.param(
            "POST", "/signup/", {"data": {"username": "x" * 3_000_000}}, 400, id="form-too-big"
        ),
        pytest.param(
            "POST",
            "/signup/",
            {"data": [(f"field{n}", "x") for n in range(1500)]},
            400,
            id="form-too-many-fields",
        ),
        pytest.param(
            "GET", "/signup/verify/forged-token/?source=verification", {}, 400, id="forged-link"
        ),
        pytest.param(
            "POST",
            "/signup/verify/forged-token/",
            {"data": {"source": "verification"}},
            400,
            id="confirm-forged-link",
        ),
        pytest.param("GET", f"/signup/verify/{'x' * 300}/", {}, 400, id="overlong-link"),
        pytest.param("GET", "/signup/verify/abc%00/?source=verification", {}, 400, id="nul-link"),
        pytest.param(
            "GET", "/signup/verify/forged-token/?source=evil", {}, 400, id="unknown-source"
        ),
        pytest.param("GET", "/signup/nowhere/", {}, 404, id="no-such-page"),
    ],
)
def test_pages_refuse_what_they_cannot_serve(service, method, path, request_args, status):
    browser = requests.Session()
    form = browser.get(f"{service.url}/signup/", timeout=HTTP_TIMEOUT)
    # Each request carries the CSRF cookie and token, so it is refused for what it asks.
    csrf = {"Origin": service.url, "X-CSRFToken": hidden_fields(form)["csrfmiddlewaretoken"]}
    response = browser.request(
        method, f"{service.url}{path}", headers=csrf, timeout=HTTP_TIMEOUT, **request_args
    )
    assert response.status_code == status, response.text[:500]


SIGNUP_JSON = {"username": "dora", "email": "dora@example.com", "first_name": "Dora"}
JSON_TYPE = {"Content-Type": "application/json"}


@deployed(expires_after=LASTING)
@pytest.mark.parametrize(
    ("method", "path", "request_args", "status"),
    [
        pytest.param(
            "POST",
            "/api/signups",
            # requests leaves out a header whose value is None
            {"json": SIGNUP_JSON, "headers": {"Authorization": None}},
            401,
            id="no-key",
        ),
        pytest.param(
            "POST",
            "/api/signups",
            {"json": SIGNUP_JSON, "headers": {"Authorization": "Basic dXNlcjpwYXNz"}},
            401,
            id="basic-auth",
        ),
        pytest.param(
            "GET",
            "/api/signups/ada",
            {"headers": {"Authorization": "Bearer wrong-key"}},
            403,
            id="wrong-key",
        ),
        pytest.param("GET", "/api/signups", {}, 405, id="list-signups"),
        pytest.param("DELETE", "/api/signups/ada", {}, 405, id="delete-signup"),
        pytest.param("POST", "/api/signups", {"data": b"not json"}, 415, id="not-json-type"),
        pytest.param(
            "POST", "/api/signups", {"data": b"not json", "headers": JSON_TYPE}, 400, id="not-json"
        ),
        pytest.param(
            "POST",
            "/api/signups",
            {"data": b'{"\xff": 1}', "headers": JSON_TYPE},
            400,
            id="not-utf8",
        ),
        pytest.param("POST", "/api/signups", {"json": [SIGNUP_JSON]}, 400, id="not-an-object"),
        pytest.param(
            "POST", "/api/signups", {"json": {**SIGNUP_JSON, "admin": True}}, 400, id="extra-field"
        ),
        pytest.param(
            "POST", "/api/signups", {"json": {**SIGNUP_JSON, "username": 7}}, 400, id="not-a-string"
        ),
        pytest.param(
            "POST",
            "/api/signups",
            {"json": {**SIGNUP_JSON, "username": "no spaces", "email": "x"}},
            400,
            id="invalid-fields",
        ),
        pytest.param(
            "POST",
            "/api/signups",
            {"json": {**SIGNUP_JSON, "first_name": "x" * 17_000}},
            413,
            id="too-big",
        ),
        pytest.param("GET", "/api/signups/nobody", {}, 404, id="unknown-username"),
        pytest.param("GET", f"/api/signups/{'x' * 200}", {}, 404, id="overlong-username"),
        pytest.param("POST", "/api/signups/verify", {"json": {}}, 400, id="verify-no-token"),
        pytest.param(
            "POST", "/api/signups/verify", {"json": {"token": "forged"}}, 400, id="forged-token"
        ),
        pytest.param(
            "POST", "/api/signups/verify", {"json": {"token": 7}}, 400, id="token-not-a-string"
        ),
        pytest.param(
            "POST",
            "/api/signups/verify",
            {"json": {"token": "forged", "source": "evil"}},
            400,
            id="unknown-source",
        ),
    ],
)
def test_the_api_answers_bad_requests_with_a_json_error(
    service, method, path, request_args, status
):
    response = service.api(method, path, **request_args)
    assert response.status_code == status, response.text[:500]
    assert response.json()["message"]
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="signup"'


@deployed(expires_after=LASTING)
def test_a_taken_username_is_refused_by_the_api_and_the_form(service):
    created = service.api("POST", "/api/signups", json=SIGNUP_JSON)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "pending"
    service.wait_for_emails("dora@example.com", "Verify")

    for username in ("dora", "DORA"):
        again = service.api("POST", "/api/signups", json={**SIGNUP_JSON, "username": username})
        assert again.status_code == 409, again.text
        assert "already taken" in again.json()["message"]

    page = fill_in_signup_form(
        service, requests.Session(), **{**SIGNUP_JSON, "username": "Dora", "email": "d@x.org"}
    )
    assert page.status_code == 400
    assert error_fields(page) == {"username"}
    assert "This username is already taken." in page.text


# --- Safe in public -----------------------------------------------------------------------


def past_the_cooldown(service: Deployed) -> None:
    """Move every address's last email back past SIGNUP_ADDRESS_COOLDOWN, as time would."""
    with psycopg.connect(service.running.database_url, autocommit=True) as database:
        database.execute(
            "UPDATE signup_address SET last_sent_at = last_sent_at - interval '181 seconds'"
        )


def contacted(service: Deployed, username: str) -> bool:
    """Whether the signup's first contact was made."""
    with psycopg.connect(service.running.database_url, autocommit=True) as database:
        row = database.execute(
            "SELECT contacted_at IS NOT NULL FROM signup_signup WHERE username = %s", [username]
        ).fetchone()
    return bool(row and row[0])


def _at_a_minutes_start() -> None:
    """Wait, if need be, so that a burst of a few seconds falls in one rate-limit window."""
    into_window = time.time() % 60
    if into_window > 40:
        time.sleep(60 - into_window + 0.1)


@deployed(expires_after=LASTING, brokers=("redis",), public=True)
def test_forty_signups_naming_one_address_send_it_one_signups_worth_of_mail(service):
    """An attacker signs up 40 times, 20 by the form and 20 by the API, naming one victim's
    address in different cases: the victim gets one verification email and one chain of
    reminders; the 21st form post of the minute is refused, whichever web worker takes it."""
    variants = ["victim@example.com", "Victim@Example.com", "VICTIM@EXAMPLE.COM"]
    browser = requests.Session()
    _at_a_minutes_start()
    started = time.monotonic()
    for n in range(20):
        page = fill_in_signup_form(
            service, browser, username=f"form{n}", email=variants[n % 3], first_name="Eve"
        )
        assert page.status_code == 200 and heading(page) == "Check your email", page.text
    for n in range(20):
        body = {"username": f"api{n}", "email": variants[n % 3], "first_name": "Eve"}
        assert service.api("POST", "/api/signups", json=body).status_code == 201
    seconds = time.monotonic() - started
    refused = fill_in_signup_form(service, browser, username="form20", email=variants[0])
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60

    reminders = service.wait_for_emails("victim@example.com", "Reminder", count=6)
    time.sleep(3 * REMINDER_INTERVAL)  # what would come after a single signup's chain: nothing
    received = service.emails("victim@example.com")
    assert len([e for e in received if e.subject.startswith("Verify")]) == 1
    assert len(service.emails("victim@example.com", "Reminder")) == len(reminders) == 6
    assert len(received) == 7
    print(f"40 signups naming one address in {seconds:.1f} s: {len(received)} emails")


@deployed(expires_after=LASTING, brokers=("redis",), public=True)
def test_a_strangers_five_signups_do_not_stop_the_owners_own(service):
    """The audit's lockout, against the processes: five form signups naming the owner's
    address, from one network, each past the cooldown (a day's worth: the address's last
    email is moved back in the database, as time would), then the owner's own signup from
    theirs. The owner gets its verification email and its reminder chain."""
    owner = "owner@dos.example"
    started = time.monotonic()
    for n in range(5):
        page = fill_in_signup_form(
            service,
            requests.Session(),
            username=f"squat{n}",
            email=owner,
            first_name="Eve",
            headers={"X-Forwarded-For": "203.0.113.7"},
        )
        assert page.status_code == 200, page.text
        if n < 3:  # the network's daily share, each contacted before the next comes
            service.wait_for_emails(owner, "Verify", count=n + 1)
        else:  # held back, once its first contact is made
            wait_for(lambda n=n: contacted(service, f"squat{n}"), message=f"squat{n} contacted")
        past_the_cooldown(service)
    page = fill_in_signup_form(
        service,
        requests.Session(),
        username="owner",
        email=owner,
        first_name="Olga",
        headers={"X-Forwarded-For": "198.51.100.9"},
    )
    assert page.status_code == 200, page.text
    service.wait_for_emails(owner, "Verify", count=4)
    wait_for(
        lambda: service.signup("owner")["emails"]["sent"] == 1,
        message="the owner's verification email recorded as sent",
    )
    time.sleep(2)
    assert len(service.emails(owner, "Verify")) == 4  # the stranger's network got its 3
    assert all(service.signup(f"squat{n}")["emails"]["sent"] == 0 for n in (3, 4))
    print(
        f"five signups of one network, then the owner's, in {time.monotonic() - started:.1f} s:"
        " 3 verification emails for the stranger's, 1 for the owner's"
    )


@deployed(expires_after=LASTING, brokers=("redis",))
def test_one_scrape_adds_up_every_web_and_worker_process(service):
    """gunicorn's workers, the email workers' threads, the prefork worker's pool processes
    and beat each count for themselves; whichever web process answers the scrape, it adds
    them all up (PROMETHEUS_MULTIPROC_DIR, as the harness and compose set it)."""

    def scrape() -> dict[tuple, float]:
        page = requests.get(
            f"{service.url}/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
            timeout=HTTP_TIMEOUT,
        )
        assert page.status_code == 200, page.text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(page.text)
            for sample in family.samples
        }

    before = scrape()

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return scrape().get(key, 0) - before.get(key, 0)

    for n in range(3):
        body = {"username": f"gauge{n}", "email": f"gauge{n}@example.com", "first_name": "Gus"}
        assert service.api("POST", "/api/signups", json=body).status_code == 201
    for n in range(3):
        service.wait_for_emails(f"gauge{n}@example.com", "Reminder")
    sent = ("signup_email_attempts_total", (("kind", "verification"), ("result", "sent")))
    wait_for(
        lambda: scrape()[sent] - before.get(sent, 0) == 3,
        timeout=10,
        message="3 verification emails counted",
    )
    # Two web processes answer in turn: every answer has the same count.
    assert {scrape()[sent] for _ in range(8)} == {before.get(sent, 0) + 3}
    assert grew("signup_provider_call_seconds_count", outcome="ok") >= 6
    assert grew("signup_reminder_lateness_seconds_count") >= 3
    # The sweeps ran in the prefork worker's pool processes, once a second.
    assert grew("signup_sweep_duration_seconds_count") >= 2
    assert scrape()[("signup_seconds_since_last_sweep", ())] < 5


@deployed(expires_after=LASTING, brokers=("redis",))
def test_a_receiver_answering_10_s_late_does_not_delay_the_welcome_email(service, hook_receiver):
    """Webhooks have their own queue and worker (the Procfile's webhooks line): while one
    waits on a slow receiver, the emails go out as before."""
    body = {"username": "slowhook", "email": "slowhook@example.com", "first_name": "Sam"}
    assert service.api("POST", "/api/signups", json=body).status_code == 201
    (verification,) = service.wait_for_emails("slowhook@example.com", "Verify")
    token = urlsplit(verify_link(service, verification).url).path.split("/")[-2]
    hook_receiver.delay = 10
    try:
        verified_at = time.monotonic()
        answer = service.api("POST", "/api/signups/verify", json={"token": token})
        assert answer.status_code == 200, answer.text
        (welcome,) = service.wait_for_emails("slowhook@example.com", "Welcome")
        # Held behind the webhook, the welcome would take the receiver's 10 s.
        assert welcome.received_at - verified_at < 3 * LOAD
        events = wait_for(
            lambda: [r for r in hook_receiver.of_type("signup.verified") if "slowhook" in r.body],
            timeout=20,
            message="the verified event at the slow receiver",
        )
        assert events[0].at - verified_at < 3 * LOAD  # it was sent at once, and answered late
    finally:
        hook_receiver.delay = 0
    time.sleep(1)
    # Answered within the webhook timeout: delivered once, not retried.
    assert len([r for r in hook_receiver.of_type("signup.verified") if "slowhook" in r.body]) == 1
