from django.contrib import admin

from devices.models import ActionDelivery, Device, DeviceAction, DeviceType, HostOSRelease, SavedView
from devices.selectors import online_q


class HostOSReleaseInline(admin.TabularInline):
    model = HostOSRelease
    extra = 0


@admin.register(DeviceType)
class DeviceTypeAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "arch"]
    list_filter = ["arch"]
    search_fields = ["name", "slug"]
    inlines = [HostOSReleaseInline]


@admin.register(HostOSRelease)
class HostOSReleaseAdmin(admin.ModelAdmin):
    list_display = ["device_type", "version", "released_at"]
    list_filter = ["device_type"]


class OnlineFilter(admin.SimpleListFilter):
    title = "connectivity"
    parameter_name = "online"

    def lookups(self, request, model_admin):
        return [("yes", "Online"), ("no", "Offline")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(online_q())
        if self.value() == "no":
            return queryset.exclude(online_q())
        return queryset


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "uuid",
        "fleet",
        "device_type",
        "os_version",
        "agent_version",
        "last_seen_at",
        "is_active",
    ]
    list_filter = [
        OnlineFilter,
        "is_active",
        "device_type",
        "fleet__organization",
        "public_url_enabled",
        "local_mode",
        "update_lock_held",
        "agent_status",
    ]
    search_fields = ["uuid", "name"]
    list_select_related = ["fleet", "device_type"]
    raw_id_fields = ["fleet"]
    readonly_fields = ["api_key_hash", "registered_at", "last_seen_at", "services", "volumes", "booted_at"]
    show_full_result_count = False  # no COUNT(*) over every device on each page


class ActionDeliveryInline(admin.TabularInline):
    model = ActionDelivery
    extra = 0
    fields = ["device_name", "device_uuid", "state", "reason", "attempts", "sent_at", "finished_at"]
    readonly_fields = fields
    can_delete = False
    max_num = 0
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).order_by("device_id")


@admin.register(DeviceAction)
class DeviceActionAdmin(admin.ModelAdmin):
    """The audit log: read-only."""

    list_display = [
        "created_at",
        "kind",
        "scope",
        "fleet_name",
        "actor_name",
        "state",
        "target_count",
        "succeeded_count",
        "failed_count",
        "missed_count",
        "unsupported_count",
    ]
    list_filter = ["kind", "state", "scope", "offline_policy", "organization"]
    search_fields = ["fleet_name", "actor_name", "summary"]
    date_hierarchy = "created_at"
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ActionDelivery)
class ActionDeliveryAdmin(admin.ModelAdmin):
    list_display = ["action", "device_name", "device_uuid", "state", "reason", "attempts", "finished_at"]
    list_filter = ["state"]
    search_fields = ["device_uuid", "device_name"]
    raw_id_fields = ["action", "device"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(SavedView)
class SavedViewAdmin(admin.ModelAdmin):
    list_display = ["name", "fleet", "owner", "query", "created_at"]
    search_fields = ["name", "owner__username"]
