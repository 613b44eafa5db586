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
