from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from devices.targets import FLEET_FIELDS, TargetAwareQuerySet


class Organization(models.Model):
    name = models.CharField(max_length=100, unique=True)
    handle = models.SlugField(max_length=100, unique=True)
    billing_account_valid = models.BooleanField(
        default=True, help_text="Deactivations and paid fleet types need a valid billing account."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class OrgRole(models.TextChoices):
    ADMINISTRATOR = "administrator", "Administrator"
    MEMBER = "member", "Member"


class OrgMembership(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="org_memberships")
    role = models.CharField(max_length=20, choices=OrgRole.choices, default=OrgRole.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="unique_org_member")]

    def __str__(self):
        return f"{self.user} in {self.organization} ({self.role})"


class FleetType(models.Model):
    """The rules a fleet's type imposes; seeded by a data migration."""

    slug = models.SlugField(max_length=30, unique=True)
    name = models.CharField(max_length=50)
    is_legacy = models.BooleanField(default=False, help_text="Old types (legacy, classic) cannot be chosen anew.")
    min_os_version = models.CharField(max_length=20, default="1.0.0")
    min_os_version_key = models.PositiveIntegerField(default=1_000_000)
    rename_allowed = models.BooleanField(default=True)
    allows_deactivated_devices = models.BooleanField(default=True)
    supports_multicontainer = models.BooleanField(default=True)
    requires_billing_account = models.BooleanField(
        default=False, help_text="Only organizations with a valid billing account may use this type."
    )
    max_devices = models.PositiveIntegerField(null=True, blank=True, help_text="Empty means no limit.")

    class Meta:
        ordering = ["is_legacy", "name"]

    def __str__(self):
        return self.name


class FleetRole(models.TextChoices):
    """Lowest to highest; each role includes the ones below it."""

    OBSERVER = "observer", "Observer"
    DEVELOPER = "developer", "Developer"
    OPERATOR = "operator", "Operator"
    ADMINISTRATOR = "administrator", "Administrator"

    @property
    def rank(self) -> int:
        return ROLE_RANK[self]

    @classmethod
    def from_rank(cls, rank: int) -> "FleetRole | None":
        return {r: role for role, r in ROLE_RANK.items()}.get(rank)


ROLE_RANK = {FleetRole.OBSERVER: 1, FleetRole.DEVELOPER: 2, FleetRole.OPERATOR: 3, FleetRole.ADMINISTRATOR: 4}
# The guardian permission each role adds; a role is granted with its own and all lower permissions.
ROLE_PERMISSION = {
    FleetRole.OBSERVER: "view_fleet",
    FleetRole.DEVELOPER: "develop_fleet",
    FleetRole.OPERATOR: "operate_fleet",
    FleetRole.ADMINISTRATOR: "administer_fleet",
}


class FleetQuerySet(TargetAwareQuerySet, models.QuerySet):
    target_fields = FLEET_FIELDS


class Fleet(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="fleets")
    name = models.CharField(max_length=100)
    fleet_type = models.ForeignKey(FleetType, on_delete=models.PROTECT, related_name="fleets")
    default_device_type = models.ForeignKey("devices.DeviceType", on_delete=models.PROTECT, related_name="+")
    target_release = models.ForeignKey(
        "Release", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    support_access_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = FleetQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(Lower("name"), "organization", name="unique_fleet_name_in_org"),
        ]
        permissions = [
            ("develop_fleet", "Developer of the fleet"),
            ("operate_fleet", "Operator of the fleet: device actions"),
            ("administer_fleet", "Administrator of the fleet: fleet actions and members"),
            ("provide_support", "Support staff: access fleets and devices under a live support grant"),
        ]

    def __str__(self):
        return self.name


class FleetMembership(models.Model):
    """Who is in a fleet with which role; the guardian rows on the fleet follow it."""

    fleet = models.ForeignKey(Fleet, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="fleet_memberships")
    role = models.CharField(max_length=20, choices=FleetRole.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["fleet", "user"], name="unique_fleet_member")]

    def __str__(self):
        return f"{self.user} in {self.fleet} ({self.role})"


class FleetUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Fleet, on_delete=models.CASCADE, related_name="user_permissions")


class FleetGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Fleet, on_delete=models.CASCADE, related_name="group_permissions")


class ProvisioningKey(models.Model):
    """A fleet's key for registering new devices; only its hash is kept."""

    fleet = models.ForeignKey(Fleet, on_delete=models.CASCADE, related_name="provisioning_keys")
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, help_text="The key's first characters, to recognise it.")
    description = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.prefix}… for {self.fleet}"


class Release(models.Model):
    fleet = models.ForeignKey(Fleet, on_delete=models.CASCADE, related_name="releases")
    commit = models.CharField(max_length=40)
    version = models.CharField(max_length=40)
    services = models.JSONField(default=list, help_text='[{"name": "web", "image": "...", "port": 80}]')
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["fleet", "commit"], name="unique_release_commit")]

    def __str__(self):
        return f"{self.version} ({self.commit[:7]})"


class BillingCharge(models.Model):
    """One-time fees, such as a device deactivation; visible to org administrators."""

    class Kind(models.TextChoices):
        DEACTIVATION = "deactivation", "Device deactivation"

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="charges")
    kind = models.CharField(max_length=30, choices=Kind.choices)
    amount_cents = models.PositiveIntegerField()
    description = models.CharField(max_length=200)
    device_uuid = models.CharField(max_length=32, blank=True)
    action = models.ForeignKey("devices.DeviceAction", on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.get_kind_display()} {self.amount}"

    @property
    def amount(self) -> str:
        return f"{self.amount_cents / 100:,.2f}"
