from django.urls import path

from devices import views

app_name = "devices"
urlpatterns = [
    path("", views.device_list, name="list"),
    path("<str:uuid>/", views.device_detail, name="detail"),
    path("<str:uuid>/actions/<slug:kind>/", views.device_action, name="action-new"),
]
