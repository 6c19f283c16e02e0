from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class CmsConfig(AppConfig):
    default = True
    name = "cms"
    verbose_name = "Content and settings"


class CaretrailAdminConfig(admin_apps.AdminConfig):
    """Django's admin, with Caretrail's site (headline counts on the index)."""

    default = False
    default_site = "cms.admin_site.CaretrailAdminSite"
