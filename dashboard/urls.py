from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from dashboard import views
from fleets.urls import org_urlpatterns

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("fleets/", include("fleets.urls")),
    path("orgs/", include((org_urlpatterns, "orgs"))),
    path("devices/", include("devices.urls")),
    path("api/v1/", include("devices.agent_urls")),
]
