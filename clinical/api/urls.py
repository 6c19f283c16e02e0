from django.urls import path

from clinical.api import views

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
]
