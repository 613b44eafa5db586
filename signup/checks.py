"""What `manage.py check --deploy` adds to Django's own deployment checks."""

from django.conf import settings
from django.core import checks

# Caches that each process keeps to itself, or that keep nothing.
_UNSHARED_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)


@checks.register(checks.Tags.security, deploy=True)
def rate_limits_count_together(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """The rate limits (signup.limits) count in the default cache. Without a Redis broker or
    CACHE_URL, that is the quickstart's cache in each process's memory: behind several web
    processes, each one counts alone and a client gets the limit once per process."""
    if settings.CACHES["default"]["BACKEND"] not in _UNSHARED_CACHES:
        return []
    return [
        checks.Warning(
            "The rate limits count in each process's own memory, so every web process"
            " grants a client its own allowance.",
            hint="Set CACHE_URL to a cache every web process shares (e.g. redis://redis:6379/2)"
            " or use a Redis broker. A single web process may silence signup.W001.",
            id="signup.W001",
        )
    ]
