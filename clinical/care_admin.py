"""Admin screens for the care workflow: appointments and prescriptions (imported by ``clinical.admin``).

Nothing here writes a row itself. Booking, rescheduling, cancelling,
completing and marking a no-show go through ``clinical.appointments``;
issuing a prescription and keeping a signed copy through
``clinical.prescriptions``. Change pages are read only and offer those writes
as object actions, each asking ``clinical.access`` first. Times are entered
and shown on the institution's clock and stored in UTC. Rows start from the
access policy (``PatientScopedAdmin``); every page that shows an appointment
or a prescription writes an access entry.
"""

from __future__ import annotations

import datetime
import zoneinfo
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, DateField, ExpressionWrapper, F, Func, QuerySet
from django.db.models.functions import Now
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from clinical import access, appointments, prescriptions, selectors
from clinical import models as m
from clinical.admin_base import PatientScopedAdmin, service_errors_on
from clinical.audit import care_access_record, purpose_for
from clinical.selectors import doctor_day

CARE_FORM_TEMPLATE = "admin/clinical/care_form.html"

# Local times -----------------------------------------------------------------------------


def local_text(moment: datetime.datetime | None, zone: datetime.tzinfo) -> str:
    """``moment`` as the wall clock in ``zone`` shows it, with the zone's abbreviation."""
    if moment is None:
        return "—"
    local = moment.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def utc_from_local(day: datetime.date, at: datetime.time, zone: zoneinfo.ZoneInfo) -> datetime.datetime:
    """The instant, in UTC, at which the clock in ``zone`` shows ``day`` ``at``.

    A time the clocks skip (spring forward) does not exist and is refused; a time
    they show twice (fall back) is the first of the two.
    """
    wall = datetime.datetime.combine(day, at)
    instant = wall.replace(tzinfo=zone).astimezone(datetime.UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != wall:
        raise ValidationError(f"{wall:%H:%M} does not exist on {day:%Y-%m-%d} in {zone.key}: the clocks go forward.")
    return instant


def autocomplete_field(
    form: forms.Form, name: str, source: type[Any], queryset: QuerySet[Any], admin_site: Any
) -> None:
    """Make ``form``'s choice field ``name`` an admin autocomplete (as ``source.name`` does) over ``queryset``."""
    field = form.fields[name]
    assert isinstance(field, forms.ModelChoiceField)
    field.widget = AutocompleteSelect(source._meta.get_field(name), admin_site)
    field.queryset = queryset  # after the widget: setting it binds the widget's choices


# Audit of reads --------------------------------------------------------------------------


def _audit(request: HttpRequest, patient: m.Patient, objects: list[Any], model: type[Any], view: str) -> None:
    care_access_record(
        user=request.user,
        patient=patient,
        objects=objects,
        model=model,
        purpose=purpose_for(request.user, request.GET.get("purpose")),
        view=view,
        remote_addr=request.META.get("REMOTE_ADDR"),
    )


# Forms -----------------------------------------------------------------------------------

# Where the appointment services' errors show on the slot forms.
SLOT_FIELDS = {"starts_at": "start_time", "ends_at": "duration_minutes"}


class LocalSlotForm(forms.Form):
    """A day, a start time and a length, as the institution's clock shows them; ``clean`` gives UTC."""

    date = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"))
    start_time = forms.TimeField(label="Starts at", widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"))
    duration_minutes = forms.IntegerField(label="Length (minutes)", min_value=5, max_value=8 * 60, initial=30)

    def zone(self) -> zoneinfo.ZoneInfo | None:
        raise NotImplementedError

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        zone = self.zone()
        if zone is None or any(data.get(name) is None for name in ("date", "start_time", "duration_minutes")):
            return data
        try:
            data["starts_at"] = utc_from_local(data["date"], data["start_time"], zone)
        except ValidationError as exc:
            self.add_error("start_time", exc)
        else:
            data["ends_at"] = data["starts_at"] + datetime.timedelta(minutes=data["duration_minutes"])
        return data


class BookForm(LocalSlotForm):
    patient = forms.ModelChoiceField(queryset=m.Patient.objects.none())
    doctor = forms.ModelChoiceField(queryset=m.Doctor.objects.none())
    institution = forms.ModelChoiceField(
        queryset=m.MedicalInstitution.objects.none(), help_text="The date and time are on this institution's clock."
    )
    reason = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3, "cols": 60}))
    field_order = ("patient", "doctor", "institution", "date", "start_time", "duration_minutes", "reason")

    def __init__(self, *args: Any, user: Any, admin_site: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        autocomplete_field(self, "patient", m.Appointment, access.patients_changeable_by(user), admin_site)
        doctors = m.Doctor.objects.filter(is_active=True).select_related("user")
        autocomplete_field(self, "doctor", m.Appointment, doctors, admin_site)
        institution = self.fields["institution"]
        assert isinstance(institution, forms.ModelChoiceField)
        institution.queryset = m.MedicalInstitution.objects.filter(is_active=True)

    def zone(self) -> zoneinfo.ZoneInfo | None:
        institution = self.cleaned_data.get("institution")
        return zoneinfo.ZoneInfo(institution.time_zone) if institution is not None else None


class RescheduleForm(LocalSlotForm):
    def __init__(self, *args: Any, appointment: m.Appointment, **kwargs: Any) -> None:
        local = appointment.local_starts_at
        minutes = int(appointment.duration.total_seconds() // 60)
        kwargs.setdefault("initial", {"date": local.date(), "start_time": local.time(), "duration_minutes": minutes})
        super().__init__(*args, **kwargs)
        self._zone = appointment.time_zone

    def zone(self) -> zoneinfo.ZoneInfo | None:
        return self._zone


class CancelForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), help_text="Kept with the appointment."
    )


class ConfirmForm(forms.Form):
    """No fields: the page asks to confirm one action."""


class AppointmentChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{local_text(obj.starts_at, obj.time_zone)} — {obj.patient} ({obj.institution})"


class IssueForm(forms.Form):
    appointment = AppointmentChoiceField(
        queryset=m.Appointment.objects.none(),
        help_text="Your appointments that have begun, were not cancelled or missed, and have no prescription yet.",
    )
    notes = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="For the patient; printed on the prescription.",
    )

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["appointment"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = selectors.awaiting_prescription(user=user)


class ItemForm(forms.Form):
    medication = forms.ModelChoiceField(queryset=m.Medication.objects.none())
    dose = forms.CharField(max_length=60, help_text="Each dose, e.g. '1 tablet' or '5 ml'.")
    route = forms.ChoiceField(choices=m.Route.choices, initial=m.Route.ORAL)
    # The blank choice keeps an untouched extra row empty (a browser posts a select's first option).
    frequency = forms.ChoiceField(choices=[("", "---------"), *m.Frequency.choices])
    duration_days = forms.IntegerField(label="Days", min_value=1, max_value=365)
    quantity = forms.IntegerField(min_value=1, max_value=10000, help_text="Units to dispense.")
    instructions = forms.CharField(required=False, max_length=500, help_text="E.g. 'after meals'.")

    def __init__(self, *args: Any, admin_site: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        autocomplete_field(self, "medication", m.PrescriptionItem, m.Medication.objects.all(), admin_site)


ItemFormSet = forms.formset_factory(
    ItemForm, extra=2, min_num=1, validate_min=True, max_num=prescriptions.MAX_ITEMS, validate_max=True
)


class SignedCopyForm(forms.Form):
    file = forms.FileField(help_text="A scan or photo of the signed prescription: PDF, PNG or JPEG.")


# List filters ----------------------------------------------------------------------------


class LocalDate(Func):
    """``(moment AT TIME ZONE zone)::date``: the date a clock in ``zone`` shows at ``moment``."""

    template = "((%(expressions)s)::date)"
    arg_joiner = " AT TIME ZONE "
    output_field = DateField()


class WhenFilter(admin.SimpleListFilter):
    """By the day on the appointment's institution clock (today, tomorrow, the next 7 days), or before or after now."""

    title = "when"
    parameter_name = "when"
    DAYS = {"today": (0, 1), "tomorrow": (1, 2), "next_7_days": (0, 7)}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("today", "Today"),
            ("tomorrow", "Tomorrow"),
            ("next_7_days", "Next 7 days"),
            ("upcoming", "Upcoming"),
            ("past", "Past"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "upcoming":
            return queryset.filter(starts_at__gte=timezone.now())
        if value == "past":
            return queryset.filter(starts_at__lt=timezone.now())
        if value not in self.DAYS:
            return queryset
        first, last = self.DAYS[value]
        zone = F("institution__time_zone")
        return queryset.alias(local_day=LocalDate(F("starts_at"), zone), local_today=LocalDate(Now(), zone)).filter(
            local_day__gte=ExpressionWrapper(F("local_today") + first, output_field=DateField()),
            local_day__lt=ExpressionWrapper(F("local_today") + last, output_field=DateField()),
        )


class DoctorFilter(admin.SimpleListFilter):
    """The doctors of the rows the user may see (one query, names included)."""

    title = "doctor"
    parameter_name = "doctor"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        shown = model_admin.get_queryset(request).values("doctor_id")
        doctors = m.Doctor.objects.filter(pk__in=shown).select_related("user")
        return [(str(doctor.pk), str(doctor)) for doctor in doctors]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(doctor_id=self.value()) if self.value() else queryset


# Appointments ----------------------------------------------------------------------------


@admin.register(m.Appointment)
class AppointmentAdmin(PatientScopedAdmin):
    list_display = ("patient", "doctor", "institution", "local_start", "local_end", "status")
    list_filter = ("status", ("institution", admin.RelatedOnlyFieldListFilter), DoctorFilter, WhenFilter)
    search_fields = ("patient__mrn", "patient__last_name")
    search_help_text = "Patient MRN or last name."
    list_select_related = ("patient", "doctor__user", "institution")
    ordering = ("-starts_at", "-id")
    show_full_result_count = False
    readonly_fields = (
        "uuid",
        "patient",
        "doctor",
        "institution",
        "status",
        "local_start",
        "local_end",
        "length",
        "reason",
        "booked_by",
        "cancelled_by",
        "local_cancelled_at",
        "cancellation_reason",
        "outcome_recorded_by",
        "local_outcome_recorded_at",
        "prescription_link",
        "created_at",
    )
    fieldsets = (
        (None, {"fields": ("uuid", "patient", "doctor", "institution", "status")}),
        ("When (on the institution's clock)", {"fields": ("local_start", "local_end", "length")}),
        ("Why", {"fields": ("reason",)}),
        (
            "Who",
            {
                "fields": (
                    "booked_by",
                    ("cancelled_by", "local_cancelled_at"),
                    "cancellation_reason",
                    ("outcome_recorded_by", "local_outcome_recorded_at"),
                )
            },
        ),
        ("Prescription", {"fields": ("prescription_link", "created_at")}),
    )

    # Access (PatientScopedAdmin: only visible patients' appointments) --------------------------
    def get_queryset(self, request: HttpRequest) -> QuerySet[m.Appointment]:
        return (
            super()
            .get_queryset(request)
            .select_related("patient", "doctor__user", "doctor__institution", "institution")
            .annotate(prescription_pk=F("prescription__id"))
        )

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # appointments change only through the actions below (the services)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # an appointment is history: it is cancelled, never deleted

    # Columns and fields ---------------------------------------------------------------------
    @admin.display(description="starts", ordering="starts_at")
    def local_start(self, obj: m.Appointment) -> str:
        return local_text(obj.starts_at, obj.time_zone)

    @admin.display(description="ends", ordering="ends_at")
    def local_end(self, obj: m.Appointment) -> str:
        return local_text(obj.ends_at, obj.time_zone)

    @admin.display(description="length")
    def length(self, obj: m.Appointment) -> str:
        return f"{int(obj.duration.total_seconds() // 60)} minutes"

    @admin.display(description="cancelled at")
    def local_cancelled_at(self, obj: m.Appointment) -> str:
        return local_text(obj.cancelled_at, obj.time_zone)

    @admin.display(description="recorded at")
    def local_outcome_recorded_at(self, obj: m.Appointment) -> str:
        return local_text(obj.outcome_recorded_at, obj.time_zone)

    @admin.display(description="prescription")
    def prescription_link(self, obj: m.Appointment) -> str:
        pk = getattr(obj, "prescription_pk", None)
        if pk is None:
            return "—"
        return format_html(
            "<a href='{}'>View the prescription</a>", reverse("admin:clinical_prescription_change", args=[pk])
        )

    # Pages ------------------------------------------------------------------------------------
    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        extra = [
            path("day/", view(self.day_view), name="clinical_appointment_day"),
            path("<int:pk>/reschedule/", view(self.reschedule_view), name="clinical_appointment_reschedule"),
            path("<int:pk>/cancel/", view(self.cancel_view), name="clinical_appointment_cancel"),
            path("<int:pk>/complete/", view(self.complete_view), name="clinical_appointment_complete"),
            path("<int:pk>/no-show/", view(self.no_show_view), name="clinical_appointment_no_show"),
        ]
        return extra + super().get_urls()

    def _page(self, request: HttpRequest, title: str, template: str = CARE_FORM_TEMPLATE, **context: Any) -> Any:
        return TemplateResponse(
            request,
            template,
            {**self.admin_site.each_context(request), "title": title, "opts": self.model._meta, **context},
        )

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        extra = {**(extra_context or {}), "day_url": reverse("admin:clinical_appointment_day")}
        return super().changelist_view(request, extra)  # PatientScopedAdmin writes the access entry

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> Any:
        appointment = self.get_object(request, unquote(object_id))
        actions = self._actions_for(request, appointment) if appointment is not None else []
        response = super().change_view(request, object_id, form_url, {**(extra_context or {}), "care_actions": actions})
        if request.method == "GET" and appointment is not None and getattr(response, "status_code", 0) == 200:
            _audit(request, appointment.patient, [appointment], m.Appointment, "admin appointment")
        return response

    def auditlog_history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        appointment = self.get_object(request, unquote(object_id))
        response = super().auditlog_history_view(request, object_id, extra_context)
        if appointment is not None and getattr(response, "status_code", 0) == 200:
            _audit(request, appointment.patient, [appointment], m.Appointment, "admin appointment history")
        return response

    def _actions_for(self, request: HttpRequest, appointment: m.Appointment) -> list[tuple[str, str]]:
        user, actions = request.user, []
        scheduled = appointment.status == m.AppointmentStatus.SCHEDULED
        if scheduled and access.can_change_appointment(user, appointment.patient):
            actions.append(("Reschedule", reverse("admin:clinical_appointment_reschedule", args=[appointment.pk])))
            actions.append(("Cancel", reverse("admin:clinical_appointment_cancel", args=[appointment.pk])))
            actions.append(("Complete", reverse("admin:clinical_appointment_complete", args=[appointment.pk])))
            if appointment.starts_at <= timezone.now():
                actions.append(("Mark no-show", reverse("admin:clinical_appointment_no_show", args=[appointment.pk])))
        if (
            getattr(appointment, "prescription_pk", None) is None
            and appointment.status in (m.AppointmentStatus.SCHEDULED, m.AppointmentStatus.COMPLETED)
            and appointment.starts_at <= timezone.now()
            and appointment.doctor.user_id == user.pk
            and access.can_issue_prescription(user, appointment)
        ):
            url = reverse("admin:clinical_prescription_add") + "?" + urlencode({"appointment": appointment.pk})
            actions.append(("Write the prescription", url))
        if access.can_add_document(user, appointment.patient):
            query = urlencode({"patient": appointment.patient_id, "appointment": appointment.pk})
            actions.append(("Upload a document", reverse("admin:clinical_document_add") + "?" + query))
        # The day view reads the day on the doctor's institution clock.
        day = appointment.starts_at.astimezone(zoneinfo.ZoneInfo(appointment.doctor.institution.time_zone)).date()
        actions.append(("The doctor's day", _day_url(appointment.doctor_id, day)))
        return actions

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None) -> Any:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = BookForm(
            request.POST or None, initial=self._booking_initial(request), user=request.user, admin_site=self.admin_site
        )
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            if not access.can_book_appointment(request.user, data["patient"]):
                raise PermissionDenied
            try:
                appointment = appointments.appointment_book(
                    patient=data["patient"],
                    doctor=data["doctor"],
                    institution=data["institution"],
                    starts_at=data["starts_at"],
                    ends_at=data["ends_at"],
                    reason=data["reason"],
                    booked_by=request.user,
                )
            except ValidationError as exc:
                service_errors_on(form, exc, SLOT_FIELDS)
            else:
                self.message_user(request, f"Booked: {local_text(appointment.starts_at, appointment.time_zone)}.")
                return redirect(reverse("admin:clinical_appointment_change", args=[appointment.pk]))
        return self._page(
            request,
            "Book an appointment",
            form=form,
            media=self.media + form.media,
            submit_label="Book",
            cancel_url=reverse("admin:clinical_appointment_changelist"),
        )

    def _booking_initial(self, request: HttpRequest) -> dict[str, Any]:
        """From the query string (the day view's link), else the user's own doctor record and institution."""
        initial: dict[str, Any] = {
            name: request.GET[name] for name in ("patient", "doctor", "date") if request.GET.get(name)
        }
        own = (
            m.Doctor.objects.filter(user_id=request.user.pk, is_active=True).values_list("pk", "institution_id").first()
        )
        if own is not None:
            initial.setdefault("doctor", own[0])
            initial.setdefault("institution", own[1])
        return initial

    # Object actions -----------------------------------------------------------------------------
    def _changeable(self, request: HttpRequest, pk: int) -> m.Appointment:
        """The appointment, if the user sees it (else 404) and may change it (else 403)."""
        appointment = self.get_queryset(request).filter(pk=pk).first()
        if appointment is None:
            raise Http404
        if not access.can_change_appointment(request.user, appointment.patient):
            raise PermissionDenied
        return appointment

    def _action_page(self, request: HttpRequest, appointment: m.Appointment, title: str, **context: Any) -> Any:
        if request.method == "GET":
            _audit(request, appointment.patient, [appointment], m.Appointment, f"admin appointment: {title.lower()}")
        summary = [
            ("Patient", appointment.patient),
            ("Doctor", appointment.doctor),
            ("Institution", appointment.institution),
            ("Starts", local_text(appointment.starts_at, appointment.time_zone)),
            ("Ends", local_text(appointment.ends_at, appointment.time_zone)),
            ("Status", appointment.get_status_display()),
        ]
        cancel_url = reverse("admin:clinical_appointment_change", args=[appointment.pk])
        return self._page(request, title, summary=summary, cancel_url=cancel_url, **context)

    def _done(self, request: HttpRequest, appointment: m.Appointment, message: str) -> HttpResponse:
        self.message_user(request, message, messages.SUCCESS)
        return redirect(reverse("admin:clinical_appointment_change", args=[appointment.pk]))

    def reschedule_view(self, request: HttpRequest, pk: int) -> Any:
        appointment = self._changeable(request, pk)
        form = RescheduleForm(request.POST or None, appointment=appointment)
        if request.method == "POST" and form.is_valid():
            try:
                moved = appointments.appointment_reschedule(
                    appointment=appointment,
                    starts_at=form.cleaned_data["starts_at"],
                    ends_at=form.cleaned_data["ends_at"],
                    by=request.user,
                )
            except ValidationError as exc:
                service_errors_on(form, exc, SLOT_FIELDS)
            else:
                return self._done(request, moved, f"Moved to {local_text(moved.starts_at, moved.time_zone)}.")
        return self._action_page(request, appointment, "Reschedule", form=form, submit_label="Move")

    def cancel_view(self, request: HttpRequest, pk: int) -> Any:
        appointment = self._changeable(request, pk)
        form = CancelForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                appointments.appointment_cancel(
                    appointment=appointment, by=request.user, reason=form.cleaned_data["reason"]
                )
            except ValidationError as exc:
                service_errors_on(form, exc)
            else:
                return self._done(request, appointment, "Cancelled; the slot is free again.")
        return self._action_page(request, appointment, "Cancel", form=form, submit_label="Cancel the appointment")

    def _outcome_view(self, request: HttpRequest, pk: int, service: Any, title: str, message: str) -> Any:
        appointment = self._changeable(request, pk)
        form = ConfirmForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            try:
                service(appointment=appointment, by=request.user)
            except ValidationError as exc:
                service_errors_on(form, exc)
            else:
                return self._done(request, appointment, message)
        return self._action_page(request, appointment, title, form=form, submit_label=title)

    def complete_view(self, request: HttpRequest, pk: int) -> Any:
        return self._outcome_view(
            request, pk, appointments.appointment_complete, "Complete", "Recorded: the appointment took place."
        )

    def no_show_view(self, request: HttpRequest, pk: int) -> Any:
        return self._outcome_view(
            request, pk, appointments.appointment_mark_no_show, "Mark no-show", "Recorded: the patient did not come."
        )

    # The day view ------------------------------------------------------------------------------
    def day_view(self, request: HttpRequest) -> Any:
        """One doctor's appointments on one day, each on its institution's clock, of patients the user may see.

        ``zone`` (the doctor's home institution's) only picks today when no date is given.
        """
        if not self.has_view_permission(request):
            raise PermissionDenied
        doctor = self._day_doctor(request)
        zone = zoneinfo.ZoneInfo(doctor.institution.time_zone) if doctor is not None else datetime.UTC
        day = self._day(request, zone)
        rows = doctor_day(user=request.user, doctor=doctor, day=day) if doctor is not None else []
        if rows:
            self.audit_list(request, rows, view="admin doctor's day")
        picker = list(selectors.doctors_seen_by(user=request.user))
        if doctor is not None and doctor not in picker:
            picker.insert(0, doctor)
        context: dict[str, Any] = {
            "doctor": doctor,
            "day": day,
            "zone": getattr(zone, "key", "UTC"),
            "doctors": picker,
            "appointments": rows,
            "rows": [self._day_row(a) for a in rows],
            "changelist_url": reverse("admin:clinical_appointment_changelist"),
        }
        if doctor is not None:
            one_day = datetime.timedelta(days=1)
            context["previous_url"] = _day_url(doctor.pk, day - one_day)
            context["next_url"] = _day_url(doctor.pk, day + one_day)
            context["today_url"] = _day_url(doctor.pk, timezone.localdate(timezone=zone))
            if self.has_add_permission(request):
                query = urlencode({"doctor": str(doctor.pk), "date": day.isoformat()})
                context["book_url"] = reverse("admin:clinical_appointment_add") + "?" + query
        title = f"{doctor} — {day:%A %d %B %Y}" if doctor is not None else "A doctor's day"
        return self._page(request, title, "admin/clinical/appointment/day.html", **context)

    def _day_doctor(self, request: HttpRequest) -> m.Doctor | None:
        """The doctor asked for (404 when there is none), else the user's own doctor record."""
        doctors = m.Doctor.objects.select_related("user", "institution")
        wanted = request.GET.get("doctor")
        if not wanted:
            return doctors.filter(user_id=request.user.pk).first()
        doctor = doctors.filter(pk=int(wanted)).first() if wanted.isascii() and wanted.isdecimal() else None
        if doctor is None:
            raise Http404("No such doctor.")
        return doctor

    def _day(self, request: HttpRequest, zone: datetime.tzinfo) -> datetime.date:
        wanted = request.GET.get("date")
        if wanted:
            try:
                day = datetime.date.fromisoformat(wanted)
            except ValueError:
                day = None
            # Within bounds, so the previous and next days exist too.
            if day is not None and datetime.date(1900, 1, 1) <= day <= datetime.date(9000, 12, 31):
                return day
            self.message_user(request, f"Not a date: {wanted!r}; showing today.", messages.ERROR)
        return timezone.localdate(timezone=zone)

    def _day_row(self, appointment: m.Appointment) -> dict[str, Any]:
        zone = appointment.time_zone
        return {
            "url": reverse("admin:clinical_appointment_change", args=[appointment.pk]),
            "starts": f"{appointment.starts_at.astimezone(zone):%H:%M}",
            "ends": f"{appointment.ends_at.astimezone(zone):%H:%M}",
            "patient": appointment.patient,
            "institution": appointment.institution,
            "status": appointment.get_status_display(),
            "reason": appointment.reason or "",
            "has_prescription": getattr(appointment, "prescription_uuid", None) is not None,
        }


def _day_url(doctor_id: int, day: datetime.date) -> str:
    return (
        reverse("admin:clinical_appointment_day") + "?" + urlencode({"doctor": str(doctor_id), "date": day.isoformat()})
    )


# Prescriptions ---------------------------------------------------------------------------


def item_directions(item: m.PrescriptionItem) -> str:
    """How to take it, as the printed prescription says it: "1 capsule, oral, three times a day, for 7 days"."""
    text = f"{item.dose}, {item.get_route_display().lower()}, {item.get_frequency_display().lower()}"
    if item.frequency != m.Frequency.ONCE:
        text += f", for {item.duration_days} days"
    return text


class PrescriptionItemInline(admin.TabularInline):
    """The items, in order, read only."""

    model = m.PrescriptionItem
    extra = 0
    can_delete = False
    fields = ("position", "medication", "directions", "dispense", "instructions")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[m.PrescriptionItem]:
        return super().get_queryset(request).select_related("medication").order_by("position")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="how to take it")
    def directions(self, obj: m.PrescriptionItem) -> str:
        return item_directions(obj)

    @admin.display(description="dispense")
    def dispense(self, obj: m.PrescriptionItem) -> str:
        return f"{obj.quantity} ({obj.medication.form})"


def _download_url(document_id: int) -> str:
    return reverse("admin:clinical_document_download", args=[document_id])


@admin.register(m.Prescription)
class PrescriptionAdmin(PatientScopedAdmin):
    list_display = ("patient", "doctor", "appointment_start", "item_count", "pdf_ready", "created_at")
    list_filter = (DoctorFilter, ("appointment__institution", admin.RelatedOnlyFieldListFilter))
    search_fields = ("patient__mrn", "patient__last_name")
    search_help_text = "Patient MRN or last name."
    list_select_related = ("patient", "doctor__user", "appointment__institution")
    show_full_result_count = False
    inlines = [PrescriptionItemInline]
    readonly_fields = (
        "uuid",
        "patient",
        "doctor",
        "appointment_link",
        "issued_by",
        "issued_at",
        "notes",
        "printable_file",
        "signed_copies",
    )
    fieldsets = (
        (None, {"fields": ("uuid", "patient", "doctor", "appointment_link", "issued_by", "issued_at")}),
        ("For the patient", {"fields": ("notes",)}),
        ("Files", {"fields": ("printable_file", "signed_copies")}),
    )

    # Access (PatientScopedAdmin: only visible patients' prescriptions) -------------------------
    def get_queryset(self, request: HttpRequest) -> QuerySet[m.Prescription]:
        return (
            super()
            .get_queryset(request)
            .select_related("patient", "doctor__user", "appointment__institution", "issued_by")
            .annotate(item_count=Count("items"))
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("clinical.add_prescription")  # and, per appointment, can_issue_prescription

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # an issued prescription is the prescriber's act: never edited

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # Columns and fields ---------------------------------------------------------------------
    @admin.display(description="appointment", ordering="appointment__starts_at")
    def appointment_start(self, obj: m.Prescription) -> str:
        return local_text(obj.appointment.starts_at, obj.appointment.time_zone)

    @admin.display(description="items", ordering="item_count")
    def item_count(self, obj: m.Prescription) -> int:
        return int(getattr(obj, "item_count", 0))

    @admin.display(description="PDF ready", boolean=True)
    def pdf_ready(self, obj: m.Prescription) -> bool:
        return obj.printable_id is not None

    @admin.display(description="appointment")
    def appointment_link(self, obj: m.Prescription) -> str:
        url = reverse("admin:clinical_appointment_change", args=[obj.appointment_id])
        return format_html("<a href='{}'>{}</a>", url, self.appointment_start(obj))

    @admin.display(description="issued")
    def issued_at(self, obj: m.Prescription) -> str:
        return local_text(obj.created_at, obj.appointment.time_zone)

    @admin.display(description="printable PDF")
    def printable_file(self, obj: m.Prescription) -> str:
        if obj.printable_id is None:
            return "Being prepared; reload the page in a moment."
        return format_html("<a href='{}'>Download the PDF</a>", _download_url(obj.printable_id))

    @admin.display(description="signed copies")
    def signed_copies(self, obj: m.Prescription) -> str:
        copies = m.Document.objects.filter(prescription=obj).exclude(pk=obj.printable_id or 0).order_by("created_at")
        zone = obj.appointment.time_zone
        if not copies:
            return "None yet."
        return format_html_join(
            ", ",
            "<a href='{}'>{} ({})</a>",
            ((_download_url(d.pk), d.original_name, local_text(d.created_at, zone)) for d in copies),
        )

    # Pages ------------------------------------------------------------------------------------
    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        extra = [path("<int:pk>/signed-copy/", view(self.signed_copy_view), name="clinical_prescription_signed_copy")]
        return extra + super().get_urls()

    def _page(self, request: HttpRequest, title: str, **context: Any) -> Any:
        return TemplateResponse(
            request,
            CARE_FORM_TEMPLATE,
            {**self.admin_site.each_context(request), "title": title, "opts": self.model._meta, **context},
        )

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> Any:
        prescription = self.get_object(request, unquote(object_id))
        actions = self._actions_for(request, prescription) if prescription is not None else []
        response = super().change_view(request, object_id, form_url, {**(extra_context or {}), "care_actions": actions})
        if request.method == "GET" and prescription is not None and getattr(response, "status_code", 0) == 200:
            _audit(request, prescription.patient, [prescription], m.Prescription, "admin prescription")
        return response

    def auditlog_history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        prescription = self.get_object(request, unquote(object_id))
        response = super().auditlog_history_view(request, object_id, extra_context)
        if prescription is not None and getattr(response, "status_code", 0) == 200:
            _audit(request, prescription.patient, [prescription], m.Prescription, "admin prescription history")
        return response

    def _actions_for(self, request: HttpRequest, prescription: m.Prescription) -> list[tuple[str, str]]:
        actions = []
        if prescription.printable_id is not None:
            actions.append(("Printable PDF", _download_url(prescription.printable_id)))
        if access.can_add_document(request.user, prescription.patient):
            actions.append(
                ("Upload a signed copy", reverse("admin:clinical_prescription_signed_copy", args=[prescription.pk]))
            )
        return actions

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None) -> Any:
        """Issue the prescription of one of the user's own appointments, with its items."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        initial = {"appointment": request.GET["appointment"]} if request.GET.get("appointment") else {}
        form = IssueForm(request.POST or None, initial=initial, user=request.user)
        formset = ItemFormSet(request.POST or None, prefix="items", form_kwargs={"admin_site": self.admin_site})
        if request.method == "POST" and all([form.is_valid(), formset.is_valid()]):  # both, to show all errors
            appointment = form.cleaned_data["appointment"]
            if not access.can_issue_prescription(request.user, appointment):
                raise PermissionDenied
            try:
                prescription = prescriptions.prescription_issue(
                    appointment=appointment,
                    items=[item.cleaned_data for item in formset if item.cleaned_data],
                    issued_by=request.user,
                    notes=form.cleaned_data["notes"],
                )
            except ValidationError as exc:
                service_errors_on(form, exc)
            else:
                self.message_user(request, "Prescription issued; its PDF is being prepared.", messages.SUCCESS)
                return redirect(reverse("admin:clinical_prescription_change", args=[prescription.pk]))
        return self._page(
            request,
            "Write a prescription",
            form=form,
            formset=formset,
            media=self.media + form.media + formset.media,
            submit_label="Issue the prescription",
            cancel_url=reverse("admin:clinical_prescription_changelist"),
        )

    def signed_copy_view(self, request: HttpRequest, pk: int) -> Any:
        prescription = self.get_queryset(request).filter(pk=pk).first()
        if prescription is None:
            raise Http404
        if not access.can_add_document(request.user, prescription.patient):
            raise PermissionDenied
        form = SignedCopyForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                prescriptions.prescription_signed_copy_upload(
                    prescription=prescription, upload=form.cleaned_data["file"], uploaded_by=request.user
                )
            except ValidationError as exc:
                service_errors_on(form, exc)
            else:
                self.message_user(request, "Signed copy kept with the prescription.", messages.SUCCESS)
                return redirect(reverse("admin:clinical_prescription_change", args=[prescription.pk]))
        # The page names the patient: a read like the prescription's own page.
        _audit(request, prescription.patient, [prescription], m.Prescription, "admin prescription signed-copy form")
        summary = [
            ("Patient", prescription.patient),
            ("Doctor", prescription.doctor),
            ("Appointment", self.appointment_start(prescription)),
        ]
        return self._page(
            request,
            "Upload a signed copy",
            form=form,
            summary=summary,
            submit_label="Upload",
            cancel_url=reverse("admin:clinical_prescription_change", args=[prescription.pk]),
        )
