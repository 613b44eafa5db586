from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from signup import api, funnel, health, metrics, provider_events

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="signup:form", permanent=False)),
    path("signup/", include("signup.urls")),
    # The language switcher's POST (Django's set_language: a cookie, then back).
    path("i18n/", include("django.conf.urls.i18n")),
    path("api/", api.api.urls),
    # The funnel page, /admin/signup/funnel/ (staff with the view-signup permission).
    *funnel.urlpatterns,
    path("admin/", admin.site.urls),
    # Liveness and readiness probes (docs/OPERATIONS.md#health).
    path("", include(health.urlpatterns)),
    # Prometheus, with a bearer token (docs/OPERATIONS.md#metrics).
    path("", include(metrics.urlpatterns)),
    # Email-provider tracking webhooks, e.g. /anymail/postmark/tracking/ (basic auth).
    path("anymail/", include(provider_events.urlpatterns)),
]
