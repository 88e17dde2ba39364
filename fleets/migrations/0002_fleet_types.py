from django.db import migrations

from fleets.catalog import create_fleet_types


def forwards(apps, schema_editor):
    create_fleet_types(apps.get_model("fleets", "FleetType"))


class Migration(migrations.Migration):
    dependencies = [("fleets", "0001_initial")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
