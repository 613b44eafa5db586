"""What `manage.py check --deploy` adds to Django's own deployment checks."""

from django.conf import settings
from django.core import checks

_LOCAL_MEMORY = "django.core.cache.backends.locmem.LocMemCache"
_DUMMY = "django.core.cache.backends.dummy.DummyCache"
_HINT = (
    "Set CACHE_URL to a cache every web process shares (e.g. redis://redis:6379/2), or use a"
    " Redis broker: the limits count in its Redis by default."
)


@checks.register(checks.Tags.security, deploy=True)
def rate_limits_count_together(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """The rate limits (signup.limits) count in the default cache. Without a Redis broker or
    CACHE_URL, that is the quickstart's cache in each process's memory: behind several web
    processes, each one counts alone and a client gets the limit once per process. A cache
    that keeps nothing counts nothing at all."""
    backend = settings.CACHES["default"]["BACKEND"]
    if backend == _DUMMY:
        return [
            checks.Error(
                "The rate limits are off: the cache (CACHE_URL) keeps nothing, so no count"
                " ever passes 1.",
                hint=_HINT,
                id="signup.E001",
            )
        ]
    if backend == _LOCAL_MEMORY:
        return [
            checks.Warning(
                "The rate limits count in each process's own memory, so every web process"
                " grants a client its own allowance (with a single web process, they hold).",
                hint=_HINT,
                id="signup.W001",
            )
        ]
    return []


# The secrets other systems present to this one, and how to make a good one.
SECRET_MIN_LENGTH = 32
_SECRETS = ("SIGNUP_API_KEY", "SIGNUP_METRICS_TOKEN", "SIGNUP_WEBHOOK_SECRET")
_MAKE_A_SECRET = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


@checks.register(checks.Tags.security, deploy=True)
def secrets_are_secret(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """The API key, the metrics token, the webhook secrets: each, when set, is what stands
    between the internet and an endpoint, so each must be long and random enough that nobody
    guesses it (the guesses are rate limited too, but a short one falls anyway)."""
    configured = [(name, getattr(settings, name, "")) for name in _SECRETS]
    anymail_secret = settings.ANYMAIL.get("WEBHOOK_SECRET") or []
    for secret in [anymail_secret] if isinstance(anymail_secret, str) else anymail_secret:
        configured.append(("ANYMAIL_WEBHOOK_SECRET", secret))
    errors = []
    for name, secret in configured:
        problem = _weakness(name, secret)
        if problem:
            errors.append(
                checks.Error(
                    f"{name} {problem}: anyone could guess it.",
                    hint=f"Make one with: {_MAKE_A_SECRET}"
                    + (" (as user:password)" if name == "ANYMAIL_WEBHOOK_SECRET" else ""),
                    id="signup.E002",
                )
            )
    return errors


def _weakness(name: str, secret: str) -> str:
    if not secret:
        return ""
    random_part = secret.removeprefix("whsec_") if name == "SIGNUP_WEBHOOK_SECRET" else secret
    if name == "ANYMAIL_WEBHOOK_SECRET":
        random_part = secret.partition(":")[2]  # user:password; the password is the secret
    if len(secret) < SECRET_MIN_LENGTH:
        return f"is shorter than {SECRET_MIN_LENGTH} characters"
    if len(set(random_part)) <= 1:
        return "is one character repeated"
    return ""


@checks.register()
def settings_under_old_names(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """A setting renamed by the last release still works under its old name, for a release."""
    return [
        checks.Warning(
            f"{old} is now called {new}; the old name goes in the next release.",
            hint=f"Set {new} instead of {old} (where both are set, {new} wins).",
            id="signup.W002",
        )
        for old, new in settings.SIGNUP_SETTINGS_UNDER_OLD_NAMES.items()
    ]
