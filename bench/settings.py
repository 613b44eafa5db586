"""Settings of the benchmark stack: the service's own settings plus the bench app and its URLs.

Used as DJANGO_SETTINGS_MODULE=bench.settings by the processes `python -m bench.run` starts,
never by the service itself.
"""

from config.settings import *  # noqa: F403
from config.settings import CELERY_TASK_ROUTES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench"]
ROOT_URLCONF = "bench.urls"

# The submit benchmark measures what the service can take, not the per-key limit (100/s by
# default): the limit is still counted on every call, only set out of reach.
SIGNUP_RATE_LIMIT_API = "10000000/m"

# The no-op floor runs where emails are sent (the email queue and its worker), so that the
# pipeline and the timer are compared with bare tasks through the same worker.
CELERY_TASK_ROUTES = {**CELERY_TASK_ROUTES, "bench.tasks.noop": {"queue": "email"}}
