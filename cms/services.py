"""Writes for cms: making Django's groups match the role matrix, assigning roles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db import transaction

from accounts import services as account_services
from cms.roles import ROLE_BY_NAME, ROLES


@dataclass
class Drift:
    role: str
    missing_group: bool = False
    missing: set[str] = field(default_factory=set)
    extra: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return self.missing_group or bool(self.missing or self.extra or self.unknown)

    def lines(self) -> list[str]:
        out = [f"{self.role}: group does not exist"] if self.missing_group else []
        out += [f"{self.role}: missing {p}" for p in sorted(self.missing)]
        out += [f"{self.role}: not in the matrix {p}" for p in sorted(self.extra)]
        out += [f"{self.role}: the matrix names an unknown permission {p}" for p in sorted(self.unknown)]
        return out


def roles_sync(*, apply: bool = True, group_model: Any = Group, permission_model: Any = Permission) -> list[Drift]:
    """Compare the groups with the matrix; with ``apply`` make them equal. Idempotent.

    The model classes are parameters so that a data migration can pass its
    historical ones.
    """
    known = {
        f"{app_label}.{codename}": pk
        for pk, app_label, codename in permission_model.objects.values_list("pk", "content_type__app_label", "codename")
    }
    drifts = []
    with transaction.atomic():
        for role in ROLES:
            wanted = role.permissions()
            drift = Drift(role.name, unknown={p for p in wanted if p not in known})
            group = group_model.objects.filter(name=role.name).first()
            if group is None:
                drift.missing_group = True
                current: set[str] = set()
            else:
                current = {
                    f"{app_label}.{codename}"
                    for app_label, codename in group.permissions.values_list("content_type__app_label", "codename")
                }
            drift.missing = (wanted - current) - drift.unknown
            drift.extra = current - wanted
            if drift:
                drifts.append(drift)
            if apply and (drift.missing_group or drift.missing or drift.extra):
                group = group or group_model.objects.create(name=role.name)
                group.permissions.set([known[p] for p in wanted if p in known])
    return drifts


def roles_sync_migration(apps: Any, schema_editor: Any) -> None:
    """``RunPython`` body: create the permissions migrate would add at its end, then sync the groups.

    Each migration that adds models with permissions the matrix names runs it
    again, so that ``migrate`` alone leaves no drift.
    """
    from django.apps import apps as global_apps
    from django.contrib.auth.management import create_permissions

    for app_config in global_apps.get_app_configs():
        create_permissions(app_config, verbosity=0, apps=apps)
    roles_sync(group_model=apps.get_model("auth", "Group"), permission_model=apps.get_model("auth", "Permission"))


@transaction.atomic
def user_set_roles(*, user: Any, roles: list[str]) -> None:
    """Give ``user`` exactly these roles. Losing a role ends their sessions and tokens at once."""
    unknown = [name for name in roles if name not in ROLE_BY_NAME]
    if unknown:
        from django.core.exceptions import ValidationError

        raise ValidationError({"roles": f"Unknown role(s): {', '.join(unknown)}."})
    before = set(user.groups.filter(name__in=ROLE_BY_NAME).values_list("name", flat=True))
    others = list(user.groups.exclude(name__in=ROLE_BY_NAME))
    user.groups.set([*others, *Group.objects.filter(name__in=roles)])
    if before - set(roles):
        account_services.user_sessions_revoke(user=user)
