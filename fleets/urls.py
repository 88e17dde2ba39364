from django.urls import path

from devices import views as device_views
from fleets import views

app_name = "fleets"
urlpatterns = [
    path("", views.fleet_list, name="list"),
    path("new/", views.fleet_create, name="new"),
    path("<int:fleet_id>/", views.fleet_detail, name="detail"),
    path("<int:fleet_id>/devices/count/", views.fleet_device_count, name="device-count"),
    path("<int:fleet_id>/views/", views.saved_view_create, name="view-create"),
    path("<int:fleet_id>/views/<int:view_id>/delete/", views.saved_view_delete, name="view-delete"),
    path("<int:fleet_id>/actions/", views.fleet_actions, name="actions"),
    path("<int:fleet_id>/actions/<slug:kind>/", device_views.fleet_action, name="action-new"),
    path("<int:fleet_id>/type/", views.fleet_type, name="type"),
    path("<int:fleet_id>/rename/", views.fleet_rename, name="rename"),
    path("<int:fleet_id>/support/", views.fleet_support, name="support"),
    path("<int:fleet_id>/support/revoke/", views.fleet_support_revoke, name="support-revoke"),
    path("<int:fleet_id>/transfer/", views.fleet_transfer, name="transfer"),
    path("<int:fleet_id>/delete/", views.fleet_delete, name="delete"),
    path("<int:fleet_id>/members/", views.fleet_members, name="members"),
    path("<int:fleet_id>/members/<int:user_id>/", views.fleet_member_role, name="member-role"),
    path("<int:fleet_id>/members/<int:user_id>/remove/", views.fleet_member_remove, name="member-remove"),
    path("<int:fleet_id>/activity/", views.fleet_activity, name="activity"),
    path("<int:fleet_id>/activity/<int:action_id>/", device_views.action_detail, name="action"),
    path("<int:fleet_id>/activity/<int:action_id>/cancel/", device_views.action_cancel, name="action-cancel"),
]

# Mounted at /orgs/ by dashboard/urls.py, in the "orgs" namespace.
org_urlpatterns = [
    path("", views.org_list, name="list"),
    path("<slug:handle>/", views.org_detail, name="detail"),
    path("<slug:handle>/members/<int:user_id>/", views.org_member_role, name="member-role"),
    path("<slug:handle>/members/<int:user_id>/remove/", views.org_member_remove, name="member-remove"),
]
