from django.db import migrations

from devices.catalog import create_catalog


def forwards(apps, schema_editor):
    create_catalog(apps.get_model("devices", "DeviceType"), apps.get_model("devices", "HostOSRelease"))


class Migration(migrations.Migration):
    dependencies = [("devices", "0002_initial")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
