from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from devices.targets import DEVICE_FIELDS, TargetAwareQuerySet
from devices.versions import AGENT_API_MIN


class Architecture(models.TextChoices):
    RPI = "rpi", "ARMv6 (rpi)"
    ARMV7HF = "armv7hf", "ARMv7 hard-float"
    AARCH64 = "aarch64", "ARM 64-bit (aarch64)"
    AMD64 = "amd64", "x86-64 (amd64)"
    I386 = "i386", "x86 (i386)"


class DeviceType(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    arch = models.CharField("CPU architecture", max_length=20, choices=Architecture.choices)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class HostOSRelease(models.Model):
    """The catalog of host OS versions a device type can be updated to."""

    device_type = models.ForeignKey(DeviceType, on_delete=models.CASCADE, related_name="os_releases")
    version = models.CharField(max_length=30)
    version_key = models.PositiveIntegerField()
    released_at = models.DateField(null=True, blank=True)

    class Meta:
        ordering = ["device_type", "-version_key"]
        constraints = [models.UniqueConstraint(fields=["device_type", "version"], name="unique_os_release")]

    def __str__(self):
        return f"{self.device_type.slug} {self.version}"


class AgentStatus(models.TextChoices):
    """What the agent says it is doing, as of its last report."""

    IDLE = "idle", "Idle"
    UPDATING = "updating", "Updating"
    REBOOTING = "rebooting", "Rebooting"
    SHUTTING_DOWN = "shutting_down", "Shutting down"


# Reported just before the agent goes dark: the device counts as offline at once.
GOING_DOWN = (AgentStatus.REBOOTING, AgentStatus.SHUTTING_DOWN)


class DeviceStatus(models.TextChoices):
    ONLINE = "online", "Online"
    OFFLINE = "offline", "Offline"
    UPDATING = "updating", "Updating"
    DEACTIVATED = "deactivated", "Deactivated"


def online_cutoff(now=None):
    return (now or timezone.now()) - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER_S)


class DeviceQuerySet(TargetAwareQuerySet, models.QuerySet):
    target_fields = DEVICE_FIELDS


class Device(models.Model):
    uuid = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    fleet = models.ForeignKey("fleets.Fleet", on_delete=models.CASCADE, related_name="devices")
    device_type = models.ForeignKey(DeviceType, on_delete=models.PROTECT, related_name="devices")
    is_active = models.BooleanField(default=True, help_text="False once deactivated.")
    deactivated_at = models.DateTimeField(null=True, blank=True)

    # Reported by the agent.
    os_version = models.CharField(max_length=30)
    os_version_key = models.PositiveIntegerField(db_index=True)
    agent_version = models.CharField(max_length=30)
    agent_version_key = models.PositiveIntegerField()
    # Registration counts as the first contact, so every device has been seen at least once.
    last_seen_at = models.DateTimeField(default=timezone.now)
    agent_status = models.CharField(max_length=20, choices=AgentStatus.choices, default=AgentStatus.IDLE)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    api_address = models.URLField(blank=True, help_text="Where the agent's own API listens (agent >= 1.1.0).")
    web_address = models.URLField(blank=True, help_text="The device's port-80 service, for the public URL.")
    update_lock_held = models.BooleanField(default=False)
    release_commit = models.CharField(max_length=40, blank=True)
    services = models.JSONField(default=list, blank=True)
    volumes = models.JSONField(default=list, blank=True)
    booted_at = models.DateTimeField(null=True, blank=True)
    os_update_progress = models.PositiveSmallIntegerField(null=True, blank=True)
    # What pending update the update lock holds back, in the agent's words ("" when nothing is).
    update_blocked = models.CharField(max_length=200, blank=True)

    # Target state, polled by the agent.
    public_url_enabled = models.BooleanField(default=False)
    local_mode = models.BooleanField(default=False)
    lock_override = models.BooleanField(default=False)
    target_os_version = models.CharField(max_length=30, blank=True)
    # A setting changed that the device has not fetched yet: its next poll confirms the deliveries
    # waiting for it (one flag on the row the poll reads anyway, so other polls cost nothing more).
    awaiting_poll = models.BooleanField(default=False)

    support_access_until = models.DateTimeField(null=True, blank=True)
    api_key_hash = models.CharField(max_length=64, unique=True)
    registered_at = models.DateTimeField(default=timezone.now)

    objects = DeviceQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        indexes = [
            # Keyset pagination and filters within one fleet.
            models.Index(fields=["fleet", "name", "id"], name="device_fleet_name"),
            # A fleet's devices in id order: the action engine's chunks (INSERT ... SELECT ... ORDER
            # BY id LIMIT n) read this index instead of filtering the whole table's primary key.
            models.Index(fields=["fleet", "id"], name="device_fleet_id"),
            # The device search across fleets, by name: walked in order, stops after a page.
            models.Index(fields=["name", "id"], name="device_name"),
            # No index on last_seen_at: every report the flusher writes sets it, and a column in an
            # index makes PostgreSQL write every index of the row again (no HOT update). Without one,
            # a report's UPDATE stays on its page and touches no index (2.6-3.5x the rows written
            # per second: dashboard/bench/heartbeat_writes.py); a list sorted by last seen sorts the
            # fleet's rows instead (about 70 ms at 100,000 devices on the 2-core machine).
            models.Index(fields=["fleet", "os_version_key"], name="device_fleet_os"),
        ]

    def __str__(self):
        return self.name

    @property
    def short_uuid(self) -> str:
        return self.uuid[:7]

    @property
    def is_online(self) -> bool:
        return self.is_active and self.last_seen_at >= online_cutoff() and self.agent_status not in GOING_DOWN

    @property
    def status(self) -> DeviceStatus:
        if not self.is_active:
            return DeviceStatus.DEACTIVATED
        if not self.is_online:
            return DeviceStatus.OFFLINE
        if self.agent_status == AgentStatus.UPDATING:
            return DeviceStatus.UPDATING
        return DeviceStatus.ONLINE

    @property
    def has_agent_api(self) -> bool:
        return self.agent_version_key >= AGENT_API_MIN

    @property
    def public_url(self) -> str:
        return f"http://{self.uuid}.{settings.PUBLIC_URL_DOMAIN}"


class ActionKind(models.TextChoices):
    # One-shot, pushed to the agent API.
    RESTART = "restart", "Restart services"
    PURGE = "purge", "Purge data"
    REBOOT = "reboot", "Reboot"
    SHUTDOWN = "shutdown", "Shut down"
    LOCK_OVERRIDE = "lock_override", "Override update lock"
    # Settings, carried by the target state.
    PUBLIC_URL_ON = "public_url_on", "Enable public device URL"
    PUBLIC_URL_OFF = "public_url_off", "Disable public device URL"
    LOCAL_MODE_ON = "local_mode_on", "Enable local mode"
    LOCAL_MODE_OFF = "local_mode_off", "Disable local mode"
    MOVE = "move", "Move to another fleet"
    OS_UPDATE = "os_update", "Update host OS"
    DEVICE_TYPE = "device_type", "Change device type"
    SUPPORT_GRANT = "support_grant", "Grant support access"
    SUPPORT_REVOKE = "support_revoke", "Revoke support access"
    DEACTIVATE = "deactivate", "Deactivate"
    DELETE = "delete", "Delete"
    # Fleet actions.
    FLEET_TYPE = "fleet_type", "Change fleet type"
    FLEET_RENAME = "fleet_rename", "Rename fleet"
    FLEET_TRANSFER = "fleet_transfer", "Transfer fleet ownership"
    FLEET_DELETE = "fleet_delete", "Delete fleet"
    FLEET_CREATE = "fleet_create", "Create fleet"
    MEMBER_CHANGE = "member_change", "Change membership"


class ActionScope(models.TextChoices):
    FLEET = "fleet", "Whole fleet"
    DEVICE = "device", "One device"
    SELECTION = "selection", "Selected devices"


class OfflinePolicy(models.TextChoices):
    ONLINE_ONLY = "online_only", "Online devices only (offline ones miss it)"
    QUEUE = "queue", "Deliver when the device comes back, within a time limit"


class ActionState(models.TextChoices):
    QUEUED = "queued", "Waiting for dispatch"
    EXPANDING = "expanding", "Choosing devices"
    DISPATCHING = "dispatching", "Dispatching"
    DONE = "done", "Done"
    HALTED = "halted", "Halted: too many failures"
    CANCELLED = "cancelled", "Cancelled"


class DeliveryState(models.TextChoices):
    HELD = "held", "Held for a later stage"
    PENDING = "pending", "Pending"
    WAITING = "waiting", "Waiting for device"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    MISSED = "missed", "Missed: offline"
    UNSUPPORTED = "unsupported", "Unsupported"
    BLOCKED = "blocked", "Blocked by update lock"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


OPEN_DELIVERY_STATES = (
    DeliveryState.HELD,
    DeliveryState.PENDING,
    DeliveryState.WAITING,
    DeliveryState.SENDING,
    DeliveryState.SENT,
)
FINAL_DELIVERY_STATES = tuple(s for s in DeliveryState if s not in OPEN_DELIVERY_STATES)


class DeviceAction(models.Model):
    """One action a person took: the durable, audited record behind every dispatch.

    The per-state counters are kept on the row (updated in the same transaction as the deliveries
    they count) so progress never needs a COUNT over the deliveries.
    """

    organization = models.ForeignKey("fleets.Organization", on_delete=models.CASCADE, related_name="actions")
    fleet = models.ForeignKey(
        "fleets.Fleet", on_delete=models.SET_NULL, null=True, blank=True, related_name="actions"
    )
    fleet_name = models.CharField(max_length=100)
    device = models.ForeignKey(
        Device,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The device, when the scope is one device.",
    )
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    actor_name = models.CharField(max_length=150)
    kind = models.CharField(max_length=30, choices=ActionKind.choices)
    scope = models.CharField(max_length=20, choices=ActionScope.choices)
    selection = models.JSONField(
        default=dict,
        blank=True,
        help_text='{"filter": "<querystring>"} or {"ids": [...]}: what made the selection.',
    )
    params = models.JSONField(default=dict, blank=True)
    summary = models.CharField(max_length=300, blank=True)
    offline_policy = models.CharField(
        max_length=20, choices=OfflinePolicy.choices, default=OfflinePolicy.ONLINE_ONLY
    )
    deliver_until = models.DateTimeField(null=True, blank=True, help_text="Queue policy: give up after this.")
    state = models.CharField(max_length=20, choices=ActionState.choices, default=ActionState.QUEUED)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    target_count = models.PositiveIntegerField(default=0)
    held_count = models.PositiveIntegerField(default=0)
    pending_count = models.PositiveIntegerField(default=0)
    waiting_count = models.PositiveIntegerField(default=0)
    sending_count = models.PositiveIntegerField(default=0)
    sent_count = models.PositiveIntegerField(default=0)
    succeeded_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    missed_count = models.PositiveIntegerField(default=0)
    unsupported_count = models.PositiveIntegerField(default=0)
    blocked_count = models.PositiveIntegerField(default=0)
    expired_count = models.PositiveIntegerField(default=0)
    cancelled_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["fleet", "-created_at"], name="action_fleet_recent"),
            models.Index(fields=["organization", "-created_at"], name="action_org_recent"),
            models.Index(fields=["state", "created_at"], name="action_state"),
        ]

    def __str__(self):
        return f"{self.get_kind_display()} by {self.actor_name} ({self.get_scope_display().lower()})"

    def count_of(self, state: str) -> int:
        return getattr(self, f"{state}_count")

    @property
    def final_count(self) -> int:
        return sum(self.count_of(state) for state in FINAL_DELIVERY_STATES)

    @property
    def progress_percent(self) -> int:
        if not self.is_open:
            return 100
        if not self.target_count:
            return 0
        return min(100, round(100 * self.final_count / self.target_count))

    @property
    def is_open(self) -> bool:
        return self.state not in (ActionState.DONE, ActionState.HALTED, ActionState.CANCELLED)

    @property
    def progress_tone(self) -> str:
        if self.is_open:
            return ""
        if self.state == ActionState.HALTED:
            return "danger"
        return "warning" if self.failed_count or self.blocked_count else "success"


class ActionDelivery(models.Model):
    """One device's part in an action, with its outcome.

    The device is kept by id without a constraint so the record outlives a deleted device.
    The idempotency key sent to the agent is derived (`<action>-<device>`): a retried batch resends
    the same key and the agent acts once.
    """

    # No single-column indexes: (action, device), (action, state, device) and (device, state) below
    # serve every lookup, and each index more is written 100,000 times by a fleet-wide action.
    action = models.ForeignKey(
        DeviceAction, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    device = models.ForeignKey(
        Device, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="deliveries"
    )
    device_uuid = models.CharField(max_length=32)
    device_name = models.CharField(max_length=100)
    state = models.CharField(max_length=20, choices=DeliveryState.choices)
    reason = models.CharField(max_length=300, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    sent_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The batch that claimed it for sending (its Celery task id, which a redelivery keeps): only that
    # batch pushes it and records the push's outcome. A database default: expansion inserts in SQL.
    claim = models.CharField(max_length=64, blank=True, db_default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["action", "device"], name="unique_delivery")]
        indexes = [
            models.Index(fields=["action", "state", "device"], name="delivery_action_state"),
            models.Index(fields=["device", "state"], name="delivery_device_state"),
        ]

    def __str__(self):
        return f"{self.action_id} -> {self.device_uuid[:7]}: {self.state}"

    @property
    def idempotency_key(self) -> str:
        return delivery_key(self.action_id, self.device_id)


def delivery_key(action_id: int, device_id: int) -> str:
    return f"{action_id}-{device_id}"


class SavedView(models.Model):
    """A named filter set of one fleet's device list, owned by one user."""

    fleet = models.ForeignKey("fleets.Fleet", on_delete=models.CASCADE, related_name="saved_views")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="saved_views")
    name = models.CharField(max_length=60)
    query = models.CharField(max_length=1000, help_text="The filter querystring.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["fleet", "owner", "name"], name="unique_saved_view")]

    def __str__(self):
        return self.name
