"""gunicorn's settings for the web process: `gunicorn config.wsgi -c config/gunicorn.py`.

Its logs name the emailed link as /signup/verify/<token>/: the token in that path (and in
the Referer of the confirm button's post) verifies a signup, and access logs are kept and
shipped far more widely than the database. Options on the command line apply on top, e.g.
`--access-logfile -` to turn the access log on.
"""

import os

from django.conf import settings
from gunicorn.glogging import Logger

from signup.logs import JsonFormatter
from signup.redaction import redacting_filter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


class RedactingLogger(Logger):
    """gunicorn's logger with verification tokens and email addresses masked in the access
    log and in the error log (which names the request when a worker fails one), both in
    the settings' LOG_FORMAT."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.access_log, self.error_log):
            log.addFilter(redacting_filter)
            if settings.LOG_FORMAT == "json":
                for handler in log.handlers:
                    handler.setFormatter(JsonFormatter())


logger_class = RedactingLogger

# The application is imported once, in the master, before the workers fork: they start at
# once and share its memory (copy-on-write) instead of each importing Django and the project.
# Nothing opens a connection at import (Django's, the broker's and the metrics' files are
# made on first use in each worker).
preload_app = True
