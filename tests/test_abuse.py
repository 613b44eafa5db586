"""Safe in public: one address gets one signup's worth of mail, rate limits answer 429, and the
answers don't tell whether an address is known."""

import re
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from signup import limits, tokens, workflow
from signup.models import Address, OutboundEmail, Signup
from tests.helpers import API_KEY, contact_waiting, emailed, send_reminder, signed_up, signup_data

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

VICTIM = "victim@example.com"


def _emails(kind: str) -> int:
    return OutboundEmail.objects.filter(kind=kind).count()


def _signups_naming(address: str, count: int, **fields) -> list[Signup]:
    return [
        signed_up(**signup_data(username=f"user{n}", email=address, **fields)) for n in range(count)
    ]


def _cooldown_over() -> None:
    Address.objects.update(last_sent_at=timezone.now() - timedelta(seconds=181))


# --- One address, one signup's worth of mail ------------------------------------------------


def test_many_signups_naming_one_address_send_it_one_verification_email():
    first, *others = _signups_naming(VICTIM, 10)
    assert _emails("verification") == 1
    assert first.emails.get().kind == "verification"
    for signup in others:
        signup.refresh_from_db()
        assert signup.status == "pending"  # a signup like any other, only mute
        assert signup.next_reminder_at is None
        assert signup.events.filter(kind="verification_held").exists()
        assert not signup.emails.exists()
    assert Address.objects.count() == 1


def test_an_address_is_one_address_in_any_case():
    signed_up(**signup_data(username="one", email="Victim@Example.com"))
    signed_up(**signup_data(username="two", email="VICTIM@example.com"))
    signed_up(**signup_data(username="three", email="victim@example.com"))
    assert _emails("verification") == 1


def test_an_international_address_is_one_address_in_either_form(api, client):
    forms = ["eve@bücher.example", "Eve@BÜCHER.example", "eve@xn--bcher-kva.example"]
    for n, address in enumerate(forms):
        assert (
            api.post("/api/signups", signup_data(username=f"api{n}", email=address)).status_code
            == 201
        )
        page = client.post("/signup/", signup_data(username=f"form{n}", email=address))
        assert page.status_code == 302
    assert contact_waiting() == 6
    assert _emails("verification") == 1
    assert set(Signup.objects.values_list("email", flat=True)) <= {
        "eve@xn--bcher-kva.example",
        "Eve@xn--bcher-kva.example",
    }


def test_after_the_cooldown_the_newest_signup_takes_the_reminder_chain_over(settings):
    first = emailed(**signup_data(username="first", email=VICTIM))
    assert send_reminder(signup_id=first.pk, number=1)
    first.refresh_from_db()
    _cooldown_over()
    second = signed_up(**signup_data(username="second", email=VICTIM))
    assert _emails("verification") == 2
    second.refresh_from_db()
    # The chain goes on where it stood: reminder 2 at the time it was due for the first.
    assert (second.reminders_sent, second.next_reminder_at) == (1, first.next_reminder_at)
    superseded = Signup.objects.get(pk=first.pk)
    assert superseded.next_reminder_at is None
    assert superseded.events.filter(kind="superseded").exists()
    # The first signup's reminder task, still in the broker, is dropped; its link still works.
    assert workflow.take_reminder(signup_id=first.pk, number=2) is None
    result = workflow.verify_signup(token=tokens.make_token(first), source="verification")
    assert result.signup.status == "verified"


def test_the_reminders_of_an_address_add_up_to_one_signups(settings):
    settings.SIGNUP_ADDRESS_COOLDOWN = 0
    settings.SIGNUP_ADDRESS_DAILY_LIMIT = 100
    sent = 0
    for n in range(10):
        signup = emailed(**signup_data(username=f"user{n}", email=VICTIM))
        signup.refresh_from_db()
        # Take whatever reminder is next for the signup that now holds the chain.
        if signup.next_reminder_at is not None:
            sent += (
                workflow.take_reminder(signup_id=signup.pk, number=signup.reminders_sent + 1)
                is not None
            )
    assert sent == settings.SIGNUP_MAX_REMINDERS
    assert _emails("reminder") == settings.SIGNUP_MAX_REMINDERS


def test_the_daily_limits_hold_when_the_cooldown_allows(settings):
    """One network's signups get SIGNUP_ADDRESS_NETWORK_DAILY_LIMIT emails a day; all
    networks together SIGNUP_ADDRESS_DAILY_LIMIT."""
    settings.SIGNUP_ADDRESS_COOLDOWN = 0
    _signups_naming(VICTIM, 5, client_network="one")
    assert _emails("verification") == settings.SIGNUP_ADDRESS_NETWORK_DAILY_LIMIT == 3
    for network in range(10):
        signed_up(
            **signup_data(username=f"net{network}", email=VICTIM), client_network=f"n{network}"
        )
    assert _emails("verification") == settings.SIGNUP_ADDRESS_DAILY_LIMIT == 10
    Address.objects.update(day_started_at=timezone.now() - timedelta(days=1, seconds=1))
    signed_up(**signup_data(username="nextday", email=VICTIM), client_network="one")
    assert _emails("verification") == 11


def test_an_address_with_an_account_gets_told_so_instead_of_a_verification_email():
    account = signed_up(**signup_data(username="owner", email=VICTIM))
    workflow.verify_signup_by_operator(signup_id=account.pk)
    _cooldown_over()
    again = signed_up(**signup_data(username="again", email=VICTIM))
    assert _emails("verification") == 1
    (note,) = OutboundEmail.objects.filter(kind="account_exists")
    assert note.signup_id == account.pk  # the email is about the account, to its owner
    again.refresh_from_db()
    assert again.next_reminder_at is None
    # Within the same budget: another try right away is held back.
    signed_up(**signup_data(username="third", email=VICTIM))
    assert _emails("account_exists") == 1


def test_verifying_one_signup_stops_the_reminders_of_the_addresss_other_one():
    older = signed_up(**signup_data(username="older", email=VICTIM))
    _cooldown_over()
    newer = signed_up(**signup_data(username="newer", email=VICTIM))
    workflow.verify_signup(token=tokens.make_token(older), source="verification")
    newer.refresh_from_db()
    assert newer.status == "pending"
    assert newer.next_reminder_at is None
    assert workflow.take_reminder(signup_id=newer.pk, number=1) is None


def test_the_owner_can_always_finish_through_the_resend_page():
    # Someone else's signups hold the address's budget; the owner's own signup is mute.
    _signups_naming(VICTIM, 3)
    mine = signed_up(**signup_data(username="me", email=VICTIM))
    assert workflow.request_verification_email(email=VICTIM).startswith("held back")
    _cooldown_over()
    assert workflow.request_verification_email(email=VICTIM) == "verification email queued"
    mine.refresh_from_db()
    (link,) = mine.emails.filter(kind="verification")
    assert mine.next_reminder_at is not None  # the chain is the owner's now
    assert link.status == "queued"
    result = workflow.verify_signup(token=tokens.make_token(mine), source="verification")
    assert result.signup.username == "me"


def test_resend_to_an_unknown_address_sends_nothing_and_to_an_account_a_note():
    assert workflow.request_verification_email(email="nobody@example.com") == "nothing pending"
    account = signed_up(**signup_data(username="owner", email=VICTIM))
    workflow.verify_signup_by_operator(signup_id=account.pk)
    _cooldown_over()
    assert workflow.request_verification_email(email=VICTIM) == "account exists email queued"
    assert workflow.request_verification_email(email=VICTIM).startswith("held back")
    assert _emails("account_exists") == 1


def test_the_address_table_holds_no_address():
    signed_up(**signup_data(email=VICTIM))
    (row,) = Address.objects.values_list("digest", flat=True)
    assert "victim" not in row
    assert row == workflow.address_digest("VICTIM@example.com")


# --- No enumeration ---------------------------------------------------------------------------


KNOWN = ["pending@example.com", "reminded@example.com", "verified@example.com"]


def _known_addresses() -> None:
    """One address with a pending signup, one whose reminder chain has gone on (a new signup
    takes it over, the cooldown being over) and one with an account."""
    signed_up(**signup_data(username="pending1", email="pending@example.com"))
    reminded = signed_up(**signup_data(username="reminded1", email="reminded@example.com"))
    Signup.objects.filter(pk=reminded.pk).update(reminders_sent=2)
    account = signed_up(**signup_data(username="verified1", email="verified@example.com"))
    workflow.verify_signup_by_operator(signup_id=account.pk)
    Address.objects.filter(digest=workflow.address_digest("reminded@example.com")).update(
        last_sent_at=timezone.now() - timedelta(seconds=181)
    )


def _without(body: bytes, signup: Signup) -> bytes:
    """The answer with what differs between any two new signups (the username, the creation
    and expiry times) written as placeholders."""
    created = signup.created_at.isoformat().encode()
    expires = signup.expires_at.isoformat().encode()
    return (
        body.replace(signup.username.encode(), b"<username>")
        .replace(created, b"<created_at>")
        .replace(expires, b"<expires_at>")
    )


@pytest.mark.parametrize("address", KNOWN)
def test_the_api_answers_a_known_address_as_an_unknown_one(api, address):
    _known_addresses()
    known = api.post("/api/signups", signup_data(username="newname1", email=address))
    unknown = api.post("/api/signups", signup_data(username="newname2", email="new@example.com"))
    assert known.status_code == unknown.status_code == 201
    assert known["Content-Type"] == unknown["Content-Type"]
    mine, theirs = Signup.objects.get(username="newname1"), Signup.objects.get(username="newname2")
    assert _without(known.content, mine) == _without(unknown.content, theirs)
    if address == "reminded@example.com":
        # Contacted after the answer, the new signup takes the chain over where it stood.
        contact_waiting()
        mine.refresh_from_db()
        assert mine.reminders_sent == 2


@pytest.mark.parametrize("address", KNOWN)
def test_the_form_answers_a_known_address_as_an_unknown_one(client, address):
    _known_addresses()
    known = client.post("/signup/", signup_data(username="newname1", email=address))
    unknown = client.post("/signup/", signup_data(username="newname2", email="new@example.com"))
    assert known.status_code == unknown.status_code == 302
    assert known["Location"] == unknown["Location"]
    assert known.content == unknown.content
    # The page it leads to names neither the address nor anything about it.
    first, second = client.get(known["Location"]), client.get(unknown["Location"])
    assert first.status_code == second.status_code == 200
    assert address.encode() not in first.content
    assert _strip_csrf(first.content) == _strip_csrf(second.content)


def _shape(sql: str) -> str:
    """A statement without its values (literals and numbers), to compare what was done."""
    sql = re.sub(r'SAVEPOINT "[^"]+"', "SAVEPOINT S", sql)
    return re.sub(r"\b\d+\b", "N", re.sub(r"'(?:[^']|'')*'", "V", sql))


@pytest.mark.parametrize("path", ["/signup/", "/api/signups"])
def test_the_form_and_the_api_do_the_same_work_whatever_the_address(client, api, path):
    """What takes time in the answer is its database work: the same statements for every
    address, known or not, within its cooldown or past it. The address is contacted after the
    answer, by a task (what differs is there)."""
    _known_addresses()
    post = api.post if path.startswith("/api/") else client.post
    done = {}
    for n, address in enumerate(["new@example.com", *KNOWN]):
        with CaptureQueriesContext(connection) as queries:
            answer = post(path, signup_data(username=f"probe{n}", email=address))
        assert answer.status_code in (201, 302)
        done[address] = [_shape(query["sql"]) for query in queries.captured_queries]
    assert done["new@example.com"]
    for address, statements in done.items():
        assert statements == done["new@example.com"], address
    # And the first contacts, which differ, do happen.
    assert contact_waiting() == len(done)


def _strip_csrf(page: bytes) -> bytes:
    return re.sub(rb'name="csrfmiddlewaretoken" value="[^"]+"', b"<csrf>", page)


# --- Rate limits ------------------------------------------------------------------------------


def test_the_limits_let_requests_through_while_the_cache_does_not_answer(client, settings, caplog):
    """A web host cut off from the cache (the broker's Redis, on another host) still records
    signups; the address budget, in the database, still holds."""
    settings.SIGNUP_RATE_LIMIT_PAGES = "1/m"
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    for n in range(3):
        data = signup_data(username=f"through{n}", email=f"through{n}@example.com")
        assert client.post("/signup/", data).status_code == 302
    assert Signup.objects.filter(username__startswith="through").count() == 3
    assert "the cache did not answer" in caplog.text


@pytest.mark.usefixtures("one_window")
@pytest.mark.parametrize("path", ["/signup/", "/signup/resend/"])
def test_form_posts_past_the_limit_get_a_friendly_429(client, settings, path):
    settings.SIGNUP_RATE_LIMIT_PAGES = "3/m"
    for n in range(3):
        response = client.post(path, {"email": "not-an-email", "username": f"u{n}"})
        assert response.status_code == 400
    limited = client.post(path, {"email": "not-an-email"})
    assert limited.status_code == 429
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert b"Too many attempts" in limited.content
    # Reading the page is not limited, and another client is not affected.
    assert client.get(path).status_code == 200
    other = client.post(path, {"email": "not-an-email"}, REMOTE_ADDR="192.0.2.7")
    assert other.status_code == 400


@pytest.mark.usefixtures("one_window")
def test_forwarded_for_counts_only_behind_trusted_proxies(client, settings):
    settings.SIGNUP_RATE_LIMIT_PAGES = "2/m"

    def post(forwarded: str):
        return client.post("/signup/", {"email": "x"}, HTTP_X_FORWARDED_FOR=forwarded).status_code

    # No trusted proxy: a client can't escape its limit by writing the header.
    assert [post(f"198.51.100.{n}") for n in range(3)] == [400, 400, 429]
    settings.SIGNUP_TRUSTED_PROXIES = 1
    # One proxy that appends what it saw: the last hop is the client.
    assert [post(f"1.1.1.1, 203.0.113.{n}") for n in range(3)] == [400, 400, 400]
    assert [post("9.9.9.9, 203.0.113.50") for _ in range(3)] == [400, 400, 429]


def test_an_ipv6_client_is_counted_by_its_64(client, settings):
    """A /64 is one household's or one server's: picking another address in it does not
    give a client a fresh limit."""
    settings.SIGNUP_RATE_LIMIT_PAGES = "2/h"  # an hour's window: the test never straddles two

    def post(address: str) -> int:
        return client.post("/signup/", {"email": "x"}, REMOTE_ADDR=address).status_code

    assert [post(f"2001:db8:1:2::{n}") for n in (1, 2, 3)] == [400, 400, 429]
    assert post("2001:db8:1:2:ffff:ffff:ffff:ffff") == 429
    assert post("2001:db8:1:3::1") == 400  # the next /64 is someone else
    # An IPv4 client seen through an IPv6 socket is that IPv4 address.
    assert [post("::ffff:192.0.2.9"), post("192.0.2.9"), post("::ffff:192.0.2.9")] == [
        400,
        400,
        429,
    ]


@pytest.mark.usefixtures("one_window")
def test_invalid_links_past_the_limit_get_429_even_with_a_good_one(client, settings):
    settings.SIGNUP_RATE_LIMIT_BAD_LINKS = "3/m"
    signup = signed_up(**signup_data())
    for n in range(3):
        assert client.get(f"/signup/verify/guess{n}/").status_code == 400
    good = f"/signup/verify/{tokens.make_token(signup)}/"
    response = client.get(good)
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    # Another client reaches its link.
    assert client.get(good, REMOTE_ADDR="192.0.2.7").status_code == 200


@pytest.mark.usefixtures("one_window")
def test_a_backends_invalid_tokens_do_not_lock_its_other_users_out(api, settings):
    """The API's caller relays everyone's tokens from one address: its invalid ones are
    bounded by the key's limit, not by the links' per-client one."""
    settings.SIGNUP_RATE_LIMIT_BAD_LINKS = "3/m"
    signup = signed_up(**signup_data())
    for n in range(10):
        assert api.post("/api/signups/verify", {"token": f"mistyped{n}"}).status_code == 400
    response = api.post("/api/signups/verify", {"token": tokens.make_token(signup)})
    assert response.status_code == 200, response.content
    signup.refresh_from_db()
    assert signup.status == "verified"


@pytest.mark.usefixtures("one_window")
def test_api_calls_past_the_per_key_limit_get_json_429(api, client, settings):
    settings.SIGNUP_RATE_LIMIT_API = "5/m"
    for _ in range(5):
        assert api.get("/api/signups/nobody").status_code == 404
    limited = api.get("/api/signups/nobody")
    assert limited.status_code == 429
    assert int(limited["Retry-After"]) >= 1
    assert "Too many requests" in limited.json()["message"]


@pytest.mark.usefixtures("one_window")
def test_guessing_api_keys_is_slowed_per_client(client, settings):
    settings.SIGNUP_RATE_LIMIT_BAD_LINKS = "3/m"
    statuses = [
        client.get("/api/signups/nobody", headers={"Authorization": f"Bearer guess{n}"}).status_code
        for n in range(5)
    ]
    assert statuses == [403, 403, 403, 429, 429]
    right = client.get("/api/signups/nobody", headers={"Authorization": f"Bearer {API_KEY}"})
    assert right.status_code == 404  # the right key still works: the pause is for guesses


def test_admin_logins_lock_out_after_a_few_failures(client, settings):
    get_user_model().objects.create_superuser("ops", "ops@example.com", "right-password-123")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = client.post("/admin/login/", {"username": "ops", "password": "wrong"})
        assert response.status_code == 200  # the login form again, with its error
    locked = client.post("/admin/login/", {"username": "ops", "password": "wrong"})
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) == settings.AXES_COOLOFF_TIME.total_seconds()
    # Locked out means locked out, even with the right password, from that address.
    right = client.post("/admin/login/", {"username": "ops", "password": "right-password-123"})
    assert right.status_code == 429


def test_an_ipv6_client_cannot_escape_the_admin_lockout_within_its_64(client, settings):
    get_user_model().objects.create_superuser("ops", "ops@example.com", "right-password-123")

    def log_in(address: str, password: str = "wrong") -> int:
        form = {"username": "ops", "password": password}
        return client.post("/admin/login/", form, REMOTE_ADDR=address).status_code

    statuses = [log_in(f"2001:db8:5:6::{n}") for n in range(1, settings.AXES_FAILURE_LIMIT + 1)]
    assert statuses == [200] * (settings.AXES_FAILURE_LIMIT - 1) + [429]
    assert log_in("2001:db8:5:6:ffff::1", "right-password-123") == 429
    assert log_in("2001:db8:5:7::1", "right-password-123") == 302  # another /64 logs in


def test_erasing_an_account_frees_its_address_for_a_new_signup():
    account = signed_up(**signup_data(username="owner", email=VICTIM))
    workflow.verify_signup_by_operator(signup_id=account.pk)
    assert workflow.erase_personal_data(signup_id=account.pk, operator="ops")
    _cooldown_over()
    again = signed_up(**signup_data(username="again", email=VICTIM))
    assert again.emails.get().kind == "verification"  # no "you already have an account"
    assert not OutboundEmail.objects.filter(kind="account_exists").exists()


def test_addresses_idle_past_the_retention_are_forgotten_unless_they_hold_a_signup(settings):
    settings.SIGNUP_RETENTION_DAYS = 30
    signed_up(**signup_data(username="pending", email="pending@example.com"))
    account = signed_up(**signup_data(username="owner", email="owner@example.com"))
    workflow.verify_signup_by_operator(signup_id=account.pk)
    closed = signed_up(**signup_data(username="gone", email="gone@example.com"))
    workflow.cancel_signup(signup_id=closed.pk)
    Address.objects.update(last_sent_at=timezone.now() - timedelta(days=31))
    assert workflow.forget_idle_addresses() == 1
    remaining = set(Address.objects.values_list("digest", flat=True))
    assert workflow.address_digest("gone@example.com") not in remaining
    assert len(remaining) == 2
    # A new signup for the forgotten address starts afresh.
    signed_up(**signup_data(username="back", email="gone@example.com"))
    assert Address.objects.count() == 3


@pytest.mark.usefixtures("one_window")
@pytest.mark.redis
def test_the_limits_count_in_redis_in_one_round_trip_with_an_expiry(client, settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": settings.CELERY_BROKER_URL,
            "KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        }
    }
    settings.SIGNUP_RATE_LIMIT_PAGES = "3/m"
    statuses = [client.post("/signup/", {"email": "x"}).status_code for _ in range(4)]
    assert statuses == [400, 400, 400, 429]
    backend = caches["default"]
    redis_client = backend._cache.get_client(write=False)
    (key,) = redis_client.keys(f"{backend.key_prefix}*")
    assert int(redis_client.get(key)) == 4
    assert 0 < redis_client.ttl(key) <= 61
    redis_client.delete(key)


# --- One mailbox, one budget (every spelling of it) ---------------------------------------


def _live_chains() -> int:
    return Signup.objects.filter(status="pending", next_reminder_at__isnull=False).count()


@pytest.mark.parametrize(
    "spellings",
    [
        ["victim@bombed.example", '"victim"@bombed.example'],
        [f"victim+{n}@bombed.example" for n in range(1, 13)],
        ["victim@bombed.example", '"victim+1"@Bombed.Example', "VICTIM+2@bombed.example"],
    ],
    ids=["quoted", "sub-addresses", "mixed"],
)
def test_every_spelling_of_a_mailbox_shares_its_budget_and_its_one_chain(api, spellings):
    """The audit's attacks: a quoted local part, twelve sub-addresses within two minutes. One
    mailbox gets one verification email and has one live reminder chain."""
    for n, address in enumerate(spellings):
        answer = api.post("/api/signups", signup_data(username=f"spelling{n}", email=address))
        assert answer.status_code == 201, answer.content
    assert contact_waiting() == len(spellings)
    assert _emails("verification") == 1
    assert _live_chains() == 1
    assert Address.objects.count() == 1


def test_a_sub_address_is_still_the_signups_own_address(api, mailoutbox):
    api.post("/api/signups", signup_data(username="shopper", email="Ada+shop@example.com"))
    contact_waiting()
    signup = Signup.objects.get(username="shopper")
    assert signup.email == "Ada+shop@example.com"
    workflow.deliver(workflow.EMAIL, signup.emails.get().pk)
    assert mailoutbox[0].to == ["Ada+shop@example.com"]


def test_a_quoted_address_is_stored_and_sent_without_its_quotes(client):
    client.post("/signup/", signup_data(username="quoted", email='"victim"@Bombed.Example'))
    contact_waiting()
    signup = Signup.objects.get(username="quoted")
    assert signup.email == "victim@bombed.example"
    assert signup.emails.get().to_email == "victim@bombed.example"


# --- The owner always gets through ------------------------------------------------------------

ATTACKER, OWNER = "203.0.113.7", "198.51.100.9"


def _form_signup(client, username: str, address: str, *, client_address: str) -> None:
    answer = client.post(
        "/signup/", signup_data(username=username, email=address), REMOTE_ADDR=client_address
    )
    assert answer.status_code == 302, answer.content
    contact_waiting()


def test_a_strangers_signups_cannot_spend_the_owners_budget(client):
    """The audit's lockout: five signups naming the owner's address over a day, each past the
    cooldown, from one network. The owner's own signup, from theirs, still gets its email."""
    for n in range(5):
        _form_signup(client, f"squat{n}", "owner@dos.example", client_address=ATTACKER)
        _cooldown_over()
    assert _emails("verification") == 3  # the attacker's network got its daily share
    _form_signup(client, "owner", "owner@dos.example", client_address=OWNER)
    mine = Signup.objects.get(username="owner")
    assert mine.emails.filter(kind="verification").count() == 1
    assert mine.next_reminder_at is not None  # and the reminder chain is the owner's


def test_the_owners_resend_reaches_their_own_signup_before_a_strangers_newer_one(client):
    _form_signup(client, "owner", "owner@dos.example", client_address=OWNER)
    # The stranger's signup comes within the cooldown: held back, mute.
    _form_signup(client, "squat", "owner@dos.example", client_address=ATTACKER)
    _cooldown_over()
    answer = client.post("/signup/resend/", {"email": "owner@dos.example"}, REMOTE_ADDR=OWNER)
    assert answer.status_code == 200
    # The page's work is the task's; done here as a worker would.
    network = limits.network_digest(OWNER)
    assert (
        workflow.request_verification_email(email="owner@dos.example", network=network)
        == "verification email queued"
    )
    mine, theirs = Signup.objects.get(username="owner"), Signup.objects.get(username="squat")
    assert mine.emails.filter(kind="verification").count() == 2
    assert not theirs.emails.exists()


# --- Sources the server can prove -----------------------------------------------------------


@pytest.mark.parametrize("path", ["page", "api"])
def test_a_reminder_source_counts_only_for_a_reminder_that_was_sent(client, api, path):
    signup = signed_up(**signup_data())
    token = tokens.make_token(signup)
    if path == "page":
        answer = client.post(f"/signup/verify/{token}/", {"source": "reminder-99"})
    else:
        answer = api.post("/api/signups/verify", {"token": token, "source": "reminder-42"})
    assert answer.status_code == 200, answer.content
    signup.refresh_from_db()
    assert (signup.status, signup.verified_source) == ("verified", "verification")
    assert signup.events.get(kind="verified").detail == "source: verification"


def test_a_sent_reminders_source_is_credited(client):
    signup = emailed(**signup_data())
    assert send_reminder(signup_id=signup.pk, number=1)
    answer = client.post(f"/signup/verify/{tokens.make_token(signup)}/", {"source": "reminder-1"})
    assert answer.status_code == 200
    signup.refresh_from_db()
    assert signup.verified_source == "reminder-1"


# --- No username squatting by mute signups --------------------------------------------------


def test_a_signup_whose_address_was_sent_nothing_frees_its_username_soon(settings):
    first = signed_up(**signup_data(username="first", email=VICTIM))
    held = signed_up(**signup_data(username="squatter", email=VICTIM))
    held.refresh_from_db()
    assert not held.emails.exists()
    soon = timezone.now() + timedelta(seconds=settings.SIGNUP_UNSENT_EXPIRES_AFTER)
    assert held.expires_at <= soon
    first.refresh_from_db()
    assert first.expires_at > soon  # the one that was emailed keeps its week
    Signup.objects.filter(pk=held.pk).update(expires_at=timezone.now())
    workflow.sweep()
    held.refresh_from_db()
    assert held.status == "expired"
    # The username is free for someone who can receive mail.
    signed_up(**signup_data(username="squatter", email="someone@example.com"))


def test_a_mute_signup_the_resend_page_reaches_gets_its_full_time_back(settings):
    signed_up(**signup_data(username="first", email=VICTIM))
    mine = signed_up(**signup_data(username="mine", email=VICTIM))
    _cooldown_over()
    assert workflow.request_verification_email(email=VICTIM) == "verification email queued"
    mine.refresh_from_db()
    expected = mine.created_at + timedelta(seconds=settings.SIGNUP_EXPIRES_AFTER)
    assert mine.expires_at == expected
    assert mine.next_reminder_at is not None


def test_a_signup_to_an_address_with_an_account_frees_its_username_soon(settings):
    account = signed_up(**signup_data(username="owner", email=VICTIM))
    workflow.verify_signup_by_operator(signup_id=account.pk)
    _cooldown_over()
    again = signed_up(**signup_data(username="again", email=VICTIM))
    again.refresh_from_db()
    assert again.expires_at <= timezone.now() + timedelta(
        seconds=settings.SIGNUP_UNSENT_EXPIRES_AFTER
    )
