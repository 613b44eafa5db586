"""The service's URLs plus the floor views under /bench/."""

from django.urls import include, path

from bench import views
from config.urls import urlpatterns as service_urlpatterns

urlpatterns = [path("bench/", include(views.urlpatterns)), *service_urlpatterns]
