"""WSGI entry point of a host that runs workers and no web: GET /metrics, with what this
host's processes measured (`gunicorn config.metrics_wsgi -c config/gunicorn.py --bind
<private address>:9808 --workers 1`).

Each host adds up its own processes' counters in its own PROMETHEUS_MULTIPROC_DIR, so a web
host's /metrics cannot see what the workers of another host sent: Prometheus scrapes each
worker host here, with the same token and limits as the web's /metrics. Every other path
answers 404: the pages, the API and the admin are not served from a worker host.
"""

import os

import django
from django.core.handlers.wsgi import WSGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)


class HostMetrics(WSGIHandler):
    def get_response(self, request):
        # Django resolves a request's own urlconf when one is set (as middleware may do).
        request.urlconf = "config.metrics_urls"
        return super().get_response(request)


application = HostMetrics()
