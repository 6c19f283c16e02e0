from django.urls import path

from clinical.api import care, views

urlpatterns = [
    path("patients/", views.PatientListView.as_view(), name="patient-list"),
    path("patients/<uuid:uuid>/", views.PatientDetailView.as_view(), name="patient-detail"),
    path("patients/<uuid:uuid>/records/", views.PatientRecordListView.as_view(), name="record-list"),
    path(
        "patients/<uuid:uuid>/records/<uuid:record_uuid>/",
        views.PatientRecordDetailView.as_view(),
        name="record-detail",
    ),
    path(
        "patients/<uuid:uuid>/records/<uuid:record_uuid>/amend/",
        views.RecordAmendView.as_view(),
        name="record-amend",
    ),
    path(
        "patients/<uuid:uuid>/records/<uuid:record_uuid>/entered-in-error/",
        views.RecordEnteredInErrorView.as_view(),
        name="record-entered-in-error",
    ),
    path(
        "patients/<uuid:uuid>/records/<uuid:record_uuid>/verify/",
        views.RecordVerifyView.as_view(),
        name="record-verify",
    ),
    path("me/patient/", views.MyPatientView.as_view(), name="my-patient"),
    path("me/records/", views.MyRecordListView.as_view(), name="my-record-list"),
    path("me/records/<uuid:record_uuid>/", views.MyRecordDetailView.as_view(), name="my-record-detail"),
    path("patients/<uuid:uuid>/documents/", views.PatientDocumentListView.as_view(), name="document-list"),
    path(
        "patients/<uuid:uuid>/documents/<uuid:document_uuid>/download/",
        views.PatientDocumentDownloadView.as_view(),
        name="document-download",
    ),
    path("me/documents/", views.MyDocumentListView.as_view(), name="my-document-list"),
    path(
        "me/documents/<uuid:document_uuid>/download/",
        views.MyDocumentDownloadView.as_view(),
        name="my-document-download",
    ),
    path("patients/<uuid:uuid>/appointments/", care.PatientAppointmentListView.as_view(), name="appointment-list"),
    path(
        "patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/",
        care.PatientAppointmentDetailView.as_view(),
        name="appointment-detail",
    ),
    path(
        "patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/reschedule/",
        care.AppointmentRescheduleView.as_view(),
        name="appointment-reschedule",
    ),
    path(
        "patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/cancel/",
        care.AppointmentCancelView.as_view(),
        name="appointment-cancel",
    ),
    path(
        "patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/complete/",
        care.AppointmentCompleteView.as_view(),
        name="appointment-complete",
    ),
    path(
        "patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/no-show/",
        care.AppointmentNoShowView.as_view(),
        name="appointment-no-show",
    ),
    path("me/appointments/", care.MyAppointmentListView.as_view(), name="my-appointment-list"),
    path(
        "me/appointments/<uuid:appointment_uuid>/",
        care.MyAppointmentDetailView.as_view(),
        name="my-appointment-detail",
    ),
    path("patients/<uuid:uuid>/prescriptions/", care.PatientPrescriptionListView.as_view(), name="prescription-list"),
    path(
        "patients/<uuid:uuid>/prescriptions/<uuid:prescription_uuid>/",
        care.PatientPrescriptionDetailView.as_view(),
        name="prescription-detail",
    ),
    path(
        "patients/<uuid:uuid>/prescriptions/<uuid:prescription_uuid>/signed-copy/",
        care.PrescriptionSignedCopyView.as_view(),
        name="prescription-signed-copy",
    ),
    path("me/prescriptions/", care.MyPrescriptionListView.as_view(), name="my-prescription-list"),
    path(
        "me/prescriptions/<uuid:prescription_uuid>/",
        care.MyPrescriptionDetailView.as_view(),
        name="my-prescription-detail",
    ),
]
