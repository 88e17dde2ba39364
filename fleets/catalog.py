"""The fleet types and their rules: reference data every installation has (seeded by migration)."""

from devices.versions import version_key

FLEET_TYPES = [
    # slug, name, legacy, min OS, rename, deactivated devices, multicontainer, needs billing, max devices
    ("starter", "Starter", False, "2.0.0", True, False, True, False, 10),
    ("microservices", "Microservices", False, "2.12.0", True, True, True, True, None),
    ("essentials", "Essentials", False, "2.0.0", True, True, False, True, None),
    ("legacy", "Legacy", True, "1.0.0", False, True, False, False, None),
    ("classic", "Classic", True, "1.0.0", False, True, False, False, None),
]


def create_fleet_types(FleetType) -> None:
    """Create or update the fleet types; takes the model so a migration can pass its historical one."""
    for slug, name, legacy, min_os, rename, deactivated, multi, billing, max_devices in FLEET_TYPES:
        FleetType.objects.update_or_create(
            slug=slug,
            defaults=dict(
                name=name,
                is_legacy=legacy,
                min_os_version=min_os,
                min_os_version_key=version_key(min_os),
                rename_allowed=rename,
                allows_deactivated_devices=deactivated,
                supports_multicontainer=multi,
                requires_billing_account=billing,
                max_devices=max_devices,
            ),
        )
