"""The parts of device-specific actions that are more than a field change: deleting devices,
charging deactivations, and the conditions a deactivation needs."""

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet

from devices.ingest import forget_api_keys
from devices.models import Device, DeviceAction
from fleets.models import BillingCharge


def deactivate_refusal(device: Device) -> str | None:
    """Why this device cannot be deactivated now, or None. Each condition says itself."""
    if not device.is_active:
        return "The device is already deactivated."
    if device.is_online:
        return "The device is online: only an offline device can be deactivated."
    if not device.fleet.fleet_type.allows_deactivated_devices:
        return f"{device.fleet.name} is a {device.fleet.fleet_type.name} fleet, which cannot hold deactivated devices."
    if not device.fleet.organization.billing_account_valid:
        return f"{device.fleet.organization.name} has no valid billing account to charge the deactivation fee to."
    return None


def charge_deactivations(action: DeviceAction, devices: QuerySet[Device]) -> None:
    """The one-time fee, one charge per deactivated device, written in bulk."""
    fee = settings.DEACTIVATION_FEE_CENTS
    BillingCharge.objects.bulk_create(
        BillingCharge(
            organization_id=action.organization_id,
            kind=BillingCharge.Kind.DEACTIVATION,
            amount_cents=fee,
            description=f"Deactivation of {name}",
            device_uuid=uuid,
            action=action,
        )
        for uuid, name in devices.values_list("uuid", "name")
    )


def delete_devices(devices: QuerySet[Device]) -> int:
    """Delete devices with a few statements whatever their number; their audit rows stay, their
    api keys stop working as soon as the deletion commits."""
    key_hashes = list(devices.values_list("api_key_hash", flat=True))
    DeviceAction.objects.filter(device__in=devices).update(device=None)
    # Nothing else points at a device with a constraint (deliveries keep the id and a copy of the
    # uuid and name), so the rows can go without Django's collector loading them one by one.
    deleted = devices._raw_delete(devices.db)
    transaction.on_commit(lambda: forget_api_keys(key_hashes))
    return deleted
