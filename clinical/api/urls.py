"""Patient endpoints arrive with the access policy (they must be policy-filtered)."""

urlpatterns: list = []
