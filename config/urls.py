from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config.health import healthz

api_v1 = [
    path("", include("accounts.api.urls")),
    path("", include("clinical.api.urls")),
]

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False), name="home"),
    path("admin/", admin.site.urls),
    path("api/v1/", include((api_v1, "api"), namespace="v1")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", healthz, name="healthz"),
]

# Login hardening (accounts): MFA and password-reset pages. The second name lets
# the admin's login page show its "Forgotten your login credentials?" link.
from accounts.views import PasswordResetView  # noqa: E402

urlpatterns += [
    path("accounts/", include("accounts.urls")),
    path("accounts/password-reset/", PasswordResetView.as_view(), name="admin_password_reset"),
]
