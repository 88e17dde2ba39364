"""The server side of the agent protocol: registration, state reports, the target state."""

import hashlib
import json
import logging

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from devices.keys import hash_secret, new_secret
from devices.models import (
    Device,
    DeviceType,
)
from devices.versions import version_key
from fleets.models import ProvisioningKey

log = logging.getLogger(__name__)


class AgentError(Exception):
    """A refused agent request: becomes a JSON error response with `status`."""

    def __init__(self, status: int, code: str, detail: str, fields: dict | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.fields = status, code, detail, fields or {}


# --- The agent protocol ------------------------------------------------------------------------


@transaction.atomic
def device_register(
    *, provisioning_key: str, uuid: str, name: str, device_type: str, os_version: str, agent_version: str
) -> tuple[Device, str]:
    """Register a device in the provisioning key's fleet; returns it with its api key (plaintext once)."""
    now = timezone.now()
    key = (
        ProvisioningKey.objects.select_related("fleet__default_device_type", "fleet__fleet_type")
        .filter(key_hash=hash_secret(provisioning_key), revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .first()
    )
    if key is None:
        raise AgentError(
            401, "invalid_provisioning_key", "The provisioning key is unknown, revoked or expired."
        )
    fleet = key.fleet
    dtype = DeviceType.objects.filter(slug=device_type).first()
    if dtype is None:
        raise AgentError(400, "invalid", f"Unknown device type {device_type!r}.", {"device_type": "unknown"})
    if dtype.arch != fleet.default_device_type.arch:
        raise AgentError(
            400,
            "invalid",
            f"A {dtype.name} ({dtype.arch}) cannot join {fleet.name}, "
            f"whose devices are {fleet.default_device_type.arch}.",
            {"device_type": "architecture differs from the fleet's"},
        )
    limit = fleet.fleet_type.max_devices
    if limit is not None and Device.objects.filter(fleet=fleet).count() >= limit:
        raise AgentError(
            409, "fleet_full", f"{fleet.name} is a {fleet.fleet_type.name} fleet, limited to {limit} devices."
        )
    api_key = new_secret()
    try:
        with transaction.atomic():
            device = Device.objects.create(
                uuid=uuid,
                name=name or uuid[:7],
                fleet=fleet,
                device_type=dtype,
                os_version=os_version,
                os_version_key=version_key(os_version),
                agent_version=agent_version,
                agent_version_key=version_key(agent_version),
                api_key_hash=hash_secret(api_key),
                registered_at=now,
            )
    except IntegrityError:
        raise AgentError(
            409, "already_registered", f"A device with UUID {uuid} is already registered."
        ) from None
    return device, api_key


def device_report_state(*, device: Device, fields: dict, now=None) -> None:
    """Apply one validated state report at once, through the same bulk path the buffered
    reports take (the agent API buffers them; see devices.ingest)."""
    from devices.ingest import apply_reports

    apply_reports({device.pk: dict(fields, last_seen_at=now or timezone.now())})


def device_target_state(device: Device) -> dict:
    """What the agent should converge to. Its hash is the ETag."""
    release = device.fleet.target_release
    return {
        "uuid": device.uuid,
        "name": device.name,
        "fleet": {"id": device.fleet_id, "name": device.fleet.name},
        "device_type": device.device_type.slug,
        "release": (
            {"commit": release.commit, "version": release.version, "services": release.services}
            if release
            else None
        ),
        "config": {
            "public_url": device.public_url_enabled,
            "local_mode": device.local_mode,
            "lock_override": device.lock_override,
        },
        "os": {"target_version": device.target_os_version},
    }


def target_etag(target: dict) -> str:
    return '"' + hashlib.sha256(json.dumps(target, sort_keys=True).encode()).hexdigest()[:32] + '"'
