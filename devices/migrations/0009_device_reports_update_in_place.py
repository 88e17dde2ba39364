"""Device rows that reports rewrite in place: no index on last_seen_at, and room left on each page.

A report changes last_seen_at (and now and then the volumes or the status), none of them indexed
any more, so PostgreSQL can write the new row version on the same page without touching an index
(a HOT update), if the page has room: fillfactor 85 keeps 15 % of each page free for that. The
setting applies to pages written from now on; `VACUUM FULL devices_device` (or pg_repack) rewrites
an existing table with it. SQLite has neither, and nothing to do.
"""

from django.db import migrations

FILLFACTOR = 85


def set_fillfactor(apps, schema_editor, value=FILLFACTOR):
    if schema_editor.connection.vendor == "postgresql":
        table = schema_editor.quote_name(apps.get_model("devices", "Device")._meta.db_table)
        schema_editor.execute(f"ALTER TABLE {table} SET (fillfactor = {int(value)})")


def reset_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        table = schema_editor.quote_name(apps.get_model("devices", "Device")._meta.db_table)
        schema_editor.execute(f"ALTER TABLE {table} RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [("devices", "0008_delivery_claim")]

    operations = [
        migrations.RemoveIndex(model_name="device", name="device_fleet_seen"),
        migrations.RunPython(set_fillfactor, reset_fillfactor),
    ]
