"""The URLs of config.metrics_wsgi: GET /metrics, this host's processes' figures only."""

from signup.metrics import host_urlpatterns as urlpatterns

__all__ = ["urlpatterns"]
