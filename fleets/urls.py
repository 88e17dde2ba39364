from django.urls import path

from devices import views as device_views
from fleets import views

app_name = "fleets"
urlpatterns = [
    path("", views.fleet_list, name="list"),
    path("<int:fleet_id>/", views.fleet_detail, name="detail"),
    path("<int:fleet_id>/devices/count/", views.fleet_device_count, name="device-count"),
    path("<int:fleet_id>/views/", views.saved_view_create, name="view-create"),
    path("<int:fleet_id>/views/<int:view_id>/delete/", views.saved_view_delete, name="view-delete"),
    path("<int:fleet_id>/actions/", views.fleet_actions, name="actions"),
    path("<int:fleet_id>/actions/<slug:kind>/", device_views.fleet_action, name="action-new"),
    path("<int:fleet_id>/members/", views.fleet_members, name="members"),
    path("<int:fleet_id>/activity/", views.fleet_activity, name="activity"),
    path("<int:fleet_id>/activity/<int:action_id>/", device_views.action_detail, name="action"),
    path("<int:fleet_id>/activity/<int:action_id>/cancel/", device_views.action_cancel, name="action-cancel"),
]
