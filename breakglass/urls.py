from django.contrib import admin
from django.urls import include, path

from . import probe_views

urlpatterns = [
    path("healthz", probe_views.healthz, name="healthz"),
    path("readyz", probe_views.readyz, name="readyz"),
    path("metrics", probe_views.metrics_view, name="metrics"),
    path("api/v1/", include("breakglass.api.urls")),
    path("admin/", admin.site.urls),
    path("", include("breakglass.web_urls")),
]
