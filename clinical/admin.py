"""Admin screens for the directory and catalogs.

Every admin that shows PHI starts from ``clinical.access``: the change list,
the change page, autocomplete and the history page all call ``get_queryset``
or the object checks below, so none of them can reveal a patient the policy
hides.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from clinical import access, selectors, services
from clinical import models as m
from clinical.admin_base import CaretrailAdmin, PatientScopedAdmin
from clinical.audit import patient_access_record, patient_list_access_record, purpose_for
from clinical.records_admin import MedicalRecordInline


class CatalogAdmin(admin.ModelAdmin):
    list_per_page = 100


# Catalogs ----------------------------------------------------------------------------


@admin.register(m.Country)
class CountryAdmin(CatalogAdmin):
    list_display = ("name", "alpha2", "alpha3", "numeric")
    search_fields = ("name", "alpha2", "alpha3")


@admin.register(m.Region)
class RegionAdmin(CatalogAdmin):
    list_display = ("name", "code", "category", "country", "parent")
    search_fields = ("name", "code")
    list_select_related = ("country", "parent")
    autocomplete_fields = ("country", "parent")


@admin.register(m.InstitutionType, m.SpecialtyCategory, m.EmailType, m.PhoneType)
class SimpleCatalogAdmin(CatalogAdmin):
    list_display = ("name", "code")
    search_fields = ("name", "code")


@admin.register(m.Specialty)
class SpecialtyAdmin(CatalogAdmin):
    list_display = ("name", "code", "category", "snomed_code")
    list_filter = ("category",)
    search_fields = ("name", "code", "snomed_code")
    list_select_related = ("category",)


@admin.register(m.Sex)
class SexAdmin(CatalogAdmin):
    list_display = ("display", "code", "code_system")
    search_fields = ("display", "code")


@admin.register(m.Gender)
class GenderAdmin(CatalogAdmin):
    list_display = ("name", "code", "snomed_code")
    search_fields = ("name", "code")


class BloodCompatibilityInline(admin.TabularInline):
    model = m.BloodCompatibility
    fk_name = "donor"
    extra = 0
    verbose_name = "can donate red cells to"
    verbose_name_plural = "can donate red cells to"


@admin.register(m.BloodType)
class BloodTypeAdmin(CatalogAdmin):
    list_display = ("code", "abo", "rh", "recipients")
    search_fields = ("code",)
    inlines = [BloodCompatibilityInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[m.BloodType]:
        return super().get_queryset(request).prefetch_related("can_donate_to")

    @admin.display(description="Can donate to")
    def recipients(self, obj: m.BloodType) -> str:
        return ", ".join(sorted(t.code for t in obj.can_donate_to.all()))


@admin.register(m.BloodCompatibility)
class BloodCompatibilityAdmin(CatalogAdmin):
    list_display = ("donor", "recipient")
    list_filter = ("donor", "recipient")


@admin.register(m.MedicalCondition)
class MedicalConditionAdmin(CatalogAdmin):
    list_display = ("code", "name", "category", "code_system")
    list_filter = ("code_system", "category")
    search_fields = ("code", "name")


@admin.register(m.Medication)
class MedicationAdmin(CatalogAdmin):
    list_display = ("generic_name", "strength", "form", "atc_code", "rxnorm_code")
    list_filter = ("form",)
    search_fields = ("generic_name", "atc_code", "rxnorm_code")


# Institutions, memberships, doctors -------------------------------------------------


@admin.register(m.MedicalInstitution)
class MedicalInstitutionAdmin(CaretrailAdmin):
    list_display = ("name", "code", "institution_type", "country", "time_zone", "is_active")
    list_filter = ("is_active", "institution_type", "country")
    search_fields = ("name", "code", "license_number")
    autocomplete_fields = ("country", "region", "institution_type")
    list_select_related = ("institution_type", "country")
    readonly_fields = ("uuid", "created_at", "updated_at")

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        data = form.cleaned_data
        created = services.institution_create(
            name=data["name"],
            code=data["code"],
            institution_type=data["institution_type"],
            country=data["country"],
            region=data.get("region"),
            time_zone=data["time_zone"],
            license_number=data.get("license_number", ""),
            website=data.get("website", ""),
        )
        obj.pk, obj.uuid = created.pk, created.uuid


@admin.register(m.InstitutionMembership)
class InstitutionMembershipAdmin(CaretrailAdmin):
    list_display = ("user", "institution", "role", "valid_from", "valid_until", "active")
    list_filter = ("role", "institution")
    search_fields = ("user__email", "user__last_name", "institution__name")
    autocomplete_fields = ("user",)
    list_select_related = ("user", "institution")
    actions = ["end_memberships"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ("uuid",)
        return ("uuid", "user", "institution", "role", "valid_from", "valid_until")

    def get_queryset(self, request: HttpRequest) -> QuerySet[m.InstitutionMembership]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(institution__in=access.institutions_administered_by(request.user))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "institution":
            kwargs["queryset"] = access.institutions_administered_by(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(boolean=True, description="Active")
    def active(self, obj: m.InstitutionMembership) -> bool:
        return obj.is_active

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            return  # nothing is editable after creation; end it with the action
        data = form.cleaned_data
        created = services.membership_start(
            user=data["user"],
            institution=data["institution"],
            role=data["role"],
            valid_from=data.get("valid_from"),
            valid_until=data.get("valid_until"),
        )
        obj.pk, obj.uuid = created.pk, created.uuid

    @admin.action(description="End the selected memberships now")
    def end_memberships(self, request: HttpRequest, queryset: QuerySet[m.InstitutionMembership]) -> None:
        ended = 0
        for membership in queryset:
            try:
                services.membership_end(membership=membership)
                ended += 1
            except ValidationError as exc:
                self.message_user(request, f"{membership}: {' '.join(exc.messages)}", messages.ERROR)
                continue
            left = selectors.appointments_left_by(membership).count()
            if left:
                self.message_user(
                    request,
                    f"{membership}: {left} scheduled appointment(s) still to come at {membership.institution} "
                    "are with this doctor: give them to another doctor or cancel them.",
                    messages.WARNING,
                )
        if ended:
            self.message_user(request, f"{ended} membership(s) ended.", messages.SUCCESS)


@admin.register(m.Doctor)
class DoctorAdmin(CaretrailAdmin):
    list_display = ("__str__", "institution", "specialty", "license_number", "is_active")
    list_filter = ("is_active", "specialty", "institution")
    search_fields = ("user__email", "user__first_name", "user__last_name", "license_number")
    autocomplete_fields = ("user", "institution", "specialty")
    list_select_related = ("user", "institution", "specialty")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # Moving a doctor to another institution means transferring their patients first.
        return ("uuid",) if obj is None else ("uuid", "user", "institution")

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        data = form.cleaned_data
        created = services.doctor_register(
            user=data["user"],
            institution=data["institution"],
            specialty=data["specialty"],
            license_number=data["license_number"],
        )
        obj.pk, obj.uuid = created.pk, created.uuid


# Patients -----------------------------------------------------------------------------


class HealthProfileInline(admin.StackedInline):
    model = m.HealthProfile
    can_delete = False
    max_num = 1
    min_num = 1
    fieldsets = (
        ("Body", {"fields": (("height_cm", "weight_kg"), "blood_type")}),
        (
            "Habits",
            {
                "fields": (
                    ("is_smoker", "cigarettes_per_day"),
                    ("consumes_alcohol", "drinks_per_week"),
                    "physical_activity_minutes_per_week",
                )
            },
        ),
        (
            "Emergency contact",
            {
                "fields": (
                    ("emergency_contact_name", "emergency_contact_relationship"),
                    "emergency_contact_phone",
                )
            },
        ),
        ("Notes", {"fields": ("notes",)}),
    )


class PatientConditionInline(admin.TabularInline):
    model = m.PatientCondition
    extra = 0
    autocomplete_fields = ("condition", "diagnosed_by")
    fields = ("condition", "status", "onset_date", "resolved_date", "diagnosed_by", "notes")


class PatientMedicationInline(admin.TabularInline):
    model = m.PatientMedication
    extra = 0
    autocomplete_fields = ("medication", "prescribed_by")
    fields = ("medication", "dose", "route", "frequency", "start_date", "end_date", "prescribed_by")


class PatientAllergyInline(admin.TabularInline):
    model = m.PatientAllergy
    extra = 0
    fields = ("substance", "category", "criticality", "severity", "code_system", "code", "reaction")


class PatientEmailInline(admin.TabularInline):
    model = m.Email
    fk_name = "patient"
    extra = 0
    fields = ("address", "email_type", "is_primary", "verified_at")


class PatientPhoneInline(admin.TabularInline):
    model = m.Phone
    fk_name = "patient"
    extra = 0
    fields = ("number", "phone_type", "is_primary", "verified_at")


class PatientAddressInline(admin.StackedInline):
    model = m.Address
    fk_name = "patient"
    extra = 0
    autocomplete_fields = ("country", "region")
    fields = (("line1", "line2"), ("city", "postal_code"), ("region", "country"), "is_primary")


class BreakGlassForm(forms.Form):
    institution = forms.ModelChoiceField(queryset=m.MedicalInstitution.objects.filter(is_active=True))
    mrn = forms.CharField(label="MRN", max_length=32)
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Why you need this patient's record now. Logged and reviewed by the institution.",
    )


class RejectForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Shown to staff reviewing the patient; stored encrypted.",
    )


class PatientAddForm(forms.ModelForm):
    class Meta:
        model = m.Patient
        fields = ("doctor", "first_name", "last_name", "date_of_birth", "sex", "gender", "mrn", "notes")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["mrn"].required = False
        self.fields["mrn"].help_text = "Leave empty to assign the institution's next number."


@admin.register(m.Patient)
class PatientAdmin(CaretrailAdmin):
    list_display = (
        "mrn",
        "last_name",
        "first_name",
        "date_of_birth",
        "institution",
        "doctor",
        "validation_status",
    )
    list_display_links = ("mrn", "last_name")
    list_filter = ("validation_status", "institution", "sex", "is_active")
    search_fields = ("mrn", "last_name", "first_name")
    autocomplete_fields = ("doctor", "user")
    list_select_related = ("institution", "doctor__user")
    date_hierarchy = "created_at"
    show_full_result_count = False
    actions = ["validate_patients", "reject_patients"]
    readonly_fields = (
        "uuid",
        "institution",
        "validation_status",
        "reviewed_by",
        "reviewed_at",
        "rejection_reason",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("uuid", "mrn", ("first_name", "last_name"), "date_of_birth", ("sex", "gender"))}),
        ("Care", {"fields": ("doctor", "institution", "user", "is_active")}),
        (
            "Validation",
            {"fields": ("validation_status", "reviewed_by", "reviewed_at", "rejection_reason")},
        ),
        ("Notes", {"fields": ("notes",)}),
        ("Record", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )
    change_inlines = [
        HealthProfileInline,
        PatientConditionInline,
        PatientMedicationInline,
        PatientAllergyInline,
        PatientEmailInline,
        PatientPhoneInline,
        PatientAddressInline,
        MedicalRecordInline,
    ]

    # Access --------------------------------------------------------------------------
    def get_queryset(self, request: HttpRequest) -> QuerySet[m.Patient]:
        return access.patients_visible_to(request.user).select_related("institution", "doctor__user")

    # The policy is the whole answer for one patient (it checks the role itself); for the
    # pages, a role permission or an active care-team grant lets a staff user in.
    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None:
            return access.can_view_patient(request.user, obj)
        return super().has_view_permission(request) or access.holds_grants(request.user, access.VIEW)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None:
            return access.can_change_patient(request.user, obj)
        return super().has_change_permission(request) or access.holds_grants(request.user, access.CHANGE)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) or access.holds_grants(request.user, access.VIEW)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # patients are deactivated, never deleted from the admin

    def has_validate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("clinical.validate_patient")

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "doctor" and not request.user.is_superuser:
            institutions = access.scope_of(request.user, access.CHANGE).institution_ids
            kwargs["queryset"] = m.Doctor.objects.filter(institution_id__in=institutions, is_active=True)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    # Read auditing ----------------------------------------------------------------------
    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        declared = request.GET.get("purpose")
        if declared is not None:  # ours, not a filter: the change list would refuse it
            query = request.GET.copy()
            del query["purpose"]
            request.GET = query
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            patient_list_access_record(
                user=request.user,
                patients=changelist.result_list,
                purpose=purpose_for(request.user, declared),
                view="admin patient list",
                remote_addr=request.META.get("REMOTE_ADDR"),
            )
        return response

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        response = super().change_view(request, object_id, form_url, extra_context)
        patient = getattr(response, "context_data", {}).get("original")
        if request.method == "GET" and patient is not None:
            patient_access_record(
                user=request.user,
                patient=patient,
                purpose=purpose_for(request.user, request.GET.get("purpose")),
                remote_addr=request.META.get("REMOTE_ADDR"),
            )
        return response

    # Break the glass --------------------------------------------------------------------
    def get_urls(self) -> list[Any]:
        extra = [
            path(
                "break-glass/",
                self.admin_site.admin_view(self.break_glass_view),
                name="clinical_patient_break_glass",
            )
        ]
        return extra + super().get_urls()

    def break_glass_view(self, request: HttpRequest) -> HttpResponse:
        if not access.can_break_glass(request.user):
            raise PermissionDenied
        form = BreakGlassForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            patient = m.Patient.objects.filter(
                institution=form.cleaned_data["institution"], mrn=form.cleaned_data["mrn"].strip()
            ).first()
            if patient is None:
                form.add_error("mrn", "No patient with this MRN at this institution.")
            else:
                services.break_glass_open(user=request.user, patient=patient, reason=form.cleaned_data["reason"])
                self.message_user(
                    request,
                    f"Emergency access opened for {services.BREAK_GLASS_HOURS} hours. "
                    "It is logged and will be reviewed.",
                    messages.WARNING,
                )
                return redirect(reverse("admin:clinical_patient_change", args=[patient.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Emergency access (break the glass)",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/clinical/patient/break_glass.html", context)

    # Forms ----------------------------------------------------------------------------
    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = PatientAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ((None, {"fields": PatientAddForm.Meta.fields}),)
        return self.fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else (*self.readonly_fields, "mrn")

    def get_inlines(self, request: HttpRequest, obj: Any = None) -> Any:
        # The profile is made by patient_register; contacts follow on the change page.
        return [] if obj is None else self.change_inlines

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not change:
            data = form.cleaned_data
            created = services.patient_register(
                doctor=data["doctor"],
                first_name=data["first_name"],
                last_name=data["last_name"],
                date_of_birth=data["date_of_birth"],
                sex=data["sex"],
                gender=data.get("gender"),
                mrn=data.get("mrn") or None,
                notes=data.get("notes") or None,
            )
            obj.pk, obj.uuid, obj.mrn, obj.institution = (
                created.pk,
                created.uuid,
                created.mrn,
                created.institution,
            )
            obj._state.adding = False
            return
        if "doctor" in form.changed_data:
            new_doctor = obj.doctor
            fresh = m.Patient.objects.get(pk=obj.pk)
            for name in form.changed_data:
                if name != "doctor":
                    setattr(fresh, name, getattr(obj, name))
            fresh.save()
            moved = services.patient_transfer(patient=fresh, doctor=new_doctor)
            obj.institution, obj.mrn = moved.institution, moved.mrn
            return
        super().save_model(request, obj, form, change)

    # Actions --------------------------------------------------------------------------
    @admin.action(description="Validate the selected patients", permissions=["validate"])
    def validate_patients(self, request: HttpRequest, queryset: QuerySet[m.Patient]) -> None:
        changeable = queryset.filter(pk__in=access.patients_changeable_by(request.user).values("pk"))
        done = sum(1 for patient in changeable if services.patient_validate(patient=patient, actor=request.user))
        self.message_user(request, f"{done} patient(s) validated.", messages.SUCCESS)

    @admin.action(description="Reject the selected patients…", permissions=["validate"])
    def reject_patients(self, request: HttpRequest, queryset: QuerySet[m.Patient]) -> HttpResponse | None:
        changeable = queryset.filter(pk__in=access.patients_changeable_by(request.user).values("pk"))
        form = RejectForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            for patient in changeable:
                services.patient_reject(patient=patient, actor=request.user, reason=form.cleaned_data["reason"])
            self.message_user(request, f"{changeable.count()} patient(s) rejected.", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Reject patients",
            "patients": changeable,
            "form": form,
            "opts": self.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/clinical/patient/reject.html", context)


@admin.register(m.HealthProfile)
class HealthProfileAdmin(PatientScopedAdmin):
    list_display = ("patient", "height_cm", "weight_kg", "blood_type", "is_smoker", "consumes_alcohol")
    list_filter = ("blood_type", "is_smoker", "consumes_alcohol")
    search_fields = ("patient__mrn", "patient__last_name")
    autocomplete_fields = ("patient",)
    list_select_related = ("patient", "blood_type")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # every patient gets exactly one, from patient_register


@admin.register(m.PatientCondition)
class PatientConditionAdmin(PatientScopedAdmin):
    list_display = ("patient", "condition", "status", "onset_date", "resolved_date")
    list_filter = ("status",)
    search_fields = ("patient__mrn", "patient__last_name", "condition__code", "condition__name")
    autocomplete_fields = ("patient", "condition", "diagnosed_by")
    list_select_related = ("patient", "condition")


@admin.register(m.PatientMedication)
class PatientMedicationAdmin(PatientScopedAdmin):
    list_display = ("patient", "medication", "dose", "frequency", "start_date", "end_date")
    search_fields = ("patient__mrn", "patient__last_name", "medication__generic_name")
    autocomplete_fields = ("patient", "medication", "prescribed_by")
    list_select_related = ("patient", "medication")


@admin.register(m.PatientAllergy)
class PatientAllergyAdmin(PatientScopedAdmin):
    list_display = ("patient", "substance", "category", "criticality", "severity")
    list_filter = ("category", "criticality", "severity")
    search_fields = ("patient__mrn", "patient__last_name", "substance", "code")
    autocomplete_fields = ("patient",)
    list_select_related = ("patient",)


class ContactAdmin(PatientScopedAdmin):
    """Contacts of visible patients, of doctors and institutions (directory data), and one's own."""

    def visible_rows(self, request: HttpRequest) -> Q:
        directory = Q(patient__isnull=True) & (Q(doctor__isnull=False) | Q(institution__isnull=False))
        own = Q(user_id=request.user.pk) if hasattr(self.model, "user_id") else Q(pk__in=[])
        return super().visible_rows(request) | directory | own

    list_select_related = ("patient", "doctor__user", "institution")
    autocomplete_fields = ("patient", "doctor", "institution")

    @admin.display(description="Belongs to")
    def owner_display(self, obj: Any) -> str:
        return str(obj.owner)


@admin.register(m.Email)
class EmailAdmin(ContactAdmin):
    list_display = ("address", "email_type", "owner_display", "is_primary", "verified_at")
    list_filter = ("email_type", "is_primary")
    search_fields = ("address",)


@admin.register(m.Phone)
class PhoneAdmin(ContactAdmin):
    list_display = ("number", "phone_type", "owner_display", "is_primary", "verified_at")
    list_filter = ("phone_type", "is_primary")
    search_fields = ("number",)
    list_select_related = ("user", "patient", "doctor__user", "institution")
    autocomplete_fields = ("user", "patient", "doctor", "institution")


@admin.register(m.Address)
class AddressAdmin(ContactAdmin):
    list_display = ("__str__", "country", "region", "owner_display", "is_primary")
    list_filter = ("is_primary", "country")
    search_fields = ("line1", "city", "postal_code")
    list_select_related = ("patient", "doctor__user", "institution", "country", "region")
    autocomplete_fields = ("patient", "doctor", "institution", "country", "region")


# Grants and break-the-glass reviews -------------------------------------------------------


class GrantForm(forms.ModelForm):
    kind = forms.ChoiceField(choices=[("view", "View"), ("change", "View and change")])

    class Meta:
        model = m.PatientUserObjectPermission
        fields = ("user", "content_object", "kind", "reason", "expires_at")
        labels = {"content_object": "Patient"}


@admin.register(m.PatientUserObjectPermission)
class PatientGrantAdmin(CaretrailAdmin):
    """Care-team grants. Institution admins manage those of their institutions' patients."""

    form = GrantForm
    list_display = (
        "user",
        "content_object",
        "permission",
        "is_break_glass",
        "created_at",
        "expires_at",
        "state",
    )
    list_filter = ("is_break_glass", "permission")
    search_fields = ("user__email", "user__last_name", "content_object__mrn", "content_object__last_name")
    autocomplete_fields = ("user", "content_object")
    list_select_related = ("user", "content_object", "permission")
    actions = ["revoke_grants"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[m.PatientUserObjectPermission]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(content_object__institution__in=access.institutions_administered_by(request.user))

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ()
        return [f.name for f in self.model._meta.fields]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return GrantForm.Meta.fields
        return super().get_fields(request, obj)

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is not None:
            kwargs["form"] = forms.ModelForm
        return super().get_form(request, obj, change=change, **kwargs)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "content_object" and not request.user.is_superuser:
            kwargs["queryset"] = m.Patient.objects.filter(
                institution__in=access.institutions_administered_by(request.user)
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="State")
    def state(self, obj: m.PatientUserObjectPermission) -> str:
        if obj.revoked_at:
            return "revoked"
        return "active" if obj.is_active else "expired"

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            return  # grants are history: revoke and grant again instead of editing
        data = form.cleaned_data
        created = services.grant_create(
            patient=data["content_object"],
            user=data["user"],
            kind=data["kind"],
            granted_by=request.user,
            reason=data["reason"],
            expires_at=data.get("expires_at"),
        )
        obj.pk, obj.uuid = created.pk, created.uuid

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Revoke the selected grants")
    def revoke_grants(self, request: HttpRequest, queryset: QuerySet[m.PatientUserObjectPermission]) -> None:
        for grant in queryset:
            services.grant_revoke(grant=grant, revoked_by=request.user)
        self.message_user(request, f"{queryset.count()} grant(s) revoked.", messages.SUCCESS)


@admin.register(m.BreakGlassReview)
class BreakGlassReviewAdmin(CaretrailAdmin):
    """The review queue: every emergency opening, for the patient's institution admins."""

    list_display = ("created_at", "opened_by", "patient", "reason", "institution", "outcome", "reviewed_by")
    list_filter = ("outcome", "institution")
    list_select_related = ("grant__user", "grant__content_object", "institution", "reviewed_by")
    readonly_fields = ("grant", "institution", "created_at", "outcome", "reviewed_by", "reviewed_at")
    fields = ("grant", "institution", "created_at", "outcome", "reviewed_by", "reviewed_at", "notes")
    actions = ["mark_appropriate", "mark_inappropriate"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[m.BreakGlassReview]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(institution__in=access.institutions_administered_by(request.user))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # reviews are created by break_glass_open

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Opened by")
    def opened_by(self, obj: m.BreakGlassReview) -> str:
        return str(obj.grant.user)

    @admin.display(description="Patient")
    def patient(self, obj: m.BreakGlassReview) -> str:
        return str(obj.grant.content_object)

    @admin.display(description="Reason")
    def reason(self, obj: m.BreakGlassReview) -> str:
        return obj.grant.reason

    def _review(self, request: HttpRequest, queryset: QuerySet[m.BreakGlassReview], outcome: str) -> None:
        for review in queryset:
            services.break_glass_review(review=review, reviewer=request.user, outcome=outcome)
        self.message_user(request, f"{queryset.count()} review(s) recorded.", messages.SUCCESS)

    @admin.action(description="Mark as appropriate")
    def mark_appropriate(self, request: HttpRequest, queryset: QuerySet[m.BreakGlassReview]) -> None:
        self._review(request, queryset, m.ReviewOutcome.APPROPRIATE)

    @admin.action(description="Mark as inappropriate")
    def mark_inappropriate(self, request: HttpRequest, queryset: QuerySet[m.BreakGlassReview]) -> None:
        self._review(request, queryset, m.ReviewOutcome.INAPPROPRIATE)


import clinical.care_admin  # noqa: E402 - registers the Appointment and Prescription admins
import clinical.documents_admin  # noqa: E402, F401 - registers the Document admin and the patient page's inline
