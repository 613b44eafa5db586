"""The JSON API's answers to bad requests, checked without any service: the database is out
of reach here, so a request that got as far as changing something would fail the test."""

import json

import pytest

from tests.helpers import API_KEY, signup_data

# --- Auth ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Basic dXNlcjpwYXNz", 401),
        ("Bearer wrong-key", 403),
        (f"Bearer {API_KEY}x", 403),
        (f"Token {API_KEY}", 401),
    ],
)
def test_api_refuses_missing_or_wrong_keys(client, header, status):
    headers = {"Authorization": header} if header is not None else {}
    for response in (
        client.post(
            "/api/signups", signup_data(), content_type="application/json", headers=headers
        ),
        client.get("/api/signups/alice", headers=headers),
        client.post(
            "/api/signups/verify", {"token": "x"}, content_type="application/json", headers=headers
        ),
    ):
        assert response.status_code == status
        assert "message" in response.json()
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_api_is_refused_when_no_key_is_configured(api, settings):
    settings.SIGNUP_API_KEY = ""
    response = api.post("/api/signups", signup_data())
    assert response.status_code == 403
    assert "SIGNUP_API_KEY" in response.json()["message"]


# --- Malformed requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (signup_data(username=""), "username"),
        (signup_data(username="ab"), "username"),
        (signup_data(username="a" * 31), "username"),
        (signup_data(username="al ice"), "username"),
        (signup_data(username="alice\x00"), "username"),
        (signup_data(username="<script>"), "username"),
        (signup_data(username="verify"), "username"),
        (signup_data(username=123), "username"),
        (signup_data(username=None), "username"),
        (signup_data(username=["alice"]), "username"),
        (signup_data(email="not-an-email"), "email"),
        (signup_data(email="alice@example.com\r\nBcc: victim@example.com"), "email"),
        (signup_data(email="alice@example.com\nBcc:x@example.com"), "email"),
        (signup_data(email="a" * 250 + "@example.com"), "email"),
        (signup_data(email={"a": 1}), "email"),
        (signup_data(first_name=""), "first_name"),
        (signup_data(first_name="A" * 101), "first_name"),
        (signup_data(first_name="Al\x07ice"), "first_name"),
        (signup_data(first_name="Alice\u202e"), "first_name"),
        (signup_data(first_name="<b>Alice</b>"), "first_name"),
        (signup_data(first_name="Al\ud800ice"), "first_name"),
        (signup_data(email="alice\udfff@example.com"), "email"),
        (signup_data(username="ali\ud83dce"), "username"),
        (signup_data(last_name=True), "last_name"),
        (signup_data(last_name="L" * 101), "last_name"),
        ({**signup_data(), "is_admin": True}, "is_admin"),
        ({"email": "a@example.com", "first_name": "A"}, "username"),
    ],
)
def test_malformed_fields_get_400_with_the_field_named(api, body, field):
    response = api.post("/api/signups", body)
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"alice"',
        b"null",
        b"{",
        b"\xff\xfe{}",
        b"1e999999",
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
    ],
)
@pytest.mark.parametrize("path", ["/api/signups", "/api/signups/verify"])
def test_bodies_that_are_not_a_json_object_get_400(client, raw, path):
    response = client.post(
        path,
        raw,
        content_type="application/json",
        headers={"Authorization": f"Bearer {API_KEY}"},
        # The test client leaves the Content-Type out when the body is empty; a real one doesn't.
        CONTENT_TYPE="application/json",
    )
    assert response.status_code == 400
    assert response.json()["message"]


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonp",
        "application/json; charset=latin-1",
        "",
    ],
)
@pytest.mark.parametrize("path", ["/api/signups", "/api/signups/verify"])
def test_bodies_not_sent_as_json_get_415(client, content_type, path):
    response = client.post(
        path,
        json.dumps(signup_data()),
        content_type=content_type,
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["message"]


def test_oversize_body_gets_413(client):
    body = json.dumps(signup_data(first_name="A" * 20000))
    response = client.post(
        "/api/signups",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 413


def test_wrong_method_gets_405(api, client):
    response = client.delete("/api/signups", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 405
    assert response["Allow"] == "POST"


@pytest.mark.parametrize(
    "body",
    [
        {"token": "garbage"},
        {"token": ""},
        {"token": 5},
        {},
        {"token": "x" * 5000},
        {"token": "garbage", "source": "newsletter"},
        {"token": "garbage", "source": 7},
        {"token": "garbage", "extra": "field"},
    ],
)
def test_verify_with_a_malformed_token_or_source_gets_400(api, body):
    response = api.post("/api/signups/verify", body)
    assert response.status_code == 400
    assert response.json()["message"]


@pytest.mark.parametrize(
    "path",
    ["/api/signups/ali%00ce", "/api/signups/%00", "/api/signups/al%ED%A0%80", "/api/signups/%20"],
)
def test_read_answers_404_for_names_no_signup_can_have(api, path):
    response = api.get(path)
    assert response.status_code == 404, response.content
    assert response.json()["message"]
