"""The settings a deployment starts with, read by `manage.py` in a fresh process."""

import ast
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from signup import checks, tokens
from signup.models import Signup

ROOT = Path(__file__).resolve().parents[2]
KEY = secrets.token_urlsafe(50)
MAKE_A_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(50))"'


def manage(tmp_path, *args: str, **environment: str | None) -> subprocess.CompletedProcess:
    """Run manage.py in production mode with these variables changed (None: unset).

    The variables set, even empty, win over a developer's .env file.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "SIGNUP_VAR_DIR": str(tmp_path / "var"),
        "DEBUG": "false",
        "SECRET_KEY": KEY,
        "SECRET_KEY_FALLBACKS": "",
    }
    env.update(environment)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={name: value for name, value in env.items() if value is not None},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("change-me-compose-only-secret-key", id="old-compose-default"),
        pytest.param("django-insecure-quickstart-key-do-not-use-in-production", id="quickstart"),
        pytest.param("django-insecure-" + secrets.token_urlsafe(50), id="django-insecure"),
        pytest.param("test-secret-key-not-for-production", id="old-test-key"),
        pytest.param("my-app-Secret-Key-" + secrets.token_urlsafe(50), id="secret-key-words"),
        pytest.param("CHANGEME" * 7, id="changeme"),
        pytest.param(secrets.token_urlsafe(36), id="random-48-characters"),
        pytest.param("ab" * 40, id="two-characters"),
    ],
)
def test_with_debug_off_a_weak_key_is_refused_with_how_to_make_one(tmp_path, key):
    result = manage(tmp_path, "check", SECRET_KEY=key)
    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY" in result.stderr
    assert MAKE_A_KEY in result.stderr


def test_with_debug_off_a_weak_fallback_key_is_refused(tmp_path):
    result = manage(tmp_path, "check", SECRET_KEY_FALLBACKS=f"{secrets.token_urlsafe(50)},changeme")
    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY_FALLBACKS[1]" in result.stderr


def test_debug_is_off_unless_turned_on(tmp_path):
    unset = manage(tmp_path, "check", DEBUG=None, SECRET_KEY=None)
    assert "SECRET_KEY must be set when DEBUG is off" in unset.stderr
    # `make run` turns DEBUG on, which also supplies the quickstart's development key.
    show = [
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings; print(settings.DEBUG)",
    ]
    quickstart = manage(tmp_path, *show, DEBUG="true", SECRET_KEY=None)
    assert quickstart.stdout.strip() == "True", quickstart.stderr


def test_a_link_signed_with_the_previous_key_verifies_while_it_is_a_fallback(settings, tmp_path):
    previous, current = secrets.token_urlsafe(50), secrets.token_urlsafe(50)
    settings.SECRET_KEY = previous
    public_id = uuid.uuid4()
    token = tokens.make_token(Signup(public_id=public_id))
    read = [
        "shell",
        "--no-imports",
        "-c",
        f"from signup import tokens; print(tokens.read_token({token!r}).public_id.hex)",
    ]

    rotated = manage(tmp_path, *read, SECRET_KEY=current, SECRET_KEY_FALLBACKS=previous)
    assert rotated.stdout.strip() == public_id.hex, rotated.stderr
    dropped = manage(tmp_path, *read, SECRET_KEY=current)
    assert "InvalidToken" in dropped.stderr


PRODUCTION = {
    "SITE_URL": "https://accounts.example.com",
    "ALLOWED_HOSTS": "accounts.example.com",
    "CACHE_URL": "redis://127.0.0.1:6379/2",  # only named: the check connects to nothing
}


def test_production_settings_pass_the_deploy_check(tmp_path):
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        # A RabbitMQ broker and no CACHE_URL: the memory fallback ("" is unset, and wins over
        # a developer's .env).
        pytest.param("", "signup.W001", id="each-process-counts-alone"),
        pytest.param("dummycache://", "signup.E001", id="a-cache-that-keeps-nothing"),
    ],
)
def test_the_deploy_check_fails_when_the_rate_limits_would_not_hold(tmp_path, cache, message):
    environment = {**PRODUCTION, "CACHE_URL": cache, "CELERY_BROKER_URL": "amqp://rabbit//"}
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **environment)
    assert result.returncode != 0
    assert message in result.stderr and "Set CACHE_URL" in result.stderr


def test_a_redis_broker_is_where_the_rate_limits_count_by_default(tmp_path):
    environment = {**PRODUCTION, "CACHE_URL": None, "CELERY_BROKER_URL": "redis://redis:6379/0"}
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **environment)
    assert result.returncode == 0, result.stdout + result.stderr


def _https_settings(tmp_path, **environment: str) -> dict:
    names = [
        "SECURE_SSL_REDIRECT",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_HSTS_PRELOAD",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_PROXY_SSL_HEADER",
    ]
    show = f"from django.conf import settings; print({{n: getattr(settings, n) for n in {names}}})"
    result = manage(tmp_path, "shell", "--no-imports", "-c", show, **environment)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout)


def test_an_https_site_gets_the_redirect_a_year_of_hsts_and_secure_cookies(tmp_path):
    assert _https_settings(tmp_path, **PRODUCTION) == {
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": False,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_PROXY_SSL_HEADER": None,
    }


def test_the_https_settings_follow_the_environment(tmp_path):
    overridden = {
        "SECURE_SSL_REDIRECT": "false",
        "SECURE_HSTS_SECONDS": "600",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
        "SECURE_HSTS_PRELOAD": "true",
        "SECURE_PROXY_SSL_HEADER": "true",
    }
    assert _https_settings(tmp_path, **PRODUCTION, **overridden) == {
        "SECURE_SSL_REDIRECT": False,
        "SECURE_HSTS_SECONDS": 600,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
    }


def test_a_plain_http_site_gets_none_of_the_https_settings(tmp_path):
    plain = _https_settings(tmp_path, SITE_URL="http://localhost:8000")
    assert not any(plain.values()), plain


GOOD_SECRET = secrets.token_urlsafe(32)


@pytest.mark.parametrize(
    ("name", "weak"),
    [
        ("SIGNUP_API_KEY", "abc"),
        ("SIGNUP_API_KEY", "x" * 40),
        ("SIGNUP_METRICS_TOKEN", "x"),
        ("SIGNUP_METRICS_TOKEN", "0123456789012345678901234567890"),  # 31 characters
        ("SIGNUP_WEBHOOK_SECRET", "whsec_" + "A" * 40),
        ("ANYMAIL_WEBHOOK_SECRET", "a:b"),
        ("ANYMAIL_WEBHOOK_SECRET", "hooks:" + "z" * 40),
    ],
)
def test_the_deploy_check_refuses_a_guessable_secret(settings, name, weak):
    if name.startswith("ANYMAIL_"):
        settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": weak}
    else:
        setattr(settings, name, weak)
    (error,) = checks.secrets_are_secret(None)
    assert error.id == "signup.E002" and name in error.msg
    assert "secrets.token_urlsafe(32)" in error.hint
    assert weak not in error.msg + error.hint  # it names the setting, never the value


def test_the_deploy_check_names_a_short_api_key_in_a_real_run(tmp_path):
    result = manage(tmp_path, "check", "--deploy", **PRODUCTION, SIGNUP_API_KEY="abc")
    assert result.returncode != 0
    assert "signup.E002" in result.stderr and "SIGNUP_API_KEY" in result.stderr


def test_the_deploy_check_accepts_random_secrets(tmp_path):
    secrets_set = {
        "SIGNUP_API_KEY": GOOD_SECRET,
        "SIGNUP_METRICS_TOKEN": secrets.token_urlsafe(32),
        "ANYMAIL_WEBHOOK_SECRET": f"hooks:{secrets.token_urlsafe(32)}",
    }
    result = manage(
        tmp_path, "check", "--deploy", "--fail-level", "WARNING", **PRODUCTION, **secrets_set
    )
    assert result.returncode == 0, result.stdout + result.stderr
