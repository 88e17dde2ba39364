from django.apps import AppConfig
from django.db import transaction
from django.db.models.signals import post_delete


class DevicesConfig(AppConfig):
    name = "devices"
    verbose_name = "Devices and actions"

    def ready(self):
        from devices import lookups, targets  # noqa: F401 (lookups: registers field__any_of)
        from devices.models import Device

        targets.connect()
        post_delete.connect(
            _forget_deleted_device_key, sender=Device, dispatch_uid="forget-deleted-device-key"
        )


def _forget_deleted_device_key(sender, instance, **kwargs):
    """Cache coherence for deletes through the ORM (the Django admin): the agent is refused at once.
    Bulk deletes (devices.services.device_actions.delete_devices) do the same for many devices."""
    from devices.ingest import forget_api_keys

    key_hash = instance.api_key_hash
    transaction.on_commit(lambda: forget_api_keys([key_hash]))
