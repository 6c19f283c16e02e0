"""The role matrix (cms.roles), sync_roles, user_set_roles and the role matrix admin page."""

import importlib
from io import StringIO

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from accounts.models import ApiToken
from accounts.services import api_token_create
from cms import roles as matrix
from cms.roles import PATIENT_LISTS, ROLE_BY_NAME, ROLES
from cms.services import roles_sync, user_set_roles

pytestmark = pytest.mark.django_db

CLINICAL_ROLES = {"Doctor", "Nurse", "Institution Admin"}
CMS_ROLES = ["CMS Admin", "CMS Editor"]
# The patient and everything that hangs off it.
PATIENT_MODELS = {
    "clinical.patient",
    "clinical.healthprofile",
    "clinical.patientuserobjectpermission",
    "clinical.breakglassreview",
    *PATIENT_LISTS,
}


# Helpers -----------------------------------------------------------------------------


def sync_roles(*args):
    out = StringIO()
    call_command("sync_roles", *args, stdout=out)
    return out.getvalue()


def check_fails():
    """Run ``sync_roles --check``, expect it to fail, return what it printed."""
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("sync_roles", "--check", stdout=out)
    return out.getvalue()


def group_permissions(name):
    group = Group.objects.get(name=name)
    return {
        f"{app}.{codename}" for app, codename in group.permissions.values_list("content_type__app_label", "codename")
    }


def db_permission(dotted):
    app_label, codename = dotted.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


def snapshot():
    return {group.name: group_permissions(group.name) for group in Group.objects.filter(name__in=ROLE_BY_NAME)}


def model_of(permission):
    """``clinical.view_patient`` → ``clinical.patient`` (named actions belong to no CRUD model)."""
    perm = db_permission(permission)
    return f"{perm.content_type.app_label}.{perm.content_type.model}"


# sync_roles --------------------------------------------------------------------------


def test_after_migrations_the_groups_match_the_matrix():
    assert "match" in sync_roles("--check")
    assert set(Group.objects.values_list("name", flat=True)) >= set(ROLE_BY_NAME)
    for role in ROLES:
        assert group_permissions(role.name) == role.permissions()


@pytest.mark.parametrize(
    "name",
    ["0002_sync_roles", "0003_sync_roles_medical_records", "0004_sync_roles_documents", "0005_sync_roles_care"],
)
def test_the_data_migrations_create_the_groups_from_the_matrix(name):
    Group.objects.filter(name__in=ROLE_BY_NAME).delete()
    migration = importlib.import_module(f"cms.migrations.{name}").Migration
    (operation,) = migration.operations
    operation.code(django_apps, None)
    assert "match" in sync_roles("--check")


def test_check_fails_and_lists_a_permission_missing_from_a_group_while_changing_nothing(roles):
    Group.objects.get(name="Nurse").permissions.remove(db_permission("clinical.view_patient"))
    before = snapshot()
    output = check_fails()
    assert "Nurse" in output
    assert "clinical.view_patient" in output
    assert "Nurse: missing clinical.view_patient" in output
    assert snapshot() == before


def test_check_fails_and_lists_an_extra_permission_in_a_group_while_changing_nothing(roles):
    Group.objects.get(name="CMS Editor").permissions.add(db_permission("clinical.view_patient"))
    before = snapshot()
    output = check_fails()
    assert "CMS Editor" in output
    assert "clinical.view_patient" in output
    assert snapshot() == before
    assert "clinical.view_patient" in group_permissions("CMS Editor")


def test_check_names_only_the_roles_that_drifted(roles):
    Group.objects.get(name="Doctor").permissions.remove(db_permission("clinical.break_glass"))
    output = check_fails()
    assert "Doctor" in output
    assert "clinical.break_glass" in output
    for other in ROLE_BY_NAME.keys() - {"Doctor"}:
        assert f"{other}:" not in output


def test_sync_roles_fixes_missing_and_extra_permissions(roles):
    Group.objects.get(name="Nurse").permissions.remove(db_permission("clinical.view_patient"))
    Group.objects.get(name="CMS Editor").permissions.add(db_permission("clinical.change_patient"))
    output = sync_roles()
    assert "Nurse" in output and "clinical.view_patient" in output
    assert "CMS Editor" in output and "clinical.change_patient" in output
    assert group_permissions("Nurse") == ROLE_BY_NAME["Nurse"].permissions()
    assert group_permissions("CMS Editor") == ROLE_BY_NAME["CMS Editor"].permissions()
    assert "match" in sync_roles("--check")


def test_sync_roles_is_idempotent(roles):
    Group.objects.get(name="Doctor").permissions.clear()
    first = sync_roles()
    assert "fixed:" in first
    before = snapshot()
    second = sync_roles()
    assert "fixed:" not in second
    assert snapshot() == before
    assert roles_sync() == []


def test_a_missing_group_is_reported_and_recreated(roles):
    Group.objects.filter(name="Nurse").delete()
    output = check_fails()
    assert "Nurse" in output
    assert "does not exist" in output
    assert not Group.objects.filter(name="Nurse").exists()
    sync_roles()
    assert group_permissions("Nurse") == ROLE_BY_NAME["Nurse"].permissions()
    assert "match" in sync_roles("--check")


def test_sync_roles_leaves_the_members_of_a_group_alone(roles, make_user):
    user = make_user()
    user.groups.add(Group.objects.get(name="Nurse"))
    Group.objects.get(name="Nurse").permissions.clear()
    sync_roles()
    assert list(user.groups.values_list("name", flat=True)) == ["Nurse"]


def test_sync_roles_leaves_groups_outside_the_matrix_alone(roles):
    other = Group.objects.create(name="Newsletter")
    other.permissions.add(db_permission("clinical.view_patient"))
    assert "match" in sync_roles("--check")
    sync_roles()
    assert group_permissions("Newsletter") == {"clinical.view_patient"}


# The matrix itself ---------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_every_permission_the_matrix_names_exists(role):
    for permission in sorted(role.permissions()):
        app_label, codename = permission.split(".")
        assert Permission.objects.filter(content_type__app_label=app_label, codename=codename).exists(), permission
    assert not any(drift.unknown for drift in roles_sync(apply=False))


def test_the_matrix_declares_the_roles_of_the_design():
    assert set(ROLE_BY_NAME) == {"CMS Admin", "CMS Editor", "Institution Admin", "Doctor", "Nurse", "Patient"}
    assert set(matrix.CLINICAL_ROLES) == CLINICAL_ROLES


def test_only_the_clinical_roles_grant_view_patient_in_the_matrix():
    holders = {role.name for role in ROLES if "clinical.view_patient" in role.permissions()}
    assert holders == CLINICAL_ROLES


def test_only_the_clinical_roles_grant_view_patient_in_the_database(roles):
    holders = set(
        Group.objects.filter(permissions=db_permission("clinical.view_patient")).values_list("name", flat=True)
    )
    assert holders == CLINICAL_ROLES


@pytest.mark.parametrize("role", CMS_ROLES)
def test_cms_roles_hold_no_permission_on_patients_or_their_lists(role, roles):
    declared = {perm for perm in ROLE_BY_NAME[role].permissions() if model_of(perm) in PATIENT_MODELS}
    assert declared == set()
    held = {perm for perm in group_permissions(role) if model_of(perm) in PATIENT_MODELS}
    assert held == set()


def test_the_patient_role_holds_no_permission(roles):
    assert ROLE_BY_NAME["Patient"].permissions() == set()
    assert group_permissions("Patient") == set()


# user_set_roles ------------------------------------------------------------------------


def role_names(user):
    return set(user.groups.filter(name__in=ROLE_BY_NAME).values_list("name", flat=True))


def test_user_set_roles_assigns_exactly_the_given_roles(roles, make_user):
    user = make_user(is_staff=True)
    user_set_roles(user=user, roles=["Doctor", "CMS Editor"])
    assert role_names(user) == {"Doctor", "CMS Editor"}
    user_set_roles(user=user, roles=["Nurse"])
    assert role_names(user) == {"Nurse"}
    user_set_roles(user=user, roles=[])
    assert role_names(user) == set()


def test_user_set_roles_keeps_groups_outside_the_matrix(roles, make_user):
    user = make_user(is_staff=True)
    newsletter = Group.objects.create(name="Newsletter")
    user.groups.add(newsletter, Group.objects.get(name="Doctor"))
    user_set_roles(user=user, roles=["Nurse"])
    assert set(user.groups.values_list("name", flat=True)) == {"Newsletter", "Nurse"}


def test_user_set_roles_refuses_an_unknown_role_and_changes_nothing(roles, make_user):
    user = make_user(is_staff=True)
    user_set_roles(user=user, roles=["Doctor"])
    stamp = user.security_stamp
    with pytest.raises(ValidationError) as caught:
        user_set_roles(user=user, roles=["Nurse", "Chief Surgeon"])
    assert "roles" in caught.value.message_dict
    assert "Chief Surgeon" in str(caught.value.message_dict["roles"])
    user.refresh_from_db()
    assert role_names(user) == {"Doctor"}
    assert user.security_stamp == stamp


def test_removing_a_role_ends_the_users_sessions_and_tokens(roles, make_user):
    user = make_user(is_staff=True)
    user_set_roles(user=user, roles=["Doctor", "Nurse"])
    user.refresh_from_db()
    stamp = user.security_stamp
    token, _ = api_token_create(user=user)
    user_set_roles(user=user, roles=["Doctor"])
    user.refresh_from_db()
    assert user.security_stamp != stamp
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None


def test_a_revoked_role_holders_token_is_refused_at_the_next_request(roles, make_user, client):
    user = make_user(is_staff=True)
    user_set_roles(user=user, roles=["Doctor"])
    _, secret = api_token_create(user=user)
    url = reverse("v1:patient-list")
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {secret}").status_code == 200
    user_set_roles(user=user, roles=[])
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {secret}").status_code == 401


def test_adding_a_role_leaves_the_users_sessions_alone(roles, make_user):
    user = make_user(is_staff=True)
    user_set_roles(user=user, roles=["Nurse"])
    user.refresh_from_db()
    stamp = user.security_stamp
    token, _ = api_token_create(user=user)
    user_set_roles(user=user, roles=["Nurse", "Doctor"])
    user.refresh_from_db()
    assert user.security_stamp == stamp
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None


# The role matrix page ------------------------------------------------------------------


def test_the_role_matrix_page_shows_every_role_and_permission_to_a_superuser(roles, superuser_client):
    response = superuser_client.get(reverse("admin:cms_role_matrix"))
    assert response.status_code == 200
    assert [role["name"] for role in response.context["roles"]] == [role.name for role in ROLES]
    rows = {row["permission"]: row["cells"] for row in response.context["rows"]}
    assert set(rows) == set().union(*(role.permissions() for role in ROLES))
    columns = [role.name for role in ROLES]
    assert rows["clinical.view_patient"][columns.index("Nurse")] is True
    assert rows["clinical.view_patient"][columns.index("CMS Editor")] is False
    assert response.context["drift"] == []
    content = response.content.decode()
    for role in ROLES:
        assert role.name in content
    assert "clinical.break_glass" in content
    assert "differ from the matrix" not in content


def test_the_role_matrix_page_shows_the_drift_when_a_group_differs(roles, superuser_client):
    Group.objects.get(name="Nurse").permissions.remove(db_permission("clinical.view_patient"))
    response = superuser_client.get(reverse("admin:cms_role_matrix"))
    assert response.status_code == 200
    assert "Nurse: missing clinical.view_patient" in response.context["drift"]
    content = response.content.decode()
    assert "differ from the matrix" in content
    assert "Nurse: missing clinical.view_patient" in content


def test_the_role_matrix_page_is_refused_to_staff_without_manage_roles(make_staff, staff_client_factory):
    cms_admin = make_staff("CMS Admin")
    response = staff_client_factory(cms_admin).get(reverse("admin:cms_role_matrix"))
    assert response.status_code == 403
