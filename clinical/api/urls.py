from django.urls import path

from clinical.api.views import MyPatientView, PatientDetailView, PatientListView

urlpatterns = [
    path("patients/", PatientListView.as_view(), name="patient-list"),
    path("patients/<uuid:uuid>/", PatientDetailView.as_view(), name="patient-detail"),
    path("me/patient/", MyPatientView.as_view(), name="my-patient"),
]
