from django.urls import path

from devices import views

app_name = "devices"
urlpatterns = [
    path("", views.device_list, name="list"),
    path("<str:uuid>/", views.device_detail, name="detail"),
    path("<str:uuid>/activity/", views.device_activity, name="activity"),
    path("<str:uuid>/actions/<slug:kind>/", views.device_action, name="action-new"),
]
