"""Safe retries of the API's writes (Idempotency-Key): a repeat gets the first answer and does
nothing more, another body under the key gets 422, concurrent repeats make one signup, keys are
per API key and kept for SIGNUP_IDEMPOTENCY_KEEP."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from signup import tasks
from signup.models import IdempotencyRecord, Signup, SignupEvent
from tests.helpers import API_KEY, signed_up, signup_data

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

KEY = '"8e03978e-40d5-43e8-bc93-6894a57f9324"'


def test_a_repeated_create_gets_the_first_answer_and_makes_nothing_more(api):
    first = api.post("/api/signups", signup_data(), **{"Idempotency-Key": KEY})
    again = api.post("/api/signups", signup_data(), **{"Idempotency-Key": KEY})
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first
    assert Signup.objects.count() == 1
    assert SignupEvent.objects.filter(kind="submitted").count() == 1
    # Without the key, the same request is a new one: its username is taken.
    assert api.post("/api/signups", signup_data()).status_code == 409


def test_the_same_key_with_another_body_gets_422(api):
    assert api.post("/api/signups", signup_data(), **{"Idempotency-Key": KEY}).status_code == 201
    other = api.post("/api/signups", signup_data(username="bob"), **{"Idempotency-Key": KEY})
    assert other.status_code == 422
    assert other["Content-Type"] == "application/problem+json"
    assert not Signup.objects.filter(username="bob").exists()
    # The same key on another path is another request too.
    assert api.post("/api/signups/alice/cancel", {}, **{"Idempotency-Key": KEY}).status_code == 422


def test_an_error_answer_is_replayed_as_it_was(api):
    api.post("/api/signups", signup_data())
    taken = api.post("/api/signups", signup_data(), **{"Idempotency-Key": KEY})
    assert taken.status_code == 409
    Signup.objects.update(status="cancelled")  # the username is free now...
    again = api.post("/api/signups", signup_data(), **{"Idempotency-Key": KEY})
    assert (again.status_code, again.content) == (409, taken.content)  # ...the key says 409
    assert Signup.objects.count() == 1


def test_an_action_repeated_with_its_key_does_not_act_twice(api, broker):
    signup = signed_up(**signup_data())
    headers = {"Idempotency-Key": '"rush-1"'}
    first = api.post("/api/signups/alice/remind-now", {}, **headers)
    again = api.post("/api/signups/alice/remind-now", {}, **headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["result"] == "rushed" and again.content == first.content
    assert SignupEvent.objects.filter(signup=signup, kind="reminder_rushed").count() == 1
    # Without the key the repeat is a new request, answered as it is now.
    assert api.post("/api/signups/alice/remind-now", {}).json()["result"] == "already_due"


def test_a_quoted_key_and_its_bare_form_are_one_key(api):
    assert (
        api.post("/api/signups", signup_data(), **{"Idempotency-Key": '"k-1"'}).status_code == 201
    )
    again = api.post("/api/signups", signup_data(), **{"Idempotency-Key": "k-1"})
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"


def test_a_not_now_answer_is_not_kept_so_the_retry_is_carried_out(api, settings, broker):
    """A 429 (the address's budget holds the new email back) says "not now", not what
    happened: the same key after the wait sends the email."""
    signed_up(**signup_data())  # its verification email spent the address's cooldown
    headers = {"Idempotency-Key": '"new-email-1"'}
    held = api.post("/api/signups/alice/new-email", {}, **headers)
    assert held.status_code == 429 and held["Retry-After"]
    settings.SIGNUP_ADDRESS_COOLDOWN = 0  # the wait is over
    sent = api.post("/api/signups/alice/new-email", {}, **headers)
    assert sent.status_code == 202 and "Idempotent-Replayed" not in sent
    again = api.post("/api/signups/alice/new-email", {}, **headers)
    assert again.content == sent.content and again["Idempotent-Replayed"] == "true"
    assert Signup.objects.get().emails.filter(kind="verification").count() == 2


def test_keys_belong_to_their_api_key(api, settings):
    assert api.post("/api/signups", signup_data(), **{"Idempotency-Key": KEY}).status_code == 201
    settings.SIGNUP_API_KEY = API_KEY + "-rotated"
    rotated = api.post(
        "/api/signups",
        signup_data(),
        **{"Idempotency-Key": KEY, "Authorization": f"Bearer {API_KEY}-rotated"},
    )
    assert rotated.status_code == 409  # a new request under another key: the name is taken
    assert IdempotencyRecord.objects.count() == 2


@pytest.mark.parametrize(
    "key", ['""', "", "a" * 300, "caf\u00e9", '"unbalanced', "two words", "tab\there"]
)
def test_a_malformed_key_gets_400_and_nothing_is_made(api, key):
    answer = api.post("/api/signups", signup_data(), **{"Idempotency-Key": key})
    assert answer.status_code == 400, answer.content
    assert not Signup.objects.exists()


def test_keys_are_forgotten_after_their_time(api, settings):
    assert api.post("/api/signups", signup_data(), **{"Idempotency-Key": KEY}).status_code == 201
    assert tasks.forget_personal_data()["idempotency_records_forgotten"] == 0
    IdempotencyRecord.objects.update(
        created_at=timezone.now() - timedelta(seconds=settings.SIGNUP_IDEMPOTENCY_KEEP + 1)
    )
    assert tasks.forget_personal_data()["idempotency_records_forgotten"] == 1
    # Forgotten: the key is a new request now, and the username is taken.
    assert api.post("/api/signups", signup_data(), **{"Idempotency-Key": KEY}).status_code == 409


@pytest.mark.django_db(transaction=True)
def test_concurrent_repeats_of_one_key_make_one_signup(live_server, broker):
    """Twelve clients send the same create with the same key at once, over real HTTP: one
    signup; every answer is its 201 (replayed) or a 409 saying the first is under way."""

    def create(_n):
        return requests.post(
            f"{live_server.url}/api/signups",
            json=signup_data(),
            headers={"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": KEY},
            timeout=30,
        )

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(create, range(12)))
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {201, 409}, statuses
    created = [a for a in answers if a.status_code == 201]
    assert len({a.content for a in created}) == 1
    under_way = [a for a in answers if a.status_code == 409]
    assert all("under way" in a.json()["detail"] and a.headers["Retry-After"] for a in under_way)
    assert Signup.objects.count() == 1
    # Once the first has answered, every repeat gets its 201.
    assert create(0).status_code == 201
