from django.urls import path

from accounts.api.views import MeView, TokenDetailView, TokenListView, TokenObtainView

urlpatterns = [
    path("me/", MeView.as_view(), name="me"),
    path("auth/token/", TokenObtainView.as_view(), name="auth-token"),
    path("auth/tokens/", TokenListView.as_view(), name="auth-tokens"),
    path("auth/tokens/<uuid:token_id>/", TokenDetailView.as_view(), name="auth-token-detail"),
]
