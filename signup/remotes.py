"""The remotes a process calls on another host, the cache and the broker, and what it does
while one does not answer: without it, for a few seconds at a time.

Across hosts a remote can vanish without closing anything (a partition drops the packets):
every call then waits out its socket timeout (config.settings sets them: 1 s for the cache,
2-3 s for the broker), and a web process would wait that long on every request. The service
has an answer for each remote being away: the rate limits and the email outage's marks fail
open (signup.limits, workflow.internal.outage), and a task that was not enqueued after a
commit is enqueued by the sweeper, which finds its row. So after one failed call a process
skips that remote for UNREACHABLE_FOR seconds (each call answers its default at once), then
asks it again.
"""

import logging
import time

from django.conf import settings

logger = logging.getLogger("signup.remotes")

UNREACHABLE_FOR = 5.0


# Until when (time.monotonic()) each remote, by its URL, is skipped: per process, shared by
# its threads.
unreachable: dict[str, float] = {}


class Remote:
    def __init__(self, name: str, url):
        self.name = name
        self.url = url  # () -> the URL it is reached at now, from the settings

    def call(self, function, *args, default=None, **kwargs):
        """function(*args, **kwargs), or `default` if it fails or the remote failed less than
        UNREACHABLE_FOR seconds ago."""
        url = self.url()
        if time.monotonic() < unreachable.get(url, 0.0):
            return default
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            unreachable[url] = time.monotonic() + UNREACHABLE_FOR
            logger.warning(
                "%s did not answer (%s): going on without it for %.0fs",
                self.name,
                exc,
                UNREACHABLE_FOR,
            )
            return default


cache = Remote("the cache", lambda: str(settings.CACHES["default"].get("LOCATION", "")))


def _broker_url() -> str:
    from config.celery import app

    return app.conf.broker_write_url or app.conf.broker_url


broker = Remote("the broker", _broker_url)
