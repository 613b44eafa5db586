"""What the pages tell browsers: the content security policy, caching and HTTPS."""

import pytest

from signup import tokens
from tests.helpers import signed_up, signup_data, written_lines

pytestmark = pytest.mark.django_db

POLICY = {
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
}


def _verify_path(signup) -> str:
    return f"/signup/verify/{tokens.make_token(signup)}/"


def test_pages_carry_a_strict_content_security_policy(client):
    signup = signed_up(**signup_data())
    for path in ("/signup/", "/signup/resend/", _verify_path(signup), "/admin/login/"):
        response = client.get(path)
        assert response.status_code == 200, path
        directives = {part.strip() for part in response["Content-Security-Policy"].split(";")}
        assert directives == POLICY, path


def test_pages_have_no_inline_style_or_script(client):
    signup = signed_up(**signup_data())
    for path in ("/signup/", _verify_path(signup)):
        html = client.get(path).content.decode()
        assert "<style" not in html
        assert "<script" not in html
        assert " style=" not in html
        assert 'rel="stylesheet" href="/static/signup/site.css"' in html


def test_the_verify_page_is_never_cached(client):
    signup = signed_up(**signup_data())
    path = _verify_path(signup)
    for response in (
        client.get(f"{path}?source=verification"),
        client.post(path, {"source": "verification"}),
        client.get("/signup/verify/garbage/"),
    ):
        assert "no-store" in response["Cache-Control"]


def test_forwarded_proto_is_not_trusted_unless_configured(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    # Anyone can send the header: without SECURE_PROXY_SSL_HEADER it changes nothing.
    claimed = client.get("/signup/", headers={"X-Forwarded-Proto": "https"})
    assert claimed.status_code == 301
    assert claimed["Location"] == "https://testserver/signup/"

    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxied = client.get("/signup/", headers={"X-Forwarded-Proto": "https"})
    assert proxied.status_code == 200
    assert proxied["Strict-Transport-Security"] == "max-age=3600"


@pytest.mark.parametrize(
    "cookie",
    [
        "\x00" * 40 + "x",
        "a" * 100_000,
        "abc",
        "../../etc/passwd",
        "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ",
    ],
)
def test_a_session_cookie_django_never_made_is_no_session(client, cookie):
    """The audit's 500: a NUL byte in the admin's session cookie reached PostgreSQL, which
    can't compare it. Any key Django would not make is treated as an unknown one."""
    client.cookies["sessionid"] = cookie
    with written_lines() as lines:
        answer = client.get("/admin/login/")
    assert answer.status_code == 200
    assert not any("Traceback" in line for line in lines)
    assert client.get("/admin/").status_code == 302  # to the login page, as with no cookie
