"""The JSON API: auth, the answers it gives, and bad input that must change nothing."""

import json

import pytest
import requests

from signup import tokens, workflow
from signup.models import Signup
from tests.helpers import API_KEY, emailed, send_reminder, signed_up, signup_data

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


# --- Auth ---------------------------------------------------------------------------------


def test_bearer_scheme_is_case_insensitive(client):
    response = client.get("/api/signups/nobody", headers={"Authorization": f"bearer {API_KEY}"})
    assert response.status_code == 404


# --- Create and read ----------------------------------------------------------------------


def test_create_answers_201_with_the_signup(api):
    response = api.post("/api/signups", signup_data())
    assert response.status_code == 201
    body = response.json()
    assert body["username"] == "alice"
    assert body["status"] == "pending"
    assert body["reminders_sent"] == 0
    assert body["verified_at"] is None
    assert Signup.objects.get().email == "alice@example.com"


def test_duplicate_username_gets_409_in_any_case(api):
    assert api.post("/api/signups", signup_data()).status_code == 201
    response = api.post("/api/signups", signup_data(username="ALICE", email="b@example.com"))
    assert response.status_code == 409
    assert "already taken" in response.json()["message"]
    assert Signup.objects.count() == 1


def test_read_answers_the_status_and_404(api):
    api.post("/api/signups", signup_data())
    body = api.get("/api/signups/Alice").json()
    assert set(body) == {
        "username",
        "status",
        "reminders_sent",
        "verified_source",
        "created_at",
        "verified_at",
        "expires_at",
        "language",
        "time_zone",
        "next_step",
        "emails",
        "webhooks",
    }
    assert body["status"] == "pending"
    missing = api.get("/api/signups/nobody")
    assert missing.status_code == 404
    assert missing.json()["message"]
    assert api.get("/api/signups/" + "x" * 500).status_code == 404


def test_read_shows_the_signup_holding_the_username(api):
    old = signed_up(**signup_data())
    workflow.cancel_signup(signup_id=old.pk)
    api.post("/api/signups", signup_data())
    assert api.get("/api/signups/alice").json()["status"] == "pending"


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_with_its_charset_or_in_capitals_is_json(client, content_type):
    response = client.post(
        "/api/signups",
        json.dumps(signup_data()),
        content_type=content_type,
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 201


# --- Verify -------------------------------------------------------------------------------


def test_verify_by_token_answers_done_then_already_verified(api):
    signup = emailed(**signup_data())
    for number in (1, 2):  # the token came from reminder 2's link, which was sent
        assert send_reminder(signup_id=signup.pk, number=number)
    token = tokens.make_token(signup)
    first = api.post("/api/signups/verify", {"token": token, "source": "reminder-2"})
    second = api.post("/api/signups/verify", {"token": token, "source": "verification"})
    assert first.status_code == second.status_code == 200
    assert first.json()["result"] == "done"
    assert second.json()["result"] == "already verified"
    signup.refresh_from_db()
    assert signup.verified_source == "reminder-2"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"token": "garbage"}, 400),
        ({"token": ""}, 400),
        ({"token": 5}, 400),
        ({}, 400),
        ({"token": "x" * 5000}, 400),
        ({"token": "{token}", "source": "newsletter"}, 400),
        ({"token": "{token}", "source": 7}, 400),
        ({"token": "{token}x"}, 400),
    ],
)
def test_verify_with_a_bad_token_gets_4xx_and_changes_nothing(api, body, status):
    signup = signed_up(**signup_data())
    token = tokens.make_token(signup)
    body = {k: v.replace("{token}", token) if isinstance(v, str) else v for k, v in body.items()}
    response = api.post("/api/signups/verify", body)
    assert response.status_code == status
    assert response.json()["message"]
    signup.refresh_from_db()
    assert signup.status == "pending"


def test_verify_cannot_claim_the_operator_source(api):
    signup = signed_up(**signup_data())
    response = api.post(
        "/api/signups/verify", {"token": tokens.make_token(signup), "source": "operator"}
    )
    assert response.status_code == 400
    assert "source" in response.json()["errors"]
    signup.refresh_from_db()
    assert (signup.status, signup.verified_source) == ("pending", "")


def test_verify_credits_the_api_unless_told_which_email(api):
    signup = signed_up(**signup_data())
    response = api.post("/api/signups/verify", {"token": tokens.make_token(signup)})
    assert response.status_code == 200
    signup.refresh_from_db()
    assert signup.verified_source == "api"


def test_verify_after_expiry_gets_410(api, settings):
    signup = signed_up(**signup_data())
    Signup.objects.filter(pk=signup.pk).update(expires_at=signup.created_at)
    response = api.post("/api/signups/verify", {"token": tokens.make_token(signup)})
    assert response.status_code == 410
    signup.refresh_from_db()
    assert signup.status == "expired"


def test_verify_a_cancelled_signup_gets_410(api):
    signup = signed_up(**signup_data())
    workflow.cancel_signup(signup_id=signup.pk)
    response = api.post("/api/signups/verify", {"token": tokens.make_token(signup)})
    assert response.status_code == 410
    assert response.json()["signup_status"] == "cancelled"


# --- Over real HTTP -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_api_over_real_http(live_server, broker):
    url = f"{live_server.url}/api/signups"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    created = requests.post(url, json=signup_data(), headers=auth, timeout=10)
    assert created.status_code == 201
    assert requests.post(url, json=signup_data(), headers=auth, timeout=10).status_code == 409
    bad = requests.post(
        url, data=b"\x00\x01", headers={**auth, "Content-Type": "application/json"}, timeout=10
    )
    assert bad.status_code == 400
    not_json = requests.post(url, data=b"username=eve", headers=auth, timeout=10)
    assert not_json.status_code == 415
    assert requests.get(f"{url}/alice", timeout=10).status_code == 401
    assert requests.get(f"{url}/alice", headers=auth, timeout=10).json()["status"] == "pending"
