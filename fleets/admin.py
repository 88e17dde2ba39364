from django.contrib import admin, messages
from django.shortcuts import redirect
from django.urls import reverse
from guardian.admin import GuardedModelAdmin

from fleets.models import (
    BillingCharge,
    Fleet,
    FleetGroupObjectPermission,
    FleetMembership,
    FleetType,
    FleetUserObjectPermission,
    Organization,
    OrgMembership,
    ProvisioningKey,
    Release,
)


class OrgMembershipInline(admin.TabularInline):
    model = OrgMembership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "handle", "billing_account_valid", "created_at"]
    list_filter = ["billing_account_valid"]
    search_fields = ["name", "handle"]
    inlines = [OrgMembershipInline]


@admin.register(OrgMembership)
class OrgMembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role", "organization"]
    search_fields = ["user__username", "organization__name"]
    autocomplete_fields = ["user", "organization"]


@admin.register(FleetType)
class FleetTypeAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "is_legacy",
        "min_os_version",
        "rename_allowed",
        "allows_deactivated_devices",
        "requires_billing_account",
        "max_devices",
    ]
    list_filter = ["is_legacy"]


class FleetMembershipInline(admin.TabularInline):
    model = FleetMembership
    extra = 0
    autocomplete_fields = ["user"]
    readonly_fields = ["user", "role", "created_at"]
    can_delete = False
    verbose_name_plural = "Members (change roles on the fleet's Members tab, which keeps permissions in step)"

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Fleet)
class FleetAdmin(GuardedModelAdmin):
    """Guardian's "Object permissions" page shows the role permissions granted on each fleet."""

    list_display = [
        "name",
        "organization",
        "fleet_type",
        "default_device_type",
        "support_access_until",
        "created_at",
    ]
    list_filter = ["fleet_type", "organization", "default_device_type__arch"]
    search_fields = ["name", "organization__name"]
    list_select_related = ["organization", "fleet_type", "default_device_type"]
    autocomplete_fields = ["organization"]
    raw_id_fields = ["target_release"]
    inlines = [FleetMembershipInline]

    # Guardian's pages show the role permissions granted on a fleet; they do not write them. A role
    # is a membership and its permission rows together (fleets.services.fleet_member_set), and the
    # access checks read memberships' user rows only: a row written here alone, or a group's, would
    # grant nothing, or worse, disagree with the Members tab.
    ROLES_ELSEWHERE = (
        "Roles are granted on the fleet's Members tab in the dashboard, which keeps permissions in step."
    )

    def obj_perms_manage_user_view(self, request, object_pk, user_id):
        if request.method == "POST":
            return self._refuse_permission_edit(request, object_pk)
        return super().obj_perms_manage_user_view(request, object_pk, user_id)

    def obj_perms_manage_group_view(self, request, object_pk, group_id):
        if request.method == "POST":
            return self._refuse_permission_edit(request, object_pk)
        return super().obj_perms_manage_group_view(request, object_pk, group_id)

    def _refuse_permission_edit(self, request, object_pk):
        messages.error(request, self.ROLES_ELSEWHERE)
        return redirect(reverse("admin:fleets_fleet_permissions", args=[object_pk]))


@admin.register(FleetMembership)
class FleetMembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "fleet", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username", "fleet__name"]
    list_select_related = ["user", "fleet"]
    readonly_fields = ["fleet", "user", "role", "created_at"]

    def has_add_permission(self, request):
        return False  # memberships are written with their guardian rows by fleets.services


class ReadOnlyPermissionAdmin(admin.ModelAdmin):
    """Permission rows are written with their memberships by fleets.services, never alone."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(FleetUserObjectPermission)
class FleetUserObjectPermissionAdmin(ReadOnlyPermissionAdmin):
    list_display = ["user", "content_object", "permission"]
    list_filter = ["permission"]
    search_fields = ["user__username", "content_object__name"]
    list_select_related = ["user", "content_object", "permission"]


@admin.register(FleetGroupObjectPermission)
class FleetGroupObjectPermissionAdmin(ReadOnlyPermissionAdmin):
    list_display = ["group", "content_object", "permission"]
    list_select_related = ["group", "content_object", "permission"]


@admin.register(ProvisioningKey)
class ProvisioningKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "fleet", "description", "created_by", "created_at", "expires_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["prefix", "fleet__name", "description"]
    readonly_fields = ["key_hash", "prefix", "created_at"]


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ["version", "commit", "fleet", "created_at"]
    search_fields = ["commit", "version", "fleet__name"]
    list_filter = ["fleet__organization"]


@admin.register(BillingCharge)
class BillingChargeAdmin(admin.ModelAdmin):
    list_display = ["created_at", "organization", "kind", "amount_cents", "device_uuid", "description"]
    list_filter = ["kind", "organization"]
    search_fields = ["device_uuid", "description"]
