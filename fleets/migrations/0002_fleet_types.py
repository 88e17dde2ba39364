from django.db import migrations

FLEET_TYPES = [
    # slug, name, legacy, min OS, rename, deactivated devices, multicontainer, needs billing, max devices
    ("starter", "Starter", False, "2.0.0", True, False, True, False, 10),
    ("microservices", "Microservices", False, "2.12.0", True, True, True, True, None),
    ("essentials", "Essentials", False, "2.0.0", True, True, False, True, None),
    ("legacy", "Legacy", True, "1.0.0", False, True, False, False, None),
    ("classic", "Classic", True, "1.0.0", False, True, False, False, None),
]


def version_key(version):
    major, minor, patch = (int(p) for p in version.split("."))
    return major * 1_000_000 + minor * 1_000 + patch


def create_fleet_types(apps, schema_editor):
    FleetType = apps.get_model("fleets", "FleetType")
    for slug, name, legacy, min_os, rename, deact, multi, billing, max_devices in FLEET_TYPES:
        FleetType.objects.update_or_create(
            slug=slug,
            defaults=dict(
                name=name,
                is_legacy=legacy,
                min_os_version=min_os,
                min_os_version_key=version_key(min_os),
                rename_allowed=rename,
                allows_deactivated_devices=deact,
                supports_multicontainer=multi,
                requires_billing_account=billing,
                max_devices=max_devices,
            ),
        )


class Migration(migrations.Migration):
    dependencies = [("fleets", "0001_initial")]
    operations = [migrations.RunPython(create_fleet_types, migrations.RunPython.noop)]
