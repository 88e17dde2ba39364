from django.contrib import admin
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
        "name", "slug", "is_legacy", "min_os_version", "rename_allowed", "allows_deactivated_devices",
        "requires_billing_account", "max_devices",
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

    list_display = ["name", "organization", "fleet_type", "default_device_type", "support_access_until", "created_at"]
    list_filter = ["fleet_type", "organization", "default_device_type__arch"]
    search_fields = ["name", "organization__name"]
    list_select_related = ["organization", "fleet_type", "default_device_type"]
    autocomplete_fields = ["organization"]
    raw_id_fields = ["target_release"]
    inlines = [FleetMembershipInline]


@admin.register(FleetMembership)
class FleetMembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "fleet", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username", "fleet__name"]
    list_select_related = ["user", "fleet"]
    readonly_fields = ["fleet", "user", "role", "created_at"]

    def has_add_permission(self, request):
        return False  # memberships are written with their guardian rows by fleets.services


@admin.register(FleetUserObjectPermission)
class FleetUserObjectPermissionAdmin(admin.ModelAdmin):
    list_display = ["user", "content_object", "permission"]
    list_filter = ["permission"]
    search_fields = ["user__username", "content_object__name"]
    list_select_related = ["user", "content_object", "permission"]


@admin.register(FleetGroupObjectPermission)
class FleetGroupObjectPermissionAdmin(admin.ModelAdmin):
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
